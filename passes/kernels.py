"""The kernel stage: group a plan's nodes into kernels, once, on the IR (issue 9).

Walking the plan in order, a node joins the kernel of one of its producers when the pair is
legal by their fusion kinds (the op table's `kind`, TVM's pattern kinds):

- elementwise / broadcast nodes chain into one loop over one iteration space (the shape of
  their outputs);
- a GEMM (2-D `matmul`, `linear`, `linear_relu`) starts a kernel that takes elementwise
  consumers of its output shape as its epilogue (BLAS call, then one loop);
- a reduction takes the elementwise chain (or GEMM epilogue) that produces its operand when
  they share the iteration space (one loop nest that computes and accumulates); it ends its
  kernel;
- a 2-D `transpose` whose only user is a 2-D `matmul` is that GEMM's prologue: a transposed
  view handed to BLAS, never a copy;
- a reduction of the last dim with keepdim (softmax's max and sum, LayerNorm's means) does not
  end its kernel: the kernel becomes a `rows` kernel over rows of its operand's shape, and
  later nodes of the full shape or of the row shape (`[..., 1]`) join it, further row
  reductions too (one pass over a row per reduction, the consumers in the last pass): scale,
  mask, softmax and its normalising consumer, or all of LayerNorm, are one kernel;
- a batched matmul (rank >= 3) takes the reshape / transpose / slice chains that make its
  operands and a transpose of its product into one `strided_gemm` kernel that reads and writes
  through strides (passes/strided_gemm.py): attention's head split and merge move nothing;
- injective and opaque ops are kernels of their own (their one-node lowering in runtime/).

Before grouping, every `linear_backward` is rewritten into its op-table decomposition (relu
mask, dx = dz @ w, dw = dz.T @ x, db = sum(dz, 0)), keeping its output names: its GEMMs then
take epilogues (the previous layer's dropout and relu mask ride in the dx GEMM's loop, the
bias gradient is summed in that same loop) instead of separate passes. Likewise softmax,
log_softmax and their backward ops along the last dim become their primitives (max, sub, exp,
sum, div...), so they group into `rows` kernels with their producers and consumers.
Recorded as a note. Likewise every other `sum_to` that one `sum {dims, keepdim}` equals
becomes that sum, so it reduces the elementwise chain computing its operand in the same loop
nest (BatchNorm's backward: its gradient terms are summed as they are made).

A node may join a kernel only if every other operand it reads exists before that kernel
starts (the kernel runs where its first member was); constants and reshapes of graph inputs
(BatchNorm's weight as [1,C,1,1]) move to the top of the plan, so they always do. Values used
only inside a kernel get no buffer; values used outside become the kernel node's outputs. A
group of one node stays a plain node, but a lone float sum or mean (`lone_reduction`: a bias or
LayerNorm weight gradient summed over the batch) is a one-node reduce kernel. Every decision is recorded (PassContext.fused / not_fused): each kernel with its
members, and for each producer -> consumer edge that does not fuse, why.

Rewrites nothing else and never fails the compile: a pair it cannot fuse stays apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from graphc.ir import Graph, GraphBuilder, get_op
from graphc.ir.graph import KERNEL, Node, kernel_node, rename_values
from graphc.ir.text import format_node

from . import gemm_impl
from .manager import PassContext, register_pass
from .one_hot import one_hot_scatters
from .pad_concat import pads_as_concat
from .remat import recompute_for_backward
from .strided_gemm import strided_gemms, views_per_reader
from .update_gemm import fuse_update_gemm

MAX_MEMBERS = 32  # the size limit of one kernel's body
GEMMS = ("matmul", "linear", "linear_relu")


@dataclass
class Group:
    kind: str  # elementwise | gemm | reduce
    space: tuple[int, ...]  # the iteration space: the shape every member's output has
    first: int  # index (in the plan) of the first member: where the kernel runs
    members: list[int] = field(default_factory=list)
    closed: str | None = None  # why nothing more may join (a reduction ended it)


def hoistable(g: Graph, n: Node, constants: frozenset) -> bool:
    """Nodes the pass moves to the top of the plan: constants (filled once), reshapes of graph
    inputs (a view, or a copy of a value that exists from the start) and values computed from
    constants alone (`constants`, as `from_constants` found them): any kernel may read them."""
    return (n.op == "full" or (n.op == "reshape" and all(i in g.input_by_name for i in n.inputs))
            or n.outputs[0] in constants)


_CONSTANT_SOURCES = ("full", "arange")


def from_constants(g: Graph) -> frozenset:
    """Values computed by elementwise, broadcast or injective nodes from `full` and `arange` alone
    that some other node reads broadcast into a larger space (a causal mask
    `arange(T)[None] <= arange(T)[:, None]`, read by attention's [B, H, T, T] scores), with the
    constant values they are made from: they are computed at the top of the plan, so the kernel
    of the attention scores takes the scale and the mask together (a mask computed between them
    would split it). A constant value read only in its own shape (an arange added to an input)
    stays in the loop of its consumer instead."""
    made: dict[str, Node] = {}
    for n in g.nodes:
        if n.body is not None:
            continue
        if (n.op in _CONSTANT_SOURCES and not n.inputs) or (
                n.inputs and op_kind(n) in ("elementwise", "broadcast", "injective") and all(i in made for i in n.inputs)):
            made.update((o, n) for o in n.outputs)
    found: set[str] = set()
    todo = [v for v, n in made.items() if n.op != "full"
            and any(u.outputs[0] not in made and u.types[0].size > g.types[v].size for u in g.users.get(v, ()))]
    while todo:
        v = todo.pop()
        if v not in found:
            found.add(v)
            todo += [i for i in made[v].inputs if made[i].op != "full"]
    return frozenset(found)


@dataclass
class Grouping:
    """What every grouping decision reads: the plan, who makes and who reads each value, the
    values hoisted as computed from constants, and the kernels formed so far (`of`: node index
    -> index of its group). One per run of `group_kernels`, passed to the helpers that decide."""
    g: Graph
    producer: dict[str, int]
    users_at: dict[str, list[int]]
    constants: frozenset
    groups: list[Group] = field(default_factory=list)
    of: dict[int, int] = field(default_factory=dict)

    def hoisted(self, p: int) -> bool:
        return hoistable(self.g, self.g.nodes[p], self.constants)

    def runs_at(self, p: int) -> int:
        """Where node p's value is computed: its kernel's first position, or its own."""
        return self.groups[self.of[p]].first if p in self.of else p


def op_kind(n: Node) -> str:
    return get_op(n.op).kind


def _short(n: Node) -> str:
    return f"%{n.outputs[0]} ({n.op})"


DECOMPOSED = ("linear_backward",)  # opaque composites whose GEMMs gain epilogues once decomposed
# composites of elementwise ops and one reduction to a scalar: their decomposition is one reduce
# kernel (generated, like every kernel) instead of a library kernel of their own
REDUCE_DECOMPOSED = ("mse_loss",)
# composites along one dim: decomposed when that dim is the last, so they become `rows` kernels
ROW_DECOMPOSED = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
ROW_REDUCTIONS = ("sum", "max", "mean")


def _decomposes(g: Graph, n: Node) -> bool:
    if n.body is not None:
        return False
    if n.op in DECOMPOSED or n.op in REDUCE_DECOMPOSED:
        return True
    if n.op not in ROW_DECOMPOSED:
        return False
    t = g.types[n.inputs[0]]
    return t.is_float and t.rank >= 1 and n.attr["dim"] % t.rank == t.rank - 1 and t.shape[-1] > 1 and t.size > 0


def row_reduction(g: Graph, n: Node) -> bool:
    """A float sum/max/mean of the last dim only, keepdim (one value per row of its operand)."""
    if n.op not in ROW_REDUCTIONS or not n.attr.get("keepdim"):
        return False
    t = g.types[n.inputs[0]]
    return (t.is_float and t.rank >= 1 and t.shape[-1] > 1 and t.size > 0
            and tuple(d % t.rank for d in n.attr["dims"]) == (t.rank - 1,))


def decompose_for_kernels(g: Graph, ctx: PassContext | None = None) -> Graph:
    """Each node of an op in DECOMPOSED -> its op-table decomposition; the outputs keep their names
    (and every new node the composite's source line and `grad of`), so the plan reads the same."""
    if not any(_decomposes(g, n) for n in g.nodes):
        return g
    used = set(g.output_values) | {i for n in g.nodes for i in n.inputs}
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    for n in g.nodes:
        for o, t in zip(n.outputs, n.types):
            b.types[o] = t
    for n in g.nodes:
        if not _decomposes(g, n):
            b.add_node(n)
            continue
        start = len(b.nodes)
        outs = get_op(n.op).decompose(b, n)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        names = {new: old for new, old in zip(outs, n.outputs)}
        made = [m.replace(loc=n.loc, grad_of=n.grad_of, phase=n.phase) for m in b.nodes[start:]]
        made = _live(made, {new for new, old in names.items() if old in used})
        sub = rename_values(Graph("d", (), tuple(made), ()), names)
        b.nodes[start:] = list(sub.nodes)
        if ctx is not None:
            ctx.note(f"%{n.outputs[0]} = {n.op}(...) decomposed into {len(made)} nodes "
                     f"({', '.join(m.op for m in made)}) so "
                     + ("its GEMMs take prologues and epilogues" if n.op in DECOMPOSED else
                        "it is one reduce kernel" if n.op in REDUCE_DECOMPOSED else
                        "its row reductions and their producers and consumers group into one rows kernel"))
    return b.build(g.outputs, meta=dict(g.meta))


def dropout_mask_from_output(g: Graph, ctx: PassContext | None = None) -> Graph:
    """relu_backward(dropout(g, seed), r) where the forward computed y = dropout(r, seed) with the
    same p and stream -> relu_backward(where(y > 0, g * scale, g * 0), r): the keep mask read back
    from the forward's output instead of the random stream drawn again, bit for bit the same.

    Why exact: r is the mask relu_backward uses, so only r > 0 matters; there y > 0 exactly when
    the element was kept (scale >= 1 cannot underflow a positive r; a dropped +inf gives NaN, not
    > 0), and g * scale, g * 0 are what dropout's backward multiplies by (NaN and -0.0 included).
    Applies only where y is in the plan and the backward dropout's value has no other reader."""
    fwd = {}
    for n in g.nodes:  # (relu output, seed, p, stream) -> the forward dropout's output y
        if n.op == "dropout" and n.grad_of is None:
            fwd.setdefault((n.inputs[0], n.inputs[1], n.attr["p"], n.attr["stream"]), n.out)
    plan = {}
    for n in g.nodes:
        d = g.producer(n.inputs[0]) if n.op == "relu_backward" else None  # (single-output ops here)
        if d is None or d.op != "dropout" or d.grad_of is None or g.uses(d.out) != 1 or d.out in n.inputs[1:]:
            continue
        y = fwd.get((n.inputs[1], d.inputs[1], d.attr["p"], d.attr["stream"]))
        if y is not None:
            plan[n.out] = (d, y)
    if not plan:
        return g
    dropped = {d.out for d, _ in plan.values()}
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    for n in g.nodes:
        if n.outputs[0] in dropped:
            continue
        if n.outputs[0] not in plan:
            b.add_node(n)
            continue
        d, y = plan[n.out]
        gy, t = d.inputs[0], b.types[d.inputs[0]]
        p = float(d.attr["p"])
        at = dict(loc=d.loc, grad_of=d.grad_of, phase=d.phase)
        full = lambda v: b.emit("full", [], {"shape": (), "value": v, "dtype": t.dtype}, **at)  # noqa: E731
        zero = full(0.0)
        kept = b.emit("gt", [y, zero], **at)
        w = b.emit("where", [kept, b.emit("mul", [gy, full(1.0 / (1.0 - p))], **at), b.emit("mul", [gy, zero], **at)], **at)
        b.emit("relu_backward", [w, n.inputs[1]], loc=n.loc, grad_of=n.grad_of, outputs=[n.out], phase=n.phase)
        if ctx is not None:
            ctx.note(f"%{d.out} = dropout(%{gy}, ...) (backward): keep mask read from the forward's %{y} > 0 "
                     f"under relu_backward's mask %{n.inputs[1]}, not drawn again from the random stream")
    return b.build(g.outputs, meta=dict(g.meta))


def row_forms(g: Graph, ctx: PassContext | None = None) -> Graph:
    """Two rewrites that put gradients of row-wise ops (LayerNorm's, autodiff's sum_to and
    broadcast_to) in the form rows kernels take, each recorded as a note:
    - sum_to(x) {shape = x's shape with the last dim 1} -> sum(x) {dims=[last], keepdim}: the same
      sum, now a row reduction;
    - broadcast_to(v) whose readers are all broadcasting ops (add, mul, where, ...) that keep
      their output shape when reading v itself -> they read v (they broadcast it anyway), and the
      copy is gone."""
    users: dict[str, list[Node]] = {}
    for n in g.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    outputs = set(g.output_values)
    to_sum: set[str] = set()
    dropped: dict[str, str] = {}  # broadcast_to output -> its operand
    for n in g.nodes:
        if n.body is not None:
            continue
        if n.op == "sum_to":
            t, want = g.types[n.inputs[0]], tuple(n.attr["shape"])
            if t.is_float and t.rank >= 1 and t.shape[-1] > 1 and want == t.shape[:-1] + (1,):
                to_sum.add(n.out)
        elif n.op == "broadcast_to" and n.out not in outputs and users.get(n.out):
            v = n.inputs[0]
            if all(op_kind(u) == "broadcast" and _broadcast(
                    [g.types[v].shape if i == n.out else g.types[i].shape for i in u.inputs]) == u.types[0].shape
                   for u in users[n.out]):
                dropped[n.out] = v
    if not to_sum and not dropped:
        return g
    nodes = []
    for n in g.nodes:
        if n.outputs[0] in dropped:
            if ctx is not None:
                ctx.note(f"%{n.out} = broadcast_to(%{n.inputs[0]}) dropped: its readers broadcast %{n.inputs[0]} themselves")
            continue
        if n.outputs[0] in to_sum:
            rank = g.types[n.inputs[0]].rank
            n = n.replace(op="sum", attrs=(("dims", (rank - 1,)), ("keepdim", True)))
            if ctx is not None:
                ctx.note(f"%{n.out} = sum_to(%{n.inputs[0]}) is a sum of the last dim: a row reduction")
        if any(i in dropped for i in n.inputs):
            n = n.replace(inputs=tuple(dropped.get(i, i) for i in n.inputs))
        nodes.append(n)
    return g.replace(nodes=tuple(nodes))


def sum_through_reshape(g: Graph, ctx: PassContext | None = None) -> Graph:
    """sum(reshape(x)) {dims=[0]} where the reshape only merges x's leading dims -> sum(x) over
    those dims: the same numbers (a bias gradient, summed over batch and time), now over the
    shape of the kernel that computes x, so it joins that kernel's loop. The reshape stays for
    its other readers (the GEMMs)."""
    producer = {o: n for n in g.nodes for o in n.outputs}
    nodes, changed = [], False
    for n in g.nodes:
        p = producer.get(n.inputs[0]) if n.op == "sum" and n.body is None else None
        if p is not None and p.op == "reshape" and tuple(n.attr["dims"]) == (0,) and not n.attr["keepdim"]:
            x, shape = g.types[p.inputs[0]].shape, g.types[p.out].shape
            j = next((j for j in range(2, len(x) + 1) if x[j:] == shape[1:]), None)
            if j is not None and len(shape) >= 1 and math.prod(x[:j]) == shape[0]:
                n = n.replace(inputs=(p.inputs[0],), attrs=(("dims", tuple(range(j))), ("keepdim", False)))
                changed = True
                if ctx is not None:
                    ctx.note(f"%{n.out} = sum(%{p.out}) reads %{p.inputs[0]} (summed over dims {list(range(j))}): "
                             f"%{p.out} only merges its leading dims, so the sum joins the kernel that computes it")
        nodes.append(n)
    return g.replace(nodes=tuple(nodes)) if changed else g


def _broadcast(shapes) -> tuple:
    """numpy's broadcast of shapes (shapes that do not broadcast give None)."""
    try:
        import numpy as np

        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None
def _sum_dims(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[tuple[int, ...], bool] | None:
    """(dims, keepdim) of the `sum` equal to sum_to(x: src -> dst), or None when no single sum is
    (leading dims dropped and size-1 dims kept at once)."""
    lead = len(src) - len(dst)
    if lead < 0:
        return None
    dims = tuple(range(lead)) + tuple(d for d in range(lead, len(src)) if dst[d - lead] == 1 and src[d] != 1)
    keep = lead == 0
    if not keep and any(dst[d - lead] == 1 and src[d] != 1 for d in range(lead, len(src))):
        return None
    if not keep and any(src[d] != dst[d - lead] for d in range(lead, len(src))):
        return None
    return dims, keep


def sum_to_as_sum(g: Graph, ctx: PassContext | None = None) -> Graph:
    """sum_to(x) {shape} -> sum(x) {dims, keepdim}, the same sums (output name kept): a `sum`
    takes the elementwise chain that produces its operand into its loop nest, so BatchNorm's
    backward reduces its gradient terms while it computes them instead of reading them again."""
    new, done = [], []
    for n in g.nodes:
        red = _sum_dims(g.types[n.inputs[0]].shape, n.types[0].shape) if n.op == "sum_to" else None
        if red is None or not red[0]:
            new.append(n)
            continue
        attrs = get_op("sum").normalize_attrs({"dims": red[0], "keepdim": red[1]})
        if tuple(get_op("sum").infer_types([g.types[n.inputs[0]]], attrs)) != tuple(n.types):
            new.append(n)
            continue
        new.append(n.replace(op="sum", attrs=tuple(attrs.items())))
        done.append(f"%{n.out}")
    if not done:
        return g
    if ctx is not None:
        ctx.note(f"{', '.join(done)} = sum_to(...) rewritten as sum {{dims, keepdim}} so they fuse as reductions")
    return g.replace(nodes=tuple(new))


def _live(made: list[Node], wanted: set[str]) -> list[Node]:
    """The decomposed nodes that compute a wanted value (a composite computes outputs nobody
    reads, e.g. dw of a frozen weight; its decomposition need not)."""
    keep: list[Node] = []
    for m in reversed(made):
        if any(o in wanted for o in m.outputs):
            keep.append(m)
            wanted |= set(m.inputs)
    return keep[::-1]


def _prologue(g: Graph, k: int, n: Node, producer, users, of, outputs) -> list[int]:
    """The 2-D transposes a 2-D matmul reads as BLAS views: each one used only by this matmul."""
    found = []
    for i in n.inputs[:2]:
        p = producer.get(i)
        if p is None or p in of or i in outputs or users.get(i, 0) != 1:
            continue
        t = g.nodes[p]
        if t.op == "transpose" and tuple(t.attr["perm"]) == (1, 0) and g.types[t.inputs[0]].rank == 2:
            found.append(p)
    return found


def group_kernels(g: Graph) -> tuple[list[Group], dict[int, int], list[tuple[str, list[str], str]]]:
    """(groups, node index -> group index, refusals as (pattern, [producer, consumer lines], reason))."""
    producer = {o: k for k, n in enumerate(g.nodes) for o in n.outputs}
    users: dict[str, int] = {}
    for n in g.nodes:
        for i in n.inputs:
            users[i] = users.get(i, 0) + 1
    outputs = set(g.output_values)
    refused: list[tuple[str, list[str], str]] = []

    users_at: dict[str, list[int]] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            users_at.setdefault(i, []).append(k)
    s = Grouping(g, producer, users_at, from_constants(g))
    groups, of = s.groups, s.of

    copies: list = []
    for k, members in strided_gemms(g, producer, users, outputs, set(), copies):
        groups.append(Group("strided_gemm", g.types[g.nodes[k].outputs[0]].shape, k, members,
                            closed="a strided GEMM kernel takes no epilogue but a transpose (its product is written through strides)"))
        for m in members:
            of[m] = len(groups) - 1

    def refuse(p: int, n: Node, reason: str):
        pn = g.nodes[p]
        refused.append((f"{pn.op}+{n.op}", [format_node(pn, comment=False), format_node(n, comment=False)],
                        f"{_short(pn)} -> {_short(n)}: {reason}"))

    for p, k, reason in copies:  # movement ops a strided GEMM could not read as views
        refuse(p, g.nodes[k], reason)

    for k, n in enumerate(g.nodes):
        if k in of:
            continue  # a member of a strided GEMM kernel
        if n.op != "full" and n.outputs[0] in s.constants:
            continue  # computed from constants at the top of the plan, in no kernel
        kind = op_kind(n)
        joined = None
        feeders = list(dict.fromkeys(producer[i] for i in n.inputs if i in producer and producer[i] in of))
        for p in feeders:
            gi = of[p]
            why = _why_not(s, groups[gi], n, kind)
            if why is None:
                joined = gi
                break
            refuse(p, n, why)
        if joined is None and kind in ("elementwise", "broadcast") and n.op != "full":
            joined = _sibling(s, n, kind)
        if joined is not None:
            grp = groups[joined]
            for b in _floating_producers(s, joined, n, k):
                grp.members[:0] = groups[b].members  # computed first, at the kernel's start
                for m in groups[b].members:
                    of[m] = joined
                groups[b].members, groups[b].closed = [], f"merged into the kernel at node {grp.first}"
            grp.members.append(k)
            of[k] = joined
            if kind == "reduce":
                if grp.kind in ("elementwise", "rows") and row_reduction(g, n):
                    grp.kind = "rows"  # stays open: consumers of the full and the row shape join
                    continue
                grp.closed = "a reduction ends its kernel: its consumers loop over another space"
                if grp.kind == "elementwise":
                    grp.kind = "reduce"
            continue
        # a kernel of its own, which later nodes may join
        t = n.types[0]
        if n.op == "full":
            continue  # constants are filled once, not computed per call
        if kind in ("elementwise", "broadcast"):
            groups.append(Group("elementwise", t.shape, k, [k]))
        elif kind == "gemm" and n.op in GEMMS and all(g.types[i].rank == 2 for i in n.inputs[:2]):
            pro = _prologue(g, k, n, producer, users, of, outputs) if n.op == "matmul" else []
            groups.append(Group("gemm", t.shape, k, [*pro, k]))
            for p in pro:
                of[p] = len(groups) - 1
        elif kind == "reduce" and row_reduction(g, n):
            groups.append(Group("rows", g.types[n.inputs[0]].shape, k, [k]))
        elif kind == "reduce" and n.op != "sum_to":
            groups.append(Group("reduce", g.types[n.inputs[0]].shape, k, [k], closed="a reduction ends its kernel"))
        else:
            continue
        of[k] = len(groups) - 1
    return groups, of, refused


def _ready_before(s: Grouping, v: str, at: int) -> bool:
    """Whether value v exists before plan position `at` (a graph input, a hoisted node, or made
    by a node or kernel that runs earlier)."""
    p = s.producer.get(v)
    return p is None or s.hoisted(p) or s.runs_at(p) < at


def _floating_producers(s: Grouping, j: int, n: Node, k: int) -> list[int]:
    """Elementwise kernels that node n (joining kernel j) reads from and that can run inside j
    instead of on their own: a LayerNorm backward recomputes `x_hat = (x - mean) * rstd` from saved
    values near the top of the plan, where nothing it is used with exists yet, so its consumers
    (the weight gradient's product and sum) cannot join it; moved down into the consumers'
    kernel, it is computed in their loop instead of written and read back. Legal when the
    producer kernel is elementwise over j's space, every value it reads exists before j starts,
    and no node that runs before j starts reads what it makes."""
    g, groups, of = s.g, s.groups, s.of
    grp, found = groups[j], []
    mine = set(grp.members)
    for i in n.inputs:
        p = s.producer.get(i)
        if p is None or p not in of or of[p] == j or of[p] in found:
            continue
        b = groups[of[p]]
        if b.kind != "elementwise" or b.closed or b.first >= grp.first or grp.kind not in ("elementwise", "reduce"):
            continue
        if len(b.members) + len(grp.members) + 1 > MAX_MEMBERS:
            continue
        if any(g.nodes[m].types[0].shape != grp.space for m in b.members):
            continue
        made = {o for m in b.members for o in g.nodes[m].outputs}
        if not all(v in made or _ready_before(s, v, grp.first) for m in b.members for v in g.nodes[m].inputs):
            continue
        bm = set(b.members)
        if any(u not in bm and u not in mine and u < k and s.runs_at(u) < grp.first
               for o in made for u in s.users_at.get(o, ())):
            continue  # already read before j starts
        found.append(of[p])
    return found


SIBLING_WINDOW = 3  # how many of the latest kernels a node with no producer in a kernel may join


def _sibling(s: Grouping, n: Node, kind: str) -> int | None:
    """A node none of whose producers it may join can still join one of the latest open
    elementwise or rows kernels that reads one of its operands (a sibling: GELU's x * 0.5 beside
    erf(x * c), LayerNorm backward's rstd**3 beside the rows kernel that reads rstd), when that is
    legal: the same space, every operand ready before the kernel starts. One loop instead of two."""
    g, groups = s.g, s.groups
    reads = {i for i in n.inputs if i not in s.producer or g.nodes[s.producer[i]].op != "full"}
    for gi in range(len(groups) - 1, max(-1, len(groups) - 1 - SIBLING_WINDOW), -1):
        grp = groups[gi]
        if grp.kind not in ("elementwise", "rows") or grp.closed:
            continue
        if not any(i in reads for m in grp.members for i in g.nodes[m].inputs):
            continue
        if _why_not(s, grp, n, kind) is None:
            return gi
    return None


def _why_not(s: Grouping, grp: Group, n: Node, kind: str) -> str | None:
    """None if node n may join group grp, else the reason it may not."""
    g = s.g
    if grp.closed:
        return grp.closed
    if len(grp.members) >= MAX_MEMBERS:
        return f"size limit: a kernel holds at most {MAX_MEMBERS} nodes"
    if n.phase == "backward" and g.nodes[grp.first].phase == "forward" and (
            grp.kind == "elementwise" or (grp.kind == "rows" and n.grad_of is None and n.types[0].shape == grp.space)):
        # a train step's backward recompute (GELU's exp(-x^2)) in the forward's loop would be one
        # more value written there and kept until the backward reads it; in the backward's own
        # kernel it is computed from the saved values that kernel reads anyway. (A GEMM's epilogue
        # still takes them: SimpleNet's relu mask `gt` is one byte an element, and the epilogue
        # is the loop that has the activation in registers.)
        # (the same for a forward rows kernel and a full-shape recompute of a forward value for the
        # backward, which has no grad_of: LayerNorm's x_hat, passes/remat.py; gradient terms, like
        # softmax's exp for cross-entropy's backward, still join: their rows kernels group so)
        return f"a backward node does not join a forward {grp.kind} loop (its value would be stored until the backward)"
    if kind in ("injective", "opaque"):
        return f"{n.op} is {kind}: it runs as a kernel of its own"
    if kind == "gemm":
        return "a GEMM starts its own kernel (a GEMM takes an epilogue, not a prologue)"
    if n.op == "full":
        return "a constant is filled once"
    if grp.kind == "rows":
        return _why_not_rows(s, grp, n, kind)
    if kind == "reduce":
        if grp.kind not in ("elementwise", "gemm"):
            return f"a reduction fuses with elementwise producers or a GEMM epilogue only (this kernel is a {grp.kind})"
        if grp.kind == "gemm" and n.op == "max" and row_reduction(g, n):
            # (the epilogue loop compares and stores per element, ~1.5 ns each: T's head, [1024, 96],
            # 258 us with it against 92 without; the rows kernel after it takes the max in vectors,
            # 189 -> 229 us: one thread, interleaved, load ~2)
            return "a row max of a GEMM's product runs in the rows kernel that reads it, in vectors"
        if n.op == "sum_to" or g.types[n.inputs[0]].shape != grp.space:
            return "different iteration space (the reduction's operand is not the kernel's shape)"
    elif n.types[0].shape != grp.space:
        return f"different iteration space: {list(n.types[0].shape)} against the kernel's {list(grp.space)}"
    late = _late_operand(s, grp, n)
    if late:
        return late
    mine = set(grp.members)
    for i in n.inputs:  # values of the kernel are read at the iteration index: same shape only
        p = s.producer.get(i)
        if p in mine and g.types[i].shape != grp.space:
            return f"%{i} does not have the kernel's shape"
    return None


def _late_operand(s: Grouping, grp: Group, n: Node) -> str | None:
    """Why n cannot run inside grp: an operand from outside that is computed after grp starts."""
    mine = set(grp.members)
    for i in n.inputs:
        p = s.producer.get(i)
        if p is None or p in mine:
            continue
        if s.runs_at(p) >= grp.first and not s.hoisted(p):  # (hoisted ones move to the top of the plan)
            return f"operand %{i} is computed after the kernel starts (by {_short(s.g.nodes[p])})"
    return None


def _why_not_rows(s: Grouping, grp: Group, n: Node, kind: str) -> str | None:
    """None if n may join the rows kernel grp: elementwise over the full shape or the row shape
    ([..., 1]), or another reduction of the row. (_why_not checked what holds for every kind.)"""
    row = grp.space[:-1] + (1,)
    if kind == "reduce":
        if not row_reduction(s.g, n) or s.g.types[n.inputs[0]].shape != grp.space:
            return "a rows kernel takes reductions of its rows only (last dim, keepdim, the kernel's shape)"
    elif n.types[0].shape not in (grp.space, row):
        return f"different iteration space: {list(n.types[0].shape)} is neither the rows kernel's {list(grp.space)} nor its row shape {list(row)}"
    return _late_operand(s, grp, n)


# reassociates: a rows or reduce kernel accumulates its sums in 8 lanes (so the loop vectorizes),
# an order other than the reference's pairwise numpy sum; where a sum is subtracted again
# (LayerNorm's x - mean(x) on checked mode's random inputs, |x| ~ 200) a cancelling element
# moves by rounding of the terms, so checked mode scales atol with the output (manager.py).
@register_pass("kernels", reassociates=True)
def kernels(g: Graph, ctx: PassContext | None = None):
    """Group the plan into kernels (see the module docstring); groups of one node stay plain nodes."""
    ctx = ctx or PassContext("kernels")
    if any(n.op == KERNEL for n in g.nodes):
        return g, False
    decomposed = dropout_mask_from_output(decompose_for_kernels(g, ctx), ctx)
    decomposed = sum_to_as_sum(sum_through_reshape(row_forms(fuse_update_gemm(decomposed, ctx), ctx), ctx), ctx)
    decomposed = pads_as_concat(decomposed, ctx)  # the gradient of a split: one concat, not padded sums
    decomposed = one_hot_scatters(decomposed, ctx)  # cross-entropy's gradient: a one-hot where, not a scatter
    decomposed = recompute_for_backward(decomposed, ctx)  # LayerNorm's x_hat: not written for the backward
    decomposed = views_per_reader(decomposed, ctx)  # a head split read by two batched matmuls: a view each
    changed = decomposed is not g
    g = decomposed
    groups, of, refused = group_kernels(g)
    for pattern, lines, reason in refused:
        ctx.not_fused(pattern, lines, reason)
    out_users: dict[str, set[int]] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            out_users.setdefault(i, set()).add(k)
    graph_outputs = set(g.output_values)
    start: dict[int, Node] = {}
    absorbed: set[int] = set()
    types = g.types
    for gi, grp in enumerate(groups):
        members = [g.nodes[k] for k in grp.members]
        impl, why = (gemm_impl.choose(types, members) if grp.kind == "gemm" else
                     gemm_impl.choose_strided(types, members) if grp.kind == "strided_gemm" else (None, ""))
        if grp.kind in ("gemm", "strided_gemm"):
            ctx.note(f"{_short(next(m for m in members if m.op in GEMMS))}: impl={impl} ({why})")
        if len(grp.members) < 2 and not lone_reduction(g, grp) and impl != "loops":
            continue  # (a lone GEMM run by loops is a kernel of one member: the IR says how it runs)
        mine = set(grp.members)
        made = {o for m in members for o in m.outputs}
        inputs = list(dict.fromkeys(i for m in members for i in m.inputs if i not in made))
        outputs = [o for m in members for o in m.outputs
                   if o in graph_outputs or any(u not in mine for u in out_users.get(o, ()))]
        if not outputs:
            continue  # nothing it computes is read: leave the nodes as they are (dead code)
        node = kernel_node(members, inputs, outputs, types, grp.kind, "loops" if impl == "loops" else None)
        start[grp.first] = node
        absorbed |= mine
        ctx.fused(f"kernel:{grp.kind}", [format_node(m, comment=False) for m in members],
                  f"{format_node(node, comment=False)}  ({len(members)} nodes, iteration space {list(grp.space)}; "
                  f"{len(made) - len(outputs)} values stay inside"
                  + (f"; GEMM as loops: {why}" if impl == "loops" else "") + ")")
    if not start and not any(gemm_impl.lone_addmm(n) for n in g.nodes):
        return g, changed
    constants = from_constants(g)
    top = {k for k, n in enumerate(g.nodes) if hoistable(g, n, constants) and k not in absorbed}
    nodes = [g.nodes[k] for k in sorted(top)]  # constants and input reshapes first: any kernel may read them
    for k, n in enumerate(g.nodes):
        if k in top:
            continue
        if k in start:
            nodes.append(start[k])
        elif k not in absorbed and gemm_impl.lone_addmm(n):
            nodes.append(_addmm_kernel(g, n, ctx))
        elif k not in absorbed:
            nodes.append(n)
    if not changed and not start and tuple(nodes) == g.nodes:
        return g, False  # (only addmms, each left plain)
    return g.replace(nodes=tuple(nodes)), True


def lone_reduction(g: Graph, grp: Group) -> bool:
    """A float sum or mean over some dims that joined nothing (a bias gradient summed over the
    batch after a rows kernel, LayerNorm's weight gradient): a one-node reduce kernel, so it is a
    generated loop nest (vectorized along the kept last dim) rather than the library's strided
    reduction, which walks every element through its general six-dim index arithmetic."""
    if grp.kind != "reduce" or len(grp.members) != 1:
        return False
    n = g.nodes[grp.members[0]]
    t, o = g.types[n.inputs[0]], n.types[0]
    return n.op in ("sum", "mean") and t.is_float and o.dtype == t.dtype and o.size > 1 and t.size > 0


def _addmm_kernel(g: Graph, n: Node, ctx: PassContext) -> Node:
    """A lone addmm: a gemm kernel of one member {impl="loops"} when the rule says loops, else
    the plain node (its library kernel calls BLAS). Recorded either way."""
    impl, why = gemm_impl.choose(g.types, [n])
    ctx.note(f"{_short(n)}: impl={impl} ({why})")
    if impl != "loops":
        return n
    node = kernel_node([n], list(dict.fromkeys(n.inputs)), list(n.outputs), g.types, "gemm", "loops")
    ctx.fused("kernel:gemm", [format_node(n, comment=False)],
              f"{format_node(node, comment=False)}  (1 node; GEMM and update as loops: {why})")
    return node


def kernel_count(g: Graph) -> int:
    """How many kernels a plan runs: kernel nodes plus plain nodes, but constants (filled once) and
    reshapes that are not graph outputs (views of their operand's buffer in the memory plan: no call)."""
    outputs = set(g.output_values)
    return sum(1 for n in g.nodes if n.op != "full" and not (n.op == "reshape" and n.out not in outputs))
