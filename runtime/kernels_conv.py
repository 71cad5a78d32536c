"""Native kernels of conv2d and the 2-D poolings (ops in graphc/ir/ops_conv.py), registered in
kernels.KERNELS like every other op's.

Convolution is im2col + BLAS over the whole batch: the windows are unrolled into a
[C*kh*kw, N*OH*OW] scratch matrix and one GEMM per group computes [O/groups, N*OH*OW]; one pass
then writes that back in NCHW order with the bias (and relu) epilogue. One large GEMM rather
than one per sample: on the shared 2-core machine each BLAS call pays a thread hand-off, and 32
per-sample GEMMs (64x288x64) took 9x as long as the one batched GEMM. The scratch is the memory
plan's (`scratch=`), so a step allocates nothing. The backward rebuilds the windows instead of
saving them (the saved matrix would be kh*kw times the input): dW = gy col^T and
dcol = W^T gy, which col2im adds into dx.
Pooling kernels are direct loop nests: they are memory-bound and have no GEMM inside.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from graphc.ir import TensorType

from .kernels import JIT, kernel

__all__ = ["conv2d_forward", "conv2d_backward_kernel", "max_pool2d_forward", "max_pool2d_scatter",
           "avg_pool2d_forward", "avg_pool2d_spread", "adaptive_pool_forward", "adaptive_pool_spread"]


@njit(inline="always", **JIT)
def _im2col(x, xo, col, ld, co, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """col[(c*KH + i)*KW + j, co + oh*OW + ow] = x[xo + (c*H + ih)*W + iw] (0 outside the input);
    ld is col's row length (N*OH*OW), co this sample's first column."""
    zero = col.dtype.type(0)
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = ((c * KH + i) * KW + j) * ld + co
                for oh in range(OH):
                    ih = oh * sh - pt + i * dh
                    base = r + oh * OW
                    if ih < 0 or ih >= H:
                        for ow in range(OW):
                            col[base + ow] = zero
                        continue
                    xrow = xo + (c * H + ih) * W
                    for ow in range(OW):
                        iw = ow * sw - pl + j * dw
                        col[base + ow] = x[xrow + iw] if 0 <= iw < W else zero


@njit(inline="always", **JIT)
def _col2im(dcol, ld, co, dx, xo, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """dx[xo + ...] += every window element of dcol's columns co.. (the adjoint of _im2col)."""
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = ((c * KH + i) * KW + j) * ld + co
                for oh in range(OH):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    xrow = xo + (c * H + ih) * W
                    base = r + oh * OW
                    for ow in range(OW):
                        iw = ow * sw - pl + j * dw
                        if 0 <= iw < W:
                            dx[xrow + iw] += dcol[base + ow]


@njit(**JIT)
def conv2d_forward(x, w, b, out, col, tmp, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, groups,
                   has_bias, relu):
    """col = im2col(x) [C*kh*kw, N*OH*OW]; tmp = W_g @ col_g (one GEMM per group); then one pass
    writes tmp back in NCHW order with the bias (and relu) epilogue."""
    P = OH * OW
    NP = N * P
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    zero = out.dtype.type(0)
    for n in range(N):
        _im2col(x, n * C * H * W, col, NP, n * P, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)
    for g in range(groups):
        wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
        cg = col[g * Kg * NP:(g + 1) * Kg * NP].reshape((Kg, NP))
        np.dot(wg, cg, tmp[g * COg * NP:(g + 1) * COg * NP].reshape((COg, NP)))
    for n in range(N):
        for co in range(CO):
            o = (n * CO + co) * P
            t = co * NP + n * P
            bv = b[co] if has_bias else zero
            for p in range(P):
                v = tmp[t + p] + bv
                out[o + p] = zero if relu and v < zero else v


@njit(**JIT)
def conv2d_backward_kernel(gy, x, w, dx, dw, db, col, gyt, dcol, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl,
                           dh, dw_, groups, input_grad, bias_grad):
    """gyt = gy as [O, N*OH*OW] (db summed on the way); dW_g = gyt_g col_g^T; dcol_g = W_g^T gyt_g,
    which col2im adds into dx: one GEMM per group and gradient."""
    P = OH * OW
    NP = N * P
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    for co in range(CO):
        s = 0.0
        for n in range(N):
            o = (n * CO + co) * P
            t = co * NP + n * P
            for p in range(P):
                v = gy[o + p]
                gyt[t + p] = v
                s += v
        if bias_grad:
            db[co] = s
    for n in range(N):
        _im2col(x, n * C * H * W, col, NP, n * P, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw_)
    for g in range(groups):
        gg = gyt[g * COg * NP:(g + 1) * COg * NP].reshape((COg, NP))
        cg = col[g * Kg * NP:(g + 1) * Kg * NP].reshape((Kg, NP))
        np.dot(gg, cg.T, dw[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg)))
        if input_grad:
            wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
            np.dot(wg.T, gg, dcol[g * Kg * NP:(g + 1) * Kg * NP].reshape((Kg, NP)))
    if input_grad:
        dx[:] = 0
        for n in range(N):
            _col2im(dcol, NP, n * P, dx, n * C * H * W, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw_)


def _conv_geometry(s, x, w, y):
    a = s.attrs
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    (sh, sw), (pt, _, pl, _), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    oh, ow = y.shape[2:]
    return [n, c, h, wd, co, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, a["groups"]]


def _col_type(node, types):
    x, w, y = types[node.inputs[0]], types[node.inputs[1]], node.types[0]
    return TensorType((x.shape[1] * w.shape[2] * w.shape[3], y.shape[0] * y.shape[2] * y.shape[3]), x.dtype)


def _conv_scratch(node, types):
    """The batch's im2col matrix [C*kh*kw, N*OH*OW] and the GEMM result [O, N*OH*OW]."""
    y = node.types[0]
    return [_col_type(node, types), TensorType((y.shape[1], y.shape[0] * y.shape[2] * y.shape[3]), y.dtype)]


@kernel("conv2d", scratch=_conv_scratch)
def _(s):
    x, w, y = s.i[0], s.i[1], s.o[0]
    b = s.i[2].f if len(s.i) == 3 else w.f  # placeholder, never read without a bias
    return conv2d_forward, [x.f, w.f, b, y.f, s.t[0].f, s.t[1].f, *_conv_geometry(s, x.type, w.type, y.type),
                            len(s.i) == 3, False]


def _conv_backward_scratch(node, types):
    """im2col of x, gy as [O, N*OH*OW], and (for dx) the im2col-shaped gradient."""
    gy, x, w = (types[v] for v in node.inputs)
    col = TensorType((x.shape[1] * w.shape[2] * w.shape[3], gy.shape[0] * gy.shape[2] * gy.shape[3]), x.dtype)
    gyt = TensorType((gy.shape[1], gy.shape[0] * gy.shape[2] * gy.shape[3]), x.dtype)
    return [col, gyt, col] if node.attr["input_grad"] else [col, gyt]


@kernel("conv2d_backward", scratch=_conv_backward_scratch)
def _(s):
    gy, x, w = s.i
    a = s.attrs
    outs = list(s.o)
    dx = outs.pop(0).f if a["input_grad"] else x.f  # placeholders are never written
    dw = outs.pop(0).f
    db = outs.pop(0).f if a["bias_grad"] else w.f
    col, gyt = s.t[0].f, s.t[1].f
    dcol = s.t[2].f if len(s.t) > 2 else col
    return conv2d_backward_kernel, [gy.f, x.f, w.f, dx, dw, db, col, gyt, dcol,
                                    *_conv_geometry(s, x.type, w.type, gy.type), a["input_grad"], a["bias_grad"]]


# ------------------------------------------------------------------ pooling


@njit(**JIT)
def max_pool2d_forward(x, y, idx, NC, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """y = max over each window, idx = its first argmax as h * W + w (padding never wins)."""
    for q in range(NC):
        xo = q * H * W
        for oh in range(OH):
            for ow in range(OW):
                best = -np.inf
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
                        if v > best or arg < 0 or np.isnan(v):
                            best = v
                            arg = ih * W + iw
                            if np.isnan(v):
                                break
                o = (q * OH + oh) * OW + ow
                y[o] = best
                idx[o] = arg


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
    return max_pool2d_forward, [x.f, y.f, idx.f, n * c, h, w, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw]


@kernel("max_pool2d_backward")
def _(s):
    gy, idx, dx = s.i[0], s.i[1], s.o[0]
    n, c, oh, ow = gy.shape
    h, w = s.attrs["input_size"]
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


kernel("avg_pool2d")(lambda s: (avg_pool2d_forward, [s.i[0].f, s.o[0].f, *_avg_args(s, s.i[0].shape, s.o[0].shape)]))
kernel("avg_pool2d_backward")(lambda s: (avg_pool2d_spread, [s.i[0].f, s.o[0].f,
                                                             *_avg_args(s, s.o[0].shape, s.i[0].shape)]))


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


kernel("adaptive_avg_pool2d")(lambda s: (adaptive_pool_forward, [s.i[0].f, s.o[0].f,
                                                                 *_adaptive_args(s.i[0].shape, s.o[0].shape)]))
kernel("adaptive_avg_pool2d_backward")(lambda s: (adaptive_pool_spread, [s.i[0].f, s.o[0].f,
                                                                         *_adaptive_args(s.o[0].shape, s.i[0].shape)]))

