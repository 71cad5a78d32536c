"""Native kernels of conv2d and the 2-D poolings (ops in graphc/ir/ops_conv.py), registered in
kernels.KERNELS like every other op's.

Convolution is im2col + BLAS, one sample at a time: the sample's windows are unrolled into a
[C/groups*kh*kw, OH*OW] scratch matrix (small enough to stay in cache: 78 KB for LeNet's first
layer) and one GEMM per group writes the sample's [O/groups, OH*OW] output block straight into
the NCHW output, so no transpose follows; the bias (and relu) epilogue runs on that block while
it is hot. The scratch is the memory plan's (`scratch=`), so a step allocates nothing. The
backward rebuilds the windows instead of saving them (a [K, N*OH*OW] saved matrix would be
kh*kw times the input), then dW += gy_n col_n^T and dcol = W^T gy_n, which col2im adds into dx.
A 1x1, stride-1, unpadded convolution is a GEMM on the input as it is: no im2col.
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
def _im2col(x, xo, col, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """col[(c*KH + i)*KW + j, oh*OW + ow] = x[xo + (c*H + ih)*W + iw] (0 outside the input)."""
    P = OH * OW
    zero = col.dtype.type(0)
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = ((c * KH + i) * KW + j) * P
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
def _col2im(dcol, dx, xo, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    """dx[xo + ...] += every window element of dcol (the adjoint of _im2col)."""
    P = OH * OW
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = ((c * KH + i) * KW + j) * P
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
def conv2d_forward(x, w, b, out, col, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, groups,
                   direct, has_bias, relu):
    """out[n] = W_g @ im2col(x[n])_g per group, then + bias (then relu), one sample at a time.
    direct: a 1x1 stride-1 unpadded convolution reads x[n] as its column matrix."""
    P = OH * OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    zero = out.dtype.type(0)
    for n in range(N):
        if direct:
            src = x[n * C * P:(n + 1) * C * P]
        else:
            _im2col(x, n * C * H * W, col, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)
            src = col
        for g in range(groups):
            wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
            cg = src[g * Kg * P:(g + 1) * Kg * P].reshape((Kg, P))
            o = (n * CO + g * COg) * P
            np.dot(wg, cg, out[o:o + COg * P].reshape((COg, P)))
        if has_bias or relu:
            for co in range(CO):
                o = (n * CO + co) * P
                bv = b[co] if has_bias else zero
                for p in range(P):
                    v = out[o + p] + bv
                    out[o + p] = zero if relu and v < zero else v


@njit(**JIT)
def conv2d_backward_kernel(gy, x, w, dx, dw, db, col, dcol, dwt, N, C, H, W, CO, KH, KW, OH, OW, sh, sw, pt, pl,
                           dh, dw_, groups, direct, input_grad, bias_grad):
    """dW = sum_n gy_n col_n^T, db = sum gy, dx_n = col2im(W^T gy_n), per sample and group."""
    P = OH * OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    dw[:] = 0
    if bias_grad:
        db[:] = 0
    if input_grad:
        dx[:] = 0
    for n in range(N):
        if direct:
            src = x[n * C * P:(n + 1) * C * P]
        else:
            _im2col(x, n * C * H * W, col, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw_)
            src = col
        for g in range(groups):
            o = (n * CO + g * COg) * P
            gyg = gy[o:o + COg * P].reshape((COg, P))
            cg = src[g * Kg * P:(g + 1) * Kg * P].reshape((Kg, P))
            t = dwt[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
            np.dot(gyg, cg.T, t)
            if input_grad:
                wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
                if direct:
                    np.dot(wg.T, gyg, dx[(n * C + g * Cg) * P:(n * C + (g + 1) * Cg) * P].reshape((Kg, P)))
                else:
                    np.dot(wg.T, gyg, dcol[g * Kg * P:(g + 1) * Kg * P].reshape((Kg, P)))
        for k in range(dw.size):
            dw[k] += dwt[k]
        if input_grad and not direct:
            _col2im(dcol, dx, n * C * H * W, C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw_)
        if bias_grad:
            for co in range(CO):
                o = (n * CO + co) * P
                s = 0.0
                for p in range(P):
                    s += gy[o + p]
                db[co] += s


def _conv_geometry(s, x, w, y):
    a = s.attrs
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    (sh, sw), (pt, _, pl, _), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    oh, ow = y.shape[2:]
    direct = kh == kw == 1 and sh == sw == 1 and not any(a["padding"])
    return [n, c, h, wd, co, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, a["groups"], direct]


def _direct(node, types) -> bool:
    a, w = node.attr, types[node.inputs[1]]
    return w.shape[2] == w.shape[3] == 1 and a["stride"] == (1, 1) and not any(a["padding"])


def _conv_scratch(node, types):
    """The one-sample im2col matrix [C/groups*kh*kw * groups, OH*OW] (none for a 1x1 direct conv)."""
    x, w, y = types[node.inputs[0]], types[node.inputs[1]], node.types[0]
    if _direct(node, types):
        return []
    return [TensorType((x.shape[1] * w.shape[2] * w.shape[3], y.shape[2] * y.shape[3]), x.dtype)]


@kernel("conv2d", scratch=_conv_scratch)
def _(s):
    x, w, y = s.i[0], s.i[1], s.o[0]
    b = s.i[2].f if len(s.i) == 3 else w.f  # placeholder, never read without a bias
    col = s.t[0].f if s.t else x.f  # placeholder, never written for a direct conv
    return conv2d_forward, [x.f, w.f, b, y.f, col, *_conv_geometry(s, x.type, w.type, y.type), len(s.i) == 3, False]


def _conv_backward_scratch(node, types):
    """im2col and its gradient (one sample each) and one [O, C/groups*kh*kw] dW term."""
    gy, x, w = (types[v] for v in node.inputs)
    out = [TensorType((w.size,), x.dtype)]
    if not _direct(node, types):
        colt = TensorType((x.shape[1] * w.shape[2] * w.shape[3], gy.shape[2] * gy.shape[3]), x.dtype)
        out += [colt, colt] if node.attr["input_grad"] else [colt]
    return out


@kernel("conv2d_backward", scratch=_conv_backward_scratch)
def _(s):
    gy, x, w = s.i
    a = s.attrs
    outs = list(s.o)
    dx = outs.pop(0).f if a["input_grad"] else x.f  # placeholders are never written
    dw = outs.pop(0).f
    db = outs.pop(0).f if a["bias_grad"] else w.f
    dwt = s.t[0].f
    col = s.t[1].f if len(s.t) > 1 else x.f
    dcol = s.t[2].f if len(s.t) > 2 else col
    return conv2d_backward_kernel, [gy.f, x.f, w.f, dx, dw, db, col, dcol, dwt,
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

