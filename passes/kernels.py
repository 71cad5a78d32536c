"""The kernel stage: group a plan's nodes into kernels, once, on the IR (issue 9).

Walking the plan in order, a node joins the kernel of one of its producers when the pair is
legal by their fusion kinds (the op table's `kind`, TVM's pattern kinds):

- elementwise / broadcast nodes chain into one loop over one iteration space (the shape of
  their outputs);
- a GEMM (2-D `matmul`, `linear`, `linear_relu`) starts a kernel that takes elementwise
  consumers of its output shape as its epilogue (BLAS call, then one loop);
- a reduction takes the elementwise chain that produces its operand when they share the
  iteration space (one loop nest that computes and accumulates); it ends its kernel;
- injective and opaque ops are kernels of their own (their one-node lowering in runtime/).

A node may join a kernel only if every other operand it reads exists before that kernel
starts (the kernel runs where its first member was). Values used only inside a kernel get
no buffer; values used outside become the kernel node's outputs. A group of one node stays a
plain node. Every decision is recorded (PassContext.fused / not_fused): each kernel with its
members, and for each producer -> consumer edge that does not fuse, why.

Rewrites nothing else and never fails the compile: a pair it cannot fuse stays apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import Graph, get_op
from graphc.ir.graph import KERNEL, Node, kernel_node
from graphc.ir.text import format_node

from .manager import PassContext, register_pass

MAX_MEMBERS = 32  # the size limit of one kernel's body
GEMMS = ("matmul", "linear", "linear_relu")


@dataclass
class Group:
    kind: str  # elementwise | gemm | reduce
    space: tuple[int, ...]  # the iteration space: the shape every member's output has
    first: int  # index (in the plan) of the first member: where the kernel runs
    members: list[int] = field(default_factory=list)
    closed: str | None = None  # why nothing more may join (a reduction ended it)


def op_kind(n: Node) -> str:
    return get_op(n.op).kind


def _short(n: Node) -> str:
    return f"%{n.outputs[0]} ({n.op})"


def group_kernels(g: Graph) -> tuple[list[Group], dict[int, int], list[tuple[str, list[str], str]]]:
    """(groups, node index -> group index, refusals as (pattern, [producer, consumer lines], reason))."""
    producer = {o: k for k, n in enumerate(g.nodes) for o in n.outputs}
    groups: list[Group] = []
    of: dict[int, int] = {}
    refused: list[tuple[str, list[str], str]] = []

    def refuse(p: int, n: Node, reason: str):
        pn = g.nodes[p]
        refused.append((f"{pn.op}+{n.op}", [format_node(pn, comment=False), format_node(n, comment=False)],
                        f"{_short(pn)} -> {_short(n)}: {reason}"))

    for k, n in enumerate(g.nodes):
        kind = op_kind(n)
        joined = None
        feeders = list(dict.fromkeys(producer[i] for i in n.inputs if i in producer and producer[i] in of))
        for p in feeders:
            gi = of[p]
            grp = groups[gi]
            why = _why_not(g, grp, n, kind, producer, of, gi)
            if why is None:
                joined = gi
                break
            refuse(p, n, why)
        if joined is not None:
            grp = groups[joined]
            grp.members.append(k)
            of[k] = joined
            if kind == "reduce":
                grp.kind, grp.closed = "reduce", "a reduction ends its kernel: its consumers loop over another space"
            continue
        # a kernel of its own, which later nodes may join
        t = n.types[0]
        if n.op == "full":
            continue  # constants are filled once, not computed per call
        if kind in ("elementwise", "broadcast"):
            groups.append(Group("elementwise", t.shape, k, [k]))
        elif kind == "gemm" and n.op in GEMMS and all(g.types[i].rank == 2 for i in n.inputs[:2]):
            groups.append(Group("gemm", t.shape, k, [k]))
        elif kind == "reduce" and n.op != "sum_to":
            groups.append(Group("reduce", g.types[n.inputs[0]].shape, k, [k], closed="a reduction ends its kernel"))
        else:
            continue
        of[k] = len(groups) - 1
    return groups, of, refused


def _why_not(g: Graph, grp: Group, n: Node, kind: str, producer, of, gi) -> str | None:
    """None if node n may join group grp, else the reason it may not."""
    if grp.closed:
        return grp.closed
    if len(grp.members) >= MAX_MEMBERS:
        return f"size limit: a kernel holds at most {MAX_MEMBERS} nodes"
    if kind in ("injective", "opaque"):
        return f"{n.op} is {kind}: it runs as a kernel of its own"
    if kind == "gemm":
        return "a GEMM starts its own kernel (a GEMM takes an epilogue, not a prologue)"
    if n.op == "full":
        return "a constant is filled once"
    if kind == "reduce":
        if grp.kind != "elementwise":
            return f"a reduction fuses with elementwise producers only (this kernel is a {grp.kind})"
        if n.op == "sum_to" or g.types[n.inputs[0]].shape != grp.space:
            return "different iteration space (the reduction's operand is not the kernel's shape)"
    elif n.types[0].shape != grp.space:
        return f"different iteration space: {list(n.types[0].shape)} against the kernel's {list(grp.space)}"
    mine = set(grp.members)
    for i in n.inputs:
        p = producer.get(i)
        if p is None or p in mine:
            continue
        if p >= grp.first and g.nodes[p].op != "full":  # (constants move to the top of the plan)
            return f"operand %{i} is computed after the kernel starts (by {_short(g.nodes[p])})"
    for i in n.inputs:  # values of the kernel are read at the iteration index: same shape only
        p = producer.get(i)
        if p in mine and g.types[i].shape != grp.space:
            return f"%{i} does not have the kernel's shape"
    return None


@register_pass("kernels")
def kernels(g: Graph, ctx: PassContext | None = None):
    """Group the plan into kernels (see the module docstring); groups of one node stay plain nodes."""
    ctx = ctx or PassContext("kernels")
    if any(n.op == KERNEL for n in g.nodes):
        return g, False
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
        if len(grp.members) < 2:
            continue
        mine = set(grp.members)
        members = [g.nodes[k] for k in grp.members]
        made = {o for m in members for o in m.outputs}
        inputs = list(dict.fromkeys(i for m in members for i in m.inputs if i not in made))
        outputs = [o for m in members for o in m.outputs
                   if o in graph_outputs or any(u not in mine for u in out_users.get(o, ()))]
        node = kernel_node(members, inputs, outputs, types, grp.kind)
        start[grp.first] = node
        absorbed |= mine
        ctx.fused(f"kernel:{grp.kind}", [format_node(m, comment=False) for m in members],
                  f"{format_node(node, comment=False)}  ({len(members)} nodes, iteration space {list(grp.space)}; "
                  f"{len(made) - len(outputs)} values stay inside)")
    if not start:
        return g, False
    nodes = [n for n in g.nodes if n.op == "full"]  # constants first: kernels may read them from anywhere
    for k, n in enumerate(g.nodes):
        if n.op == "full":
            continue
        if k in start:
            nodes.append(start[k])
        elif k not in absorbed:
            nodes.append(n)
    return g.replace(nodes=tuple(nodes)), True


def kernel_count(g: Graph) -> int:
    """How many kernels a plan runs: kernel nodes plus plain nodes (constants are filled once)."""
    return sum(1 for n in g.nodes if n.op != "full")
