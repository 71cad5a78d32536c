"""How a gemm kernel runs its GEMM: a BLAS call, or a generated loop nest (`impl="loops"`).

The kernel pass asks `choose(g, members)` for each gemm group and records the answer on the
kernel node ({impl="loops", kind="gemm"}: printed, parsed back, verified) with its reason in the
fusion report. runtime/lower_small_gemm.py lowers "loops"; without the attribute a kernel calls
BLAS. The rule is a cost model of both, not a list of shapes: the loop nest costs a start plus a
time per vector FMA (C's unit-stride dimension in vectors of VECTOR[dtype] elements, so lanes
left empty by N = 10 or 20 count) plus a time per element it packs (B's rows when strided:
linear's weight); a BLAS call costs a start plus the multiply-adds at BLAS's rate (slower where
B is transposed, OpenBLAS's small "nt" path). Fitted to single GEMMs timed on this project's
2-core AVX-512 machine (thread CPU time, 15 shapes from 64x20x10 to 128^3): it picks the faster
in all but near-ties (within ~10%). Where half the vector lanes or fewer would be busy (1-8
outputs) BLAS is taken (its gemv and small-N paths: the loop nest took 2-3x its time). Beyond
LOOPS_MAX_MACS (the sizes that model was fitted to; 4x that for a transposed B, where BLAS stays
slow longer) BLAS is priced at its large-GEMM rate (BLAS_LARGE_MACS_PER_NS, one thread: both
lowerings split alike over threads, passes/parallel.py), against the loop nest's k in blocks:
a transformer's long-k weight gradients (256x64x1024) run ~1.4x faster as loops. A B packed on
the stack stays within PACK_MAX_BYTES. benchmarks/gemm_choice.py times both on shapes the rule
was not fitted to and prints where it picks the slower one and what that costs.
"""
from __future__ import annotations

import math

from graphc.ir.graph import Node

LOOPS_MAX_MACS = 1 << 18  # the sizes the model was fitted to; beyond, BLAS without asking
# but for a transposed B (linear's forward, x @ w.T) and rows of C of 2 vectors or more, up to 4x
# that: OpenBLAS's "nt" path stays at under half its rate there (benchmarks/gemm_choice.py: 100x128x64 loops 14.6 us, BLAS 26.5
# us on 2 threads; at 2M multiply-adds, 128^3 and 256x128x64, the two tie)
LOOPS_MAX_MACS_NT = 1 << 20
PACK_MAX_BYTES = 64 << 10  # the loop nest packs B into a stack buffer: no larger than this
VECTOR = {"f32": 16, "f64": 8}  # elements per vector, as runtime/lower_small_gemm.WIDTH (tested equal)
GEMMS = ("matmul", "linear", "linear_relu")
# the epilogue ops a loop nest runs on its register tiles (runtime/lower_small_gemm.TILE_OPS, tested
# equal): a split by rows of C (passes/parallel.gemm_split) takes only these
TILE_OPS = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "where",
                      "neg", "relu", "relu_backward", "sigmoid_backward", "tanh_backward", "broadcast_to", "dropout"})
# the cost model, in ns, fitted to single GEMMs timed on this project's 2-core AVX-512 machine
# (f32; f64 has half the elements per vector and BLAS half the rate). LOOP_FMA is the core's
# FMA throughput (benchmarks/roofline.py measures 2 vector FMAs per cycle at ~2.6-2.7 GHz:
# 0.19 ns each); a packed element costs about a cycle (a load and a store). Packing by W x W
# blocks in registers (runtime/lower_small_gemm._transpose_blocks) made linear's forward
# 128x32x32 ~15% faster, but where the loop nest computes C^T (one output: x^T packed) the
# packing still costs that much (64x1x20: loops ~0.9 us, BLAS ~0.7 us), so it is priced alike.
LOOP_BASE, LOOP_FMA, LOOP_PACK = 100.0, 0.2, 0.3  # ns: start, per vector FMA, per packed element
# one output (x @ w.T with w of one row: an MSE model's last layer): a dot product per row of x,
# each summed across its vector's lanes at the end (~3.5 ns a row measured: 64x1x20 0.61 us,
# 128x1x32 0.82 us); BLAS's gemv for it measured 0.72 and 1.11 us: its start and ~7 per ns
DOT_ROW, BLAS_GEMV_MACS_PER_NS = 3.5, 7.0
BLAS_BASE, BLAS_MACS_PER_NS, BLAS_NT_MACS_PER_NS = 450.0, 100.0, 45.0  # BLAS call: start, rate; "nt" rate
# beyond the caps (the weight gradients of a transformer's MLP: 256x64x1024; its forward layers:
# 1024x256x64): OpenBLAS on one thread, timed alone (benchmarks/gemm_choice.py, thread CPU time):
# 53 (tn) to 63 (nt) multiply-adds per ns; the loop nest with k in blocks (lower_small_gemm.KC)
# keeps ~0.2 ns per vector FMA there (150-165 GFLOP/s f32 at whole vectors)
BLAS_LARGE_MACS_PER_NS = 60.0
# and no further than T2's largest (512x128x1024: loops 926 us, BLAS 1,098 us, one thread): L's
# 512x2048x2048 ran 1.5x slower as loops (B's rows 8 KB apart share L1 sets; BLAS packs them), its
# 2048x784x512 1.2x, and its train step 1.23x slower (interleaved A/B, load ~2)
LOOPS_LARGE_MAX_MACS = 1 << 26


def choose(types, members: list[Node]) -> tuple[str, str]:
    """("loops" | "blas", the reason) for the gemm group `members` (prologue transposes, then
    the GEMM, then its epilogue; or one addmm); `types`: the plan's value types."""
    gemm = next(m for m in members if m.op in GEMMS or m.op == "addmm")
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

    if gemm.op == "addmm":  # c + s * op(a) @ op(b): the GEMM of its operands 1 and 2
        (m, k), a_st = operand(gemm.inputs[1], gemm.attr["trans_a"])
        (_, n), b_st = operand(gemm.inputs[2], gemm.attr["trans_b"])
    else:
        (m, k), a_st = operand(gemm.inputs[0], False)
        (_, n), b_st = operand(gemm.inputs[1], gemm.op != "matmul")
    macs = m * n * k
    w = VECTOR[dt]
    vm, vn, vb = (m, n, b_st) if n != 1 or m == 1 else (n, m, (a_st[1], a_st[0]))  # C^T = B^T A^T
    fmas = vm * math.ceil(vn / w) * k
    packed = k * vn if vb[1] != 1 else 0
    shape = f"{m}x{n}x{k}"
    nt = b_st[1] != 1  # B's rows strided: BLAS's transposed-B ("nt") path, slower at these sizes
    # (not with one vector per row of C: a broadcast load per FMA, half the FMA rate; 128x10x512
    # took 27 us as loops, 24 us in BLAS)
    cap = LOOPS_MAX_MACS_NT if nt and math.ceil(vn / w) >= 2 else LOOPS_MAX_MACS
    large = macs > cap  # beyond the sizes the small-GEMM model was fitted to: BLAS at its large-GEMM rate
    if macs > LOOPS_LARGE_MAX_MACS:
        return "blas", f"{shape}: {macs} multiply-adds > {LOOPS_LARGE_MAX_MACS} (BLAS's packing pays)"
    pack_bytes = k * math.ceil(vn / w) * w * (8 if dt == "f64" else 4) if packed else 0
    if pack_bytes > PACK_MAX_BYTES:
        return "blas", f"{shape}: B packed would take {pack_bytes} bytes of stack > {PACK_MAX_BYTES}"
    dots = dots_form(dt, n, a_st, b_st) and gemm.op != "addmm"
    if large and (dots or gemm.op == "addmm"):
        return "blas", f"{shape}: {macs} multiply-adds > {cap}" + (" (dot products)" if dots else " (addmm)")
    if dots:  # one output, x @ w.T: a dot product along k per row (runtime/lower_small_gemm.gemm_dots)
        loops = LOOP_BASE + m * (LOOP_FMA * math.ceil(k / w) + DOT_ROW)
    elif 2 * vn <= math.ceil(vn / w) * w:  # N = 1..8 of 16: BLAS's gemv / small-N paths (0.3-0.5x BLAS's time)
        return "blas", f"{shape}: {vn} of {math.ceil(vn / w) * w} vector lanes busy (half or fewer)"
    else:
        loops = LOOP_BASE + LOOP_FMA * fmas + LOOP_PACK * packed
    rate = (BLAS_LARGE_MACS_PER_NS if large else BLAS_NT_MACS_PER_NS if nt else BLAS_MACS_PER_NS) * 4 / (
        8 if dt == "f64" else 4)
    blas = BLAS_BASE + macs / rate
    if dots:  # BLAS's call is a gemv (lower_llvm._blas, as numba's np.dot)
        blas = BLAS_BASE + macs / (BLAS_GEMV_MACS_PER_NS * 4 / (8 if dt == "f64" else 4))
        why = (f"{shape}: loops ~{loops:.0f} ns ({m} dot products along k, {math.ceil(k / w)} vector FMAs each) "
               f"against BLAS ~{blas:.0f} ns ({macs} multiply-adds, gemv)")
        return ("loops" if loops < blas else "blas"), why
    why = (f"{shape}: loops ~{loops:.0f} ns ({fmas} vector FMAs" + (f", {packed} elements packed" if packed else "")
           + f") against BLAS ~{blas:.0f} ns ({macs} multiply-adds{', transposed B' if nt and not large else ''}"
           + (f" > {cap}: its large-GEMM rate" if large else "") + ")")
    return ("loops" if loops < blas else "blas"), why


def dots_form(dt: str, n: int, a_st: tuple, b_st: tuple) -> bool:
    """runtime/lower_small_gemm.dots_form on the (row, column) strides of A (m x k) and B (k x n):
    one output, both operands unit-stride along k (the same test, tested equal)."""
    return dt in VECTOR and n == 1 and a_st[1] == 1 and b_st[0] == 1


def lone_addmm(n: Node) -> bool:
    """An addmm (a weight-gradient GEMM with its SGD update, passes/update_gemm.py) with no
    kernel of its own: the kernel pass asks `choose` about it as a gemm kernel of one member."""
    return n.op == "addmm" and n.body is None and n.attr["beta"] in (0.0, 1.0)


# a strided_gemm kernel's batch of small products (attention's [T, hd] @ [hd, T] per head): a
# loop nest per product costs its FMAs, its packing and a few address computations (LOOP_STEP),
# a BLAS call per product its start (BLAS_BASE) every time: T's [32, 16] @ [16, 32], 128 of them,
# took ~95 us as BLAS calls (~0.7 us each, one thread)
LOOP_STEP = 30.0


def choose_strided(types, members: list[Node]) -> tuple[str, str]:
    """("loops" | "blas", the reason) for a strided_gemm kernel's members (the operands' view
    chains, the batched matmul, a transpose of its product): the same prices as `choose`, per
    product of the batch."""
    from graphc.ir.strides import chain_view

    gemm = next(m for m in members if m.op == "matmul")
    dt = gemm.types[0].dtype
    if dt not in VECTOR:
        return "blas", f"{dt} GEMM"
    made = {m.outputs[0]: m for m in members[:members.index(gemm)]}

    def view(v):
        ops = []
        while v in made:
            ops.insert(0, (made[v].op, made[v].attr))
            v = made[v].inputs[0]
        return chain_view(types[v].shape, ops)

    (_, sha, _), (_, _, stb) = view(gemm.inputs[0]), view(gemm.inputs[1])
    shape = gemm.types[0].shape
    m, n, k = shape[-2], shape[-1], sha[-1]
    batch = math.prod(shape[:-2])
    w = VECTOR[dt]
    vn = math.ceil(n / w)
    if 2 * n <= vn * w:
        return "blas", f"{batch} x {m}x{n}x{k}: {n} of {vn * w} vector lanes busy (half or fewer)"
    packed = k * n if stb[-1] != 1 and n > 1 else 0  # B's rows strided: packed per product
    if k * vn * w * (8 if dt == "f64" else 4) > PACK_MAX_BYTES and packed:
        return "blas", f"{batch} x {m}x{n}x{k}: B packed would exceed {PACK_MAX_BYTES} bytes of stack"
    macs = m * n * k
    loops = batch * (LOOP_STEP + LOOP_FMA * m * vn * k + LOOP_PACK * packed)
    rate = BLAS_MACS_PER_NS * 4 / (8 if dt == "f64" else 4)
    blas = batch * (BLAS_BASE + macs / rate)
    why = (f"{batch} x {m}x{n}x{k}: loops ~{loops:.0f} ns ({m * vn * k} vector FMAs a product"
           + (f", {packed} elements packed" if packed else "") + f") against BLAS ~{blas:.0f} ns ({batch} calls)")
    return ("loops" if loops < blas else "blas"), why


def beyond_small(types, members: list[Node]) -> bool:
    """Whether a gemm kernel's GEMM is beyond the small-GEMM caps (`choose` priced BLAS there at
    its one-thread rate): passes/parallel.py gives such a loop nest back to BLAS in a plan that
    does not use the pool, where OpenBLAS runs on its own threads."""
    impl, why = choose(types, members)
    return "large-GEMM rate" in why
