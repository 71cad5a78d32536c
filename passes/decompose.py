"""Decomposition: rewrite composite ops into the primitives their op-table entry declares.

`decompose` rewrites every op tagged "composite" (no native kernel: e.g. layer_norm) into its
decomposition, so the runtime, autodiff and the kernel pass only ever see ops they lower.
`decompose_all` (not in the default pipelines; pass it by name) rewrites every op that has a
decomposition (linear, softmax, log_softmax, cross_entropy, mse_loss, dropout, ...), for
readers who want the plan in primitives and for the kernel pass to group them.
"""
from __future__ import annotations

from graphc.ir import Graph, GraphBuilder, get_op
from graphc.ir.graph import Output

from .manager import PassContext, register_pass


def _rewrite(g: Graph, want, ctx: PassContext | None) -> tuple[Graph, bool]:
    if not any(want(get_op(n.op)) for n in g.nodes if n.body is None):
        return g, False
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    env: dict[str, str] = {}
    r = lambda v: env.get(v, v)  # noqa: E731
    for n in g.nodes:
        op = get_op(n.op) if n.body is None else None
        if op is None or not want(op):
            b.add_node(n.replace(inputs=tuple(map(r, n.inputs))))
            continue
        start = len(b.nodes)
        node = n.replace(inputs=tuple(map(r, n.inputs)))
        outs = op.decompose(b, node)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        for k in range(start, len(b.nodes)):  # the new nodes keep the composite's provenance
            b.nodes[k] = b.nodes[k].replace(loc=n.loc, grad_of=n.grad_of, phase=n.phase)
        for o, v in zip(n.outputs, outs):
            env[o] = v
        if ctx is not None:
            ctx.note(f"%{n.outputs[0]} = {n.op}(...) -> {len(b.nodes) - start} nodes")
    outputs = [Output(r(o.value), o.label) for o in g.outputs]
    return b.build(outputs, meta=dict(g.meta)), True


@register_pass("decompose")
def decompose(g: Graph, ctx: PassContext | None = None):
    """Composite ops (tag "composite") -> their decomposition."""
    return _rewrite(g, lambda op: "composite" in op.tags and op.decompose is not None, ctx)


@register_pass("decompose_all")
def decompose_all(g: Graph, ctx: PassContext | None = None):
    """Every op with a decomposition -> its decomposition (opt-in)."""
    return _rewrite(g, lambda op: op.decompose is not None, ctx)
