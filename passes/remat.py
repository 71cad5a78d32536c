"""In a train step, the backward recomputes a cheap forward value whose operands it keeps anyway.

A train step is one plan: a forward value the backward reads is written by its forward kernel
and read back later. Where that value is one cheap elementwise op (`mul`, `add`, `sub`, ...)
of values the backward reads itself, of values in memory anyway (graph inputs, a GEMM's product:
a kernel's output, written whatever its readers) or of constants, writing it is pure
traffic: LayerNorm's x_hat = (x - mean) * rstd, stored beside x - mean and rstd, which the
backward's rows kernel reads anyway; GELU's x / sqrt(2) and x / 2 of the c_fc GEMM's product x,
stored beside x (the backward reads x instead: two [B, T, 4C] writes and reads fewer). The backward's readers get a copy of the node instead
(same op and operands, phase backward), which the kernel pass fuses into their kernel (the
LayerNorm weight gradient's reduce kernel); the forward kernel keeps the value in registers.
The numbers are the same (the same op on the same operands). A train step's plans only: the
graph of `graphc.compile` is split into two plans first, whose partition already recomputes.
Noted per value.
"""
from __future__ import annotations

from graphc.ir import Graph, GraphBuilder, get_op

from .manager import PassContext

CHEAP = ("add", "sub", "mul", "neg", "where")  # one pass, no transcendental, no division


GEMMS = ("linear", "matmul", "linear_relu", "addmm", "conv2d")  # their products are written to memory


def _in_memory(g: Graph, v: str) -> bool:
    """A graph input, a constant or a GEMM's product (through views): there for the backward to
    read at no extra write."""
    p = g.producer(v)
    while p is not None and p.op == "reshape":
        p = g.producer(p.inputs[0])
    return p is None or (p.op in ("full", "arange") and not p.inputs) or p.op in GEMMS


def _read_by_gemm(g: Graph, v: str) -> bool:
    """Whether a GEMM reads v (through views): then v is written to memory whatever else reads it."""
    for u in g.users.get(v, ()):
        if u.op in GEMMS or (u.op == "reshape" and _read_by_gemm(g, u.out)):
            return True
    return False


def recompute_for_backward(g: Graph, ctx: PassContext | None = None) -> Graph:
    outputs = set(g.output_values)
    copies: dict[str, object] = {}  # forward value -> its node, for the backward's readers
    for n in g.nodes:
        if n.body is not None or n.phase != "forward" or n.op not in CHEAP or n.out in outputs:
            continue
        if get_op(n.op).kind not in ("elementwise", "broadcast"):
            continue
        users = g.users.get(n.out, ())
        if _read_by_gemm(g, n.out):  # in memory anyway (a GEMM's operand): the backward reads it there
            continue
        if not any(u.phase == "forward" for u in users) or not any(u.phase != "forward" for u in users):
            continue
        if all(_in_memory(g, i) or any(u.phase != "forward" for u in g.users.get(i, ())) for i in n.inputs):
            copies[n.out] = n
    if not copies:
        return g
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    made: dict[str, str] = {}
    for m in g.nodes:
        if m.phase != "forward":
            for v in m.inputs:
                if v in copies and v not in made:
                    n = copies[v]
                    made[v] = b.fresh()
                    b.add_node(n.replace(outputs=(made[v],), phase="backward"))
                    if ctx is not None:
                        ctx.note(f"%{v} = {n.op}({', '.join('%' + i for i in n.inputs)}) recomputed as %{made[v]} for "
                                 f"the backward from operands in memory anyway: the forward kernel does not write it")
            m = m.replace(inputs=tuple(made.get(i, i) for i in m.inputs))
        b.add_node(m)
    return b.build(g.outputs, meta=dict(g.meta))
