"""Primitive ops: the small set every layer decomposes into (issue 9).

Elementwise math (sqrt, rsqrt, erf, pow with a constant exponent, maximum, minimum),
comparisons and `where`, `cast`, the `max` reduction, movement (`slice`, `concat`, `pad`),
indexing (`gather`, `scatter_add`, `index_select`, `index_add`) and the counter-based random `uniform`. The older
primitives (add, sub, mul, div, neg, exp, log, tanh, sum, mean, reshape, transpose,
broadcast_to, matmul, full) stay in ops.py. Each entry: shape/dtype rule, numpy reference and
VJP side by side, and its fusion kind. Names and attributes follow torch / numpy.
"""
from __future__ import annotations

import math

import numpy as np

from . import rng
from .errors import GraphcError, ShapeError
from .opdef import Attr, defop, no_gradient
from .ops import _float, _same_dtype, _scalar, _sum_to, broadcast_shape, _check_dim, _reduced
from .types import DTYPES, TensorType

# ------------------------------------------------------------------ unary math


def _unary(name: str, fn, doc: str, attrs=None):
    @defop(name, 1, attrs, doc=doc, kind="elementwise")
    def rule(t, **_):
        _float(name, t[0])
        return t[0]

    rule.ref(fn)
    return rule


def _erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy()


sqrt = _unary("sqrt", np.sqrt, "square root")
rsqrt = _unary("rsqrt", lambda x: (1 / np.sqrt(x)).astype(x.dtype), "1 / sqrt(x)")
erf = _unary("erf", _erf, "the error function (GELU's exact form uses it)")
pow_ = _unary("pow", lambda x, exponent: np.power(x, x.dtype.type(exponent)), "x ** exponent, a constant exponent",
              {"exponent": Attr("float")})


@sqrt.grad
def _(b, node, gys, needs):  # d sqrt(x) = 1 / (2 sqrt(x)): from the output
    return [b.emit("div", [gys[0], b.emit("mul", [node.out, _scalar(b, 2.0, node.out)])])]


@rsqrt.grad
def _(b, node, gys, needs):  # d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
    y = node.out
    y3 = b.emit("mul", [b.emit("mul", [y, y]), y])
    return [b.emit("mul", [gys[0], b.emit("mul", [y3, _scalar(b, -0.5, y)])])]


@erf.grad
def _(b, node, gys, needs):  # d erf(x) = 2/sqrt(pi) exp(-x^2)
    x = node.inputs[0]
    e = b.emit("exp", [b.emit("neg", [b.emit("mul", [x, x])])])
    return [b.emit("mul", [gys[0], b.emit("mul", [e, _scalar(b, 2.0 / math.sqrt(math.pi), x)])])]


@pow_.grad
def _(b, node, gys, needs):  # d x^e = e x^(e-1)
    x, e = node.inputs[0], node.attr["exponent"]
    d = b.emit("mul", [b.emit("pow", [x], {"exponent": e - 1.0}), _scalar(b, e, x)]) if e != 1.0 else None
    return [b.emit("mul", [gys[0], d]) if d is not None else gys[0]]


# ------------------------------------------------------------------ maximum, minimum, comparisons, where


def _binary_float(name: str, fn, doc: str):
    @defop(name, 2, doc=doc, kind="broadcast")
    def rule(t):
        dt = _same_dtype(name, *t)
        return TensorType(broadcast_shape(name, *t), dt)

    rule.ref(fn)
    return rule


maximum = _binary_float("maximum", np.maximum, "elementwise max with broadcasting (NaN propagates, as torch.maximum)")
minimum = _binary_float("minimum", np.minimum, "elementwise min with broadcasting (NaN propagates, as torch.minimum)")


def _extremum_grad(cmp: str):
    """torch's rule: the gradient goes to the larger (smaller) operand, split in half on ties."""
    def vjp(b, node, gys, needs):
        gy, (x, y) = gys[0], node.inputs
        zero, half = _scalar(b, 0.0, gy), _scalar(b, 0.5, gy)
        tie = b.emit("eq", [x, y])
        gh = b.emit("mul", [gy, half])

        def part(win):
            return b.emit("where", [tie, gh, b.emit("where", [win, gy, zero])])

        gx = _sum_to(b, part(b.emit(cmp, [x, y])), x) if needs[0] else None
        gyv = _sum_to(b, part(b.emit(cmp, [y, x])), y) if needs[1] else None
        return [gx, gyv]

    return vjp


maximum.grad(_extremum_grad("gt"))
minimum.grad(_extremum_grad("lt"))

_COMPARISONS = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
                "ge": np.greater_equal}


def _comparison(name: str, fn):
    @defop(name, 2, doc=f"elementwise {fn.__name__} with broadcasting; gives bool", kind="broadcast")
    def rule(t):
        _same_dtype(name, *t)
        return TensorType(broadcast_shape(name, *t), "bool")

    rule.ref(lambda a, b: np.asarray(fn(a, b)))
    rule.grad(no_gradient("a comparison: its output is bool"))
    return rule


for _name, _fn in _COMPARISONS.items():
    _comparison(_name, _fn)


@defop("where", 3, kind="broadcast", doc="cond ? a : b elementwise, all three broadcast (torch.where); cond is bool")
def where(t):
    c, a, b = t
    if c.dtype != "bool":
        raise ShapeError(f"where: condition must be bool (from a comparison), got {c}")
    dt = _same_dtype("where", a, b)
    return TensorType(broadcast_shape("where", c, a, b), dt)


where.ref(lambda c, a, b: np.where(c, a, b))


@where.grad
def _(b, node, gys, needs):
    gy, (c, x, y) = gys[0], node.inputs
    zero = _scalar(b, 0.0, gy)
    return [None,
            _sum_to(b, b.emit("where", [c, gy, zero]), x) if needs[1] else None,
            _sum_to(b, b.emit("where", [c, zero, gy]), y) if needs[2] else None]


@defop("cast", 1, {"dtype": Attr("str", choices=tuple(DTYPES))}, kind="elementwise",
       doc="convert to dtype (numpy's astype: float -> int truncates, x -> bool is x != 0)")
def cast(t, dtype):
    return TensorType(t[0].shape, dtype)


cast.ref(lambda x, dtype: x.astype(DTYPES[dtype]))


@cast.grad
def _(b, node, gys, needs):
    x = node.inputs[0]
    if not b.types[node.out].is_float:
        raise GraphcError(f"cast to {b.types[node.out].dtype} has no gradient, but %{x} needs one through it")
    return [b.emit("cast", [gys[0]], {"dtype": b.types[x].dtype})]


# ------------------------------------------------------------------ the max reduction


@defop("max", 1, {"dims": Attr("ints"), "keepdim": Attr("bool", False)}, kind="reduce",
       doc="max over dims (torch.amax); an empty dims list reduces nothing")
def max_(t, dims, keepdim):
    x = t[0]
    if x.dtype == "bool":
        raise ShapeError(f"max: input must be numeric, got {x}")
    for d in dims:
        _check_dim("max", x, d)
    if list(dims) != sorted(set(dims)):
        raise ShapeError(f"max: dims {list(dims)} must be sorted and distinct")
    if any(x.shape[d] == 0 for d in dims):
        raise ShapeError(f"max: cannot reduce an empty dim of {x}")
    return x.with_shape(_reduced(x.shape, dims, keepdim))


max_.ref(lambda x, dims, keepdim: np.asarray(np.max(x, axis=tuple(dims), keepdims=keepdim), dtype=x.dtype)
         if dims else x.copy())


@max_.grad
def _(b, node, gys, needs):
    # torch.amax: the gradient is split evenly between tied maxima
    x, dims = node.inputs[0], node.attr["dims"]
    if not dims:
        return [gys[0]]
    shape = b.types[x].shape
    kept = tuple(1 if k in dims else s for k, s in enumerate(shape))
    y, gy = node.out, gys[0]
    if not node.attr["keepdim"]:
        y = b.emit("reshape", [y], {"shape": kept})
        gy = b.emit("reshape", [gy], {"shape": kept})
    mask = b.emit("cast", [b.emit("eq", [x, y])], {"dtype": b.types[x].dtype})
    count = b.emit("sum", [mask], {"dims": dims, "keepdim": True})
    return [b.emit("mul", [mask, b.emit("div", [gy, count])])]


def _arg_extremum(name: str, fn):
    @defop(name, 1, {"dim": Attr("int"), "keepdim": Attr("bool", False)}, kind="opaque",
           doc=f"int64 index of the first {name[3:]}imum along dim (torch.{name}; NaN counts as the extremum)")
    def rule(t, dim, keepdim):
        x = t[0]
        if x.dtype == "bool":
            raise ShapeError(f"{name}: input must be numeric, got {x}")
        _check_dim(name, x, dim)
        if x.shape[dim] == 0:
            raise ShapeError(f"{name}: cannot reduce an empty dim of {x}")
        return TensorType(_reduced(x.shape, (dim,), keepdim), "i64")

    rule.ref(lambda x, dim, keepdim: np.asarray(fn(x, axis=dim, keepdims=keepdim), dtype=np.int64))
    rule.grad(no_gradient("an index: its output is int64"))
    return rule


argmax = _arg_extremum("argmax", np.argmax)
argmin = _arg_extremum("argmin", np.argmin)


# ------------------------------------------------------------------ movement: slice, concat, pad


def _slice_len(n: int, start: int, end: int, step: int) -> int:
    return max(0, (min(end, n) - start + step - 1) // step) if start < n else 0


@defop("slice", 1, {"dim": Attr("int"), "start": Attr("int"), "end": Attr("int"), "step": Attr("int", 1)},
       kind="injective", doc="x[..., start:end:step, ...] along dim (constant bounds, 0 <= start <= end, step >= 1)")
def slice_(t, dim, start, end, step):
    x = t[0]
    _check_dim("slice", x, dim)
    if step < 1 or start < 0 or end < start:
        raise ShapeError(f"slice: need 0 <= start <= end and step >= 1, got start={start} end={end} step={step}")
    n = _slice_len(x.shape[dim], start, end, step)
    return x.with_shape(x.shape[:dim] + (n,) + x.shape[dim + 1:])


@slice_.ref
def _(x, dim, start, end, step):
    idx = [slice(None)] * x.ndim
    idx[dim] = slice(start, end, step)
    return np.ascontiguousarray(x[tuple(idx)])


@slice_.grad
def _(b, node, gys, needs):
    # the transpose of a strided slice is a pad with interior padding (XLA's rule)
    x, a = node.inputs[0], node.attr
    shape = b.types[x].shape
    n, m = shape[a["dim"]], b.types[node.out].shape[a["dim"]]
    widths = [0] * (2 * len(shape))
    interior = [0] * len(shape)
    if m == 0:
        return [b.emit("full", [], {"shape": shape, "value": 0.0, "dtype": b.types[x].dtype})]
    last = a["start"] + (m - 1) * a["step"]
    widths[2 * a["dim"]], widths[2 * a["dim"] + 1] = a["start"], n - last - 1
    interior[a["dim"]] = a["step"] - 1
    return [b.emit("pad", [gys[0]], {"widths": tuple(widths), "interior": tuple(interior)})]


@defop("concat", (1, 1 << 16), {"dim": Attr("int")}, kind="injective",
       doc="join along dim (torch.cat); the other dims must agree")
def concat(t, dim):
    x = t[0]
    _same_dtype("concat", *t)
    _check_dim("concat", x, dim)
    for k, y in enumerate(t[1:], 1):
        if y.rank != x.rank or any(a != b for d, (a, b) in enumerate(zip(x.shape, y.shape)) if d != dim):
            raise ShapeError(f"concat: input {k} {y} does not match input 0 {x} outside dim {dim}")
    return x.with_shape(x.shape[:dim] + (sum(y.shape[dim] for y in t),) + x.shape[dim + 1:])


concat.ref(lambda *xs, dim: np.concatenate(xs, axis=dim))


@concat.grad
def _(b, node, gys, needs):
    dim, start, out = node.attr["dim"], 0, []
    for x, need in zip(node.inputs, needs):
        n = b.types[x].shape[dim]
        out.append(b.emit("slice", [gys[0]], {"dim": dim, "start": start, "end": start + n}) if need else None)
        start += n
    return out


@defop("pad", 1, {"widths": Attr("ints"), "value": Attr("float", 0.0), "interior": Attr("ints", ())}, kind="injective",
       doc="constant padding: widths = (before_0, after_0, before_1, after_1, ...) in dim order (numpy's "
           "pad_width, flattened); interior[d] values between neighbours along dim d (XLA's pad; empty = none)")
def pad(t, widths, value, interior):
    x = t[0]
    if len(widths) != 2 * x.rank or any(w < 0 for w in widths):
        raise ShapeError(f"pad: widths must be {2 * x.rank} non-negative numbers (before, after per dim of {x}), "
                         f"got {list(widths)}")
    inner = interior or (0,) * x.rank
    if len(inner) != x.rank or any(w < 0 for w in inner):
        raise ShapeError(f"pad: interior must be empty or {x.rank} non-negative numbers, got {list(interior)}")
    return x.with_shape(widths[2 * d] + widths[2 * d + 1] + (s + (s - 1) * inner[d] if s else 0)
                        for d, s in enumerate(x.shape))


def pad_index(shape, widths, interior):
    """The numpy index of the original elements inside the padded array."""
    inner = interior or (0,) * len(shape)
    return tuple(slice(widths[2 * d], widths[2 * d] + (s - 1) * (inner[d] + 1) + 1 if s else widths[2 * d], inner[d] + 1)
                 for d, s in enumerate(shape))


@pad.ref
def _(x, widths, value, interior):
    shape = pad.infer([TensorType.of(x)], widths=widths, value=value, interior=interior).shape
    out = np.full(shape, value, dtype=x.dtype)
    out[pad_index(x.shape, widths, interior)] = x
    return out


@pad.grad
def _(b, node, gys, needs):
    a, g = node.attr, gys[0]
    shape = b.types[node.inputs[0]].shape
    inner = a["interior"] or (0,) * len(shape)
    for d, s in enumerate(shape):
        lo, step = a["widths"][2 * d], inner[d] + 1
        if lo or step > 1 or b.types[g].shape[d] != s:
            g = b.emit("slice", [g], {"dim": d, "start": lo, "end": lo + (s - 1) * step + 1 if s else lo, "step": step})
    return [g]


# ------------------------------------------------------------------ indexing: gather, scatter_add


def _index_rule(op: str, x: TensorType, index: TensorType, dim: int, what: str = "index") -> None:
    _check_dim(op, x, dim)
    if index.dtype != "i64":
        raise ShapeError(f"{op}: {what} must be i64, got {index}")
    if index.rank != x.rank or any(a != b for d, (a, b) in enumerate(zip(x.shape, index.shape)) if d != dim):
        raise ShapeError(f"{op}: {what} {index} must have the shape of {x} except along dim {dim}")


def _check_index(op: str, index, n: int):
    if index.size and (index.min() < 0 or index.max() >= n):
        raise GraphcError(f"{op}: index out of range: indices must be in [0, {n}), got min {index.min()} max {index.max()}")


@defop("gather", 2, {"dim": Attr("int")}, kind="injective",
       doc="out[..., j, ...] = x[..., index[..., j, ...], ...] along dim (torch.gather; index has x's shape "
           "except along dim). Embeddings: gather(weight, broadcast_to(ids[:, None], [n, d]), dim=0)")
def gather(t, dim):
    x, index = t
    _index_rule("gather", x, index, dim)
    return x.with_shape(index.shape)


@gather.ref
def _(x, index, dim):
    _check_index("gather", index, x.shape[dim])
    return np.take_along_axis(x, index, axis=dim)


@gather.grad
def _(b, node, gys, needs):
    x, index = node.inputs
    zeros = b.emit("full", [], {"shape": b.types[x].shape, "value": 0.0, "dtype": b.types[x].dtype})
    return [b.emit("scatter_add", [zeros, index, gys[0]], {"dim": node.attr["dim"]}), None]


@defop("scatter_add", 3, {"dim": Attr("int")}, kind="opaque",
       doc="out = x, then out[..., index[..., j, ...], ...] += src[..., j, ...] along dim (torch.scatter_add; "
           "index and src have one shape, x's except along dim)")
def scatter_add(t, dim):
    x, index, src = t
    _index_rule("scatter_add", x, index, dim)
    _same_dtype("scatter_add", x, src)
    if src.shape != index.shape:
        raise ShapeError(f"scatter_add: src {src} must have index's shape {index}")
    return x


@scatter_add.ref
def _(x, index, src, dim):
    _check_index("scatter_add", index, x.shape[dim])
    out = x.copy()
    idx = list(np.indices(index.shape, sparse=True))
    idx[dim] = index
    np.add.at(out, tuple(idx), src)
    return out


@scatter_add.grad
def _(b, node, gys, needs):
    _, index, _ = node.inputs
    return [gys[0] if needs[0] else None, None,
            b.emit("gather", [gys[0], index], {"dim": node.attr["dim"]}) if needs[2] else None]


def _rows_rule(op: str, x: TensorType, index: TensorType, dim: int) -> None:
    _check_dim(op, x, dim)
    if index.dtype != "i64" or index.rank != 1:
        raise ShapeError(f"{op}: index must be a 1-D i64 tensor, got {index}")


def _selecting(index, dim: int, rank: int) -> tuple:
    return (slice(None),) * dim + (index,) + (slice(None),) * (rank - dim - 1)


@defop("index_select", 2, {"dim": Attr("int")}, kind="injective",
       doc="out[..., j, ...] = x[..., index[j], ...] along dim (torch.index_select; index is 1-D): an "
           "Embedding's rows, weight[ids] = index_select(weight, ids, dim=0). Each id is read once per "
           "row it picks, not once per element as a gather through a broadcast index would")
def index_select(t, dim):
    x, index = t
    _rows_rule("index_select", x, index, dim)
    return x.with_shape(x.shape[:dim] + index.shape + x.shape[dim + 1:])


@index_select.ref
def _(x, index, dim):
    _check_index("index_select", index, x.shape[dim])
    return np.take(x, index, axis=dim)


@index_select.grad
def _(b, node, gys, needs):
    x, index = node.inputs
    zeros = b.emit("full", [], {"shape": b.types[x].shape, "value": 0.0, "dtype": b.types[x].dtype})
    return [b.emit("index_add", [zeros, index, gys[0]], {"dim": node.attr["dim"]}), None]


@defop("index_add", 3, {"dim": Attr("int")}, kind="opaque",
       doc="out = x, then out[..., index[j], ...] += src[..., j, ...] along dim (torch.index_add with "
           "alpha=1; index is 1-D): an Embedding's weight gradient, rows of the output gradient added "
           "into the rows their ids picked")
def index_add(t, dim):
    x, index, src = t
    _rows_rule("index_add", x, index, dim)
    _same_dtype("index_add", x, src)
    want = x.shape[:dim] + index.shape + x.shape[dim + 1:]
    if src.shape != want:
        raise ShapeError(f"index_add: src {src} must have shape {list(want)} (x's with dim {dim} of index's length)")
    return x


@index_add.ref
def _(x, index, src, dim):
    _check_index("index_add", index, x.shape[dim])
    out = x.copy()
    np.add.at(out, _selecting(index, dim, x.ndim), src)
    return out


@index_add.grad
def _(b, node, gys, needs):
    _, index, _ = node.inputs
    return [gys[0] if needs[0] else None, None,
            b.emit("index_select", [gys[0], index], {"dim": node.attr["dim"]}) if needs[2] else None]


# ------------------------------------------------------------------ randomness


@defop("uniform", 1, {"shape": Attr("ints"), "stream": Attr("int", 0), "dtype": Attr("str", "f32", ("f32", "f64"))},
       kind="elementwise",
       doc="uniform [0, 1) numbers from the counter-based rng: element i = uniform(seed, stream, i), the "
           "numbers dropout compares with p")
def uniform(t, shape, stream, dtype):
    seed = t[0]
    if seed.dtype != "i64" or seed.shape != ():
        raise ShapeError(f"uniform: seed must be i64[], got {seed}")
    return TensorType(shape, dtype)


@uniform.ref
def _(seed, shape, stream, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    return rng.uniform(int(seed), stream, n).astype(DTYPES[dtype]).reshape(shape)


uniform.grad(no_gradient("random numbers: a function of the seed only"))


# ------------------------------------------------------------------ constants: arange (issue 11)


# elementwise: element i is start + step * i, a function of the loop index as uniform's is
# (runtime/lower.py's EXPR; tests/test_kernels.py checks every elementwise op has one)
@defop("arange", 0, {"start": Attr("float", 0.0), "step": Attr("float", 1.0), "size": Attr("int"),
                     "dtype": Attr("str", "i64", ("f32", "f64", "i64"))}, kind="elementwise", tags=("recompute",),
       doc="[start, start + step, ...] with `size` elements (torch.arange; position ids and causal masks)")
def arange(t, start, step, size, dtype):
    if size < 0:
        raise ShapeError(f"arange: size must be >= 0, got {size}")
    if dtype == "i64" and (start != int(start) or step != int(step)):
        raise ShapeError(f"arange: i64 needs integer start and step, got start={start} step={step}")
    return TensorType((size,), dtype)


@arange.ref
def _(start, step, size, dtype):
    if dtype == "i64":
        return (int(start) + int(step) * np.arange(size, dtype=np.int64)).astype(np.int64)
    return (start + step * np.arange(size, dtype=np.float64)).astype(DTYPES[dtype])


arange.grad(no_gradient("a constant: it has no inputs"))
