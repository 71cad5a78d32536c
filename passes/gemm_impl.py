"""How a gemm kernel runs its GEMM: a BLAS call, or a generated loop nest (`impl="loops"`).

The kernel pass asks `choose(g, members)` for each gemm group and records the answer on the
kernel node ({impl="loops", kind="gemm"}: printed, parsed back, verified) with its reason in the
fusion report. runtime/lower_small_gemm.py lowers "loops"; without the attribute a kernel calls
BLAS. The rule is a cost model of that loop nest, not a list of shapes:

- small: M*N*K at most LOOPS_MAX_MACS. Measured on this project's 2-core AVX-512 machine
  (BLAS = scipy's OpenBLAS as graphc calls it, one call timed in a loop): the loop nest is
  1.0-2.2x faster than BLAS for 10^3-2.6*10^5 multiply-adds (x @ W.T layouts 1.5-2.2x, where
  OpenBLAS's small "nt" path is slow), even at 64x64x64, and 0.8-0.9x at 128^3;
- vector lanes used: the loop nest vectorizes C's unit-stride dimension in vectors of
  VECTOR[dtype] elements (runtime/lower_small_gemm.WIDTH); it needs at least half of the lanes
  busy (N = 1, 2, 4 outputs: 0.3-0.4x BLAS's gemv), C seen as C^T when it is one column wide;
- packing: where the vector operand's rows are not unit-stride (linear's weight, a transposed
  view), it is first copied; that copy must cost at most half the vector FMAs.
"""
from __future__ import annotations

import math

from graphc.ir import Graph
from graphc.ir.graph import Node

LOOPS_MAX_MACS = 1 << 18
VECTOR = {"f32": 16, "f64": 8}  # elements per vector, as runtime/lower_small_gemm.WIDTH (tested equal)
GEMMS = ("matmul", "linear", "linear_relu")


def choose(types, members: list[Node]) -> tuple[str, str]:
    """("loops" | "blas", the reason) for the gemm group `members` (prologue transposes, then
    the GEMM, then its epilogue); `types`: the plan's value types."""
    gemm = next(m for m in members if m.op in GEMMS)
    dt = gemm.types[0].dtype
    if dt not in VECTOR:
        return "blas", f"{dt} GEMM"
    transposed_views = {m.outputs[0]: m.inputs[0] for m in members if m.op == "transpose"}

    def operand(v: str, transposed: bool):
        src = transposed_views.get(v, v)
        r, c = types[src].shape
        if v in transposed_views:
            transposed = not transposed
        return ((c, r) if transposed else (r, c)), (1, c) if transposed else (c, 1)

    (m, k), a_st = operand(gemm.inputs[0], False)
    (_, n), b_st = operand(gemm.inputs[1], gemm.op != "matmul")
    macs = m * n * k
    w = VECTOR[dt]
    vm, vn, vb = (m, n, b_st) if n != 1 or m == 1 else (n, m, (a_st[1], a_st[0]))  # C^T = B^T A^T
    vectors = math.ceil(vn / w)
    fmas = vm * vectors * k
    packed = k * vn if vb[1] != 1 or vn % w else 0
    shape = f"{m}x{n}x{k} ({macs} multiply-adds)"
    if macs > LOOPS_MAX_MACS:
        return "blas", f"{shape} > {LOOPS_MAX_MACS}: BLAS's blocked kernels win"
    if 2 * vn < vectors * w:
        return "blas", f"{shape}: {vn} of {vectors * w} vector lanes busy (< half): BLAS's gemv/gemm"
    if 2 * packed > fmas:
        return "blas", f"{shape}: packing {packed} elements for {fmas} vector FMAs"
    return "loops", (f"{shape} <= {LOOPS_MAX_MACS}, {vn} of {vectors * w} lanes busy"
                     + (f", {packed} elements packed for {fmas} vector FMAs" if packed else ""))


def gemm_members(g: Graph, n: Node) -> list[Node] | None:
    """[n] when n is a lone 2-D GEMM a kernel of one member could run, else None."""
    if n.op in GEMMS and n.body is None and all(g.types[i].rank == 2 for i in n.inputs[:2]):
        return [n]
    return None
