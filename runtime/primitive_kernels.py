"""Native kernels of the primitives added for the kernel stage (graphc/ir/primitives.py).

Same conventions as kernels.py: out= style, no allocation, flat views for elementwise loops,
strides worked out at codegen time for everything that moves data. These are the generic
one-node lowerings; the kernel pass may put several nodes in one loop instead.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernels import (COPY, JIT, MAXACC, MAXR, Code, Site, broadcast_strides, c_strides, collapse, fill, kernel,
                      strided, uniform)

# ------------------------------------------------------------------ unary math


@njit(**JIT)
def sqrt(x, out):
    for i in range(out.size):
        out[i] = np.sqrt(x[i])


@njit(**JIT)
def rsqrt(x, out):
    one = out.dtype.type(1)
    for i in range(out.size):
        out[i] = one / np.sqrt(x[i])


@njit(**JIT)
def erf(x, out):
    for i in range(out.size):
        out[i] = math.erf(x[i])


@njit(**JIT)
def power(x, out, e):
    c = out.dtype.type(e)
    for i in range(out.size):
        out[i] = x[i] ** c


@njit(**JIT)
def cast(x, out):
    for i in range(out.size):
        out[i] = x[i]


@njit(**JIT)
def cast_bool(x, out):
    for i in range(out.size):
        out[i] = x[i] != 0


for _op, _fn in (("sqrt", sqrt), ("rsqrt", rsqrt), ("erf", erf)):
    kernel(_op, inplace=True)(lambda s, _fn=_fn: (_fn, [s.i[0].f, s.o[0].f]))
kernel("pow", inplace=True)(lambda s: (power, [s.i[0].f, s.o[0].f, float(s.attrs["exponent"])]))
kernel("cast")(lambda s: (cast_bool if s.attrs["dtype"] == "bool" else cast, [s.i[0].f, s.o[0].f]))


# ------------------------------------------------------------------ comparisons and where (strided, any broadcast)

EQ, NE, LT, LE, GT, GE = range(6)
COMPARE_CODES = {"eq": EQ, "ne": NE, "lt": LT, "le": LE, "gt": GT, "ge": GE}


@njit(inline="always", **JIT)
def _cmp(code, x, y):
    if code == EQ:
        return x == y
    if code == NE:
        return x != y
    if code == LT:
        return x < y
    if code == LE:
        return x <= y
    if code == GT:
        return x > y
    return x >= y


@njit(**JIT)
def compare(code, a, sa, b, sb, out, so, shape):
    """out = a (cmp) b over the MAXR loop nest of `shape` (element strides; 0 = broadcast)."""
    n0, n1, n2, n3, n4, n5 = shape
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                for i3 in range(n3):
                    for i4 in range(n4):
                        for i5 in range(n5):
                            ia = i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4] + i5 * sa[5]
                            ib = i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4] + i5 * sb[5]
                            io = i0 * so[0] + i1 * so[1] + i2 * so[2] + i3 * so[3] + i4 * so[4] + i5 * so[5]
                            out[io] = _cmp(code, a[ia], b[ib])


@njit(**JIT)
def where(c, sc, a, sa, b, sb, out, so, shape):
    """out = c ? a : b over the MAXR loop nest of `shape`."""
    n0, n1, n2, n3, n4, n5 = shape
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                for i3 in range(n3):
                    for i4 in range(n4):
                        for i5 in range(n5):
                            ic = i0 * sc[0] + i1 * sc[1] + i2 * sc[2] + i3 * sc[3] + i4 * sc[4] + i5 * sc[5]
                            ia = i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4] + i5 * sa[5]
                            ib = i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4] + i5 * sb[5]
                            io = i0 * so[0] + i1 * so[1] + i2 * so[2] + i3 * so[3] + i4 * so[4] + i5 * so[5]
                            out[io] = a[ia] if c[ic] else b[ib]


def _compare_call(s: Site):
    a, b, out = s.i[0], s.i[1], s.o[0]
    shape, sa, sb, so = collapse(out.shape, broadcast_strides(a.shape, out.shape),
                                 broadcast_strides(b.shape, out.shape), c_strides(out.shape))
    return compare, [COMPARE_CODES[s.node.op], a.f, sa, b.f, sb, out.f, so, shape]


for _op in COMPARE_CODES:
    kernel(_op)(_compare_call)


@kernel("where")
def _(s):
    c, a, b, out = s.i[0], s.i[1], s.i[2], s.o[0]
    shape, sc, sa, sb, so = collapse(out.shape, *(broadcast_strides(x.shape, out.shape) for x in (c, a, b)),
                                     c_strides(out.shape))
    return where, [c.f, sc, a.f, sa, b.f, sb, out.f, so, shape]


# ------------------------------------------------------------------ the max reduction


@kernel("max")
def _(s):
    x, out, dims = s.i[0], s.o[0], s.attrs["dims"]
    init = float("-inf") if x.type.is_float else -(1 << 63)
    keep = tuple(1 if d in dims else n for d, n in enumerate(x.shape))
    so = tuple(0 if d in dims else st for d, st in enumerate(c_strides(keep)))
    shape, sa, so = collapse(x.shape, c_strides(x.shape), so)
    return [(fill, [out.f, init]), (strided, [MAXACC, x.f, sa, x.f, sa, out.f, so, shape])]


# ------------------------------------------------------------------ argmax / argmin (x seen as [outer, n, inner])


@njit(**JIT)
def arg_extremum(x, out, outer, n, inner, largest):
    """out[o, i] = index of the first max (min) of x[o, :, i]; a NaN wins, as in numpy and torch."""
    for o in range(outer):
        for i in range(inner):
            base = o * n * inner + i
            best, k_best = x[base], 0
            if best == best:
                for k in range(1, n):
                    v = x[base + k * inner]
                    if v != v:
                        best, k_best = v, k
                        break
                    if (v > best) if largest else (v < best):
                        best, k_best = v, k
            out[o * inner + i] = k_best


def _arg_call(s: Site):
    x, dim = s.i[0], s.attrs["dim"]
    outer = int(np.prod(x.shape[:dim], dtype=np.int64))
    inner = int(np.prod(x.shape[dim + 1:], dtype=np.int64))
    return arg_extremum, [x.f, s.o[0].f, outer, x.shape[dim], inner, s.node.op == "argmax"]


kernel("argmax")(_arg_call)
kernel("argmin")(_arg_call)


# ------------------------------------------------------------------ movement


def _at(view, offset: int):
    """A flat view starting `offset` elements in (source text in codegen, an array in direct calls)."""
    if not offset:
        return view
    return Code(f"{view}[{offset}:]") if isinstance(view, str) else view[offset:]


@kernel("slice")
def _(s):
    x, out, a = s.i[0], s.o[0], s.attrs
    st = c_strides(x.shape)
    sa = tuple(v * a["step"] if d == a["dim"] else v for d, v in enumerate(st))
    if out.type.size == 0:
        return []
    shape, sa, so = collapse(out.shape, sa, c_strides(out.shape))
    src = _at(x.f, a["start"] * st[a["dim"]])
    return strided, [COPY, src, sa, src, sa, out.f, so, shape]


@kernel("concat")
def _(s):
    out, dim = s.o[0], s.attrs["dim"]
    so_full, at, result = c_strides(out.shape), 0, []
    for x in s.i:
        if x.type.size:
            shape, sa, so = collapse(x.shape, c_strides(x.shape), so_full)
            dst = _at(out.f, at * so_full[dim])
            result.append((strided, [COPY, x.f, sa, x.f, sa, dst, so, shape]))
        at += x.shape[dim]
    return result


@kernel("pad")
def _(s):
    x, out, a = s.i[0], s.o[0], s.attrs
    inner = a["interior"] or (0,) * len(x.shape)
    so_full = c_strides(out.shape)
    result = [(fill, [out.f, float(a["value"])])]
    if x.type.size:
        so = tuple(v * (inner[d] + 1) for d, v in enumerate(so_full))
        shape, sa, so = collapse(x.shape, c_strides(x.shape), so)
        dst = _at(out.f, sum(a["widths"][2 * d] * v for d, v in enumerate(so_full)))
        result.append((strided, [COPY, x.f, sa, x.f, sa, dst, so, shape]))
    return result


# ------------------------------------------------------------------ indexing (x seen as [outer, n, inner])


@njit(**JIT)
def _check_index(k, n):
    if k < 0 or k >= n:
        raise ValueError("index out of range in gather / scatter_add")


@njit(**JIT)
def gather(x, index, out, outer, n, m, inner):
    for o in range(outer):
        for j in range(m):
            for i in range(inner):
                p = (o * m + j) * inner + i
                k = index[p]
                _check_index(k, n)
                out[p] = x[(o * n + k) * inner + i]


@njit(**JIT)
def scatter_add(x, index, src, out, outer, n, m, inner):
    if x.ctypes.data != out.ctypes.data:
        for p in range(out.size):
            out[p] = x[p]
    for o in range(outer):
        for j in range(m):
            for i in range(inner):
                p = (o * m + j) * inner + i
                k = index[p]
                _check_index(k, n)
                out[(o * n + k) * inner + i] += src[p]


def _split(shape, index_shape, dim):
    outer = int(np.prod(shape[:dim], dtype=np.int64))
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    return outer, shape[dim], index_shape[dim], inner


kernel("gather")(lambda s: (gather, [s.i[0].f, s.i[1].f, s.o[0].f, *_split(s.i[0].shape, s.i[1].shape, s.attrs["dim"])]))
kernel("scatter_add", inplace=True)(lambda s: (scatter_add, [s.i[0].f, s.i[1].f, s.i[2].f, s.o[0].f,
                                                             *_split(s.i[0].shape, s.i[1].shape, s.attrs["dim"])]))


@njit(**JIT)
def index_select(x, index, out, outer, n, m, inner):
    """out[o, j, :] = x[o, index[j], :]: one id read per row, the row copied whole."""
    for j in range(m):
        _check_index(index[j], n)
    for o in range(outer):
        for j in range(m):
            src, dst = (o * n + index[j]) * inner, (o * m + j) * inner
            for i in range(inner):
                out[dst + i] = x[src + i]


@njit(**JIT)
def index_add(x, index, src, out, outer, n, m, inner):
    """out = x, then out[o, index[j], :] += src[o, j, :] (in order of j, as np.add.at)."""
    for j in range(m):
        _check_index(index[j], n)
    if x.ctypes.data != out.ctypes.data:
        for p in range(out.size):
            out[p] = x[p]
    for o in range(outer):
        for j in range(m):
            at, p = (o * n + index[j]) * inner, (o * m + j) * inner
            for i in range(inner):
                out[at + i] += src[p + i]


def _rows(s):  # (outer, n, m, inner) of x seen as [outer, n, inner] and its 1-D index of m ids
    return _split(s.i[0].shape, (0,) * s.attrs["dim"] + tuple(s.i[1].shape), s.attrs["dim"])


kernel("index_select")(lambda s: (index_select, [s.i[0].f, s.i[1].f, s.o[0].f, *_rows(s)]))
kernel("index_add", inplace=True)(lambda s: (index_add, [s.i[0].f, s.i[1].f, s.i[2].f, s.o[0].f, *_rows(s)]))


# ------------------------------------------------------------------ batched matmul


@njit(**JIT)
def batched_matmul(a, b, out, shape, sa, sb):
    """out[t] = a[ia] @ b[ib] for each output matrix t; ia, ib from t's batch index (MAXR dims,
    strides counted in matrices, 0 on broadcast dims)."""
    for t in range(out.shape[0]):
        r, ia, ib = t, 0, 0
        for d in range(len(shape) - 1, -1, -1):
            q = r % shape[d]
            r //= shape[d]
            ia += q * sa[d]
            ib += q * sb[d]
        np.dot(a[ia], b[ib], out[t])


def _reshaped(view, shape):
    return Code(f"{view}.reshape({tuple(shape)!r})") if isinstance(view, str) else view.reshape(shape)


def matmul_call(s: Site):
    a, b, out = s.i[0], s.i[1], s.o[0]
    if a.type.rank == 2 and b.type.rank == 2:
        from .kernels import matmul

        return matmul, [a.a, b.a, out.a]
    batch = out.shape[:-2]
    if out.type.size == 0:
        return []
    sa_, sb_ = (broadcast_strides(x.shape[:-2], batch) for x in (a, b))
    shape, sa, sb, _ = collapse(batch, sa_, sb_, c_strides(batch))
    n_out = int(np.prod(batch, dtype=np.int64))
    a3 = _reshaped(a.f, (max(1, a.type.size // (a.shape[-2] * a.shape[-1] or 1)), *a.shape[-2:]))
    b3 = _reshaped(b.f, (max(1, b.type.size // (b.shape[-2] * b.shape[-1] or 1)), *b.shape[-2:]))
    o3 = _reshaped(out.f, (n_out, *out.shape[-2:]))
    assert len(shape) == MAXR
    return batched_matmul, [a3, b3, o3, shape, sa, sb]


kernel("matmul")(matmul_call)


# ------------------------------------------------------------------ randomness

kernel("uniform")(lambda s: (uniform, [s.i[0].s, int(s.attrs["stream"]), s.o[0].f]))


# ------------------------------------------------------------------ constants


@njit(**JIT)
def arange(out, start, step):
    for i in range(out.size):
        out[i] = start + i * step


kernel("arange")(lambda s: (arange, [s.o[0].f, *((int(s.attrs["start"]), int(s.attrs["step"])) if s.attrs["dtype"] == "i64"
                                                  else (float(s.attrs["start"]), float(s.attrs["step"])))]))
