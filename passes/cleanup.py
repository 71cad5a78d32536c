"""Clean-up passes: dead code, common subexpressions, constants, algebraic identities, dropout.

Each is a small rule applied by `rewrite`, which walks the nodes once in order. A rule sees a
node whose operands are already rewritten and the nodes kept so far, so chains collapse in
one walk (neg(neg(neg(neg(x)))) -> x). None of these passes removes a graph input: the inputs
are the graph's calling convention, which the runtime and the user bind by position and name.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from graphc.ir import Graph, GraphcError, get_op
from graphc.ir.graph import Node, Output
from graphc.ir.text import format_node

from .manager import PassContext, register_pass

# A rule returns None (keep the node), a value name (the node's single output is that value),
# a {output: value} dict (each output replaced), or a Node (the node rewritten; same outputs).
Rule = Callable[[Node, dict], "None | str | dict | Node"]


def resolve(alias: dict[str, str], v: str) -> str:
    while v in alias:
        v = alias[v]
    return v


def rewrite(g: Graph, rule: Rule) -> tuple[Graph, bool]:
    """Apply `rule` to every node in order; return the rewritten graph and whether anything changed."""
    alias: dict[str, str] = {}
    producers: dict[str, Node] = {}
    nodes: list[Node] = []
    changed = False
    for n in g.nodes:
        if any(i in alias for i in n.inputs):
            n = n.replace(inputs=tuple(resolve(alias, i) for i in n.inputs))
        r = rule(n, producers)
        if r is None:
            new = n
        elif isinstance(r, Node):
            new, changed = r, True
        else:
            alias.update({n.out: r} if isinstance(r, str) else r)
            changed = True
            continue
        nodes.append(new)
        producers.update((o, new) for o in new.outputs)
    if not changed:
        return g, False
    outputs = tuple(Output(resolve(alias, o.value), o.label) for o in g.outputs)
    return Graph(g.name, g.inputs, tuple(nodes), outputs, dict(g.meta)), True


def constant_value(producers: dict, v: str) -> float | None:
    """The fill value of `v` if a `full` node makes it, else None."""
    p = producers.get(v)
    return p.attr["value"] if p is not None and p.op == "full" else None


# ------------------------------------------------------------------ dead-code elimination


@register_pass("dce")
def dce(g: Graph, ctx: PassContext | None = None):
    """Drop nodes none of whose outputs is used (reverse liveness from the graph outputs).

    A multi-output node stays whole while any of its outputs is used."""
    live = set(g.output_values)
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outputs):
            keep.append(n)
            live.update(n.inputs)
    if len(keep) == len(g.nodes):
        return g, False
    if ctx is not None:
        kept = set(map(id, keep))
        dead = [f"%{n.outputs[0]} ({n.op})" for n in g.nodes if id(n) not in kept]
        ctx.note(f"removed {len(dead)} dead node(s): {', '.join(dead)}")
    return g.replace(nodes=tuple(reversed(keep))), True


# ------------------------------------------------------------------ common subexpressions


@register_pass("cse")
def cse(g: Graph, ctx: PassContext | None = None):
    """Merge nodes with the same op, operands and attributes into the first of them.

    Every op in the table is a pure function of its operands and attributes, dropout included:
    its mask is a function of (seed, stream, element index), so two dropouts of the same value
    with the same seed, stream and p are the same value. (Tracing gives each Dropout call its own
    stream, so distinct dropout layers are never merged.) Attributes are compared by repr so that
    0.0 and -0.0 constants stay apart."""
    seen: dict[tuple, Node] = {}

    def rule(n: Node, producers):
        key = (n.op, n.inputs, repr(n.attrs))
        first = seen.setdefault(key, n)
        if first is n:
            return None
        if ctx is not None:
            ctx.note(f"%{', %'.join(n.outputs)} ({n.op}) is the same as %{', %'.join(first.outputs)}")
        return dict(zip(n.outputs, first.outputs))

    return rewrite(g, rule)


# ------------------------------------------------------------------ constant folding


def _as_full(value: np.ndarray, node: Node, out: str, t) -> Node | None:
    """A `full` node making exactly `value`, or None if no single float value can."""
    if value.size == 0:
        return None
    v = value.reshape(-1)[0]
    if not np.isfinite(v) or not np.array_equal(value, np.full(value.shape, v)):
        return None
    fv = float(v)
    if np.asarray(fv).astype(t.np_dtype) != v:  # i64 beyond 2**53 does not survive a float attribute
        return None
    try:
        attrs = get_op("full").normalize_attrs({"shape": t.shape, "value": fv, "dtype": t.dtype})
    except GraphcError:  # a dtype `full` cannot make (bool, from a folded comparison): keep the node
        return None
    return Node("full", (), (out,), (t,), tuple(attrs.items()), node.loc, node.grad_of, phase=node.phase)


@register_pass("fold_constants")
def fold_constants(g: Graph, ctx: PassContext | None = None):
    """Evaluate nodes whose operands are all `full` constants with the op's reference kernel, and
    replace them by `full` when every result is uniform (which a `full` can say exactly).

    Nodes with any non-constant operand are never folded; neither are results a `full` cannot
    express exactly (non-uniform, non-finite), multi-output ops, or ops whose reference kernel
    refuses the values (e.g. out-of-range labels: the error belongs to run time)."""
    def rule(n: Node, producers):
        if not n.inputs or len(n.outputs) != 1 or n.op == "full" or any(constant_value(producers, i) is None for i in n.inputs):
            return None
        args = [get_op("full").reference(**producers[i].attr) for i in n.inputs]
        try:
            with np.errstate(all="ignore"):
                res = get_op(n.op).reference(*args, **n.attr)
        except GraphcError:
            return None
        folded = _as_full(np.asarray(res), n, n.out, n.type)
        if folded is not None and ctx is not None:
            ctx.note(f"folded {format_node(n, comment=False)}  ->  {folded.attr['value']}")
        return folded

    return rewrite(g, rule)


# ------------------------------------------------------------------ algebraic simplification


def _identity_operand(n: Node, producers, types) -> str | None:
    """x for x*1, 1*x, x+0, 0+x, x-0, x/1, when the result has x's exact type (no broadcasting up)."""
    a, b = n.inputs
    candidates = {
        "add": [(a, b, 0.0), (b, a, 0.0)],
        "sub": [(a, b, 0.0)],
        "mul": [(a, b, 1.0), (b, a, 1.0)],
        "div": [(a, b, 1.0)],
    }[n.op]
    for x, c, unit in candidates:
        if constant_value(producers, c) == unit and types[x] == n.type:
            return x
    return None


def _simplify_rule(types):
    def rule(n: Node, producers):
        if n.op in ("add", "sub", "mul", "div"):
            return _identity_operand(n, producers, types)
        p = producers.get(n.inputs[0]) if n.inputs else None
        if n.op == "neg" and p is not None and p.op == "neg":
            return p.inputs[0]
        if n.op == "transpose":
            perm = n.attr["perm"]
            if p is not None and p.op == "transpose":
                inner = p.attr["perm"]
                perm = tuple(inner[k] for k in perm)  # out[j] = x[inner[perm[j]]]
                if perm != tuple(range(len(perm))):
                    return n.replace(inputs=p.inputs, attrs=(("perm", perm),))
                return p.inputs[0]
            return n.inputs[0] if perm == tuple(range(len(perm))) else None
        if n.op == "reshape":
            x = p.inputs[0] if p is not None and p.op == "reshape" else n.inputs[0]
            if types[x].shape == n.type.shape:
                return x
            return n.replace(inputs=(x,)) if x != n.inputs[0] else None
        return None

    return rule


@register_pass("simplify")
def simplify(g: Graph, ctx: PassContext | None = None):
    """Algebraic identities that keep every type: x*1, 1*x, x+0, 0+x, x-0, x/1 -> x;
    neg(neg(x)) -> x; transpose(transpose(x)) -> one transpose (none if the perms cancel);
    reshape to the same shape -> x; reshape(reshape(x)) -> one reshape.

    `x + 0` where the 0 broadcasts x to a larger shape stays: removing it would change the type.
    (x + 0 -> x also maps -0.0 to itself rather than +0.0; equal as numbers.) Producers left
    without users are not removed here; dce does that."""
    return rewrite(g, _simplify_rule(g.types))


# ------------------------------------------------------------------ eval mode


def _dropout_p_zero(g: Graph) -> Graph:
    """The graph with every dropout at p=0 (the identity): what remove_dropout must compute."""
    nodes = tuple(n.replace(attrs=tuple((k, 0.0 if k == "p" else v) for k, v in n.attrs)) if n.op == "dropout" else n
                  for n in g.nodes)
    return g.replace(nodes=nodes)


@register_pass("remove_dropout", reference=_dropout_p_zero)
def remove_dropout(g: Graph, ctx: PassContext | None = None):
    """Eval mode: dropout(x, seed) -> x.

    The `seed` input stays in the graph (unused) so the compiled function keeps the signature
    of the traced one; the runtime may pass any seed. Checked mode compares against the graph
    with every dropout at p=0, which is the identity."""
    def rule(n: Node, producers):
        if n.op != "dropout":
            return None
        if ctx is not None:
            ctx.note(f"removed %{n.out} = dropout(%{n.inputs[0]}, %{n.inputs[1]}) {{p={n.attr['p']}}} (eval mode)")
        return n.inputs[0]

    return rewrite(g, rule)
