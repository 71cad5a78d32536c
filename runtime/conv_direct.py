"""Direct ("wide row") loop nests for stride-1 conv2d, forward and backward: conv2d's
`algo="direct"` lowering (passes/conv.py chooses it per layer; kernels_conv.py calls these).

One sample at a time, the input is padded into a [C, Hp, Wp] scratch plane (skipped when the
conv has no padding) and the output is computed "wide": with row stride Wp instead of OW, so
each tap (c, i, j) of the kernel is one contiguous AXPY of length L = (OH-1)*Wp + OW

    wide[co, p] += w[co, c, i, j] * xp[c, p + i*dh*Wp + j*dw]       p in [0, L)

which LLVM vectorizes (the columns OW..Wp-1 of each wide row are junk and never copied out).
No im2col matrix (kh*kw times the input) is written or read, which is what makes small-channel
layers (LeNet's 1->6 and 6->16, 5x5) faster than im2col + BLAS; with many input channels the
GEMM's register blocking wins and the pass keeps im2col. The backward uses the same wide rows:
gy is copied into a wide [CO, L] scratch with zero junk columns, then dW is one dot product per
tap and dx one AXPY per tap into a padded plane, cropped at the end.

Every row is indexed through a slice view from a known-nonnegative range index: numba's
negative-index wraparound checks would otherwise stop the vectorizer (3x slower measured).
`fastmath` allows reassociation (vectorized dot products) and contraction (FMA), not
nnan/ninf: NaN and inf still propagate as in torch.
"""
from __future__ import annotations

from numba import njit

FM = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})


def wide_geometry(oh: int, ow: int, kh: int, kw: int, dh: int, dw: int) -> tuple[int, int, int]:
    """(Hp, Wp, L): the padded plane of a stride-1 conv and the length of its wide output rows."""
    hp, wp = oh + dh * (kh - 1), ow + dw * (kw - 1)
    return hp, wp, (oh - 1) * wp + ow


@njit(**FM)
def _pad_sample(x, xo, xp, C, H, W, Hp, Wp, pt, pl):
    """xp [C, Hp, Wp] = sample x[xo:] [C, H, W] with pt rows / pl columns of zeros before it."""
    zero = xp.dtype.type(0)
    for c in range(C):
        for r in range(Hp):
            dst = xp[(c * Hp + r) * Wp:(c * Hp + r + 1) * Wp]
            ih = r - pt
            if ih < 0 or ih >= H:
                dst[:] = zero
                continue
            src = x[xo + (c * H + ih) * W:xo + (c * H + ih + 1) * W]
            for q in range(Wp):
                iw = q - pl
                dst[q] = src[iw] if 0 <= iw < W else zero


@njit(**FM)
def conv2d_direct_forward(x, w, b, out, xp, wide, N, C, H, W, CO, KH, KW, OH, OW, pt, pl, dh, dw, groups,
                          has_bias, relu):
    Hp, Wp = OH + dh * (KH - 1), OW + dw * (KW - 1)
    L = (OH - 1) * Wp + OW
    Cg, COg = C // groups, CO // groups
    K = Cg * KH * KW
    padded = Hp != H or Wp != W
    zero = out.dtype.type(0)
    for n in range(N):
        if padded:
            _pad_sample(x, n * C * H * W, xp, C, H, W, Hp, Wp, pt, pl)
            src = xp
        else:
            src = x[n * C * H * W:(n + 1) * C * H * W]
        for co in range(CO):
            g = co // COg
            dst = wide[co * L:(co + 1) * L]
            dst[:] = b[co] if has_bias else zero
            for cc in range(Cg):
                plane = (g * Cg + cc) * Hp * Wp
                for i in range(KH):
                    for j in range(KW):
                        wv = w[co * K + (cc * KH + i) * KW + j]
                        sv = src[plane + i * dh * Wp + j * dw:][:L]
                        for p in range(L):
                            dst[p] += wv * sv[p]
        for co in range(CO):
            for oh in range(OH):
                o = out[((n * CO + co) * OH + oh) * OW:][:OW]
                r = wide[co * L + oh * Wp:][:OW]
                for q in range(OW):
                    v = r[q]
                    o[q] = zero if relu and v < zero else v


@njit(**FM)
def conv2d_direct_backward(gy, x, w, y, dx, dW, db, xp, gw, dxp, N, C, H, W, CO, KH, KW, OH, OW, pt, pl, dh, dw,
                           groups, relu, input_grad, bias_grad):
    """dW (and db, dx when asked) of a stride-1 conv, one sample at a time through wide rows; with
    relu, gy is masked where the output y <= 0 as it is copied into the wide rows."""
    Hp, Wp = OH + dh * (KH - 1), OW + dw * (KW - 1)
    L = (OH - 1) * Wp + OW
    Cg, COg = C // groups, CO // groups
    K = Cg * KH * KW
    padded = Hp != H or Wp != W
    zero = dW.dtype.type(0)
    dW[:] = zero
    if bias_grad:
        db[:] = zero
    if input_grad:
        dx[:] = zero
    gw[:] = zero  # the junk columns stay zero: they add nothing below
    for n in range(N):
        if padded:
            _pad_sample(x, n * C * H * W, xp, C, H, W, Hp, Wp, pt, pl)
            src = xp
        else:
            src = x[n * C * H * W:(n + 1) * C * H * W]
        for co in range(CO):
            s = 0.0
            for oh in range(OH):
                o = ((n * CO + co) * OH + oh) * OW
                g_row, y_row = gy[o:o + OW], y[o:o + OW]
                w_row = gw[co * L + oh * Wp:][:OW]
                for q in range(OW):
                    v = g_row[q] if not relu or y_row[q] > zero else zero
                    w_row[q] = v
                    s += v
            if bias_grad:
                db[co] += s
        for co in range(CO):
            g = co // COg
            gv = gw[co * L:(co + 1) * L]
            for cc in range(Cg):
                plane = (g * Cg + cc) * Hp * Wp
                for i in range(KH):
                    for j in range(KW):
                        sv = src[plane + i * dh * Wp + j * dw:][:L]
                        acc = zero
                        for p in range(L):
                            acc += gv[p] * sv[p]
                        dW[co * K + (cc * KH + i) * KW + j] += acc
        if not input_grad:
            continue
        if padded:
            dst = dxp
            dst[:] = zero
        else:
            dst = dx[n * C * H * W:(n + 1) * C * H * W]
        for co in range(CO):
            g = co // COg
            gv = gw[co * L:(co + 1) * L]
            for cc in range(Cg):
                plane = (g * Cg + cc) * Hp * Wp
                for i in range(KH):
                    for j in range(KW):
                        wv = w[co * K + (cc * KH + i) * KW + j]
                        dv = dst[plane + i * dh * Wp + j * dw:][:L]
                        for p in range(L):
                            dv[p] += wv * gv[p]
        if padded:
            for c in range(C):
                for ih in range(H):
                    d = dx[n * C * H * W + (c * H + ih) * W:][:W]
                    sp = dxp[(c * Hp + ih + pt) * Wp + pl:][:W]
                    for q in range(W):
                        d[q] = sp[q]
