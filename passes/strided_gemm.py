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
    """A chain of movement ops read only by batched matmuls, through any number of branches
    (attention's head split of c_attn's output: read by q @ k^T and, in a train step, by the
    backward's matmuls too; the backward's head split of the output gradient, read by dP = dO @ V^T
    and dV = P^T @ dO) becomes one copy of the chain per reading matmul, so each reader's strided
    GEMM folds its own chain as a view; as one node read twice a movement op is a kernel of its
    own, a copy of the whole tensor. Only where every path ends in a batched matmul operand (which
    folds a view it alone reads), each op of the chain is one BLAS-readable view of its operand,
    and no value of the chain is a plan output."""
    outputs = set(g.output_values)
    slots = [[n] for n in g.nodes]  # each node, then the copies made of it (placed right after it)
    readers: dict[str, list[tuple[int, int]]] = {}
    for k, n in enumerate(g.nodes):
        for i in dict.fromkeys(n.inputs):
            readers.setdefault(i, []).append((k, 0))

    def matmul_operand(r: int, v: str) -> bool:
        m = g.nodes[r]
        return m.op == "matmul" and m.body is None and m.types[0].rank >= 3 and v in m.inputs[:2] and v not in m.inputs[2:]

    viewable: dict[int, bool] = {}  # movement node -> every path from it ends in a batched matmul operand

    def ok(k: int) -> bool:
        if k not in viewable:
            n = g.nodes[k]
            good = (n.op in MOVEMENT and n.body is None and len(n.outputs) == 1 and n.outputs[0] not in outputs
                    and n.types[0].rank >= 2 and n.types[0].dtype in ("f32", "f64"))
            if good:
                view = chain_view(g.types[n.inputs[0]].shape, [(n.op, n.attr)])
                good = view is not None and blas_layout(*view[1][-2:], view[2][-2:]) is not None
            rs = readers.get(n.outputs[0], [])
            good = good and bool(rs) and all(matmul_operand(r, n.outputs[0]) or ok(r) for r, _ in rs)
            viewable[k] = good
        return viewable[k]

    names = GraphBuilder(g.name, like=g)
    split_any = []
    # from the last node back: a node's readers (and their copies) exist before the node is split,
    # so each copy of an upstream op feeds one copy of the downstream chain
    for k in range(len(g.nodes) - 1, -1, -1):
        if not ok(k):
            continue
        n = g.nodes[k]
        v0 = n.outputs[0]
        rs = readers[v0]
        if len(rs) < 2:
            continue
        split_any.append(f"%{v0} ({n.op})")
        for r, j in rs[1:]:
            v = names.fresh()
            slots[k].append(n.replace(outputs=(v,)))
            m = slots[r][j]
            slots[r][j] = m.replace(inputs=tuple(v if i == v0 else i for i in m.inputs))
        readers[v0] = rs[:1]
        for i in dict.fromkeys(n.inputs):  # the copies read n's operand too
            readers[i] = readers[i] + [(k, j) for j in range(1, len(slots[k]))]
    if not split_any:
        return g
    if ctx is not None:
        ctx.note(f"{', '.join(reversed(split_any))}: read only by batched matmuls (through views): one node per "
                 "reader, so each strided GEMM reads it as a view instead of a copy")
    return g.replace(nodes=tuple(m for slot in slots for m in slot)).verify()
