"""The IR verifier: the invariants every graph must keep, checked after every pass in checked mode."""
from __future__ import annotations

from .errors import ShapeError, VerifyError
from .graph import Graph
from .opdef import OPS


def _context(g: Graph, index: int, radius: int = 3) -> str:
    """The IR lines around node `index`, the offending one marked with `>>`."""
    from .text import format_node

    lo, hi = max(0, index - radius), min(len(g.nodes), index + radius + 1)
    lines = [f"{'>>' if i == index else '  '} {format_node(g.nodes[i])}" for i in range(lo, hi)]
    return "\n".join(lines)


def verify(g: Graph) -> None:
    """Raise VerifyError naming the first node that breaks an invariant.

    Checked: every value defined once and before its use (so the graph is acyclic), every op
    known, attributes valid and complete, output types equal to the op's rule, outputs defined.
    """
    defined: dict[str, object] = {}
    for inp in g.inputs:
        if inp.name in defined:
            raise VerifyError(f"graph {g.name}: input %{inp.name} is defined twice")
        defined[inp.name] = inp.type

    for k, n in enumerate(g.nodes):
        def fail(msg: str):
            raise VerifyError(f"graph {g.name}, node {k} ({n.op}): {msg}\n{_context(g, k)}")

        if n.op not in OPS:
            fail(f"unknown op {n.op!r}")
        opdef = OPS[n.op]
        for i in n.inputs:
            if i not in defined:
                fail(f"operand %{i} is used before it is defined" if any(i in m.outputs for m in g.nodes[k:])
                     else f"operand %{i} is not defined anywhere")
        try:
            attrs = opdef.normalize_attrs(dict(n.attrs))
        except ShapeError as e:
            fail(str(e))
        if tuple(attrs.items()) != tuple(n.attrs):
            fail(f"attributes {dict(n.attrs)} are not in normal form; expected {attrs}")
        try:
            expected = opdef.infer_types([defined[i] for i in n.inputs], attrs)
        except ShapeError as e:
            fail(str(e))
        if len(n.outputs) != len(expected) or len(n.types) != len(n.outputs):
            fail(f"expected {len(expected)} output(s), found {len(n.outputs)} with {len(n.types)} type(s)")
        for o, t, want in zip(n.outputs, n.types, expected):
            if t != want:
                fail(f"%{o} has type {t}, but the {n.op} rule gives {want}")
            if o in defined:
                fail(f"%{o} is defined twice")
            defined[o] = t

    for out in g.outputs:
        if out.value not in defined:
            raise VerifyError(f"graph {g.name}: output %{out.value} is not defined")
