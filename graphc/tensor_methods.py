"""The tensor methods and module-level functions a nanoGPT-style model uses (issue 11), with
torch's names and semantics: `x.split(n, dim=2)`, `x.expand(...)`, `x.masked_fill(mask, v)`,
`graphc.cat`, `graphc.tril`, `graphc.arange`, ... (transpose, permute, indexing, pow, softmax, casts
are tracing.TensorMethods' own methods; nothing here repeats them).

Each is a composition of op-table ops through `dispatch`, so the same code runs traced (one IR
node per op; the kernel pass fuses them) and eagerly on numpy arrays. `METHODS` holds the
methods tracing.py installs on TensorMethods (shared by traced Proxy and eager EagerArray).
"""
from __future__ import annotations

import math

import numpy as np

from . import eager as _eager
from .ir import TensorType, dtype_name
from .tracing import EagerArray, Proxy, _norm_dim, _shape, current_tracer, dispatch, reshape, trace_error

# torch-style dtype names (graphc.float32, graphc.long, ...): numpy's types
float32, float64, int64, long, bool_ = np.float32, np.float64, np.int64, np.int64, np.bool_


def _sizes(args) -> tuple[int, ...]:
    """f(2, 3) and f((2, 3)) and f([2, 3]) alike, as torch accepts them."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    for a in args:
        if isinstance(a, Proxy):
            raise trace_error(f"a size must be a Python int, got traced value %{a.name} ({a.type})")
    return tuple(int(a) for a in args)


def _dtype_of(x) -> str:
    return x.type.dtype if isinstance(x, Proxy) else dtype_name(np.asarray(x).dtype)


# ------------------------------------------------------------------ movement


def swapdims(x, dim0: int, dim1: int):
    """torch.transpose(x, dim0, dim1): swap two dims."""
    rank = len(_shape(x))
    a, b = _norm_dim(int(dim0), rank), _norm_dim(int(dim1), rank)
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return x if a == b else dispatch("transpose", [x], {"perm": tuple(perm)})


def expand(x, *sizes):
    s, want = _shape(x), list(_sizes(sizes))
    if len(want) < len(s):
        raise trace_error(f"expand: {want} has fewer dims than the tensor {list(s)}")
    lead = len(want) - len(s)
    for k, n in enumerate(want):
        if n == -1:
            if k < lead:
                raise trace_error(f"expand: -1 is not allowed for the new leading dim {k} in {want}")
            want[k] = s[k - lead]
        elif k >= lead and s[k - lead] not in (1, n):
            raise trace_error(f"expand: the size of dim {k} ({s[k - lead]}) must be 1 or match {n} (expanding {list(s)} to {want})")
    return x if tuple(want) == s else dispatch("broadcast_to", [x], {"shape": tuple(want)})


def narrow(x, dim: int, start: int, end: int, step: int = 1):
    """x[..., start:end:step, ...] along dim with Python's slice rules (negative bounds count from the end)."""
    s = _shape(x)
    d = _norm_dim(dim, len(s))
    for v in (start, end, step):
        if isinstance(v, Proxy):
            raise trace_error(f"slicing with a tensor-dependent bound (%{v.name}, {v.type}): bounds must be Python ints")
    if step is not None and int(step) <= 0:
        raise trace_error(f"slicing with step {step}: only positive steps are supported (as in torch)")
    a, b, c = slice(start, end, step).indices(s[d])
    b = max(a, b)
    if (a, b, c) == (0, s[d], 1):
        return x
    return dispatch("slice", [x], {"dim": d, "start": a, "end": b, "step": c})


def split(x, split_size_or_sections, dim: int = 0):
    s = _shape(x)
    d = _norm_dim(int(dim), len(s))
    n = s[d]
    if isinstance(split_size_or_sections, (list, tuple)):
        sizes = [int(k) for k in split_size_or_sections]
        if sum(sizes) != n:
            raise trace_error(f"split: sections {sizes} sum to {sum(sizes)}, but dim {dim} has size {n}")
    else:
        k = int(split_size_or_sections)
        if k <= 0:
            raise trace_error(f"split: split_size must be positive, got {k}")
        sizes = [min(k, n - i) for i in range(0, n, k)] or [0]
    out, start = [], 0
    for k in sizes:
        out.append(narrow(x, d, start, start + k))
        start += k
    return tuple(out)


def chunk(x, chunks: int, dim: int = 0):
    n = _shape(x)[_norm_dim(int(dim), len(_shape(x)))]
    if chunks <= 0:
        raise trace_error(f"chunk: chunks must be positive, got {chunks}")
    return split(x, max(1, math.ceil(n / chunks)), dim)


# ------------------------------------------------------------------ elementwise, masks, comparisons


def _as_operand(v, like_dtype: str):
    """A Python scalar as a graph constant (traced) or a 0-d array (eager) of like_dtype."""
    if isinstance(v, (bool, int, float, np.number)) and not isinstance(v, np.ndarray):
        if current_tracer() is not None:
            return dispatch("full", [], {"shape": (), "value": float(v), "dtype": like_dtype})
        return np.asarray(v, dtype=TensorType((), like_dtype).np_dtype)
    return v


def where(condition, input, other):
    """torch.where(condition, input, other): Python scalars take the other operand's dtype."""
    tensors = [v for v in (input, other) if not (isinstance(v, (bool, int, float, np.number))
                                                  and not isinstance(v, np.ndarray))]
    dt = _dtype_of(tensors[0]) if tensors else "f32"
    return dispatch("where", [condition, _as_operand(input, dt), _as_operand(other, dt)])


def masked_fill(x, mask, value):
    """x with `value` where mask is True (mask broadcasts to x, as in torch)."""
    if _dtype_of(mask) != "bool":
        raise trace_error(f"masked_fill: mask must be bool (from a comparison), got {_dtype_of(mask)}")
    ms, xs = _shape(mask), _shape(x)
    try:
        if tuple(np.broadcast_shapes(ms, xs)) != tuple(xs):
            raise ValueError
    except ValueError:
        raise trace_error(f"masked_fill: the mask's shape {list(ms)} does not broadcast to the tensor's shape {list(xs)}") from None
    return dispatch("where", [mask, _as_operand(value, _dtype_of(x)), x])


def compare(op: str, a, b):
    """a < b and friends: bool tensors (torch's semantics); scalars take the tensor's dtype."""
    t = a if isinstance(a, (Proxy, np.ndarray)) else b
    dt = _dtype_of(t)
    return dispatch(op, [_as_operand(a, dt), _as_operand(b, dt)])


def cast(x, dtype):
    want = dtype_name(np.dtype(dtype))
    return x if _dtype_of(x) == want else dispatch("cast", [x], {"dtype": want})


def pow_(x, exponent):
    if isinstance(exponent, (Proxy, np.ndarray)):
        raise trace_error("pow: only a constant (Python number) exponent is supported")
    e = float(exponent)
    if e == 1.0:
        return x
    if e == 2.0:
        return dispatch("mul", [x, x])
    return dispatch("pow", [x], {"exponent": e})


# ------------------------------------------------------------------ module-level functions (graphc.cat, ...)


def cat(tensors, dim: int = 0):
    tensors = list(tensors)
    if not tensors:
        raise trace_error("cat: expected a non-empty list of tensors")
    d = _norm_dim(int(dim), len(_shape(tensors[0])))
    return tensors[0] if len(tensors) == 1 else dispatch("concat", tensors, {"dim": d})


def stack(tensors, dim: int = 0):
    tensors = list(tensors)
    if not tensors:
        raise trace_error("stack: expected a non-empty list of tensors")
    d = _norm_dim(int(dim), len(_shape(tensors[0])) + 1)
    return cat([reshape(t, _shape(t)[:d] + (1,) + _shape(t)[d:]) for t in tensors], d)


def _constant(op: str, attrs: dict, eager):
    """A constant: one node when tracing, else graphc's eager creation function (graphc.Tensor)."""
    if current_tracer() is not None:
        return dispatch(op, [], attrs)
    return eager()


def _dtype_arg(dtype, default) -> str:
    return dtype_name(np.dtype(default if dtype is None else dtype))


def full(size, fill_value, *, dtype=None, requires_grad: bool = False):
    size = _sizes((size,) if isinstance(size, (int, np.integer)) else (tuple(size),))
    dt = _dtype_arg(dtype, np.int64 if isinstance(fill_value, (int, np.integer)) and not isinstance(fill_value, bool)
                    else np.float32)
    value = float(fill_value)
    return _constant("full", {"shape": size, "value": value, "dtype": dt},
                     lambda: _eager.full(size, fill_value, dtype=TensorType((), dt).np_dtype, requires_grad=requires_grad))


def ones(*size, dtype=None, requires_grad: bool = False):
    return full(_sizes(size), 1.0, dtype=dtype or np.float32, requires_grad=requires_grad)


def zeros(*size, dtype=None, requires_grad: bool = False):
    return full(_sizes(size), 0.0, dtype=dtype or np.float32, requires_grad=requires_grad)


def arange(start, end=None, step=1, *, dtype=None, requires_grad: bool = False):
    if end is None:
        start, end = 0, start
    for v in (start, end, step):
        if isinstance(v, Proxy):
            raise trace_error(f"arange: bounds must be Python numbers, got traced value %{v.name}")
    if step == 0:
        raise trace_error("arange: step must be nonzero")
    ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
    dt = _dtype_arg(dtype, np.int64 if ints else np.float32)
    size = max(0, math.ceil((end - start) / step))
    return _constant("arange", {"start": float(start), "step": float(step), "size": size, "dtype": dt},
                     lambda: _eager.arange(start, end, step, dtype=TensorType((), dt).np_dtype, requires_grad=requires_grad))


def _tri(x, diagonal: int, lower: bool):
    s = _shape(x)
    if len(s) < 2:
        raise trace_error(f"{'tril' if lower else 'triu'}: input must have at least 2 dims, got {list(s)}")
    n, m = s[-2], s[-1]
    rows = reshape(arange(n), (n, 1))
    cols = reshape(arange(m), (1, m))
    # keep col - row <= diagonal (tril) / >= diagonal (triu)
    keep = compare("le" if lower else "ge", dispatch("sub", [cols, rows]), diagonal)
    return where(keep, x, 0)


def tril(input, diagonal: int = 0):
    return _tri(input, int(diagonal), True)


def triu(input, diagonal: int = 0):
    return _tri(input, int(diagonal), False)


# ------------------------------------------------------------------ the method table


# Only the methods tracing.TensorMethods does not define live here; install() refuses a name the
# class already has, so a second (shadowed, never-called) implementation cannot creep back in.
METHODS = {
    "swapaxes": swapdims, "swapdims": swapdims, "expand": expand, "split": split, "chunk": chunk,
    "narrow": lambda self, dim, start, length: narrow(self, dim, start, start + length),
    "masked_fill": masked_fill, "tril": tril, "triu": triu,
}


def install(methods_cls) -> None:
    """Add METHODS to the shared method table (graphc.Tensor, Proxy, Parameter, EagerArray)."""
    for name, fn in METHODS.items():
        if hasattr(methods_cls, name):
            raise AssertionError(f"tensor_methods.METHODS[{name!r}] duplicates {methods_cls.__name__}.{name}: "
                                 "keep one implementation (delete one of the two)")
        setattr(methods_cls, name, fn)


__all__ = ["cat", "stack", "where", "tril", "triu", "ones", "zeros", "full", "arange", "float32", "float64", "int64",
           "long", "bool_", "EagerArray"]
