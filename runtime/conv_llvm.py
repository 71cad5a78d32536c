"""conv2d's "wide" and "im2col" lowerings and the 2-D poolings as LLVM IR generated per node
(runtime/llvm_ops.py).

The same loops as the numba kernels they stand in for (conv_wide.py, kernels_conv.py: read
those for why each loop is shaped as it is), with every shape, stride and flag a constant of the
text: numba took 3 s to compile each of conv2d_wide_forward and conv2d_wide_backward cold
(typing np.dot on reshaped views and its linalg implementation), llvmlite takes tens of
milliseconds per node. What changes besides the compiler:
- the per-tap copies of the wide unroll, the padded plane's rows and its crop are memcpy;
- the padded plane's zero border is written once per call (the forward, and the backward
  without an input gradient, only ever rewrite its interior);
- the backward's dW GEMM accumulates into dW (BLAS beta = 1) instead of a per-group scratch
  added afterwards: the same products, summed in another order within float rounding;
- the GEMMs are Fortran sgemm/dgemm with numba's np.dot transpose flags (C^T = B^T A^T);
- im2col's in-bounds span of each tap is computed in the kernel (integer selects), its rows
  outside the input zeroed by memset.
Accumulations keep numba's types: the bias gradient and the average pools sum in double.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from .conv_direct import wide_geometry
from .llvm_ops import ELEM, FAST, I32, I64, Fn, LlvmCall

SIZE = {"f32": 4, "f64": 8, "i64": 8}
DOUBLE = ir.DoubleType()


def _f(dt: str, v: float) -> ir.Constant:
    return ir.Constant(ELEM[dt], v)


def _to_double(f: Fn, v, dt: str):
    return f.b.fpext(v, DOUBLE) if dt == "f32" else v


def _from_double(f: Fn, v, dt: str):
    return f.b.fptrunc(v, ELEM[dt]) if dt == "f32" else v


def _chunks(f: Fn, N: int, NB: int, body) -> None:
    """body(n0, nb) for each chunk of NB samples (n0 an i64 value or int; nb an int): a loop over
    the full chunks, then the last, smaller one. Split over threads (f.threads > 1): each thread
    runs its share of the chunks (the same chunks, so the same GEMMs, as one thread runs)."""
    full, rest = divmod(N, max(NB, 1))  # NB = 0 only with N = 0: no chunk
    if f.threads > 1:
        total = full + (1 if rest else 0)
        lo, hi = f.share(total)
        b = f.b
        if full:
            end = b.select(b.icmp_unsigned("<", hi, f.c(full)), hi, f.c(full))
            with f.loop(end, lo) as c:
                body(f.mul(c, NB), NB)
        if rest:
            with f.when(b.and_(b.icmp_unsigned("==", hi, f.c(total)), b.icmp_unsigned("<", lo, hi))):
                body(full * NB, rest)
        return
    if full:
        with f.loop(full) as c:
            body(f.mul(c, NB) if not isinstance(c, ir.Constant) else int(c.constant) * NB, NB)
    if rest:
        body(full * NB, rest)


def _mine(f: Fn, ptr, size: int):
    """This thread's slice of a per-thread scratch (threads x size elements); the scratch itself
    with one thread."""
    return ptr if f.threads == 1 else f.at(ptr, f.b.mul(f.thread, f.c(size)))


def _pad_interior(f: Fn, src, xp, C, H, W, Hp, Wp, pt, pl, sz) -> None:
    """xp[c, pt + ih, pl:pl + W] = src[c, ih, :]: the padded plane's interior (its border is zero)."""
    with f.loop(C) as c:
        with f.loop(H) as ih:
            f.memcpy(f.at(xp, f.lin((pt * Wp + pl), (c, Hp * Wp), (ih, Wp))), f.at(src, f.lin(0, (c, H * W), (ih, W))), W, sz)


def _unroll(f: Fn, src, col, BL, k, C, Hp, Wp, KH, KW, L, dh, dw, sz) -> None:
    """col[(c*KH + i)*KW + j, k*L:(k+1)*L] = src[c*Hp*Wp + i*dh*Wp + j*dw:][:L], one memcpy per tap."""
    with f.loop(C) as c:
        with f.loop(KH) as i:
            with f.loop(KW) as j:
                dst = f.lin(0, (c, KH * KW * BL), (i, KW * BL), (j, BL), (k, L))
                f.memcpy(f.at(col, dst), f.at(src, f.lin(0, (c, Hp * Wp), (i, dh * Wp), (j, dw))), L, sz)


def _group_gemms(f: Fn, dt, groups, cols, COg, Kg, col, w, tmp) -> None:
    """tmp_g[COg, cols] = w_g[COg, Kg] @ col_g[Kg, cols] for each group g (the forward's GEMMs)."""
    with f.loop(groups) as g:
        f.gemm(dt, "n", "n", cols, COg, Kg, f.at(col, f.lin(0, (g, Kg * cols))), cols, f.at(w, f.lin(0, (g, COg * Kg))),
               Kg, f.at(tmp, f.lin(0, (g, COg * cols))), cols)


def _bias_relu_row(f: Fn, tmp, t, out, o, count, bv, relu: bool, zero) -> None:
    """out[o + q] = tmp[t + q] + bv (max'd with 0 when relu) for q < count: the forward's epilogue."""
    with f.loop(count) as q:
        v = f.b.fadd(f.load(tmp, f.add(t, q)), bv)
        if relu:
            v = f.b.select(f.b.fcmp_ordered("<", v, zero), zero, v)
        f.store(v, out, f.add(o, q))


def wide_forward(dt, N, C, H, W, CO, KH, KW, OH, OW, pt, pl, dh, dw, groups, has_bias, relu, NB,
                 threads: int = 1) -> LlvmCall:
    """conv_wide.conv2d_wide_forward for one node: arguments x, w, b (w when no bias), out, xp, col, tmp.
    threads > 1: the chunks of samples split over threads, xp, col and tmp one per thread
    (bit-equal to one thread: every sample's GEMM is the same call)."""
    Hp, Wp, L = wide_geometry(OH, OW, KH, KW, dh, dw)
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    padded = Hp != H or Wp != W
    sz = SIZE[dt]
    f = Fn([dt] * 7, f"conv2d wide forward x[{N},{C},{H},{W}] w[{CO},{Cg},{KH},{KW}] -> [{N},{CO},{OH},{OW}], "
                     f"pad ({pt},{pl}) dilation ({dh},{dw}) groups {groups} bias {has_bias} relu {relu}, {NB} samples a GEMM"
                     + _split_note(threads), threads, _tasks(threads, -(-N // max(NB, 1))))
    x, w, b, out, xp, col, tmp = f.args
    nb_max = min(NB or N, N)
    xp, col, tmp = _mine(f, xp, C * Hp * Wp), _mine(f, col, Kg * groups * nb_max * L), _mine(f, tmp, CO * nb_max * L)
    zero = _f(dt, 0.0)
    if padded:
        f.zero(xp, C * Hp * Wp, sz)

    def chunk(n0, nb):
        BL = nb * L
        with f.loop(nb) as k:
            src = f.at(x, f.lin(0, (f.add(n0, k), C * H * W)))
            if padded:
                _pad_interior(f, src, xp, C, H, W, Hp, Wp, pt, pl, sz)
                src = xp
            _unroll(f, src, col, BL, k, C, Hp, Wp, KH, KW, L, dh, dw, sz)
        _group_gemms(f, dt, groups, BL, COg, Kg, col, w, tmp)
        with f.loop(nb) as k:
            n = f.add(n0, k)
            with f.loop(CO) as co:
                bv = f.load(b, co) if has_bias else zero
                with f.loop(OH) as oh:
                    _bias_relu_row(f, tmp, f.lin(0, (co, BL), (k, L), (oh, Wp)), out,
                                   f.lin(0, (n, CO * OH * OW), (co, OH * OW), (oh, OW)), OW, bv, relu, zero)

    _chunks(f, N, NB, chunk)
    return LlvmCall("conv2d_wide_forward", f.text(), tuple([dt] * 7))


def wide_backward(dt, N, C, H, W, CO, KH, KW, OH, OW, pt, pl, dh, dw, groups, relu, input_grad, bias_grad,
                  NB, threads: int = 1) -> LlvmCall:
    """conv_wide.conv2d_wide_backward for one node: arguments gy, x, w, y, dx, dW, db, xp, col, gyw,
    dwt, dcol (placeholders where numba's take them; dwt is not used: dW accumulates in the GEMM).
    threads > 1: the chunks of samples split over threads, xp, col, gyw and dcol one per thread;
    thread 0 accumulates dW and db in place, thread t > 0 in its partial sums in dwt
    ([threads - 1] x (dW, db)), added to dW and db in thread order after the join (another
    summation order than one thread's: equal within float rounding, not bit-equal)."""
    Hp, Wp, L = wide_geometry(OH, OW, KH, KW, dh, dw)
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    padded = Hp != H or Wp != W
    sz = SIZE[dt]
    f = Fn([dt] * 12, f"conv2d wide backward gy[{N},{CO},{OH},{OW}] x[{N},{C},{H},{W}] w[{CO},{Cg},{KH},{KW}], "
                      f"pad ({pt},{pl}) dilation ({dh},{dw}) groups {groups} relu {relu} dx {input_grad} db {bias_grad}, "
                      f"{NB} samples a GEMM" + _split_note(threads), threads,
           backward_tasks(threads, -(-N // max(NB, 1)), CO * Kg + CO, SIZE[dt]))
    gy, x, w, y, dx, dW, db, xp, col, gyw, dwt, dcol = f.args
    nb_max = min(NB or N, N)
    xp, col, dcol = _mine(f, xp, C * Hp * Wp), _mine(f, col, Kg * groups * nb_max * L), _mine(f, dcol, Kg * groups * nb_max * L)
    gyw = _mine(f, gyw, CO * nb_max * L)
    if threads > 1:  # task 0 sums into dW and db, task t > 0 into its slice of dwt
        part = f.at(dwt, f.b.mul(f.b.sub(f.task, f.c(1)), f.c(CO * Kg + CO)))
        first = f.b.icmp_unsigned("==", f.task, f.c(0))
        dW, db = f.b.select(first, dW, part), f.b.select(first, db, f.at(part, CO * Kg))
    zero = _f(dt, 0.0)
    f.zero(dW, CO * Kg, sz)
    if bias_grad:
        f.zero(db, CO, sz)
    f.zero(gyw, CO * nb_max * L, sz)  # junk columns stay zero: every chunk writes only the valid ones
    if padded and not input_grad:
        f.zero(xp, C * Hp * Wp, sz)  # only the interior is rewritten below
    acc = ir.IRBuilder(f.entry).alloca(DOUBLE)

    def chunk(n0, nb):
        BL = nb * L

        with f.loop(CO) as co:
            f.b.store(ir.Constant(DOUBLE, 0.0), acc)
            with f.loop(nb) as k:
                with f.loop(OH) as oh:
                    o = f.lin(0, (f.add(n0, k), CO * OH * OW), (co, OH * OW), (oh, OW))
                    t = f.lin(0, (co, BL), (k, L), (oh, Wp))
                    with f.loop(OW) as q:
                        v = f.load(gy, f.add(o, q))
                        if relu:
                            v = f.b.select(f.b.fcmp_ordered(">", f.load(y, f.add(o, q)), zero), v, zero)
                        f.store(v, gyw, f.add(t, q))
                        if bias_grad:
                            f.b.store(f.b.fadd(f.b.load(acc), _to_double(f, v, dt), flags=FAST), acc)
            if bias_grad:
                s = f.b.fadd(_to_double(f, f.load(db, co), dt), f.b.load(acc))
                f.store(_from_double(f, s, dt), db, co)
        with f.loop(nb) as k:
            src = f.at(x, f.lin(0, (f.add(n0, k), C * H * W)))
            if padded:
                if input_grad:  # the plane also accumulated the last chunk's input gradient
                    f.zero(xp, C * Hp * Wp, sz)
                _pad_interior(f, src, xp, C, H, W, Hp, Wp, pt, pl, sz)
                src = xp
            _unroll(f, src, col, BL, k, C, Hp, Wp, KH, KW, L, dh, dw, sz)
        with f.loop(groups) as g:
            gg = f.at(gyw, f.lin(0, (g, COg * BL)))
            cg = f.at(col, f.lin(0, (g, Kg * BL)))
            f.gemm(dt, "t", "n", Kg, COg, BL, cg, BL, gg, BL, f.at(dW, f.lin(0, (g, COg * Kg))), Kg, beta=1.0)
            if input_grad:
                f.gemm(dt, "n", "t", BL, Kg, COg, gg, BL, f.at(w, f.lin(0, (g, COg * Kg))), Kg,
                       f.at(dcol, f.lin(0, (g, Kg * BL))), BL)
        if not input_grad:
            return
        with f.loop(nb) as k:
            n = f.add(n0, k)
            dst = xp if padded else f.at(dx, f.lin(0, (n, C * H * W)))
            f.zero(dst, C * Hp * Wp, sz)
            with f.loop(C) as c:
                with f.loop(KH) as i:
                    with f.loop(KW) as j:
                        d = f.lin(0, (c, Hp * Wp), (i, dh * Wp), (j, dw))
                        s = f.lin(0, (c, KH * KW * BL), (i, KW * BL), (j, BL), (k, L))
                        with f.loop(L) as p:
                            at = f.at(dst, f.add(d, p))
                            f.b.store(f.b.fadd(f.b.load(at), f.load(dcol, f.add(s, p))), at)
            if padded:
                with f.loop(C) as c:
                    with f.loop(H) as ih:
                        f.memcpy(f.at(dx, f.lin(0, (n, C * H * W), (c, H * W), (ih, W))),
                                 f.at(xp, f.lin(pt * Wp + pl, (c, Hp * Wp), (ih, Wp))), W, sz)

    _chunks(f, N, NB, chunk)
    if threads > 1:
        with f.after_join() as a:
            _add_partials(f, a[5], a[6] if bias_grad else None, a[10], CO * Kg, CO, f.tasks, dt)
    return LlvmCall("conv2d_wide_backward", f.text(), tuple([dt] * 12))


def _split_note(threads: int) -> str:
    return f", split over {threads} threads" if threads > 1 else ""


TASKS_PER_THREAD = 4  # a split kernel's tasks: a worker the OS deschedules holds back one task, not a half
PARTIAL_BYTES = 1 << 20  # the backward's partial dW+db sums (one per task but the first) stay under this


def _tasks(threads: int, units: int) -> int:
    """Tasks of a split kernel: TASKS_PER_THREAD per thread, at most one per unit (chunk, plane)."""
    return max(1, min(units, TASKS_PER_THREAD * threads)) if threads > 1 else 1


def backward_tasks(threads: int, chunks: int, partial: int, size: int) -> int:
    """Tasks of a split conv2d_backward: as _tasks, fewer where the partial sums of dW and db
    (`partial` elements of `size` bytes for each task but the first) would pass PARTIAL_BYTES,
    but never fewer than the threads."""
    t = _tasks(threads, chunks)
    while t > threads and (t - 1) * partial * size > PARTIAL_BYTES:
        t -= 1
    return t


def _add_partials(f: Fn, dW, db, dwt, nw: int, nb: int, tasks: int, dt: str) -> None:
    """dW += dwt[t][:nw] and db += dwt[t][nw:nw + nb] for t = 1..tasks-1, in that order."""
    for t in range(tasks - 1):
        base = t * (nw + nb)
        with f.loop(nw) as i:
            f.store(f.b.fadd(f.load(dW, i), f.load(dwt, f.add(i, base))), dW, i)
        if db is not None:
            with f.loop(nb) as i:
                f.store(f.b.fadd(f.load(db, i), f.load(dwt, f.add(i, base + nw))), db, i)



# ------------------------------------------------------------------ im2col (strided convs)


def _floordiv(f: Fn, a, k: int):
    """Python's a // k of an i64 a and a constant k > 0 (sdiv truncates toward zero)."""
    b = f.b
    neg = b.sub(f.c(0), b.sdiv(b.add(b.sub(f.c(0), a), f.c(k - 1)), f.c(k)))
    return b.select(b.icmp_signed(">=", a, f.c(0)), b.sdiv(a, f.c(k)), neg)


def _span(f: Fn, j, OW, W, sw, dw, pl):
    """kernels_conv._span for tap column j: (off, lo, hi), the outputs ow whose input column
    ow*sw + off lies in [0, W), with 0 <= lo <= hi <= OW."""
    b = f.b
    off = b.sub(f.i(f.lin(0, (j, dw))), f.c(pl))
    lo = b.sub(f.c(0), _floordiv(f, off, sw))
    lo = b.select(b.icmp_signed(">", lo, f.c(0)), lo, f.c(0))
    # at most OW: with more padding than input (W=1, KW=3, pl=2) the first tap's span starts past
    # the row, and memset(cr, lo) / memset(cr + hi, OW - hi) would write beyond it (numba's slices clamp)
    lo = b.select(b.icmp_signed("<", lo, f.c(OW)), lo, f.c(OW))
    room = b.sub(f.c(W - 1), off)
    hi = b.add(_floordiv(f, room, sw), f.c(1))
    hi = b.select(b.icmp_signed("<", hi, f.c(OW)), hi, f.c(OW))
    hi = b.select(b.icmp_signed(">=", room, f.c(0)), hi, f.c(0))
    hi = b.select(b.icmp_signed(">", hi, lo), hi, lo)
    return off, lo, hi


def _im2col_taps(f: Fn, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, body) -> None:
    """For each tap (c, i, j) and output row oh whose input row ih is inside: body(c, i, j, oh, ih,
    off, lo, hi); rows outside go to body with ih None (im2col zeroes them, col2im skips them)."""
    b = f.b
    with f.loop(C) as c:
        with f.loop(KH) as i:
            with f.loop(KW) as j:
                off, lo, hi = _span(f, j, OW, W, sw, dw, pl)
                with f.loop(OH) as oh:
                    ih = b.add(b.sub(f.i(f.lin(0, (oh, sh))), f.c(pt)), f.i(f.lin(0, (i, dh))))
                    inside = b.and_(b.icmp_signed(">=", ih, f.c(0)), b.icmp_signed("<", ih, f.c(H)))
                    with b.if_else(inside) as (then, other):
                        with then:
                            body(c, i, j, oh, ih, off, lo, hi)
                        with other:
                            body(c, i, j, oh, None, off, lo, hi)


def _im2col(f: Fn, x, xo, col, BP, co, dt, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw) -> None:
    """kernels_conv._im2col: col[(c*KH + i)*KW + j, co + oh*OW + ow] = x[xo + (c*H + ih)*W + iw], 0 outside."""
    b = f.b

    def row(c, i, j, oh, ih, off, lo, hi):
        r = f.i(f.lin(co, (c, KH * KW * BP), (i, KW * BP), (j, BP), (oh, OW)))
        cr = f.at(col, r)
        if ih is None:
            f.zero(cr, OW, SIZE[dt])
            return
        f.zero(cr, lo, SIZE[dt])
        f.zero(f.at(cr, hi), f.b.sub(f.c(OW), hi), SIZE[dt])
        xr = b.add(f.i(xo), b.add(f.i(f.lin(0, (c, H * W))), b.mul(ih, f.c(W))))
        with _range(f, lo, hi) as ow:
            f.store(f.load(x, b.add(xr, b.add(b.mul(ow, f.c(sw)), off))), cr, ow)

    _im2col_taps(f, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, row)


@contextmanager
def _range(f: Fn, lo, hi):
    """for i in range(lo, hi) with i64 bounds computed in the kernel (a tap's in-bounds span)."""
    b = f.b
    pre = b.block
    head, body, latch, done = (b.append_basic_block(n) for n in ("loop", "body", "latch", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, "i")
    i.add_incoming(lo, pre)
    b.cbranch(b.icmp_signed("<", i, hi), body, done)
    b.position_at_end(body)
    yield i
    b.branch(latch)
    b.position_at_end(latch)
    i.add_incoming(b.add(i, f.c(1), flags=["nsw"]), latch)
    b.branch(head)
    b.position_at_end(done)


def _col2im(f: Fn, dcol, BP, co, dx, xo, dt, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw) -> None:
    """kernels_conv._col2im: dx[xo + ...] += every window element of dcol's columns co.."""
    b = f.b

    def row(c, i, j, oh, ih, off, lo, hi):
        if ih is None:
            return
        r = f.i(f.lin(co, (c, KH * KW * BP), (i, KW * BP), (j, BP), (oh, OW)))
        xr = b.add(f.i(xo), b.add(f.i(f.lin(0, (c, H * W))), b.mul(ih, f.c(W))))
        with _range(f, lo, hi) as ow:
            p = f.at(dx, b.add(xr, b.add(b.mul(ow, f.c(sw)), off)))
            b.store(b.fadd(b.load(p), f.load(dcol, b.add(r, ow))), p)

    _im2col_taps(f, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, row)


def im2col_forward(dt, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, groups, has_bias, relu,
                   NB, threads: int = 1) -> LlvmCall:
    """kernels_conv.conv2d_forward for one node: arguments x, w, b (w when no bias), out, col, tmp.
    threads > 1: as wide_forward (the chunks split, col and tmp one per thread; bit-equal)."""
    P = OH * OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    f = Fn([dt] * 6, f"conv2d im2col forward x[{N},{C},{H},{W}] w[{CO},{Cg},{KH},{KW}] -> [{N},{CO},{OH},{OW}], "
                     f"stride ({sh},{sw}) pad ({pt},{pl}) dilation ({dh},{dw}) groups {groups} bias {has_bias} "
                     f"relu {relu}, {NB} samples a GEMM" + _split_note(threads), threads, _tasks(threads, -(-N // max(NB, 1))))
    x, w, b, out, col, tmp = f.args
    nb_max = min(NB or N, N)
    col, tmp = _mine(f, col, C * KH * KW * nb_max * P), _mine(f, tmp, CO * nb_max * P)
    zero = _f(dt, 0.0)
    geo = (C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)

    def chunk(n0, nb):
        BP = nb * P
        with f.loop(nb) as k:
            _im2col(f, x, f.lin(0, (f.add(n0, k), C * H * W)), col, BP, f.lin(0, (k, P)), dt, *geo)
        _group_gemms(f, dt, groups, BP, COg, Kg, col, w, tmp)
        with f.loop(nb) as k:
            with f.loop(CO) as co:
                bv = f.load(b, co) if has_bias else zero
                _bias_relu_row(f, tmp, f.lin(0, (co, BP), (k, P)), out, f.lin(0, (f.add(n0, k), CO * P), (co, P)), P,
                               bv, relu, zero)

    _chunks(f, N, NB, chunk)
    return LlvmCall("conv2d_forward", f.text(), tuple([dt] * 6))


def im2col_backward(dt, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, groups, relu, input_grad,
                    bias_grad, NB, threads: int = 1) -> LlvmCall:
    """kernels_conv.conv2d_backward_kernel for one node: arguments gy, x, w, y, dx, dW, db, col, gyt,
    dwt, dcol (placeholders where numba's take them; dW accumulates in the GEMM, dwt is not used).
    threads > 1: as wide_backward (the chunks split, col, gyt and dcol one per thread, dW and db
    summed per task in dwt and added after the join; each chunk zeroes its own samples' dx)."""
    P = OH * OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    f = Fn([dt] * 11, f"conv2d im2col backward gy[{N},{CO},{OH},{OW}] x[{N},{C},{H},{W}] w[{CO},{Cg},{KH},{KW}], "
                      f"stride ({sh},{sw}) pad ({pt},{pl}) dilation ({dh},{dw}) groups {groups} relu {relu} "
                      f"dx {input_grad} db {bias_grad}, {NB} samples a GEMM" + _split_note(threads), threads,
           backward_tasks(threads, -(-N // max(NB, 1)), CO * Kg + CO, SIZE[dt]))
    gy, x, w, y, dx, dW, db, col, gyt, dwt, dcol = f.args
    nb_max = min(NB or N, N)
    col, dcol = _mine(f, col, C * KH * KW * nb_max * P), _mine(f, dcol, C * KH * KW * nb_max * P)
    gyt = _mine(f, gyt, CO * nb_max * P)
    if threads > 1:  # task 0 sums into dW and db, task t > 0 into its slice of dwt
        part = f.at(dwt, f.b.mul(f.b.sub(f.task, f.c(1)), f.c(CO * Kg + CO)))
        first = f.b.icmp_unsigned("==", f.task, f.c(0))
        dW, db = f.b.select(first, dW, part), f.b.select(first, db, f.at(part, CO * Kg))
    zero = _f(dt, 0.0)
    sz = SIZE[dt]
    geo = (C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)
    f.zero(dW, CO * Kg, sz)
    if bias_grad:
        f.zero(db, CO, sz)
    if input_grad and threads == 1:
        f.zero(dx, N * C * H * W, sz)
    acc = ir.IRBuilder(f.entry).alloca(DOUBLE)

    def chunk(n0, nb):
        BP = nb * P
        with f.loop(CO) as co:
            f.b.store(ir.Constant(DOUBLE, 0.0), acc)
            with f.loop(nb) as k:
                o = f.lin(0, (f.add(n0, k), CO * P), (co, P))
                t = f.lin(0, (co, BP), (k, P))
                with f.loop(P) as p:
                    v = f.load(gy, f.add(o, p))
                    if relu:
                        v = f.b.select(f.b.fcmp_ordered(">", f.load(y, f.add(o, p)), zero), v, zero)
                    f.store(v, gyt, f.add(t, p))
                    if bias_grad:
                        f.b.store(f.b.fadd(f.b.load(acc), _to_double(f, v, dt), flags=FAST), acc)
            if bias_grad:
                f.store(_from_double(f, f.b.fadd(_to_double(f, f.load(db, co), dt), f.b.load(acc)), dt), db, co)
        with f.loop(nb) as k:
            _im2col(f, x, f.lin(0, (f.add(n0, k), C * H * W)), col, BP, f.lin(0, (k, P)), dt, *geo)
        with f.loop(groups) as g:
            gg = f.at(gyt, f.lin(0, (g, COg * BP)))
            cg = f.at(col, f.lin(0, (g, Kg * BP)))
            f.gemm(dt, "t", "n", Kg, COg, BP, cg, BP, gg, BP, f.at(dW, f.lin(0, (g, COg * Kg))), Kg, beta=1.0)
            if input_grad:
                f.gemm(dt, "n", "t", BP, Kg, COg, gg, BP, f.at(w, f.lin(0, (g, COg * Kg))), Kg,
                       f.at(dcol, f.lin(0, (g, Kg * BP))), BP)
        if input_grad:
            if threads > 1:  # this chunk's samples of dx (one thread zeroes all of dx first)
                f.zero(f.at(dx, f.mul(n0, C * H * W) if not isinstance(n0, int) else n0 * C * H * W), nb * C * H * W, sz)
            with f.loop(nb) as k:
                _col2im(f, dcol, BP, f.lin(0, (k, P)), dx, f.lin(0, (f.add(n0, k), C * H * W)), dt, *geo)

    _chunks(f, N, NB, chunk)
    if threads > 1:
        with f.after_join() as a:
            _add_partials(f, a[5], a[6] if bias_grad else None, a[9], CO * Kg, CO, f.tasks, dt)
    return LlvmCall("conv2d_backward", f.text(), tuple([dt] * 11))

# ------------------------------------------------------------------ pooling


def _better(f: Fn, v, best):
    """kernels_conv._better: v > best, or v is NaN and best is not (the first NaN wins)."""
    b = f.b  # (v > best or v is NaN) and best is not NaN: two compares
    return b.and_(b.fcmp_unordered(">", v, best), b.fcmp_ordered("ord", best, best))


def max_pool2d(dt, NC, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, threads: int = 1) -> LlvmCall:
    """max_pool2d_forward (max_pool2d_2x2's unrolled window for 2x2 windows without padding or
    dilation): arguments x, y, idx (i64, the argmax as h * W + w). threads > 1: the planes split
    over threads (bit-equal: each plane's windows are the same)."""
    two = (KH, KW, dh, dw, pt, pl) == (2, 2, 1, 1, 0, 0)
    f = Fn([dt, dt, "i64"], f"max_pool2d x[{NC},{H},{W}] -> [{NC},{OH},{OW}] window ({KH},{KW}) stride ({sh},{sw}) "
                            f"pad ({pt},{pl}) dilation ({dh},{dw})" + _split_note(threads), threads, _tasks(threads, NC))
    x, y, idx = f.args
    b = f.b
    lo, hi = f.share(NC)
    if two and (sh, sw) == (2, 2) and OW >= 4:
        with f.loop(hi, lo) as q:
            with f.loop(OH) as oh:
                _pool2x2_row(f, x, y, idx, q, oh, H, W, OH, OW, dt)
        return LlvmCall("max_pool2d", f.text(), (dt, dt, "i64"))
    with f.loop(hi, lo) as q:
        with f.loop(OH) as oh:
            with f.loop(OW) as ow:
                xo = f.lin(0, (q, H * W))
                o = f.lin(0, (q, OH * OW), (oh, OW), (ow, 1))
                if two:
                    p = f.lin(0, (oh, sh * W), (ow, sw))
                    best, arg = f.load(x, f.add(xo, p)), f.i(p)
                    for d in (1, W, W + 1):
                        p2 = f.add(p, d) if not isinstance(p, int) else f.c(p + d)
                        v = f.load(x, f.add(xo, p2))
                        take = _better(f, v, best)
                        best, arg = b.select(take, v, best), b.select(take, p2, arg)
                else:
                    best, arg = _window_max(f, x, xo, oh, ow, H, W, KH, KW, sh, sw, pt, pl, dh, dw, dt)
                f.store(best, y, o)
                f.store(arg, idx, o)
    return LlvmCall("max_pool2d", f.text(), (dt, dt, "i64"))


def _vec_spans(OW: int) -> list[tuple[int, int]]:
    """(first output, lanes) of a row of OW outputs: vectors of 8, then of 4, then single lanes."""
    spans, o = [], 0
    for v in (8, 4):
        while OW - o >= v:
            spans.append((o, v))
            o += v
    return spans + [(k, 1) for k in range(o, OW)]


def _lanes(f: Fn, ty, vals):
    """A vector constant (or the scalar for one lane)."""
    return ir.Constant(ty, vals[0]) if len(vals) == 1 else ir.Constant(ir.VectorType(ty, len(vals)), vals)


def _vload(f: Fn, ptr, at, n: int):
    """n consecutive elements at ptr[at] (a vector, or the scalar for n = 1)."""
    p = f.at(ptr, at)
    if n == 1:
        return f.b.load(p)
    return f.b.load(f.b.bitcast(p, ir.VectorType(p.type.pointee, n).as_pointer()), align=1)


def _vstore(f: Fn, val, ptr, at, n: int) -> None:
    p = f.at(ptr, at)
    if n == 1:
        f.b.store(val, p)
    else:
        f.b.store(val, f.b.bitcast(p, ir.VectorType(p.type.pointee, n).as_pointer()), align=1)


def _deinterleave(f: Fn, v, n: int):
    """(even lanes, odd lanes) of a 2n-lane vector (the scalar pair's loads for n = 1)."""
    even = f.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(0, 2 * n, 2))))
    odd = f.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(1, 2 * n, 2))))
    return even, odd


def _pool2x2_row(f: Fn, x, y, idx, q, oh, H, W, OH, OW, dt) -> None:
    """One output row of a 2x2 stride-2 max pool, 8 or 4 windows at a time: each input row pair
    loaded as vectors and split into even and odd columns, the window's four taps compared in
    max_pool2d_2x2's order (p, p+1, p+W, p+W+1) with its rule (_better), as selects on lanes.
    The same values and indices as the scalar loop, bit for bit."""
    b = f.b
    xo = f.lin(0, (q, H * W), (oh, 2 * W))  # the row pair's first element
    o = f.lin(0, (q, OH * OW), (oh, OW))
    p0 = f.lin(0, (oh, 2 * W))  # index of the row pair's first element in its plane
    for ow0, n in _vec_spans(OW):
        if n == 1:
            r0a, r0b = f.load(x, f.add(xo, 2 * ow0)), f.load(x, f.add(xo, 2 * ow0 + 1))
            r1a, r1b = f.load(x, f.add(xo, W + 2 * ow0)), f.load(x, f.add(xo, W + 2 * ow0 + 1))
        else:
            r0a, r0b = _deinterleave(f, _vload(f, x, f.add(xo, 2 * ow0), 2 * n), n)
            r1a, r1b = _deinterleave(f, _vload(f, x, f.add(xo, W + 2 * ow0), 2 * n), n)
        base = [2 * (ow0 + k) for k in range(n)]
        pv = p0 if isinstance(p0, int) else (b.insert_element(ir.Constant(ir.VectorType(I64, n), None), p0, f.c(0))
                                             if n > 1 else p0)
        if n > 1 and not isinstance(p0, int):
            pv = b.shuffle_vector(pv, pv, ir.Constant(ir.VectorType(I32, n), [0] * n))  # splat

        def at(d):
            offs = _lanes(f, I64, [v + d for v in base])
            if isinstance(p0, int):
                return _lanes(f, I64, [p0 + v + d for v in base])
            return b.add(pv, offs)

        best, arg = r0a, at(0)
        for v, d in ((r0b, 1), (r1a, W), (r1b, W + 1)):
            take = _better(f, v, best)
            best, arg = b.select(take, v, best), b.select(take, at(d), arg)
        _vstore(f, best, y, f.add(o, ow0), n)
        _vstore(f, arg, idx, f.add(o, ow0), n)


def _window_max(f: Fn, x, xo, oh, ow, H, W, KH, KW, sh, sw, pt, pl, dh, dw, dt):
    """The window's max and argmax, the window unrolled: out-of-range taps are never taken (their
    load reads the window's clamped position)."""
    b = f.b
    best, arg = _f(dt, float("-inf")), f.c(-1)
    ih0 = b.sub(f.i(f.lin(0, (oh, sh))), f.c(pt))
    iw0 = b.sub(f.i(f.lin(0, (ow, sw))), f.c(pl))
    for i in range(KH):
        ih = b.add(ih0, f.c(i * dh))
        okh = b.and_(b.icmp_signed(">=", ih, f.c(0)), b.icmp_signed("<", ih, f.c(H)))
        for j in range(KW):
            iw = b.add(iw0, f.c(j * dw))
            ok = b.and_(okh, b.and_(b.icmp_signed(">=", iw, f.c(0)), b.icmp_signed("<", iw, f.c(W))))
            p = b.add(b.mul(ih, f.c(W)), iw)
            v = f.load(x, b.add(xo if not isinstance(xo, int) else f.c(xo), b.select(ok, p, f.c(0))))
            take = b.and_(ok, b.or_(_better(f, v, best), b.icmp_signed("<", arg, f.c(0))))
            best, arg = b.select(take, v, best), b.select(take, p, arg)
    return best, arg


def max_pool2d_scatter(dt, NC, HW, P, threads: int = 1, tiles=None) -> LlvmCall:
    """kernels_conv.max_pool2d_scatter: dx = 0, then dx[q, idx[q, p]] += gy[q, p]. Arguments gy, idx, dx.
    threads > 1: the planes split over threads (each index points into its own plane: bit-equal).
    tiles = (H, W, OH, OW) when 2x2 windows of stride 2 tile the plane exactly (H = 2 OH,
    W = 2 OW): each dx element is written once, 0 + gy where the index is its own, else 0
    (_unpool2x2_row), with no memset and no scattered read-modify-write; the same bits."""
    f = Fn([dt, "i64", dt], f"max_pool2d backward [{NC},{P}] -> [{NC},{HW}]" + _split_note(threads), threads,
           _tasks(threads, NC))
    gy, idx, dx = f.args
    lo, hi = f.share(NC)
    if tiles is not None and tiles[3] >= 4:
        with f.loop(hi, lo) as q:
            with f.loop(tiles[2]) as oh:
                _unpool2x2_row(f, gy, idx, dx, q, oh, *tiles, dt)
        return LlvmCall("max_pool2d_scatter", f.text(), (dt, "i64", dt))
    if threads == 1:
        f.zero(dx, NC * HW, SIZE[dt])
    else:
        f.zero(f.at(dx, f.b.mul(lo, f.c(HW))), f.b.mul(f.b.sub(hi, lo), f.c(HW)), SIZE[dt])
    with f.loop(hi, lo) as q:
        with f.loop(P) as p:
            o = f.lin(0, (q, P), (p, 1))
            i = f.load(idx, o)
            # -1: a window wholly in the padding (dilated windows over a thin input) took no
            # element; it adds nothing (numba's index wrapped around, this would write before dx)
            with f.when(f.b.icmp_signed(">=", i, f.c(0))):
                at = f.at(dx, f.add(f.i(f.lin(0, (q, HW))), i))
                f.b.store(f.b.fadd(f.b.load(at), f.load(gy, o)), at)
    return LlvmCall("max_pool2d_scatter", f.text(), (dt, "i64", dt))


def _interleave(f: Fn, a, c, n: int):
    """The 2n-lane vector a0 c0 a1 c1 ... of two n-lane vectors."""
    mask = [k // 2 + (n if k % 2 else 0) for k in range(2 * n)]
    return f.b.shuffle_vector(a, c, ir.Constant(ir.VectorType(I32, 2 * n), mask))


def _unpool2x2_row(f: Fn, gy, idx, dx, q, oh, H, W, OH, OW, dt) -> None:
    """One output row's windows of a tiling 2x2 stride-2 max pool's backward, 8 or 4 at a time:
    tap d of window p gets 0 + g where idx = p + d, else 0 (0 + g as the scatter's dx = 0; dx +=
    g computes: -0.0 stays 0.0), written as two interleaved input rows."""
    b = f.b
    o = f.lin(0, (q, OH * OW), (oh, OW))
    xo = f.lin(0, (q, H * W), (oh, 2 * W))
    p0 = f.lin(0, (oh, 2 * W))
    for ow0, n in _vec_spans(OW):
        g, ix = _vload(f, gy, f.add(o, ow0), n), _vload(f, idx, f.add(o, ow0), n)
        zero = _lanes(f, ELEM[dt], [0.0] * n)
        g = b.fadd(zero, g)
        if n > 1 and not isinstance(p0, int):
            pv = b.insert_element(ir.Constant(ir.VectorType(I64, n), None), p0, f.c(0))
            pv = b.shuffle_vector(pv, pv, ir.Constant(ir.VectorType(I32, n), [0] * n))
        else:
            pv = p0

        def tap(d):
            offs = [2 * (ow0 + k) + d for k in range(n)]
            at = _lanes(f, I64, [p0 + v for v in offs]) if isinstance(p0, int) else (
                b.add(pv, _lanes(f, I64, offs)) if n > 1 else b.add(p0, f.c(offs[0])))
            return b.select(b.icmp_signed("==", ix, at), g, zero)

        for row, (d0, d1) in enumerate(((0, 1), (W, W + 1))):
            a, c = tap(d0), tap(d1)
            start = f.add(xo, row * W + 2 * ow0)
            if n == 1:
                f.store(a, dx, start)
                f.store(c, dx, f.add(start, 1) if not isinstance(start, int) else start + 1)
            else:
                _vstore(f, _interleave(f, a, c, n), dx, start, 2 * n)


def adaptive_pool(dt, NC, H, W, OH, OW, backward: bool) -> LlvmCall:
    """adaptive_pool_forward / adaptive_pool_spread: every window's bounds are constants here
    (floor(o*H/OH), ceil((o+1)*H/OH)), the sum in double as numba's. Arguments x, y or gy, dx."""
    f = Fn([dt, dt], f"adaptive_avg_pool2d{' backward' if backward else ''} [{NC},{H},{W}] <-> [{NC},{OH},{OW}]")
    a, o = f.args
    b = f.b
    if backward:
        f.zero(o, NC * H * W, SIZE[dt])
    with f.loop(NC) as q:
        for oh in range(OH):
            h0, h1 = (oh * H) // OH, -((-(oh + 1) * H) // OH)
            for ow in range(OW):
                w0, w1 = (ow * W) // OW, -((-(ow + 1) * W) // OW)
                count = float((h1 - h0) * (w1 - w0))
                at = f.lin(oh * OW + ow, (q, OH * OW))
                if backward:
                    g = b.fdiv(_to_double(f, f.load(a, at), dt), ir.Constant(DOUBLE, count))
                    with f.loop(h1, h0) as ih:
                        with f.loop(w1, w0) as iw:
                            p = f.at(o, f.lin(0, (q, H * W), (ih, W), (iw, 1)))
                            b.store(_from_double(f, b.fadd(_to_double(f, b.load(p), dt), g), dt), p)
                    continue
                _mean_window(f, a, o, q, at, h0, h1, w0, w1, H, W, count, dt)
    return LlvmCall("adaptive_pool_spread" if backward else "adaptive_pool_forward", f.text(), (dt, dt))


def _mean_window(f: Fn, x, y, q, at, h0, h1, w0, w1, H, W, count, dt) -> None:
    """y[at] = the sum of x[q, h0:h1, w0:w1] (in double, in numba's order) / count."""
    b = f.b
    acc = ir.IRBuilder(f.entry).alloca(DOUBLE)
    b.store(ir.Constant(DOUBLE, 0.0), acc)
    with f.loop(h1, h0) as ih:
        with f.loop(w1, w0) as iw:
            v = _to_double(f, f.load(x, f.lin(0, (q, H * W), (ih, W), (iw, 1))), dt)
            b.store(b.fadd(b.load(acc), v), acc)
    f.store(_from_double(f, b.fdiv(b.load(acc), ir.Constant(DOUBLE, count)), dt), y, at)



def avg_pool2d(dt, NC, H, W, KH, KW, OH, OW, sh, sw, pt, pl, include_pad, backward: bool) -> LlvmCall:
    """avg_pool2d_forward / avg_pool2d_spread with the window written out (KH*KW taps, each
    checked against the input's bounds), the count as _window_count's, sums in double as
    numba's. Arguments x, y or gy, dx."""
    f = Fn([dt, dt], f"avg_pool2d{' backward' if backward else ''} [{NC},{H},{W}] <-> [{NC},{OH},{OW}] window "
                     f"({KH},{KW}) stride ({sh},{sw}) pad ({pt},{pl}) count_include_pad {include_pad}")
    a, o = f.args
    b = f.b
    if backward:
        f.zero(o, NC * H * W, SIZE[dt])
    acc = ir.IRBuilder(f.entry).alloca(DOUBLE)

    def smax(u, v):
        return b.select(b.icmp_signed(">", u, v), u, v)

    def smin(u, v):
        return b.select(b.icmp_signed("<", u, v), u, v)

    with f.loop(NC) as q:
        with f.loop(OH) as oh:
            with f.loop(OW) as ow:
                h0 = b.sub(f.i(f.lin(0, (oh, sh))), f.c(pt))
                w0 = b.sub(f.i(f.lin(0, (ow, sw))), f.c(pl))
                if include_pad:
                    count = ir.Constant(DOUBLE, float(KH * KW))
                else:
                    hc = b.sub(smin(b.add(h0, f.c(KH)), f.c(H)), smax(h0, f.c(0)))
                    wc = b.sub(smin(b.add(w0, f.c(KW)), f.c(W)), smax(w0, f.c(0)))
                    count = b.sitofp(b.mul(hc, wc), DOUBLE)
                at = f.lin(0, (q, OH * OW), (oh, OW), (ow, 1))
                xo = f.i(f.lin(0, (q, H * W)))
                if backward:
                    g = b.fdiv(_to_double(f, f.load(a, at), dt), count)
                else:
                    b.store(ir.Constant(DOUBLE, 0.0), acc)
                for i in range(KH):
                    ih = b.add(h0, f.c(i))
                    okh = b.and_(b.icmp_signed(">=", ih, f.c(0)), b.icmp_signed("<", ih, f.c(H)))
                    for j in range(KW):
                        iw = b.add(w0, f.c(j))
                        ok = b.and_(okh, b.and_(b.icmp_signed(">=", iw, f.c(0)), b.icmp_signed("<", iw, f.c(W))))
                        with f.when(ok):
                            p = f.at(o if backward else a, b.add(xo, b.add(b.mul(ih, f.c(W)), iw)))
                            if backward:
                                b.store(_from_double(f, b.fadd(_to_double(f, b.load(p), dt), g), dt), p)
                            else:
                                b.store(b.fadd(b.load(acc), _to_double(f, b.load(p), dt)), acc)
                if not backward:
                    f.store(_from_double(f, b.fdiv(b.load(acc), count), dt), o, at)
    return LlvmCall("avg_pool2d_spread" if backward else "avg_pool2d_forward", f.text(), (dt, dt))

__all__ = ["wide_forward", "wide_backward", "max_pool2d", "max_pool2d_scatter", "adaptive_pool", "avg_pool2d"]
