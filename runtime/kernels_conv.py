"""Native kernels of conv2d and the 2-D poolings (ops in graphc/ir/ops_conv.py), registered in
kernels.KERNELS like every other op's.

conv2d has two lowerings, chosen per node by passes/conv.py and written on it as `algo`:
- "im2col": the windows of `chunk` samples are unrolled into a [C*kh*kw, NB*OH*OW] scratch
  matrix and one GEMM per group computes [O/groups, NB*OH*OW]; one pass then writes that back
  in NCHW order with the bias (and relu) epilogue. Chunks rather than the whole batch: one
  chunk's matrix stays in cache between im2col writing it and the GEMM reading it (LeNet's
  conv2: 1.2 ms in chunks of 8 samples against 2.1 ms for the batch of 64). Chunks of several
  samples rather than one: each BLAS call pays a thread hand-off on this machine (32 per-sample
  GEMMs, 64x288x64, took 9x as long as one batched GEMM). The backward rebuilds the windows
  instead of saving them (the saved matrix would be kh*kw times the input): dW += gy col^T and
  dcol = W^T gy, which col2im adds into dx, chunk by chunk.
- "direct": stride-1 loop nests over wide rows, in conv_direct.py.
- "wide": stride-1 im2col in the direct loops' wide-row layout (one contiguous copy per tap),
  then BLAS, in conv_wide.py.
The scratch of both is the memory plan's (`scratch=`), so a step allocates nothing.
Pooling kernels are direct loop nests: they are memory-bound and have no GEMM inside.

Which code runs: the "wide" and "im2col" convs and every pooling are generated as LLVM IR for
the node (runtime/conv_llvm.py: the same loops with the node's shapes as constants, compiled by
llvmlite in tens of ms where numba took seconds per kernel on a cold start); the numba functions
here are what runs under GRAPHC_LLVM=0, GRAPHC_OP_LLVM=0 and NUMBA_DISABLE_JIT, and "direct".
"""
from __future__ import annotations

import numpy as np
from numba import njit

from graphc.ir import TensorType

from . import conv_llvm
from .conv_direct import conv2d_direct_backward, conv2d_direct_forward, wide_geometry
from .llvm_ops import use_llvm
from .conv_wide import conv2d_wide_backward, conv2d_wide_forward
from .kernels import JIT, kernel

__all__ = ["conv2d_forward", "conv2d_backward_kernel", "conv2d_wide_forward", "conv2d_wide_backward", "max_pool2d_forward", "max_pool2d_2x2", "max_pool2d_scatter",
           "avg_pool2d_forward", "avg_pool2d_spread", "adaptive_pool_forward", "adaptive_pool_spread"]


@njit(inline="always", **JIT)
def _span(OW, W, sw, off):
    """The outputs ow whose input column ow*sw + off lies inside [0, W): [lo, hi)."""
    lo = max(0, -(off // sw))
    hi = min(OW, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
    return lo, max(lo, hi)


@njit(inline="always", **JIT)
def _im2col(x, xo, col, ld, co, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """col[(c*KH + i)*KW + j, co + oh*OW + ow] = x[xo + (c*H + ih)*W + iw] (0 outside the input);
    ld is col's row length, co this sample's first column. Rows go through slice views and the
    in-bounds span is computed once per tap, so the copy loop has no branch and no negative-index
    check (LLVM vectorizes it at stride 1)."""
    zero = col.dtype.type(0)
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = ((c * KH + i) * KW + j) * ld + co
                off = j * dw - pl
                lo, hi = _span(OW, W, sw, off)
                for oh in range(OH):
                    ih = oh * sh - pt + i * dh
                    cr = col[r + oh * OW:r + oh * OW + OW]
                    if ih < 0 or ih >= H:
                        cr[:] = zero
                        continue
                    xr = x[xo + (c * H + ih) * W:xo + (c * H + ih + 1) * W]
                    cr[:lo] = zero
                    cr[hi:] = zero
                    for ow in range(lo, hi):
                        cr[ow] = xr[ow * sw + off]


@njit(inline="always", **JIT)
def _col2im(dcol, ld, co, dx, xo, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """dx[xo + ...] += every window element of dcol's columns co.. (the adjoint of _im2col)."""
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = ((c * KH + i) * KW + j) * ld + co
                off = j * dw - pl
                lo, hi = _span(OW, W, sw, off)
                for oh in range(OH):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    xr = dx[xo + (c * H + ih) * W:xo + (c * H + ih + 1) * W]
                    cr = dcol[r + oh * OW:r + oh * OW + OW]
                    for ow in range(lo, hi):
                        xr[ow * sw + off] += cr[ow]


@njit(**JIT)
def conv2d_forward(x, w, b, out, col, tmp, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, groups,
                   has_bias, relu, NB):
    """NB samples at a time: col = im2col(x) [C*kh*kw, NB*OH*OW]; tmp = W_g @ col_g (one GEMM per
    group); then one pass writes tmp back in NCHW order with the bias (and relu) epilogue."""
    P = OH * OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    zero = out.dtype.type(0)
    for n0 in range(0, N, NB):
        nb = min(NB, N - n0)
        BP = nb * P
        for k in range(nb):
            _im2col(x, (n0 + k) * C * H * W, col, BP, k * P, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)
        for g in range(groups):
            wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
            cg = col[g * Kg * BP:(g + 1) * Kg * BP].reshape((Kg, BP))
            np.dot(wg, cg, tmp[g * COg * BP:(g + 1) * COg * BP].reshape((COg, BP)))
        for k in range(nb):
            for co in range(CO):
                o = ((n0 + k) * CO + co) * P
                t = co * BP + k * P
                o_row, t_row = out[o:o + P], tmp[t:t + P]
                bv = b[co] if has_bias else zero
                for p in range(P):
                    v = t_row[p] + bv
                    o_row[p] = zero if relu and v < zero else v


@njit(**JIT)
def conv2d_backward_kernel(gy, x, w, y, dx, dw, db, col, gyt, dwt, dcol, N, C, H, W, CO, KH, KW, OH, OW, sh, sw,
                           pt, pl, dh, dw_, groups, relu, input_grad, bias_grad, NB):
    """NB samples at a time: gyt = gy as [O, NB*OH*OW] (masked where y <= 0 with relu; db summed on
    the way); dW_g += gyt_g col_g^T; dcol_g = W_g^T gyt_g, which col2im adds into dx."""
    P = OH * OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    zero = gy.dtype.type(0)
    dw[:] = zero
    if bias_grad:
        db[:] = zero
    if input_grad:
        dx[:] = zero
    for n0 in range(0, N, NB):
        nb = min(NB, N - n0)
        BP = nb * P
        for co in range(CO):
            s = 0.0
            for k in range(nb):
                o = ((n0 + k) * CO + co) * P
                t = co * BP + k * P
                g_row, t_row, y_row = gy[o:o + P], gyt[t:t + P], y[o:o + P]
                for p in range(P):
                    v = g_row[p] if not relu or y_row[p] > zero else zero
                    t_row[p] = v
                    s += v
            if bias_grad:
                db[co] += s
        for k in range(nb):
            _im2col(x, (n0 + k) * C * H * W, col, BP, k * P, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw_)
        for g in range(groups):
            gg = gyt[g * COg * BP:(g + 1) * COg * BP].reshape((COg, BP))
            cg = col[g * Kg * BP:(g + 1) * Kg * BP].reshape((Kg, BP))
            dwg = dw[g * COg * Kg:(g + 1) * COg * Kg]
            np.dot(gg, cg.T, dwt.reshape((COg, Kg)))
            for q in range(COg * Kg):
                dwg[q] += dwt[q]
            if input_grad:
                wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
                np.dot(wg.T, gg, dcol[g * Kg * BP:(g + 1) * Kg * BP].reshape((Kg, BP)))
        if input_grad:
            for k in range(nb):
                _col2im(dcol, BP, k * P, dx, (n0 + k) * C * H * W, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw_)


def _conv_geometry(s, x, w, y):
    a = s.attrs
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    (sh, sw), (pt, _, pl, _), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    oh, ow = y.shape[2:]
    return [n, c, h, wd, co, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, a["groups"]]


def _chunk(node, n: int) -> int:
    """Samples per im2col chunk: the node's `chunk` (lower_conv's choice), 0 meaning the whole batch."""
    return min(n, node.attr["chunk"]) or n


def _im2col_types(node, x, w, y) -> tuple[TensorType, TensorType]:
    """One chunk's im2col matrix [C*kh*kw, NB*OH*OW] and GEMM result (or gy) [O, NB*OH*OW]."""
    cols = _chunk(node, y.shape[0]) * y.shape[2] * y.shape[3]
    return TensorType((x.shape[1] * w.shape[2] * w.shape[3], cols), x.dtype), TensorType((y.shape[1], cols), x.dtype)


def _wide(node, x, w, y):
    """(padded plane [C*Hp*Wp], wide rows [O*L]) of the direct lowering (conv_direct.py)."""
    hp, wp, L = wide_geometry(y.shape[2], y.shape[3], w.shape[2], w.shape[3], *node.attr["dilation"])
    return TensorType((x.shape[1] * hp * wp,), x.dtype), TensorType((w.shape[0] * L,), x.dtype)


def _wide_chunk(node, x, w, y):
    """wide: (padded plane, one chunk's wide matrix [C*kh*kw, NB*L], wide GEMM rows [O, NB*L])."""
    xp, rows = _wide(node, x, w, y)
    cols = _chunk(node, y.shape[0]) * (rows.shape[0] // w.shape[0])
    k = x.shape[1] * w.shape[2] * w.shape[3]
    return xp, TensorType((k * cols,), x.dtype), TensorType((w.shape[0] * cols,), x.dtype)


def _threads(node) -> int:
    """Threads the node's kernel is split over (passes/parallel.py); only the LLVM lowerings of
    conv2d (wide, im2col) and max pooling split (numba's kernels run on one thread)."""
    return node.attr.get("threads", 1) if use_llvm() else 1


def _per_thread(t: TensorType, threads: int) -> TensorType:
    """A scratch with one slice per thread."""
    return t if threads == 1 else TensorType((threads * t.size,), t.dtype)


def _conv_scratch(node, types):
    """im2col: one chunk's im2col matrix and GEMM result; direct: one sample's padded plane and
    wide output rows; wide: the padded plane, one chunk's wide matrix and GEMM result (one of
    each per thread when split)."""
    x, w, y = types[node.inputs[0]], types[node.inputs[1]], node.types[0]
    if node.attr["algo"] == "direct":
        return list(_wide(node, x, w, y))
    if node.attr["algo"] == "wide":
        return [_per_thread(t, _threads(node)) for t in _wide_chunk(node, x, w, y)]
    return [_per_thread(t, _threads(node)) for t in _im2col_types(node, x, w, y)]


@kernel("conv2d", scratch=_conv_scratch)
def _(s):
    x, w, y = s.i[0], s.i[1], s.o[0]
    b = s.i[2].f if len(s.i) == 3 else w.f  # placeholder, never read without a bias
    geo = _conv_geometry(s, x.type, w.type, y.type)
    if s.attrs["algo"] == "direct":
        return conv2d_direct_forward, [x.f, w.f, b, y.f, s.t[0].f, s.t[1].f, *geo[:9], *geo[11:],
                                       len(s.i) == 3, s.attrs["relu"]]
    if s.attrs["algo"] == "wide":
        if use_llvm():
            return (conv_llvm.wide_forward(x.type.dtype, *geo[:9], *geo[11:], len(s.i) == 3, s.attrs["relu"],
                                           _chunk(s.node, x.shape[0]), _threads(s.node)),
                    [x.f, w.f, b, y.f, s.t[0].f, s.t[1].f, s.t[2].f])
        return conv2d_wide_forward, [x.f, w.f, b, y.f, s.t[0].f, s.t[1].f, s.t[2].f, *geo[:9], *geo[11:],
                                     len(s.i) == 3, s.attrs["relu"], _chunk(s.node, x.shape[0])]
    if use_llvm():
        return (conv_llvm.im2col_forward(x.type.dtype, *geo, len(s.i) == 3, s.attrs["relu"], _chunk(s.node, x.shape[0]),
                                         _threads(s.node)),
                [x.f, w.f, b, y.f, s.t[0].f, s.t[1].f])
    return conv2d_forward, [x.f, w.f, b, y.f, s.t[0].f, s.t[1].f, *geo, len(s.i) == 3, s.attrs["relu"],
                            _chunk(s.node, x.shape[0])]


def _conv_backward_scratch(node, types):
    """im2col: one chunk's im2col of x and gy as [O, NB*OH*OW], one group's dW, and (for dx) the
    chunk's im2col-shaped gradient; direct: one sample's padded plane, gy's wide rows and (for dx)
    the padded gradient plane."""
    gy, x, w = (types[v] for v in node.inputs[:3])
    if node.attr["algo"] == "direct":
        xp, gw = _wide(node, x, w, gy)
        return [xp, gw, xp] if node.attr["input_grad"] else [xp, gw]
    if node.attr["algo"] == "wide":  # padded plane, wide matrix, gy's wide rows, one group's dW, dcol
        t = _threads(node)
        xp, col, gyw = (_per_thread(v, t) for v in _wide_chunk(node, x, w, gy))
        # split: dwt holds the partial dW and db of tasks 1.. (numba's kernel: one group's dW)
        dwt = TensorType((max(w.size // node.attr["groups"], (_backward_tasks(node, x, w, t) - 1) * (w.size + w.shape[0])),),
                         x.dtype)
        return [xp, col, gyw, dwt, col] if node.attr["input_grad"] else [xp, col, gyw, dwt]
    t = _threads(node)
    col, gyt = (_per_thread(v, t) for v in _im2col_types(node, x, w, gy))
    dwt = TensorType((max(w.size // node.attr["groups"], (_backward_tasks(node, x, w, t) - 1) * (w.size + w.shape[0])),),
                     x.dtype)
    return [col, gyt, dwt, col] if node.attr["input_grad"] else [col, gyt, dwt]


def _backward_tasks(node, x, w, t: int) -> int:
    """Tasks of a split conv2d_backward (their partial dW and db sums are scratch)."""
    if t == 1:
        return 1
    return conv_llvm.backward_tasks(t, -(-x.shape[0] // _chunk(node, x.shape[0])), w.size + w.shape[0], x.np_dtype.itemsize)


@kernel("conv2d_backward", scratch=_conv_backward_scratch)
def _(s):
    gy, x, w = s.i[:3]
    a = s.attrs
    y = s.i[3].f if a["relu"] else gy.f  # the relu mask (a placeholder, never read, without relu)
    outs = list(s.o)
    dx = outs.pop(0).f if a["input_grad"] else x.f  # placeholders are never written
    dw = outs.pop(0).f
    db = outs.pop(0).f if a["bias_grad"] else w.f
    geo = _conv_geometry(s, x.type, w.type, gy.type)
    if a["algo"] == "direct":
        xp, gw = s.t[0].f, s.t[1].f
        dxp = s.t[2].f if a["input_grad"] else xp
        return conv2d_direct_backward, [gy.f, x.f, w.f, y, dx, dw, db, xp, gw, dxp, *geo[:9], *geo[11:],
                                        a["relu"], a["input_grad"], a["bias_grad"]]
    if a["algo"] == "wide":
        xp, col, gyw, dwt = (t.f for t in s.t[:4])
        dcol = s.t[4].f if a["input_grad"] else col
        if use_llvm():
            return (conv_llvm.wide_backward(x.type.dtype, *geo[:9], *geo[11:], a["relu"], a["input_grad"],
                                            a["bias_grad"], _chunk(s.node, x.shape[0]), _threads(s.node)),
                    [gy.f, x.f, w.f, y, dx, dw, db, xp, col, gyw, dwt, dcol])
        return conv2d_wide_backward, [gy.f, x.f, w.f, y, dx, dw, db, xp, col, gyw, dwt, dcol, *geo[:9], *geo[11:],
                                      a["relu"], a["input_grad"], a["bias_grad"], _chunk(s.node, x.shape[0])]
    col, gyt, dwt = s.t[0].f, s.t[1].f, s.t[2].f
    dcol = s.t[3].f if a["input_grad"] else col
    if use_llvm():
        return (conv_llvm.im2col_backward(x.type.dtype, *geo, a["relu"], a["input_grad"], a["bias_grad"],
                                          _chunk(s.node, x.shape[0]), _threads(s.node)),
                [gy.f, x.f, w.f, y, dx, dw, db, col, gyt, dwt, dcol])
    return conv2d_backward_kernel, [gy.f, x.f, w.f, y, dx, dw, db, col, gyt, dwt, dcol, *geo, a["relu"],
                                    a["input_grad"], a["bias_grad"], _chunk(s.node, x.shape[0])]


# ------------------------------------------------------------------ pooling


@njit(inline="always", **JIT)
def _better(v, best):
    """Whether window element v replaces the running max: larger, or the first NaN (numpy's
    argmax rule, the reference's: ties keep the first maximum, the first NaN wins). Written as a
    select, not a branch: on random data a branch mispredicts about once a window."""
    return (v > best) | ((v != v) & (best == best))


@njit(**JIT)
def max_pool2d_forward(x, y, idx, NC, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """y = max over each window, idx = its argmax as h * W + w; padding never wins."""
    for q in range(NC):
        xo = q * H * W
        for oh in range(OH):
            for ow in range(OW):
                best = x.dtype.type(-np.inf)
                arg = -1
                for i in range(KH):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(KW):
                        iw = ow * sw - pl + j * dw
                        if iw < 0 or iw >= W:
                            continue
                        v = x[xo + ih * W + iw]
                        take = _better(v, best) | (arg < 0)
                        best = v if take else best
                        arg = ih * W + iw if take else arg
                o = (q * OH + oh) * OW + ow
                y[o] = best
                idx[o] = arg


@njit(**JIT)
def max_pool2d_2x2(x, y, idx, NC, H, W, OH, OW, sh, sw):
    """max_pool2d's loop for 2x2 windows without padding or dilation (LeNet's, most CNNs'): the
    same rule as max_pool2d_forward with the window unrolled, 5x faster on LeNet's pools (a
    window loop of run-time length keeps LLVM from turning the compares into selects)."""
    for q in range(NC):
        xo = q * H * W
        for oh in range(OH):
            o = (q * OH + oh) * OW
            for ow in range(OW):
                p = oh * sh * W + ow * sw
                best, arg = x[xo + p], p
                for p2 in (p + 1, p + W, p + W + 1):
                    v = x[xo + p2]
                    take = _better(v, best)
                    best = v if take else best
                    arg = p2 if take else arg
                y[o + ow] = best
                idx[o + ow] = arg


@njit(**JIT)
def max_pool2d_scatter(gy, idx, dx, NC, HW, P):
    dx[:] = 0
    for q in range(NC):
        for p in range(P):
            dx[q * HW + idx[q * P + p]] += gy[q * P + p]


@kernel("max_pool2d")
def _(s):
    x, (y, idx) = s.i[0], s.o
    a = s.attrs
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw) = a["kernel_size"], a["stride"], a["padding"], a["dilation"]
    if use_llvm():
        return (conv_llvm.max_pool2d(x.type.dtype, n * c, h, w, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, _threads(s.node)),
                [x.f, y.f, idx.f])
    if (kh, kw, dh, dw) == (2, 2, 1, 1) and not any(a["padding"]):
        return max_pool2d_2x2, [x.f, y.f, idx.f, n * c, h, w, oh, ow, sh, sw]
    return max_pool2d_forward, [x.f, y.f, idx.f, n * c, h, w, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw]


@kernel("max_pool2d_backward")
def _(s):
    gy, idx, dx = s.i[0], s.i[1], s.o[0]
    n, c, oh, ow = gy.shape
    h, w = s.attrs["input_size"]
    if use_llvm():
        # the backward of a tiling 2x2 stride-2 pool (LeNet's): the indices say which tap of each window
        tiles = (h, w, oh, ow) if s.attrs["tiled"] else None
        return (conv_llvm.max_pool2d_scatter(gy.type.dtype, n * c, h * w, oh * ow, _threads(s.node), tiles),
                [gy.f, idx.f, dx.f])
    return max_pool2d_scatter, [gy.f, idx.f, dx.f, n * c, h * w, oh * ow]


@njit(inline="always", **JIT)
def _window_count(oh, ow, H, W, KH, KW, sh, sw, pt, pl, include_pad):
    if include_pad:
        return KH * KW
    h0, w0 = oh * sh - pt, ow * sw - pl
    return (min(h0 + KH, H) - max(h0, 0)) * (min(w0 + KW, W) - max(w0, 0))


@njit(**JIT)
def avg_pool2d_forward(x, y, NC, H, W, KH, KW, OH, OW, sh, sw, pt, pl, include_pad):
    for q in range(NC):
        xo = q * H * W
        for oh in range(OH):
            for ow in range(OW):
                s = 0.0
                for i in range(KH):
                    ih = oh * sh - pt + i
                    if 0 <= ih < H:
                        for j in range(KW):
                            iw = ow * sw - pl + j
                            if 0 <= iw < W:
                                s += x[xo + ih * W + iw]
                y[(q * OH + oh) * OW + ow] = s / _window_count(oh, ow, H, W, KH, KW, sh, sw, pt, pl, include_pad)


@njit(**JIT)
def avg_pool2d_spread(gy, dx, NC, H, W, KH, KW, OH, OW, sh, sw, pt, pl, include_pad):
    dx[:] = 0
    for q in range(NC):
        xo = q * H * W
        for oh in range(OH):
            for ow in range(OW):
                g = gy[(q * OH + oh) * OW + ow] / _window_count(oh, ow, H, W, KH, KW, sh, sw, pt, pl, include_pad)
                for i in range(KH):
                    ih = oh * sh - pt + i
                    if 0 <= ih < H:
                        for j in range(KW):
                            iw = ow * sw - pl + j
                            if 0 <= iw < W:
                                dx[xo + ih * W + iw] += g


def _avg_args(s, x, y):
    a = s.attrs
    n, c, h, w = x
    (kh, kw), (sh, sw), (pt, _, pl, _) = a["kernel_size"], a["stride"], a["padding"]
    return [n * c, h, w, kh, kw, y[2], y[3], sh, sw, pt, pl, a["count_include_pad"]]


WINDOW_UNROLL = 64  # the LLVM lowering of avg_pool2d writes each window's taps out: up to this many


def _avg(s, x, y, backward):
    args = _avg_args(s, x, y)
    if use_llvm() and args[3] * args[4] <= WINDOW_UNROLL:
        return conv_llvm.avg_pool2d(s.i[0].type.dtype, *args, backward), [s.i[0].f, s.o[0].f]
    return (avg_pool2d_spread if backward else avg_pool2d_forward), [s.i[0].f, s.o[0].f, *args]


kernel("avg_pool2d")(lambda s: _avg(s, s.i[0].shape, s.o[0].shape, False))
kernel("avg_pool2d_backward")(lambda s: _avg(s, s.o[0].shape, s.i[0].shape, True))


@njit(**JIT)
def adaptive_pool_forward(x, y, NC, H, W, OH, OW):
    for q in range(NC):
        for oh in range(OH):
            h0, h1 = (oh * H) // OH, -((-(oh + 1) * H) // OH)
            for ow in range(OW):
                w0, w1 = (ow * W) // OW, -((-(ow + 1) * W) // OW)
                s = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        s += x[(q * H + ih) * W + iw]
                y[(q * OH + oh) * OW + ow] = s / ((h1 - h0) * (w1 - w0))


@njit(**JIT)
def adaptive_pool_spread(gy, dx, NC, H, W, OH, OW):
    dx[:] = 0
    for q in range(NC):
        for oh in range(OH):
            h0, h1 = (oh * H) // OH, -((-(oh + 1) * H) // OH)
            for ow in range(OW):
                w0, w1 = (ow * W) // OW, -((-(ow + 1) * W) // OW)
                g = gy[(q * OH + oh) * OW + ow] / ((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        dx[(q * H + ih) * W + iw] += g


def _adaptive_args(x, y):
    return [x[0] * x[1], x[2], x[3], y[2], y[3]]


ADAPTIVE_UNROLL = 256  # the LLVM lowering writes each output window's loops out: up to this many windows


def _adaptive(s, x, y, backward):
    args = _adaptive_args(x, y)
    if use_llvm() and y[2] * y[3] <= ADAPTIVE_UNROLL:
        return conv_llvm.adaptive_pool(s.i[0].type.dtype, *args, backward), [s.i[0].f, s.o[0].f]
    return (adaptive_pool_spread if backward else adaptive_pool_forward), [s.i[0].f, s.o[0].f, *args]


kernel("adaptive_avg_pool2d")(lambda s: _adaptive(s, s.i[0].shape, s.o[0].shape, False))
kernel("adaptive_avg_pool2d_backward")(lambda s: _adaptive(s, s.o[0].shape, s.i[0].shape, True))

