"""Native kernels: one numba function per op of the op table, writing into preallocated outputs.

Where these run: a plan node that the kernel pass (passes/kernels.py) left on its own is
lowered by its op's entry here; a kernel node (several nodes fused) is lowered by
runtime/lower.py into one generated loop nest (plus its BLAS call). Nothing here matches
patterns of several nodes: every fusion is decided by the kernel pass and visible in the IR.

Adding an opaque native kernel (conv2d, pooling, an MPI all_reduce, ...): give the op its
op-table entry with kind="opaque", then register its lowering here or in a module of your own
imported by this one, without touching codegen:

    @kernel("my_op", scratch=None)          # scratch(node, types) -> [TensorType] temporaries
    def _(s: Site):                          # s.i / s.o: operands / outputs (.a shaped, .f flat, .s scalar)
        return my_numba_fn, [s.i[0].a, s.o[0].a, int(s.attrs["k"])]    # or a list of such pairs

`KERNELS[op]` says how a plan calls the kernel of `op`: its `call(site)` returns the numba
function and its arguments, given the node's operands (views of buffers) and attributes.
Code generation renders that as a line of source; `run_kernel` calls it directly on arrays
(the kernel tests do, against the op's numpy reference).

Conventions: every kernel writes its outputs in place (out= style) and allocates nothing.
Elementwise kernels take flat (1-D) views; broadcasting, transposes and reductions go through
one strided loop nest (`strided`) whose shape and element strides codegen works out
statically. GEMMs are numba's np.dot, i.e. the BLAS that scipy ships, for every GEMM of a
plan. Constants are cast to the array's dtype first (`dt(c)`): float32 plans compute in float32
as numpy does with Python scalars, and stay vectorizable. error_model="numpy": x/0 gives inf
or nan like numpy and torch instead of raising. No kernel uses parallel=True: on the 2-core
target the OpenBLAS threads already use both cores for the GEMMs, and a prange SGD update over
400k floats took 77 us against 33 us serial (memory-bound, thread start-up).
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any, Callable

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic, overload

from graphc.ir.types import TensorType

JIT = dict(cache=True, nogil=True, error_model="numpy")
MAXR = 6  # the strided loop nest's rank; codegen collapses mergeable dims first

# op codes of the strided loop nest and the flat binary loops
ADD, SUB, MUL, DIV, COPY, ACC, MAX, MIN, MAXACC = 0, 1, 2, 3, 4, 5, 6, 7, 8
BINARY_CODES = {"add": ADD, "sub": SUB, "mul": MUL, "div": DIV, "maximum": MAX, "minimum": MIN}


# ------------------------------------------------------------------ bound arrays by address


if numba.config.DISABLE_JIT:
    def address(addr):
        """The pointer numba.carray takes, from an integer address (plain-Python plans)."""
        return ctypes.c_void_p(int(addr))
else:
    from numba.core import cgutils

    @intrinsic
    def address(typingctx, addr):
        """An integer address as a void*, so a plan can view bound arrays with numba.carray: one
        int64 table of addresses crosses into native code instead of one argument per array."""
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(types.int64), codegen


# ------------------------------------------------------------------ vectorizable float32 exp and erf
# libm's expf/erff are scalar calls that keep LLVM from vectorizing a loop (this numba has no
# SVML): 4-8 ns an element, the largest part of GELU and softmax. exp32/erf32 are plain
# arithmetic (Cephes' expf polynomial; Eigen's rational erf, below), both sides of every branch
# computed and selected, so loops vectorize. Errors stay within about 2 float32 ulps (exp32)
# and 7 (erf32, 4.5e-7). Generated loops call them for float32 (runtime/lower.py);
# the dtype-generic kernels here call fexp: exp32 for float32, np.exp otherwise.


if numba.config.DISABLE_JIT:
    def _f32_bits(bits):
        """The float32 whose bit pattern is the int32 `bits` (plain-Python plans)."""
        return np.array(bits, np.int32).view(np.float32)[()]
else:
    @intrinsic
    def _f32_bits(typingctx, bits):
        """The float32 whose bit pattern is the int32 `bits`."""
        if bits != types.int32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_ir.FloatType())

        return types.float32(types.int32), codegen


_F = np.float32
_EXP_LO, _EXP_HI, _LOG2E = _F(-87.33654), _F(88.72283), _F(1.44269504088896341)
_LN2_HI, _LN2_LO = _F(0.693359375), _F(-2.12194440e-4)
_E0, _E1, _E2, _E3, _E4, _E5 = (_F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3), _F(4.1665795894e-2),
                                _F(1.6666665459e-1), _F(5.0000001201e-1))
_ONE, _ZERO, _HALF, _INF = _F(1.0), _F(0.0), _F(0.5), _F(np.inf)


@njit(inline="always", **JIT)
def exp32(x):
    xc = min(max(x, _EXP_LO), _EXP_HI)
    n = np.floor(xc * _LOG2E + _HALF)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = (((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5) * (r * r) + r + _ONE
    k = np.int32(n)
    h = k >> 1  # 2^k as 2^h * 2^(k-h): both factors stay normal for k in [-126, 128]
    e = p * _f32_bits(np.int32((h + 127) << 23)) * _f32_bits(np.int32((k - h + 127) << 23))
    e = _ZERO if x < _EXP_LO else e
    e = _INF if x > _EXP_HI else e
    return x if x != x else e


# erf(x) = x * P(x^2) / Q(x^2) on x clamped to [-4, 4] (beyond, erf is +-1 in float32): Eigen's
# float erf (P odd of degree 13, Q even of degree 8), one division and 12 multiply-adds, within
# 4.5e-7 of erf (about 7 float32 ulps near +-1). It replaced musl's erff + Numerical Recipes' erfc
# with both branches computed (2 divisions, an exp and 26 more operations): GELU's forward loop
# ran 4.7x torch's.
_EA = tuple(_F(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                            -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                            -1.60960333262415e-02))
_EB = tuple(_F(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                            -7.37332916720468e-03, -1.42647390514189e-02))
_A0, _A1, _A2, _A3, _A4, _A5, _A6 = _EA
_B0, _B1, _B2, _B3, _B4 = _EB
_FOUR = _F(4.0)


@njit(inline="always", **JIT)
def erf32(x):
    xc = min(max(x, -_FOUR), _FOUR)
    z = xc * xc
    p = (((((_A0 * z + _A1) * z + _A2) * z + _A3) * z + _A4) * z + _A5) * z + _A6
    q = (((_B0 * z + _B1) * z + _B2) * z + _B3) * z + _B4
    e = (p * xc) / q
    return x if x != x else e


def fexp(x):
    """exp: exp32 for float32, np.exp otherwise (numba picks by type at compile time)."""
    return np.exp(x)


@overload(fexp, jit_options=dict(inline="always", error_model="numpy"))
def _fexp(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: np.exp(x)


# ------------------------------------------------------------------ elementwise


@njit(inline="always", **JIT)
def _bin(code, x, y):
    if code == ADD:
        return x + y
    if code == SUB:
        return x - y
    if code == MUL:
        return x * y
    if code == MAX:  # NaN propagates, as numpy's and torch's maximum
        return x if x > y or x != x else y
    if code == MIN:
        return x if x < y or x != x else y
    return x / y


@njit(**JIT)
def binary_flat(code, a, b, out):
    """out = a (op) b for same-shaped operands, flat."""
    for i in range(out.size):
        out[i] = _bin(code, a[i], b[i])


@njit(**JIT)
def binary_one(code, a, b, out):
    """out[0] = a[0] (op) b[0]: one-element operands (a train step's step counter). No loop for
    LLVM to unswitch per op code and vectorize six times: half binary_flat's cold compile."""
    out[0] = _bin(code, a[0], b[0])


@njit(**JIT)
def binary_scalar(code, a, b, out, scalar_left):
    """out = a (op) b[0] (or b[0] (op) a when scalar_left): one operand is a single element."""
    s = b[0]
    if scalar_left:
        for i in range(out.size):
            out[i] = _bin(code, s, a[i])
    else:
        for i in range(out.size):
            out[i] = _bin(code, a[i], s)


@njit(**JIT)
def strided(code, a, sa, b, sb, out, so, shape):
    """The general loop nest over `shape` (MAXR dims): element strides sa, sb, so index the flat
    a, b, out (stride 0 = broadcast / reduced dim). code: a binary op, COPY (out = a) or ACC (out += a).

    The op and the innermost strides are tested once per innermost row, not per element, so each
    row is a tight loop the compiler can vectorize: a contiguous copy, a sum into one register
    (innermost dim reduced), or a strided move."""
    n0, n1, n2, n3, n4, n5 = shape
    a5, b5, s5 = sa[5], sb[5], so[5]
    for i0 in range(n0):
        a0, b0, o0 = i0 * sa[0], i0 * sb[0], i0 * so[0]
        for i1 in range(n1):
            a1, b1, o1 = a0 + i1 * sa[1], b0 + i1 * sb[1], o0 + i1 * so[1]
            for i2 in range(n2):
                a2, b2, o2 = a1 + i2 * sa[2], b1 + i2 * sb[2], o1 + i2 * so[2]
                for i3 in range(n3):
                    a3, b3, o3 = a2 + i3 * sa[3], b2 + i3 * sb[3], o2 + i3 * so[3]
                    for i4 in range(n4):
                        a4, b4, o4 = a3 + i4 * sa[4], b3 + i4 * sb[4], o3 + i4 * so[4]
                        if code == COPY:
                            if a5 == 1 and s5 == 1:
                                for i5 in range(n5):
                                    out[o4 + i5] = a[a4 + i5]
                            else:
                                for i5 in range(n5):
                                    out[o4 + i5 * s5] = a[a4 + i5 * a5]
                        elif code == ACC:
                            if s5 == 0:
                                acc = out[o4]
                                for i5 in range(n5):
                                    acc += a[a4 + i5 * a5]
                                out[o4] = acc
                            elif a5 == 1 and s5 == 1:
                                for i5 in range(n5):
                                    out[o4 + i5] += a[a4 + i5]
                            else:
                                for i5 in range(n5):
                                    out[o4 + i5 * s5] += a[a4 + i5 * a5]
                        elif code == MAXACC:
                            for i5 in range(n5):
                                v = a[a4 + i5 * a5]
                                io = o4 + i5 * s5
                                if v > out[io] or v != v:
                                    out[io] = v
                        else:
                            for i5 in range(n5):
                                out[o4 + i5 * s5] = _bin(code, a[a4 + i5 * a5], b[b4 + i5 * b5])


@njit(**JIT)
def reduce_sum(a, out, sa, so, shape, count, mean):
    """out = sum of a over the dims where so is 0 (divided by count when mean)."""
    if out.size == 1:  # a full reduction: accumulate in float64
        s = 0.0
        for i in range(a.size):
            s += a[i]
        out[0] = s / count if mean else s
        return
    out[:] = 0
    strided(np.int64(ACC), a, sa, a, sa, out, so, shape)
    if mean:
        c = out.dtype.type(count)
        for i in range(out.size):
            out[i] = out[i] / c


@njit(**JIT)
def fill(out, value):
    v = out.dtype.type(value)
    for i in range(out.size):
        out[i] = v


@njit(**JIT)
def copy(a, out):
    for i in range(out.size):
        out[i] = a[i]


@njit(**JIT)
def neg(x, out):
    for i in range(out.size):
        out[i] = -x[i]


@njit(**JIT)
def exp(x, out):
    for i in range(out.size):
        out[i] = fexp(x[i])


@njit(**JIT)
def log(x, out):
    for i in range(out.size):
        out[i] = np.log(x[i])


@njit(**JIT)
def relu(x, out):
    zero = out.dtype.type(0)
    for i in range(out.size):
        v = x[i]
        out[i] = zero if v < zero else v  # NaN passes through, as in torch


@njit(**JIT)
def sigmoid(x, out):
    one = out.dtype.type(1)
    for i in range(out.size):
        v = x[i]
        e = np.exp(-np.abs(v))  # exp of a non-positive number only: no overflow
        out[i] = one / (one + e) if v >= 0 else e / (one + e)


@njit(**JIT)
def tanh(x, out):
    for i in range(out.size):
        out[i] = np.tanh(x[i])


@njit(**JIT)
def relu_backward(gy, y, out):
    zero = out.dtype.type(0)
    for i in range(out.size):
        out[i] = gy[i] if y[i] > zero else zero


@njit(**JIT)
def sigmoid_backward(gy, y, out):
    one = out.dtype.type(1)
    for i in range(out.size):
        out[i] = gy[i] * y[i] * (one - y[i])


@njit(**JIT)
def tanh_backward(gy, y, out):
    one = out.dtype.type(1)
    for i in range(out.size):
        out[i] = gy[i] * (one - y[i] * y[i])


# ------------------------------------------------------------------ dropout (graphc/ir/rng.py, bit for bit)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_STREAM = np.uint64(0x632BE59BD9B4E019)


@njit(inline="always", **JIT)
def splitmix64(x):
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(**JIT)
def stream_key(seed, stream):
    return splitmix64(np.uint64(seed) ^ (np.uint64(stream) * _STREAM))


@njit(**JIT)
def uniform(seed, stream, out):
    """out[i] = rng.uniform(seed, stream, n)[i]: the top 53 bits of splitmix64(key + i)."""
    key = stream_key(seed, stream)
    for i in range(out.size):
        out[i] = np.float64(splitmix64(key + np.uint64(i)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(**JIT)
def dropout(x, seed, out, p, stream):
    """out = x * keep / (1 - p) with keep[i] = uniform(seed, stream, i) >= p; x * 0 keeps NaN, as torch."""
    key = stream_key(seed, stream)
    scale = out.dtype.type(1.0 / (1.0 - p))
    zero = out.dtype.type(0)
    for i in range(out.size):
        u = np.float64(splitmix64(key + np.uint64(i)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
        out[i] = x[i] * (scale if u >= p else zero)


# ------------------------------------------------------------------ GEMMs with fused epilogues


@njit(**JIT)
def matmul(a, b, out):
    np.dot(a, b, out)


@njit(**JIT)
def linear(x, w, b, out, has_bias, relu):
    """out = x @ w.T (+ b) (then relu): one BLAS call, then one epilogue pass over out."""
    np.dot(x, w.T, out)
    if not has_bias and not relu:
        return
    zero = out.dtype.type(0)
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            v = out[i, j] + b[j] if has_bias else out[i, j]
            out[i, j] = zero if relu and v < zero else v


@njit(**JIT)
def linear_backward(gy, x, w, y, dz, dx, dw, db, relu, input_grad, bias_grad):
    """Gradients of linear / linear_relu. With relu, dz = gy * (y > 0) is formed in one pass that
    also sums db; then dW = dz^T x and dx = dz W through BLAS (transposes are free views)."""
    n, m = gy.shape
    zero = gy.dtype.type(0)
    if bias_grad:
        db[:] = 0
    if relu:
        for i in range(n):
            for j in range(m):
                v = gy[i, j] if y[i, j] > zero else zero
                dz[i, j] = v
                if bias_grad:
                    db[j] += v
        g = dz
    else:
        if bias_grad:
            for i in range(n):
                for j in range(m):
                    db[j] += gy[i, j]
        g = gy
    np.dot(g.T, x, dw)
    if input_grad:
        np.dot(g, w, dx)


# BLAS gemm through numba's own C helper (the one its np.dot calls), named by symbol so a plan
# that calls it stays cacheable; unlike np.dot it takes alpha and beta and transposed operands.
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp, types.voidptr, types.voidptr,
    types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp))
_N, _T = 110, 116  # BLAS's 'n' and 't'


@njit(**JIT)
def addmm(c, a, b, out, m, n, k, trans_a, trans_b, alpha, s, beta, coef):
    """out = beta * c + alpha * s * op(a) @ op(b) on flat row-major operands, one BLAS gemm:
    row-major C is column-major C^T, so BLAS computes C^T = op(b)^T op(a)^T with the operands
    swapped. out may be c's own buffer (the update is then in place). coef: a scratch of two
    elements for BLAS's alpha and beta (by reference), from the memory plan: no allocation per
    call, and no np.empty for numba to compile on a cold start."""
    _into(c, out)
    coef[0] = alpha * s
    coef[1] = beta
    _xxgemm(115 if out.itemsize == 4 else 100, _T if trans_b else _N, _T if trans_a else _N, n, m, k,
            coef.ctypes, b.ctypes, k if trans_b else n, a.ctypes, m if trans_a else k, coef[1:].ctypes, out.ctypes, n)


# ------------------------------------------------------------------ softmax family (x seen as [outer, n, inner])


@njit(**JIT)
def softmax(x, out, outer, n, inner, log):
    """exp(x - max) / sum (or x - max - log sum) along the middle axis. Each exp is taken once,
    in a loop of its own (no reduction in it), so it vectorizes; the sum is a separate pass."""
    for o in range(outer):
        for i in range(inner):
            base = o * n * inner + i
            m = x[base]
            for k in range(1, n):
                v = x[base + k * inner]
                if v > m:
                    m = v
            for k in range(n):
                out[base + k * inner] = fexp(x[base + k * inner] - m)
            s = 0.0
            for k in range(n):
                s += out[base + k * inner]
            if log:
                ls = out.dtype.type(np.log(s))
                for k in range(n):
                    out[base + k * inner] = (x[base + k * inner] - m) - ls
            else:
                r = out.dtype.type(1.0 / s)
                for k in range(n):
                    out[base + k * inner] *= r


@njit(**JIT)
def softmax_backward(gy, y, out, outer, n, inner, log):
    """softmax: y * (gy - sum(gy * y)); log_softmax: gy - exp(y) * sum(gy), along the middle axis."""
    for o in range(outer):
        for i in range(inner):
            base = o * n * inner + i
            s = 0.0
            for k in range(n):
                j = base + k * inner
                s += gy[j] * y[j] if not log else gy[j]
            c = out.dtype.type(s)
            for k in range(n):
                j = base + k * inner
                out[j] = gy[j] - fexp(y[j]) * c if log else y[j] * (gy[j] - c)


# ------------------------------------------------------------------ losses


@njit(**JIT)
def _check_label(label, classes):
    if label < 0 or label >= classes:
        raise ValueError("class label out of range for the number of classes")


@njit(**JIT)
def mse_loss(a, b, out, mean):
    s = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        s += d * d
    out[0] = s / a.size if mean else s


@njit(**JIT)
def mse_loss_backward(gy, a, b, out, scale):
    g = gy[0] * out.dtype.type(scale)
    for i in range(out.size):
        out[i] = (a[i] - b[i]) * g


@njit(**JIT)
def nll_loss(logp, labels, out, mean):
    n, c = logp.shape
    s = 0.0
    for i in range(n):
        _check_label(labels[i], c)
        s -= logp[i, labels[i]]
    out[0] = s / n if mean else s


@njit(**JIT)
def nll_loss_backward(gy, labels, out, mean):
    n, c = out.shape
    g = -gy[0] / out.dtype.type(n) if mean else -gy[0]
    out[:] = 0
    for i in range(n):
        _check_label(labels[i], c)
        out[i, labels[i]] = g


CE_BLOCK = 4096  # cross_entropy's forward takes its exps in blocks of rows of about this many logits


@njit(inline="always", **JIT)
def _shifted_exp(x, r0, r1, e, m):
    """Rows r0..r1 of x [n, c]: m[i - r0] = max(x[i]), e[i - r0] = exp(x[i] - m[i - r0]) (e may be
    the output). The exps run as one flat loop over the block (fexp: exp32 for float32), which
    vectorizes: per-row loops of a few classes spent their time in loop set-up and scalar libm
    calls (C's 64x10 logits: 4.9 -> 1.5 us forward, 8.8 -> 1.3 us backward)."""
    c = x.shape[1]
    for i in range(r0, r1):
        mi = x[i, 0]
        for j in range(1, c):
            v = x[i, j]
            mi = v if v > mi else mi
        m[i - r0] = mi
        for j in range(c):
            e[i - r0, j] = x[i, j] - mi
    ef = e.reshape(e.size)
    for k in range((r1 - r0) * c):
        ef[k] = fexp(ef[k])


@njit(**JIT)
def cross_entropy(x, labels, out, mean, e, m):
    """Mean (or sum) over rows of log(sum(exp(row - max))) - (row[label] - max). e, m: scratch for
    a block of rows (CE_BLOCK logits, at least one row), so a large vocabulary needs no copy of
    all the logits."""
    n, c = x.shape
    rows = e.shape[0]
    total = 0.0
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        _shifted_exp(x, r0, r1, e, m)
        for i in range(r0, r1):
            label = labels[i]
            _check_label(label, c)
            s = 0.0
            for j in range(c):
                s += e[i - r0, j]
            total += np.log(s) - (x[i, label] - m[i - r0])
    out[0] = total / n if mean else total


@njit(**JIT)
def cross_entropy_backward(gy, x, labels, out, mean, m):
    """out = (softmax(x) - onehot(labels)) * gy / N: the exps written into out, then scaled per row."""
    n, c = x.shape
    scale = gy[0] / out.dtype.type(n) if mean else gy[0]
    _shifted_exp(x, 0, n, out, m)
    for i in range(n):
        label = labels[i]
        _check_label(label, c)
        s = 0.0
        for j in range(c):
            s += out[i, j]
        r = out.dtype.type(scale / s)
        for j in range(c):
            out[i, j] *= r
        out[i, label] -= scale


# ------------------------------------------------------------------ optimizer updates (torch.optim's formulas)


if numba.config.DISABLE_JIT:
    def _same_memory(a, b):
        return a.ctypes.data == b.ctypes.data
else:
    @intrinsic
    def _same_memory(typingctx, a, b):
        """Whether two arrays start at the same address: their data pointers compared, without
        typing `.ctypes` (whose implementation numba compiles separately on a cold start)."""
        def codegen(context, builder, signature, args):
            pa = context.make_array(signature.args[0])(context, builder, args[0]).data
            pb = context.make_array(signature.args[1])(context, builder, args[1]).data
            return builder.icmp_unsigned("==", builder.ptrtoint(pa, cgutils.intp_t), builder.ptrtoint(pb, cgutils.intp_t))

        return types.boolean(a, b), codegen


@njit(inline="always", **JIT)
def _into(src, dst):
    """Copy src into dst unless they are the same memory. The update loops then work in place on
    dst: with a separate output array LLVM cannot rule out a partial overlap and keeps them scalar.
    Inlined into each update kernel: one function less for numba to compile on a cold start."""
    if not _same_memory(src, dst):
        for i in range(src.size):
            dst[i] = src[i]


# The update kernels take the optional terms as None or a number: `if x is not None` on a None
# argument is pruned at compile time (a ternary would not be), so each variant is a branch-free,
# vectorizable loop, and only the variants a plan uses are compiled (the registry picks them).


@njit(**JIT)
def sgd(p, g, p_out, lr, weight_decay):
    """SGD without momentum: p -= lr * (g [+ weight_decay * p]), in one in-place pass."""
    _into(p, p_out)
    lr_ = p_out.dtype.type(lr)
    for i in range(p_out.size):
        d = g[i]
        if weight_decay is not None:  # without weight decay d = g exactly, as torch computes it
            d = d + p_out.dtype.type(weight_decay) * p_out[i]
        p_out[i] = p_out[i] - lr_ * d


@njit(**JIT)
def sgd_momentum(p, g, buf, step, p_out, buf_out, lr, momentum, dampening, weight_decay, nesterov):
    """SGD with momentum (nesterov: None or True), in one in-place pass over param and buffer.
    At step 0 the buffer starts as d_p, as torch's does."""
    _into(p, p_out)
    _into(buf, buf_out)
    dt = p.dtype.type
    lr_, mom, damp = dt(lr), dt(momentum), dt(1.0 - dampening)
    first = step[0] == 0
    for i in range(p_out.size):
        d = g[i]
        if weight_decay is not None:
            d = d + dt(weight_decay) * p_out[i]
        b = d if first else mom * buf_out[i] + damp * d
        buf_out[i] = b
        if nesterov is not None:
            b = d + mom * b
        p_out[i] = p_out[i] - lr_ * b


@njit(**JIT)
def adam(p, g, m, v, step, p_out, m_out, v_out, lr, beta1, beta2, eps, weight_decay, decoupled, scale):
    """One Adam step (amsgrad=False) in one in-place pass over param and moments; decoupled
    (None or True): AdamW's p *= 1 - lr * weight_decay instead of g += weight_decay * p; scale
    (None or a 1-element array of the param's dtype): the gradient is g * scale[0].
    torch updates exp_avg with lerp, whose formula switches at weight 0.5 (beta1 > 0.5: the
    usual case); beta1 is a runtime value, so the switch is a loop-invariant branch."""
    _into(p, p_out)
    _into(m, m_out)
    _into(v, v_out)
    dt = p.dtype.type
    t = float(step[0] + 1)
    bias1 = 1.0 - math.pow(beta1, t)
    bias2 = 1.0 - math.pow(beta2, t)
    w = 1.0 - beta1
    low = w < 0.5
    step_size, sqrt_bias2 = dt(lr / bias1), dt(bias2 ** 0.5)
    w_, one_minus_w, b2, one_minus_b2, eps_ = dt(w), dt(1.0 - w), dt(beta2), dt(1.0 - beta2), dt(eps)
    for i in range(p_out.size):
        pi = p_out[i]
        gi = g[i]
        if scale is not None:
            gi = gi * scale[0]
        if weight_decay is not None:
            if decoupled is not None:
                pi = pi * dt(1.0 - lr * weight_decay)
            else:
                gi = gi + dt(weight_decay) * pi
        mi = m_out[i]
        if low:
            mi = mi + w_ * (gi - mi)
        else:
            mi = gi - (gi - mi) * one_minus_w
        vi = b2 * v_out[i] + one_minus_b2 * (gi * gi)
        m_out[i] = mi
        v_out[i] = vi
        p_out[i] = pi - step_size * (mi / (np.sqrt(vi) / sqrt_bias2 + eps_))


# ------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class Kernel:
    """How a plan runs one op: `call(site) -> (numba function, [arguments])`, or a list of such
    pairs run in order (pad: fill, then copy the interior; concat: one copy per input).

    inplace: elementwise, so an output may share its buffer with a same-shaped input (the
    runtime writes "update:" outputs straight into the param / state buffer then); a tuple of
    input positions: only those inputs may share the output's buffer (addmm's c, not a or b).
    scratch: scratch(node) -> TensorTypes of temporaries the kernel needs for the node's duration."""

    op: str
    call: Callable[["Site"], tuple[Any, list]]
    inplace: bool | tuple[int, ...] = False
    scratch: Callable | None = None


KERNELS: dict[str, Kernel] = {}


def kernel(op: str, inplace: bool | tuple[int, ...] = False, scratch: Callable | None = None):
    def register(call):
        if op in KERNELS:
            raise ValueError(f"kernel for {op!r} registered twice")
        KERNELS[op] = Kernel(op, call, inplace, scratch)
        return call

    return register


def calls(result) -> list[tuple[Any, list]]:
    """A kernel call's result as a list of (function, arguments)."""
    return result if isinstance(result, list) else [result]


class Site:
    """One node's kernel call: operands `i`, outputs `o`, scratch `t` (each an Operand), attrs, node."""

    def __init__(self, node, ins, outs, scratch=()):
        self.node, self.i, self.o, self.t = node, list(ins), list(outs), list(scratch)
        self.attrs = dict(node.attrs)


class Operand:
    """A value as a kernel argument: `a` shaped, `f` flat (1-D), `s` its first element (scalars).

    In code generation these are source expressions (Code); for a direct call, arrays."""

    def __init__(self, type, a, f, s):
        self.type, self.a, self.f, self.s = type, a, f, s

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape


class Code(str):
    """A source expression (as opposed to a constant, which codegen renders with repr)."""


# ---- static layout helpers (Python, run at codegen time)


def c_strides(shape) -> tuple[int, ...]:
    s, out = 1, []
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def broadcast_strides(shape, out_shape) -> tuple[int, ...]:
    """Element strides of a C-contiguous `shape` read at the indices of `out_shape` (0 on broadcast dims)."""
    lead = len(out_shape) - len(shape)
    st = c_strides(shape)
    return (0,) * lead + tuple(0 if d == 1 and od != 1 else s for d, od, s in zip(shape, out_shape[lead:], st))


def collapse(shape, *strides):
    """Drop size-1 dims and merge neighbours that are contiguous for every operand; pad to MAXR.

    Returns (shape, strides...) as MAXR-tuples, the form `strided` takes."""
    dims = [(n, [s[d] for s in strides]) for d, n in enumerate(shape) if n != 1]
    merged: list[tuple[int, list[int]]] = []
    for n, st in dims:
        if merged:
            pn, pst = merged[-1]
            if all(ps == s * n for ps, s in zip(pst, st)):
                merged[-1] = (pn * n, st)
                continue
        merged.append((n, st))
    if len(merged) > MAXR:
        from graphc.ir import GraphcError

        raise GraphcError(f"runtime: a loop over {len(merged)} non-mergeable dims (shape {list(shape)}) exceeds the "
                          f"kernel nest's {MAXR}")
    pad = MAXR - len(merged)
    out_shape = (1,) * pad + tuple(n for n, _ in merged)
    out_strides = [(0,) * pad + tuple(st[k] for _, st in merged) for k in range(len(strides))]
    return (out_shape, *out_strides)


def _middle(shape, dim):
    outer = int(np.prod(shape[:dim], dtype=np.int64))
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    return outer, shape[dim], inner


# ---- one entry per op


def _binary_call(s: Site):
    a, b, out = s.i[0], s.i[1], s.o[0]
    code = BINARY_CODES[s.node.op]
    if out.type.size == 1 and a.type.size == 1 and b.type.size == 1:
        return binary_one, [code, a.f, b.f, out.f]
    if a.shape == b.shape:
        return binary_flat, [code, a.f, b.f, out.f]
    if b.type.size == 1 and a.shape == out.shape:
        return binary_scalar, [code, a.f, b.f, out.f, False]
    if a.type.size == 1 and b.shape == out.shape:
        return binary_scalar, [code, b.f, a.f, out.f, True]
    shape, sa, sb, so = collapse(out.shape, broadcast_strides(a.shape, out.shape),
                                 broadcast_strides(b.shape, out.shape), c_strides(out.shape))
    return strided, [code, a.f, sa, b.f, sb, out.f, so, shape]


for _op in BINARY_CODES:
    kernel(_op, inplace=True)(_binary_call)

for _op, _fn in (("neg", neg), ("exp", exp), ("log", log), ("relu", relu), ("sigmoid", sigmoid), ("tanh", tanh)):
    kernel(_op, inplace=True)(lambda s, _fn=_fn: (_fn, [s.i[0].f, s.o[0].f]))

for _op, _fn in (("relu_backward", relu_backward), ("sigmoid_backward", sigmoid_backward),
                 ("tanh_backward", tanh_backward)):
    kernel(_op, inplace=True)(lambda s, _fn=_fn: (_fn, [s.i[0].f, s.i[1].f, s.o[0].f]))


@kernel("full")
def _(s):
    return fill, [s.o[0].f, float(s.attrs["value"])]


@kernel("reshape")
def _(s):
    x, out = s.i[0].f, s.o[0].f
    if isinstance(x, Code) and x == out:  # the memory plan made it a view of its operand: nothing to move
        return []
    return copy, [x, out]


@kernel("transpose")
def _(s):
    x, out, perm = s.i[0], s.o[0], s.attrs["perm"]
    st = c_strides(x.shape)
    shape, sa, so = collapse(out.shape, tuple(st[p] for p in perm), c_strides(out.shape))
    return strided, [COPY, x.f, sa, x.f, sa, out.f, so, shape]


@kernel("broadcast_to")
def _(s):
    x, out = s.i[0], s.o[0]
    shape, sa, so = collapse(out.shape, broadcast_strides(x.shape, out.shape), c_strides(out.shape))
    return strided, [COPY, x.f, sa, x.f, sa, out.f, so, shape]


def _reduce_call(s: Site, reduced: tuple[int, ...], mean: bool):
    x, out = s.i[0], s.o[0]
    keep = tuple(1 if d in reduced else n for d, n in enumerate(x.shape))
    so = tuple(0 if d in reduced else st for d, st in enumerate(c_strides(keep)))
    shape, sa, so = collapse(x.shape, c_strides(x.shape), so)
    count = int(np.prod([x.shape[d] for d in reduced], dtype=np.int64))
    return reduce_sum, [x.f, out.f, sa, so, shape, count, mean]


kernel("sum")(lambda s: _reduce_call(s, s.attrs["dims"], False))
kernel("mean")(lambda s: _reduce_call(s, s.attrs["dims"], True))


@kernel("sum_to")
def _(s):
    x, shape = s.i[0].shape, tuple(s.attrs["shape"])
    lead = len(x) - len(shape)
    reduced = tuple(range(lead)) + tuple(lead + d for d, n in enumerate(shape) if n == 1 and x[lead + d] != 1)
    return _reduce_call(s, reduced, False)



def _linear_call(s: Site, relu_: bool):
    x, w = s.i[0], s.i[1]
    has_bias = len(s.i) == 3
    b = s.i[2].f if has_bias else w.f  # w.f: a placeholder of the right type, never read
    return linear, [x.a, w.a, b, s.o[0].a, has_bias, relu_]


kernel("linear")(lambda s: _linear_call(s, False))
kernel("linear_relu")(lambda s: _linear_call(s, True))


def _linear_backward_scratch(node, types):
    """dz = gy * (y > 0) needs a buffer of gy's type when the relu mask is applied."""
    return [types[node.inputs[0]]] if node.attr["relu"] else []


@kernel("linear_backward", scratch=_linear_backward_scratch)
def _(s):
    gy, x, w = s.i[:3]
    relu_, input_grad, bias_grad = s.attrs["relu"], s.attrs["input_grad"], s.attrs["bias_grad"]
    outs = list(s.o)
    dx = outs.pop(0).a if input_grad else x.a  # placeholders are never written
    dw = outs.pop(0).a
    db = outs.pop(0).f if bias_grad else w.f
    y = s.i[3].a if relu_ else gy.a
    dz = s.t[0].a if relu_ else gy.a
    return linear_backward, [gy.a, x.a, w.a, y, dz, dx, dw, db, relu_, input_grad, bias_grad]


for _op, _log in (("softmax", False), ("log_softmax", True)):
    kernel(_op)(lambda s, _log=_log: (softmax, [s.i[0].f, s.o[0].f, *_middle(s.i[0].shape, s.attrs["dim"]), _log]))
for _op, _log in (("softmax_backward", False), ("log_softmax_backward", True)):
    kernel(_op)(lambda s, _log=_log: (softmax_backward,
                                      [s.i[0].f, s.i[1].f, s.o[0].f, *_middle(s.i[0].shape, s.attrs["dim"]), _log]))


def _mean(s: Site) -> bool:
    return s.attrs["reduction"] == "mean"


kernel("mse_loss")(lambda s: (mse_loss, [s.i[0].f, s.i[1].f, s.o[0].f, _mean(s)]))
kernel("mse_loss_backward", inplace=True)(lambda s: (mse_loss_backward, [
    s.i[0].f, s.i[1].f, s.i[2].f, s.o[0].f, 2.0 / (s.i[1].type.size if _mean(s) else 1)]))
kernel("nll_loss")(lambda s: (nll_loss, [s.i[0].a, s.i[1].f, s.o[0].f, _mean(s)]))
kernel("nll_loss_backward")(lambda s: (nll_loss_backward, [s.i[0].f, s.i[1].f, s.o[0].a, _mean(s)]))
def _rows_max(node, types):
    """The backward: the row maxima, f[n] (its exps go into its output). The forward: the exps and
    maxima of a block of rows, [b, c] and [b] with b * c about CE_BLOCK (at least one row)."""
    if node.op == "cross_entropy_backward":
        x = types[node.inputs[1]]
        return [TensorType(x.shape[:1], x.dtype)]
    x = types[node.inputs[0]]
    b = min(x.shape[0], max(1, CE_BLOCK // max(x.shape[1], 1)))
    return [TensorType((b, x.shape[1]), x.dtype), TensorType((b,), x.dtype)]


kernel("cross_entropy", scratch=_rows_max)(lambda s: (cross_entropy, [s.i[0].a, s.i[1].f, s.o[0].f, _mean(s),
                                                                       s.t[0].a, s.t[1].f]))
kernel("cross_entropy_backward", scratch=_rows_max)(lambda s: (cross_entropy_backward, [
    s.i[0].f, s.i[1].a, s.i[2].f, s.o[0].a, _mean(s), s.t[0].f]))
kernel("dropout", inplace=True)(lambda s: (dropout, [s.i[0].f, s.i[1].s, s.o[0].f, float(s.attrs["p"]),
                                                     int(s.attrs["stream"])]))


def _or_none(x):
    """A number, or None when it is 0 / false: the update kernels compile that term away."""
    return x if x else None


@kernel("addmm", inplace=(0,), scratch=lambda node, types: [TensorType((2,), types[node.inputs[0]].dtype)])
def _(s):
    a = s.attrs
    c, x, y = s.i[:3]
    m, n = s.o[0].shape
    k = x.shape[0] if a["trans_a"] else x.shape[1]
    return addmm, [c.f, x.f, y.f, s.o[0].f, m, n, k, a["trans_a"], a["trans_b"], float(a["alpha"]),
                   s.i[3].s if len(s.i) == 4 else 1.0, float(a["beta"]), s.t[0].f]


# The hyperparameters are f64[] operands (the optimizer's param_groups, read at each call);
# `.s` is their value. The attributes say which terms exist: absent ones are passed as None.
@kernel("sgd_update", inplace=True)
def _(s):
    a = s.attrs
    p, g, lr, momentum, dampening, wd = s.i[:6]
    wd = wd.s if a["weight_decay"] else None
    if not a["momentum"]:
        return sgd, [p.f, g.f, s.o[0].f, lr.s, wd]
    return sgd_momentum, [p.f, g.f, s.i[6].f, s.i[7].f, s.o[0].f, s.o[1].f, lr.s, momentum.s, dampening.s,
                          wd, _or_none(a["nesterov"])]


@kernel("adam_update", inplace=True)
def _(s):
    a = s.attrs
    return adam, [*(x.f for x in s.i[:5]), *(o.f for o in s.o), *(x.s for x in s.i[5:9]),
                  s.i[9].s if a["weight_decay"] else None, _or_none(a["weight_decay"] and a["decoupled"]),
                  s.i[10].f if len(s.i) == 11 else None]


del _op


# ------------------------------------------------------------------ direct calls (tests, debugging)


def run_kernel(op: str, inputs: list, attrs: dict | None = None) -> tuple[np.ndarray, ...]:
    """Run op's native kernel on arrays (as a one-node plan would) and return its outputs."""
    from graphc.ir import GraphBuilder, TensorType, get_op

    b = GraphBuilder(op)
    names = [b.add_input(f"in{k}", TensorType.of(x), "input") for k, x in enumerate(inputs)]
    out = b.emit(op, names, get_op(op).normalize_attrs(attrs or {}))
    node = b.nodes[-1]
    arrays = [np.ascontiguousarray(x) for x in inputs]
    outs = [np.zeros(t.shape, t.np_dtype) for t in node.types]
    scratch = [np.zeros(t.shape, t.np_dtype) for t in (KERNELS[op].scratch(node, b.types) if KERNELS[op].scratch else ())]

    def operand(t, x):
        return Operand(t, x, x.reshape(-1), x.reshape(-1)[0] if x.size else None)

    site = Site(node, [operand(b.types[n], x) for n, x in zip(names, arrays)],
                [operand(t, x) for t, x in zip(node.types, outs)],
                [operand(TensorType(x.shape, node.types[0].dtype), x) for x in scratch])
    if node.attr.get("threads", 1) > 1:  # the workers the node's `threads` asks for, as a plan does
        from .threads import ensure_pool

        ensure_pool(node.attr["threads"])
    for fn, args in calls(KERNELS[op].call(site)):
        fn(*args)
    del out
    return tuple(outs)


# the kernels of the primitives added for issue 9 (math, comparisons, movement, indexing)
from . import primitive_kernels  # noqa: E402,F401
# the all_reduce kernel of data-parallel train steps (calls MPI from the plan)
from . import collectives  # noqa: E402,F401
# the kernels of conv2d and the poolings (issue 10)
from . import kernels_conv  # noqa: E402,F401
