"""A gradient's scatter_add of one element per row into zeros is a one-hot `where` (cross-entropy).

The VJP of `gather(logp, labels[:, None], dim=1)` (cross-entropy's picked log-probability) is
`scatter_add(zeros[N, C], labels[:, None], g[:, None], dim=1)`: a kernel of its own that fills an
[N, C] buffer with zeros, adds one element per row, and is read back by the log_softmax backward.
With one index per row along `dim` (index of size 1 there) every output element receives at most
one addend, so the same numbers are

    where(eq(index, iota), src, 0)      iota = arange(C) shaped [1, .., C, .., 1] along dim

broadcast ops the kernel pass fuses into their consumer's loop (the log_softmax backward's rows
kernel): no [N, C] buffer, no separate pass. 0 + s is s for every s but -0.0 (which reads back
as -0.0 here, +0.0 there), as in pads_as_concat.

An index out of range would give a zero row here where scatter_add stops; so this applies only
to a gradient's scatter_add (grad_of set: the forward gather of the same index checked it) or
where a gather or scatter_add left in the plan reads the same index along the same dim of the
same size (and checks it). The kernel pass applies this before grouping, noted.
"""
from __future__ import annotations

from graphc.ir import Graph, GraphBuilder

from .manager import PassContext


def _checked_elsewhere(g: Graph, n, size: int) -> bool:
    index, dim = n.inputs[1], n.attr["dim"]
    return any(m is not n and m.op in ("gather", "scatter_add") and m.body is None and m.inputs[1] == index
               and m.attr["dim"] == dim and g.types[m.inputs[0]].shape[dim] == size for m in g.nodes)


def one_hot_scatters(g: Graph, ctx: PassContext | None = None) -> Graph:
    plan = {}
    for n in g.nodes:
        if n.op != "scatter_add" or n.body is not None:
            continue
        x, index, _ = n.inputs
        dim, t = n.attr["dim"], g.types[x]
        z = g.producer(x)
        if (z is None or z.op != "full" or z.attr["value"] != 0.0 or g.types[index].shape[dim] != 1
                or not t.is_float):
            continue
        if n.grad_of is None and not _checked_elsewhere(g, n, t.shape[dim]):
            continue
        plan[n.out] = n
    if not plan:
        return g
    dead = {n.inputs[0] for n in plan.values() if g.uses(n.inputs[0]) == 1 and n.inputs[0] not in g.output_values}
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    for m in g.nodes:
        if m.outputs[0] in dead:
            continue
        n = plan.get(m.outputs[0])
        if n is None:
            b.add_node(m)
            continue
        x, index, src = n.inputs
        dim, t = n.attr["dim"], g.types[x]
        at = dict(loc=n.loc, grad_of=n.grad_of, phase=n.phase)
        size = t.shape[dim]
        iota = b.emit("arange", [], {"size": size, "start": 0, "step": 1, "dtype": "i64"}, **at)
        iota = b.emit("reshape", [iota], {"shape": tuple(size if d == dim else 1 for d in range(t.rank))}, **at)
        hit = b.emit("eq", [index, iota], **at)
        zero = b.emit("full", [], {"shape": (), "value": 0.0, "dtype": t.dtype}, **at)
        b.emit("where", [hit, src, zero], outputs=[n.out], **at)
        if ctx is not None:
            ctx.note(f"%{n.out} = scatter_add(zeros, %{index}, %{src}) {{dim={dim}}}: one element per row "
                     f"-> where(%{index} == arange({size}), %{src}, 0), broadcast ops its reader's loop takes "
                     f"(no {list(t.shape)} buffer)")
    return b.build(g.outputs, meta=dict(g.meta))
