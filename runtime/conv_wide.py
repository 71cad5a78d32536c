"""Stride-1 conv2d as "wide" im2col + BLAS: conv2d's `algo="wide"` lowering (passes/conv.py
chooses it per layer; kernels_conv.py calls these).

The windows are unrolled in conv_direct.py's wide layout: with the input padded into a [C, Hp,
Wp] plane, row (c, i, j) of one sample's matrix is the contiguous slice

    col[(c*KH + i)*KW + j, p] = xp[c, p + i*dh*Wp + j*dw]        p in [0, L), L = (OH-1)*Wp + OW

so unrolling is one copy of L elements per tap (im2col's row-by-row layout copies OH rows of OW
elements per tap: LeNet's conv2 spent ~80% of its backward in those 10-element copies), and
col2im is one add of L elements per tap. The GEMM then computes wide outputs; the columns
OW..Wp-1 of each wide row are junk, never copied out (forward). In the backward gy is copied
into wide rows whose junk columns are zero, so they add nothing to dW = gy col^T, and the junk
columns of dcol = W^T gy are zero, so col2im adds nothing at them either.

NB samples at a time (the node's `chunk`): one chunk's matrix stays in cache between being
written and the GEMM reading it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .conv_direct import FM, _pad_sample


@njit(inline="always", **FM)
def _unroll(src, col, ld, co, C, Hp, Wp, KH, KW, L, dh, dw):
    """col[r, co:co+L] = src[plane + i*dh*Wp + j*dw:][:L] for each tap r = (c*KH + i)*KW + j."""
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = (c * KH + i) * KW + j
                dst = col[r * ld + co:r * ld + co + L]
                s = src[c * Hp * Wp + i * dh * Wp + j * dw:][:L]
                for p in range(L):
                    dst[p] = s[p]


@njit(**FM)
def conv2d_wide_forward(x, w, b, out, xp, col, tmp, N, C, H, W, CO, KH, KW, OH, OW, pt, pl, dh, dw, groups,
                        has_bias, relu, NB):
    Hp, Wp = OH + dh * (KH - 1), OW + dw * (KW - 1)
    L = (OH - 1) * Wp + OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    padded = Hp != H or Wp != W
    zero = out.dtype.type(0)
    for n0 in range(0, N, NB):
        nb = min(NB, N - n0)
        BL = nb * L
        for k in range(nb):
            n = n0 + k
            if padded:
                _pad_sample(x, n * C * H * W, xp, C, H, W, Hp, Wp, pt, pl)
                _unroll(xp, col, BL, k * L, C, Hp, Wp, KH, KW, L, dh, dw)
            else:
                _unroll(x[n * C * H * W:(n + 1) * C * H * W], col, BL, k * L, C, Hp, Wp, KH, KW, L, dh, dw)
        for g in range(groups):
            wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
            cg = col[g * Kg * BL:(g + 1) * Kg * BL].reshape((Kg, BL))
            np.dot(wg, cg, tmp[g * COg * BL:(g + 1) * COg * BL].reshape((COg, BL)))
        for k in range(nb):
            for co in range(CO):
                bv = b[co] if has_bias else zero
                for oh in range(OH):
                    o = out[(((n0 + k) * CO + co) * OH + oh) * OW:][:OW]
                    t = tmp[co * BL + k * L + oh * Wp:][:OW]
                    for q in range(OW):
                        v = t[q] + bv
                        o[q] = zero if relu and v < zero else v


@njit(**FM)
def conv2d_wide_backward(gy, x, w, y, dx, dW, db, xp, col, gyw, dwt, dcol, N, C, H, W, CO, KH, KW, OH, OW, pt, pl,
                         dh, dw, groups, relu, input_grad, bias_grad, NB):
    """dW (and db, dx when asked), NB samples at a time: gyw = gy in wide rows (masked where y <= 0
    with relu; db summed on the way); dW_g += gyw_g col_g^T; dcol_g = W_g^T gyw_g, added tap by
    tap into the (padded) input gradient plane."""
    Hp, Wp = OH + dh * (KH - 1), OW + dw * (KW - 1)
    L = (OH - 1) * Wp + OW
    Cg, COg = C // groups, CO // groups
    Kg = Cg * KH * KW
    padded = Hp != H or Wp != W
    zero = dW.dtype.type(0)
    dW[:] = zero
    if bias_grad:
        db[:] = zero
    gyw[:] = zero  # junk columns stay zero: every chunk writes only the valid ones
    for n0 in range(0, N, NB):
        nb = min(NB, N - n0)
        BL = nb * L
        for co in range(CO):
            s = 0.0
            for k in range(nb):
                for oh in range(OH):
                    o = (((n0 + k) * CO + co) * OH + oh) * OW
                    g_row, y_row = gy[o:o + OW], y[o:o + OW]
                    w_row = gyw[co * BL + k * L + oh * Wp:][:OW]
                    for q in range(OW):
                        v = g_row[q] if not relu or y_row[q] > zero else zero
                        w_row[q] = v
                        s += v
            if bias_grad:
                db[co] += s
        for k in range(nb):
            n = n0 + k
            if padded:
                _pad_sample(x, n * C * H * W, xp, C, H, W, Hp, Wp, pt, pl)
                _unroll(xp, col, BL, k * L, C, Hp, Wp, KH, KW, L, dh, dw)
            else:
                _unroll(x[n * C * H * W:(n + 1) * C * H * W], col, BL, k * L, C, Hp, Wp, KH, KW, L, dh, dw)
        for g in range(groups):
            gg = gyw[g * COg * BL:(g + 1) * COg * BL].reshape((COg, BL))
            cg = col[g * Kg * BL:(g + 1) * Kg * BL].reshape((Kg, BL))
            np.dot(gg, cg.T, dwt.reshape((COg, Kg)))
            dwg = dW[g * COg * Kg:(g + 1) * COg * Kg]
            for q in range(COg * Kg):
                dwg[q] += dwt[q]
            if input_grad:
                wg = w[g * COg * Kg:(g + 1) * COg * Kg].reshape((COg, Kg))
                np.dot(wg.T, gg, dcol[g * Kg * BL:(g + 1) * Kg * BL].reshape((Kg, BL)))
        if not input_grad:
            continue
        for k in range(nb):
            n = n0 + k
            dst = xp if padded else dx[n * C * H * W:(n + 1) * C * H * W]
            dst[:] = zero
            for c in range(C):
                for i in range(KH):
                    for j in range(KW):
                        r = (c * KH + i) * KW + j
                        d = dst[c * Hp * Wp + i * dh * Wp + j * dw:][:L]
                        s_ = dcol[r * BL + k * L:r * BL + k * L + L]
                        for p in range(L):
                            d[p] += s_[p]
            if padded:
                for c in range(C):
                    for ih in range(H):
                        dr = dx[n * C * H * W + (c * H + ih) * W:][:W]
                        sp = xp[(c * Hp + ih + pt) * Wp + pl:][:W]
                        for q in range(W):
                            dr[q] = sp[q]
