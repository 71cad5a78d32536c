"""Batched matmuls that read their operands, and write their result, through strides.

Attention splits c_attn's output into q, k, v by `slice`, makes heads by `reshape` and
`transpose`, multiplies [B, H] batches of small matrices and merges the heads back by another
`transpose`; autodiff mirrors that. Each of those movement ops is a copy when it runs as a kernel
of its own. Every one of them only re-indexes a buffer, so the kernel pass (passes/kernels.py)
gives each batched `matmul` (rank >= 3) a `strided_gemm` kernel instead:

- prologue: the chain of `reshape` / `transpose` / `slice` nodes producing each operand, walking
  back while each value has this matmul's chain as its only reader and is no graph output, and
  while the chain is still one strided view of its root (graphc/ir/strides.py says);
- epilogue: a `transpose` that is the only reader of the product (the head merge), written in
  place by the product's strides.

The kernel then reads the chain roots (c_attn's output, or the saved slices) and writes the
transposed product: a loop over the batch of BLAS gemm calls on offset pointers with leading
dims and transpose flags (runtime/lower_strided.py), no copies between. So every view must have a
unit stride in one of its two matrix dims (`blas_layout`); a chain that would break that stops
before the op that does. Kernels are
recorded with their members like every other kernel; a chain that stops early says why.
"""
from __future__ import annotations

from graphc.ir import Graph, GraphBuilder
from graphc.ir.strides import blas_layout, chain_view, written_as

MOVEMENT = ("reshape", "transpose", "slice")


def operand_chain(g: Graph, v: str, producer, users, outputs, taken, why: list | None = None) -> list[int]:
    """Indices (plan order) of the movement nodes that make operand v from a buffer, longest first
    that is one strided view. Where a movement op is left out because others read its value, the
    reason goes to `why` as (its index, reason)."""
    chain: list[int] = []
    while v in producer:
        k = producer[v]
        n = g.nodes[k]
        if n.op not in MOVEMENT or n.body is not None or k in taken:
            break
        if v in outputs or users.get(v, 0) != 1:
            if why is not None:
                why.append((k, f"%{v} ({n.op}) is read by {users.get(v, 0)} nodes" + (" and is a plan output" if v in outputs else "")
                            + ": it stays a copy (a view lives inside one kernel)"))
            break
        chain.insert(0, k)
        v = n.inputs[0]
    while chain:  # drop from the root side until the rest is one view BLAS can read
        root = g.nodes[chain[0]].inputs[0]
        view = chain_view(g.types[root].shape, [(g.nodes[k].op, g.nodes[k].attr) for k in chain])
        if view is not None and blas_layout(*view[1][-2:], view[2][-2:]) is not None:
            break
        chain.pop(0)
    return chain


def strided_gemms(g: Graph, producer, users, outputs, taken, why: list | None = None) -> list[tuple[int, list[int]]]:
    """[(matmul index, member indices in plan order)] for each batched matmul that folds at least
    one movement op; `why` collects (movement node index, matmul index, reason) for each operand's
    movement op that stays a copy."""
    found = []
    for k, n in enumerate(g.nodes):
        if n.op != "matmul" or n.body is not None or k in taken or n.types[0].rank < 3:
            continue
        if n.types[0].dtype not in ("f32", "f64") or n.types[0].size == 0:
            continue
        members = []
        for v in n.inputs[:2]:
            left: list = []
            members += operand_chain(g, v, producer, users, outputs, taken | set(members), left)
            if why is not None:
                why += [(j, k, r) for j, r in left]
        out = n.outputs[0]
        if out not in outputs and users.get(out, 0) == 1:
            t = next((j for j in range(k + 1, len(g.nodes)) if out in g.nodes[j].inputs), None)
            x = g.nodes[t] if t is not None else None
            if x is not None and x.op == "transpose" and x.body is None:
                cst = written_as(x.attr["perm"], x.types[0].shape)
                if blas_layout(*n.types[0].shape[-2:], cst[-2:]) is not None:
                    members.append(t)
        if members:
            found.append((k, sorted(set(members + [k]))))
            taken = taken | set(members) | {k}
    return found


def views_per_reader(g: Graph, ctx=None) -> Graph:
    """A movement op read by several batched matmuls (attention backward's head split of the
    output gradient: read by dP = dO @ V^T and dV = P^T @ dO) becomes one copy of the node per
    reader, so each reader's strided GEMM folds its own as a view; as one node read twice it
    would be a kernel of its own, a copy of the whole tensor. Only where every reader is a
    batched matmul (which always folds a view it alone reads) and the value is no plan output."""
    outputs = set(g.output_values)
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(g.nodes):
        for i in dict.fromkeys(n.inputs):
            readers.setdefault(i, []).append(k)
    split: dict[int, list[int]] = {}  # movement node index -> the readers that get a clone
    for k, n in enumerate(g.nodes):
        if n.op not in MOVEMENT or n.body is not None or n.out in outputs or n.types[0].dtype not in ("f32", "f64"):
            continue
        rs = readers.get(n.out, [])
        if n.types[0].rank < 2:
            continue
        view = chain_view(g.types[n.inputs[0]].shape, [(n.op, n.attr)])
        if view is None or blas_layout(*view[1][-2:], view[2][-2:]) is None:
            continue  # not one view BLAS reads: the readers would each copy it
        if len(rs) > 1 and all(g.nodes[r].op == "matmul" and g.nodes[r].body is None and g.nodes[r].types[0].rank >= 3
                               and n.out in g.nodes[r].inputs[:2] for r in rs):
            split[k] = rs[1:]
    if not split:
        return g
    names = GraphBuilder(g.name, like=g)
    rename: dict[int, dict[str, str]] = {}
    nodes, done = [], []
    for k, n in enumerate(g.nodes):
        if k in rename:
            n = n.replace(inputs=tuple(rename[k].get(i, i) for i in n.inputs))
        nodes.append(n)
        for r in split.get(k, ()):
            v = names.fresh()
            nodes.append(n.replace(outputs=(v,)))
            rename.setdefault(r, {})[n.out] = v
        if k in split:
            done.append(f"%{n.out} ({n.op})")
    if ctx is not None:
        ctx.note(f"{', '.join(done)}: read by several batched matmuls, one node per reader, so each "
                 "strided GEMM reads it as a view instead of a copy")
    return g.replace(nodes=tuple(nodes))
