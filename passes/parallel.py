"""The thread split of the kernel stage: which kernels run on several threads, and how.

Runs on each plan after the kernel pass (passes/pipeline.py's kernel stage). For every kernel
with a split lowering it writes `threads=k` on the node (printed in the IR, parsed back; the
reference interpreter ignores it) and notes why; every other kernel is noted as left on one
thread, with the reason. Codegen only lowers what the node says: runtime/conv_llvm.py's
kernels then call the pool of runtime/threads.py (graphc_parallel_for).

What splits, and along which dimension:
- conv2d {algo="wide" or "im2col"}: the chunks of samples (the batch), each thread with its
  own padded plane, unrolled matrix and GEMM rows (the memory plan's scratch grows by the
  thread count). Bit-equal to one thread (each chunk's GEMM is the same call).
- conv2d_backward {algo="wide" or "im2col"}: the chunks of samples; task 0 sums dW and db in place, the
  others in partial sums (scratch), added in thread order after the join: another summation
  order than one thread's (float rounding; tests compare against torch with a tolerance).
  The input gradient of each sample is its own (no reduction).
- max_pool2d, max_pool2d_backward: the planes (N*C), bit-equal (each plane's windows and
  scatter are its own).
- elementwise and rows kernels of the kernel stage (generated loops, not loop GEMMs): their
  outermost loop (a rows kernel: over its rows), each task a range of it, a rows kernel's row
  scratch one per thread (runtime/split_llvm.py). Bit-equal: every element's operations are
  the same, each iteration writes only its own elements.
- reduce kernels whose reductions are sums into arrays (a GEMM's bias gradient beside GELU's
  backward): their outer loop, task 0 summing into the output, the others into partials added
  in task order after the join (another summation order: equal within rounding).
- gemm kernels through BLAS (a weight gradient with its epilogue; a plain 2-D `linear` or
  `matmul` node becomes a one-member gemm kernel for it), only in a plan where other kernels
  split (the pool keeps OpenBLAS at one thread while awake; otherwise OpenBLAS's own threads
  serve the GEMMs), and gemm kernels as loop nests {impl="loops"} (no threads but the pool's:
  such a kernel worth splitting makes the plan use it). The node's `split` (gemm_split) says
  how: "rows" with an elementwise epilogue, each task its rows of C (a loop nest: its register
  blocks of rows, the epilogue on each tile), their GEMM and then their epilogue; else
  "gemm_rows" / "gemm_cols", the GEMM alone in blocks of C's rows or columns (BLAS: one call
  each, one BLAS thread), the epilogue loop after the join on one thread. The same values
  (each element the same dot, in the same order).
- strided_gemm kernels (attention's batched GEMMs): their batch of BLAS calls, each writing its
  own slice of C (one BLAS thread inside the pool). Bit-equal.

The cost model: a kernel is split when its estimated one-thread time is at least MIN_SPLIT_US,
about 20 times the pool's fork/join (1-2 us measured on the 2-core machine with hot workers;
README, "Threads"), and it has at least two units (chunks or planes) to share. The estimate:
conv GEMM flops at CONV_FLOPS_PER_US plus the unrolled window copies, pools at
POOL_ELEMS_PER_US input elements (rates measured on LeNet's kernels, one thread).
"""
from __future__ import annotations

from graphc.ir import Graph
from graphc.ir.graph import Node, kernel_node

from . import gemm_impl
from .manager import PassContext, register_pass

MIN_SPLIT_US = 30.0
CONV_FLOPS_PER_US = 50_000.0  # LeNet's wide convs, one thread (min of 40 calls): 325-1,450 us against 400-1,300 estimated
POOL_ELEMS_PER_US = 3_000.0  # LeNet's 2x2 pools as vectors and their tiled backwards: 3,200-4,000 input elements/us
# (other windows run the scalar loop, ~3x slower: their estimate is low, so they split only when larger)
SPLIT_OPS = ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward")


def _conv_units(n: Node, types) -> tuple[int, float]:
    """(chunks of samples, estimated one-thread us) of a wide or im2col conv2d or conv2d_backward."""
    x = types[n.inputs[0]] if n.op == "conv2d" else types[n.inputs[1]]
    w = types[n.inputs[1]] if n.op == "conv2d" else types[n.inputs[2]]
    y = n.types[0] if n.op == "conv2d" else types[n.inputs[0]]
    batch = x.shape[0]
    chunk = min(batch, n.attr["chunk"]) or batch
    chunks = -(-batch // chunk)
    flops = 2.0 * batch * w.size // n.attr["groups"] * (y.shape[2] * y.shape[3]) * n.attr["groups"]
    if n.op == "conv2d_backward":
        flops *= 2.0 if n.attr["input_grad"] else 1.0
    copies = batch * x.shape[1] * w.shape[2] * w.shape[3] * y.shape[2] * y.shape[3]  # the unrolled windows
    return chunks, (flops + 4.0 * copies) / CONV_FLOPS_PER_US


# generated loop kernels (lower_llvm, split by runtime/split_llvm.py): their one-thread time is
# estimated as elements x the members' weights (a transcendental or a division counts COSTLY, any
# other op 1) at these rates of weighted element-ops per us, measured on the GPT's kernels
# (workload T, one thread): GELU forward 15.7k and backward 13.9k, a lone sum 6.5k (memory
# bound); rows kernels in vectors, whole rows 4 at a time (vector=16, interleave=4): softmax rows
# 21k, log-softmax 22k, LayerNorm 64k (as scalar loops they were 4.8k and 7.7k)
LOOP_OPS_PER_US = {"elementwise": 10_000.0, "reduce": 10_000.0, "rows": 15_000.0}
COSTLY = {"exp": 8, "erf": 8, "log": 8, "tanh": 8, "sigmoid": 8, "rsqrt": 8, "sqrt": 8, "pow": 8, "div": 8}
LOOP_ELEMS_PER_US = LOOP_OPS_PER_US  # (the kinds that split as loops)
STRIDED_FLOPS_PER_US = 30_000.0  # attention's batched [32,16] @ [16,32] BLAS calls: ~30 GFLOP/s one thread
GEMM_FLOPS_PER_US = 80_000.0  # a gemm kernel's BLAS call, T's weight gradients: 70-110 GFLOP/s one thread
MIN_GEMM_SPLIT_US = 60.0  # halves of a GEMM lose some of BLAS's rate: only the larger ones


def _loop_kernel(n: Node) -> bool:
    return (n.op == "kernel" and n.attr.get("kind") in (*LOOP_ELEMS_PER_US, "strided_gemm", "gemm")
            and (n.attr.get("impl") != "loops" or n.body.nodes[0].op != "addmm"))


def _loops(n: Node) -> bool:
    return n.attr.get("impl") == "loops"


def gemm_split(n: Node) -> tuple[str, str]:
    """(split, why) of a gemm kernel that runs on several threads (graphc/ir/graph.GEMM_SPLITS):
    "rows" when its epilogue is elementwise (no reduction) and C has rows to share: each task its
    rows' GEMM, then their epilogue while they are in its cache (a loop nest: on each register
    tile, so only ops that lower on vectors, passes/gemm_impl.TILE_OPS); else the GEMM alone,
    the epilogue after the join on one thread: by rows of C for a loop nest (its register blocks
    of rows), by C's longer side for BLAS (each task one BLAS call on its block)."""
    from graphc.ir import OPS

    from .gemm_impl import TILE_OPS

    body = n.body
    gemm = next(m for m in body.nodes if OPS[m.op].kind == "gemm")
    after = body.nodes[body.nodes.index(gemm) + 1:]
    m_, n_ = gemm.types[0].shape
    reduces = [m.op for m in after if OPS[m.op].kind == "reduce"]
    loops = n.attr.get("impl") == "loops"
    if (loops and reduces == ["sum"] and after[-1].op == "sum" and after[-1].types[0].size == 1
            and all(m.op in TILE_OPS for m in after[:-1])):  # clip_grad_norm's sum of the squares
        return "rows", ("rows of C, each task its GEMM rows and their epilogue on the register tiles, its sum "
                        "into one element in partials added after the join (summation order differs)")
    if reduces:
        why = f"its epilogue reduces ({', '.join(dict.fromkeys(reduces))}): the GEMM split, the epilogue after the join"
    elif m_ < 2:
        why = "C has one row: the GEMM split by columns, the epilogue after the join"
    elif loops and any(m.op not in TILE_OPS for m in after):
        why = (f"its epilogue has {', '.join(sorted({m.op for m in after if m.op not in TILE_OPS}))}, which the "
               "register tiles do not lower: the GEMM split, the epilogue after the join")
    else:
        return "rows", "rows of C, each task its GEMM rows and then their epilogue"
    if loops:
        return "gemm_rows", why + " (register blocks of C's rows)"
    return ("gemm_cols", why + " (C's columns)") if n_ > m_ else ("gemm_rows", why + " (C's rows)")


def _loop_units(n: Node) -> tuple[int, float, str]:
    """(iterations of the outermost loop, estimated one-thread us, why not) of a loop kernel: the
    split cuts its outermost loop, the first dim of the iteration space (a rows kernel: of its
    rows) longer than one; every iteration must write only its own elements."""
    from graphc.ir import OPS

    body = n.body
    if n.attr["kind"] == "gemm":  # its BLAS call, cut into column (or row) blocks of C
        m = next((m for m in body.nodes if OPS[m.op].kind == "gemm"), None)
        if m is None or m.op not in ("matmul", "linear", "linear_relu") or len(m.types[0].shape) != 2:
            return 0, 0.0, "not a 2-D matmul or linear"
        if n.attr.get("impl") == "loops" and 1 in m.types[0].shape:
            return 0, 0.0, "a loop nest of dot products (one column of C): no split lowering"
        out, k = m.types[0], body.types[m.inputs[0]].shape[-1]
        us = 2.0 * out.size * k / GEMM_FLOPS_PER_US
        if us < MIN_GEMM_SPLIT_US:
            return 0, 0.0, f"too small: a ~{us:.0f} us GEMM < {MIN_GEMM_SPLIT_US:.0f} us"
        return max(out.shape), us, ""
    if n.attr["kind"] == "strided_gemm":  # its batch of GEMM calls
        m = next(m for m in body.nodes if m.op == "matmul")
        out, k = m.types[0], body.types[m.inputs[0]].shape[-1]
        batch = 1
        for d in out.shape[:-2]:
            batch *= d
        return batch, 2.0 * out.size * k / STRIDED_FLOPS_PER_US, ""
    if n.attr["kind"] == "reduce":  # sums into outputs of more than one element, partials per task
        reds = [m for m in body.nodes if OPS[m.op].kind == "reduce"]
        inside = {i for m in body.nodes for i in m.inputs}
        if any(m.op != "sum" or m.types[0].size <= 1 or m.outputs[0] in inside for m in reds):
            return 0, 0.0, "a reduction other than a sum into an array (a mean, a max, a scalar) or read inside"
        space = lead = body.types[reds[0].inputs[0]].shape
    elif n.attr["kind"] == "rows":
        space = next(body.types[m.inputs[0]].shape for m in body.nodes if OPS[m.op].kind == "reduce")
        lead = space[:-1]
    else:
        shapes = {t.shape for t in n.types}
        if len(shapes) != 1:
            return 0, 0.0, "outputs of different shapes"
        space = lead = next(iter(shapes))
    size = 1
    for d in space:
        size *= d
    weight = sum(COSTLY.get(m.op, 1) for m in body.nodes if m.op not in ("reshape", "broadcast_to"))
    units = next((d for d in lead if d > 1), 1)
    return units, size * weight / LOOP_OPS_PER_US[n.attr["kind"]], ""


def decide(n: Node, types, threads: int) -> tuple[int, str]:
    """(threads, why) for one kernel node; 1 with the reason when it stays on one thread."""
    if _loop_kernel(n):
        units, us, why = _loop_units(n)
        if why:
            return 1, why
        what = {"strided_gemm": f"{units} GEMMs of its batch", "gemm": f"its BLAS GEMM, C's {units} rows or columns"}.get(
            n.attr["kind"], f"{units} iterations of its outer loop")
    elif n.op in ("conv2d", "conv2d_backward"):
        if n.attr["algo"] == "direct":
            return 1, "algo=direct has no split lowering (only wide and im2col convs split)"
        units, us = _conv_units(n, types)
        what = f"{units} chunks of {n.attr['chunk'] or 'all'} samples"
    else:
        x = types[n.inputs[0]]
        if n.op == "max_pool2d_backward":
            x = n.types[0]
        units = x.shape[0] * x.shape[1]
        us = x.size / POOL_ELEMS_PER_US
        what = f"{units} planes"
    if threads == 1:
        return 1, "one thread available (GRAPHC_THREADS / NUMBA_NUM_THREADS / CPUs)"
    if units < 2:
        return 1, f"nothing to share: {what}"
    if us < MIN_SPLIT_US:
        return 1, f"too small: ~{us:.0f} us on one thread < {MIN_SPLIT_US:.0f} us (fork/join ~1-2 us)"
    k = min(threads, units)
    how = ("batch chunks" if n.op.startswith("conv") else "blocks of C" if n.attr.get("kind") == "gemm"
           else "its outer loop" if _loop_kernel(n) else "planes")
    extra = (", dW/db partial sums per thread added after (summation order differs)" if n.op == "conv2d_backward"
             else ", its sums in partials per task added after (summation order differs)"
             if n.attr.get("kind") == "reduce" else "")
    return k, f"~{us:.0f} us on one thread: {what} split over {k} threads by {how}{extra}"


VECTOR_BITS = 512  # one AVX-512 register (on a CPU with narrower vectors LLVM splits each in two or four)


ROW_VECTORS = 4  # a row of at most this many vectors is lowered whole, in registers (interleave=r); longer
# rows cost more compile than they save: the log-softmax of 96 (6 vectors) took 225 ms of LLVM for ~6 us a step
INTERLEAVE = 4  # rows at a time then: T's softmax rows 168 -> 129 us, LayerNorm 22 -> 16.5 us (one thread)


def vector_width(n: Node) -> tuple[int, int | None, str]:
    """(w, r, why) of a rows kernel (runtime/lower_rows.py), (1, None, "") for any other node.

    vector=w: the lanes its loops over a row run in. A rows kernel's rows are short (attention's
    32, LayerNorm's 64): as scalar loops of a constant trip count LLVM unrolled them completely
    and left them scalar (the softmax at ~4.4 ns an element); explicit vectors of one register's
    elements keep the row vectorized, its reductions' LANES accumulators one vector, with the
    same operations per element in the same order (bit-equal).

    interleave=r (rows of at most ROW_VECTORS vectors): each row whole in registers (no loop in
    it, no scratch row between its passes), r rows at a time, each step done for the r rows side
    by side: a short row is a chain of dependent steps (max, exp, sum, div), which the rows
    beside it overlap. r = INTERLEAVE, or the largest power of two below it dividing the rows'
    innermost dim."""
    if n.op != "kernel" or n.attr.get("kind") != "rows":
        return 1, None, ""
    body = n.body
    reds = [m for m in body.nodes if m.op in ("sum", "mean", "max")]
    dts = {body.types[m.inputs[0]].dtype for m in reds}
    if len(dts) != 1 or next(iter(dts)) not in ("f32", "f64"):
        return 1, None, f"row reductions of {sorted(dts)}: scalar loops"
    w = VECTOR_BITS // (32 if dts == {"f32"} else 64)
    why = f"rows of {next(iter(dts))} in vectors of {w} lanes (one {VECTOR_BITS}-bit register), the row reductions' accumulators one vector"
    space = body.types[reds[0].inputs[0]].shape
    if -(-space[-1] // w) > ROW_VECTORS:
        return w, None, why + f"; rows of {space[-1]} (> {ROW_VECTORS} vectors): loops over the row"
    inner = next((d for d in reversed(space[:-1]) if d > 1), 1)
    r = INTERLEAVE
    while r > 1 and inner % r:
        r //= 2
    return w, r, why + f"; rows of {space[-1]} whole in registers, {r} at a time (the innermost of their dims: {inner})"


_override: int | None = None


def num_threads() -> int:
    """How many threads a kernel may be split over: set_num_threads's value, else GRAPHC_THREADS,
    else NUMBA_NUM_THREADS, else the CPUs this process may run on. The one place that reads
    them: the runtime starts the workers a loaded plan's widest `threads=k` asks for."""
    import os

    if _override is not None:
        return _override
    for var in ("GRAPHC_THREADS", "NUMBA_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v:
            try:
                return max(1, int(v))
            except ValueError:
                raise ValueError(f"graphc: {var} must be an integer number of threads, got {v!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Cap the threads kernels compiled from now on are split over (1: none is split); None goes
    back to the environment's. Plans compiled before keep their split (it is part of their IR)."""
    global _override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"graphc: set_num_threads takes an int >= 1 (or None), got {n!r}")
    _override = n


@register_pass("parallel")
def parallel(g: Graph, ctx: PassContext | None = None):
    """Write `threads` on every kernel worth splitting (see the module docstring)."""
    ctx = ctx or PassContext("parallel")
    avail = num_threads()
    types = g.types
    nodes, changed, single = [], False, {}
    # GEMMs split only in a plan whose other kernels use the pool: OpenBLAS stays at one thread
    # while the pool is awake; in a plan without other split kernels its own threads serve them
    # (a GEMM, BLAS call or loop nest, does not wake the pool by itself: while the pool is awake
    # OpenBLAS runs on one thread, and L's 2048-wide BLAS GEMMs split on it ran its step 1.29x
    # slower than on OpenBLAS's own threads)
    pool = any(decide(n, types, avail)[0] > 1 for n in g.nodes
               if n.op in SPLITTABLE or (_loop_kernel(n) and n.attr.get("kind") != "gemm"))
    for n in g.nodes:
        if not pool and avail > 1 and n.op == "kernel" and n.attr.get("kind") == "gemm" and _loops(n) and \
                gemm_impl.beyond_small(types, list(n.body.nodes)):
            # priced against BLAS on one thread (a split plan's); here OpenBLAS has its threads
            n = n.replace(attrs=tuple((key, v) for key, v in n.attr.items() if key != "impl"))
            ctx.note(f"%{n.outputs[0]} = kernel: impl=blas, threads=1: no other kernel of this plan runs on the "
                     "pool, so OpenBLAS's threads serve its GEMM (the loop nest was priced against BLAS on one thread)")
            nodes.append(n)
            changed = True
            continue
        if not pool and (_plain_gemm(n, types) or (_loop_kernel(n) and n.attr.get("kind") == "gemm" and not _loops(n))):
            if n.op == "kernel":
                ctx.note(f"%{n.outputs[0]} = kernel: threads=1: its GEMM is left to OpenBLAS's threads "
                         "(no other kernel of this plan runs on the pool)")
            nodes.append(n)
            continue
        if avail > 1 and _plain_gemm(n, types):  # a lone BLAS GEMM: a one-member gemm kernel, split
            k, why = decide(kernel_node([n], list(dict.fromkeys(n.inputs)), list(n.outputs), types, "gemm"), types, avail)
            if k > 1:
                n = kernel_node([n], list(dict.fromkeys(n.inputs)), list(n.outputs), types, "gemm")
                n = n.replace(attrs=tuple(sorted({**n.attr, "threads": k, "split": gemm_split(n)[0]}.items())))
                ctx.note(f"%{n.outputs[0]} = {n.body.nodes[0].op}: as a gemm kernel, threads={k}: {why}")
                nodes.append(n)
                changed = True
                continue
        w, r, vwhy = vector_width(n)
        if (w, r) != (n.attr.get("vector", 1), n.attr.get("interleave")):
            attrs = {k: v for k, v in n.attr.items() if k != "interleave"}
            n = n.replace(attrs=tuple(sorted({**attrs, "vector": w, **({"interleave": r} if r else {})}.items())))
            ctx.note(f"%{n.outputs[0]} = kernel: vector={w}{f', interleave={r}' if r else ''}: {vwhy}")
            changed = True
        if n.op in SPLITTABLE or _loop_kernel(n):
            k, why = decide(n, types, avail)
            attrs = {key: v for key, v in n.attr.items() if key != "split"}
            if k != attrs.get("threads", 1):
                attrs["threads"] = k
            if k > 1 and n.attr.get("kind") == "gemm":  # which of C's dimensions the tasks share (gemm_split)
                attrs["split"], how = gemm_split(n)
                why += f"; split=\"{attrs['split']}\": {how}"
            ctx.note(f"%{n.outputs[0]} = {n.op}: threads={k}: {why}")
            if attrs != n.attr:
                n = n.replace(attrs=tuple(sorted(attrs.items())))
                changed = True
        elif n.op not in ("reshape", "full"):
            reason = _single_reason(n)
            single.setdefault(reason, []).append(f"%{n.outputs[0]}")
        nodes.append(n)
    for reason, outs in single.items():
        ctx.note(f"{len(outs)} nodes on one thread ({reason}): {', '.join(outs[:8])}{' ...' if len(outs) > 8 else ''}")
    return (g.replace(nodes=tuple(nodes)), True) if changed else (g, False)


SPLITTABLE = SPLIT_OPS


def _plain_gemm(n: Node, types) -> bool:
    """A plain 2-D `linear` or `matmul` node (one BLAS call: the forward's layers and the input
    gradients): the pass makes it a one-member gemm kernel when splitting it pays, so that its
    gemm runs on the pool (OpenBLAS stays at one thread while split kernels keep the pool awake)."""
    return (n.op in ("linear", "matmul") and len(n.outputs) == 1 and n.types[0].dtype in ("f32", "f64")
            and all(len(types[i].shape) in ((1,) if j == 2 else (2,)) for j, i in enumerate(n.inputs)))


def _single_reason(n: Node) -> str:
    if n.op == "kernel":
        impl = n.attr.get("impl")
        return ("loop GEMMs: an addmm's loop nest has no split lowering yet" if impl == "loops" else
                f"fused {n.attr.get('kind')} loops / BLAS: no split lowering yet (BLAS threads itself)")
    return f"{n.op}: no split lowering"
