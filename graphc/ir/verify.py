"""The IR verifier: the invariants every graph must keep, checked after every pass in checked mode."""
from __future__ import annotations

import re

from .errors import ShapeError, VerifyError
from .graph import GEMM_IMPLS, GEMM_SPLITS, KERNEL, KERNEL_KINDS, Graph
from .opdef import OPS

_NAME = re.compile(r"[\w.]+")  # what the text form can print and read back
_LABEL = re.compile(r"[\w.:]+")
_GRAPH_NAME = re.compile(r"[\w.<>-]+")


def _context(g: Graph, index: int, radius: int = 3) -> str:
    """The IR lines around node `index` (len(nodes) = the return line), the offending one marked `>>`."""
    from .text import format_node, format_return

    lo, hi = max(0, index - radius), min(len(g.nodes), index + radius + 1)
    lines = [f"{'>>' if i == index else '  '} {format_node(g.nodes[i])}" for i in range(lo, hi)]
    if index >= len(g.nodes) - radius:
        lines.append(f"{'>>' if index == len(g.nodes) else '  '} {format_return(g)}")
    return "\n".join(lines)


def _cycle(g: Graph, k: int, operand: str) -> list[str] | None:
    """If node k reads `operand` and operand's producer depends on node k, the values on that cycle."""
    producer = {o: j for j, n in enumerate(g.nodes) for o in n.outputs}
    mine = set(g.nodes[k].outputs)
    stack, seen = [(operand, [operand])], set()
    while stack:
        v, path = stack.pop()
        if v in mine:
            return path
        if v in seen or v not in producer:
            continue
        seen.add(v)
        stack.extend((i, path + [i]) for i in g.nodes[producer[v]].inputs)
    return None


MAX_ELEMENTS = 2**40  # 4 TiB of f32: more is a typo in IR text, not a real array


def _bad_shape(t) -> str | None:
    """Why a type's shape cannot be a real array (negative dim, absurd size), or None."""
    if any(d < 0 for d in t.shape):
        return "has a negative dimension"
    if t.size > MAX_ELEMENTS:
        return f"has {t.size:.3g} elements (more than {MAX_ELEMENTS:.3g}): not an array graphc can hold"
    return None


def verify(g: Graph) -> None:
    """Raise VerifyError naming the first node that breaks an invariant.

    Checked: every value defined once and before its use (so the graph is acyclic; a cycle is
    reported as one), names printable, every op known, attributes valid and complete, output
    types equal to the op's rule, graph outputs defined.
    """
    if not _GRAPH_NAME.fullmatch(g.name):
        raise VerifyError(f"graph name {g.name!r} is not printable (letters, digits, _ . < > -)")
    defined: dict[str, object] = {}
    for inp in g.inputs:
        if not _NAME.fullmatch(inp.name):
            raise VerifyError(f"graph {g.name}: input name {inp.name!r} is not a valid value name (letters, digits, _ and .)")
        if inp.name in defined:
            raise VerifyError(f"graph {g.name}: input %{inp.name} is defined twice")
        problem = _bad_shape(inp.type)
        if problem:
            raise VerifyError(f"graph {g.name}: input %{inp.name}: {inp.type} {problem}")
        defined[inp.name] = inp.type

    for k, n in enumerate(g.nodes):
        def fail(msg: str):
            raise VerifyError(f"graph {g.name}, node {k} ({n.op}, defining {', '.join('%' + o for o in n.outputs)}): "
                              f"{msg}\n{_context(g, k)}")

        if n.op == KERNEL or n.body is not None:
            _verify_kernel(g, n, defined, fail)
            continue
        if n.op not in OPS:
            fail(f"unknown op {n.op!r}")
        opdef = OPS[n.op]
        for i in n.inputs:
            if i in defined:
                continue
            if not any(i in m.outputs for m in g.nodes[k:]):
                fail(f"operand %{i} is not defined anywhere")
            cycle = _cycle(g, k, i)
            if cycle:
                fail(f"cycle: operand %{i} depends on this node's own output (" +
                     " <- ".join("%" + v for v in [*n.outputs[:1], *cycle]) + ")")
            fail(f"operand %{i} is used before it is defined (it is defined by a later node)")
        for o in n.outputs:
            if not _NAME.fullmatch(o):
                fail(f"output name {o!r} is not a valid value name (letters, digits, _ and .)")
        try:
            attrs = opdef.normalize_attrs(dict(n.attrs))
        except ShapeError as e:
            fail(f"invalid attributes: {e}")
        if tuple(attrs.items()) != tuple(n.attrs):
            fail(f"attributes {dict(n.attrs)} are not in normal form; expected {attrs}")
        try:
            expected = opdef.infer_types([defined[i] for i in n.inputs], attrs)
        except ShapeError as e:
            fail(f"operand types {', '.join(f'%{i}: {defined[i]}' for i in n.inputs)} are rejected by the "
                 f"{n.op} rule: {e}")
        if len(n.outputs) != len(expected) or len(n.types) != len(n.outputs):
            fail(f"expected {len(expected)} output(s), found {len(n.outputs)} with {len(n.types)} type(s)")
        for o, t, want in zip(n.outputs, n.types, expected):
            if t != want:
                fail(f"%{o} has type {t}, but the {n.op} rule gives {want}")
            if _bad_shape(t):
                fail(f"%{o}: {t} {_bad_shape(t)}")
            if o in defined:
                fail(f"%{o} is defined twice")
            defined[o] = t

    for out in g.outputs:
        if out.value not in defined:
            raise VerifyError(f"graph {g.name}: output %{out.value} is not defined by any input or node\n"
                              f"{_context(g, len(g.nodes))}")
        if out.label is not None and not _LABEL.fullmatch(out.label):
            raise VerifyError(f"graph {g.name}: output label {out.label!r} of %{out.value} is not printable "
                              f"(letters, digits, _ . :)\n{_context(g, len(g.nodes))}")


def _verify_kernel(g: Graph, n, defined: dict, fail) -> None:
    """A kernel node: operands defined, a body whose inputs are the operands (same names and
    types) and whose outputs are the node's outputs, values of the body not clashing with the
    graph's, no kernel inside a kernel, and the body itself a valid graph."""
    if n.op != KERNEL or n.body is None:
        fail("only a kernel node has a body, and a kernel node needs one")
    kind = dict(n.attrs).get("kind")
    keys = tuple(k for k, _ in n.attrs if k not in ("threads", "vector", "interleave", "split"))  # passes/parallel.py's
    if keys not in (("kind",), ("impl", "kind")) or kind not in KERNEL_KINDS:
        fail(f"kernel attributes must be {{kind=...}} (or {{impl=..., kind=...}}, and threads=k) with kind one of "
             f"{KERNEL_KINDS}, got {dict(n.attrs)}")
    threads = dict(n.attrs).get("threads", 1)
    if type(threads) is not int or threads < 1 or (threads > 1 and kind not in ("elementwise", "rows", "strided_gemm", "reduce", "gemm")):
        fail(f"threads={threads!r} needs an int >= 1, above 1 only on an elementwise, rows, reduce, gemm or strided_gemm kernel "
             f"(kind={kind!r})")
    vector = dict(n.attrs).get("vector", 1)
    if type(vector) is not int or vector < 1 or (vector > 1 and kind != "rows"):
        fail(f"vector={vector!r} needs an int >= 1, above 1 only on a rows kernel (kind={kind!r})")
    inter = dict(n.attrs).get("interleave")
    if inter is not None and (type(inter) is not int or inter < 1 or kind != "rows" or vector == 1):
        fail(f"interleave={inter!r} needs an int >= 1 on a rows kernel with vector=w (kind={kind!r}, vector={vector})")
    split = dict(n.attrs).get("split")
    if (split is not None or (kind == "gemm" and threads > 1)) and (kind != "gemm" or threads < 2 or split not in GEMM_SPLITS):
        fail(f"a gemm kernel with threads > 1 needs split= one of {GEMM_SPLITS} (and only it), got split={split!r}, "
             f"threads={threads!r}, kind={kind!r}")
    impl = dict(n.attrs).get("impl")
    if impl is not None and (kind not in ("gemm", "strided_gemm") or impl not in GEMM_IMPLS):
        fail(f"impl={impl!r} needs kind=\"gemm\" or \"strided_gemm\" and one of {GEMM_IMPLS}, got kind={kind!r}")
    for i in n.inputs:
        if i not in defined:
            fail(f"operand %{i} is not defined before this kernel")
    b = n.body
    if [(i.name, i.type) for i in b.inputs] != [(i, defined[i]) for i in n.inputs]:
        fail("the body's inputs must be the kernel's operands: " + ", ".join(f"%{i.name}: {i.type}" for i in b.inputs))
    if [o.value for o in b.outputs] != list(n.outputs) or any(o.label for o in b.outputs):
        fail(f"the body's outputs {[o.value for o in b.outputs]} must be the kernel's outputs {list(n.outputs)}")
    for m in b.nodes:
        if m.body is not None:
            fail(f"kernel inside a kernel (%{m.outputs[0]})")
        for o in m.outputs:
            if o in defined:
                fail(f"%{o} of the body is also defined outside it")
    try:
        verify(b)
    except VerifyError as e:
        fail(f"invalid body: {e}")
    for o, t in zip(n.outputs, n.types):
        if b.types[o] != t:
            fail(f"%{o} has type {t}, but the body gives {b.types[o]}")
        if not _NAME.fullmatch(o):
            fail(f"output name {o!r} is not a valid value name (letters, digits, _ and .)")
        defined[o] = t
