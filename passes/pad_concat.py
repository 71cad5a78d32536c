"""Sums of zero pads that tile their shape are a concat (the gradient of a split).

The VJP of `slice` pads the slice's gradient with zeros to its operand's shape, so the gradient
of attention's q, k, v split is pad(dq) + pad(dk) + pad(dv): three full-size buffers filled and
summed, where one concat of the three pieces gives the same numbers (x + 0 is x; only a -0.0
piece reads back as -0.0 instead of +0.0). The kernel pass applies this before grouping, noted.
"""
from __future__ import annotations

from graphc.ir import Graph
from graphc.ir.graph import Node

from .manager import PassContext


def _range(n: Node, rank: int):
    """(dim, start, end) of the operand inside a zero pad that pads one dim only, or None."""
    w, interior = n.attr["widths"], n.attr.get("interior") or ()
    if n.attr.get("value", 0.0) != 0.0 or any(interior) or n.body is not None:
        return None
    dims = [d for d in range(rank) if w[2 * d] or w[2 * d + 1]]
    if len(dims) != 1:
        return None
    d = dims[0]
    return d, w[2 * d], n.types[0].shape[d] - w[2 * d + 1]


def pads_as_concat(g: Graph, ctx: PassContext | None = None) -> Graph:
    producer = {o: n for n in g.nodes for o in n.outputs}
    users: dict[str, int] = {}
    for n in g.nodes:
        for i in n.inputs:
            users[i] = users.get(i, 0) + 1
    outputs = set(g.output_values)

    def private(v):
        return users.get(v) == 1 and v not in outputs and v in producer

    def leaves(v, shape):
        """The pads summed into v by single-use adds (each pad read once), or None."""
        n = producer.get(v)
        if n is None or not private(v) or n.types[0].shape != shape:
            return None
        if n.op == "pad":
            return [n]
        if n.op == "add" and n.body is None:
            a, b = leaves(n.inputs[0], shape), leaves(n.inputs[1], shape)
            return a + b + [n] if a is not None and b is not None else None
        return None

    swap: dict[str, Node] = {}
    gone: set[int] = set()
    for n in g.nodes:
        if n.op != "add" or n.body is not None or id(n) in gone:
            continue
        shape = n.types[0].shape
        parts = [leaves(i, shape) for i in n.inputs]
        if any(p is None for p in parts):
            continue
        found = [m for p in parts for m in p]
        pads = [m for m in found if m.op == "pad"]
        ranges = [_range(m, len(shape)) for m in pads]
        if any(r is None for r in ranges) or len({r[0] for r in ranges}) != 1:
            continue
        d = ranges[0][0]
        order = sorted(range(len(pads)), key=lambda j: ranges[j][1])
        ends = [0] + [ranges[j][2] for j in order]
        if any(ranges[j][1] != ends[k] for k, j in enumerate(order)) or ends[-1] != shape[d]:
            continue  # the pieces do not tile the dim
        swap[n.outputs[0]] = n.replace(op="concat", inputs=tuple(pads[j].inputs[0] for j in order),
                                       attrs=(("dim", d),))
        gone |= {id(m) for m in found}
        if ctx is not None:
            ctx.note(f"%{n.out} = sum of {len(pads)} zero pads tiling dim {d} -> concat "
                     f"({', '.join('%' + pads[j].inputs[0] for j in order)}): one copy instead of "
                     f"{len(pads)} padded buffers and their sum")
    if not swap:
        return g
    nodes = tuple(swap.get(n.outputs[0], n) for n in g.nodes if id(n) not in gone or n.outputs[0] in swap)
    return g.replace(nodes=nodes)
