"""The torch -> graphc op table of `from_torch`: one line per torch op, naming the graphc call.

Keys are the names a PyTorch user writes (`torch.nn.functional.relu`, `Tensor.view`,
`torch.nn.Linear`) or, for graphs captured by torch.export, the ATen overload
(`aten.linear.default`). Values are plain graphc calls (graphc.nn.functional, tensor methods)
or the small adapters below, which take torch's signature and call graphc. Nothing here
imports torch: `from_torch` resolves the names against torch when it captures a model.

Adding an op that graphc gained is one line in the matching table.
"""
from __future__ import annotations

import operator

import math

from ..ir import GraphcError
from ..nn import functional as F
from ..nn import layers as L
from ..nn.module import Module
from ..nn.parameter import Parameter
from ..tracing import dispatch, reduce, trace_error


# ------------------------------------------------------------------ adapters: torch's signature -> graphc


def _rank(x) -> int:
    return len(x.shape)


def _perm_swap(x, d0: int, d1: int):
    perm = list(range(_rank(x)))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return dispatch("transpose", [x], {"perm": tuple(perm)})


def _permute(x, *dims):
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    return dispatch("transpose", [x], {"perm": tuple(int(d) % _rank(x) for d in dims)})


def _t(x):
    if _rank(x) > 2:
        raise trace_error(f"t() expects a tensor with <= 2 dimensions, got {_rank(x)}")
    return x.T if _rank(x) == 2 else x


def _view(x, *shape):
    return x.reshape(*shape)


def _size(x, dim=None):
    shape = tuple(int(s) for s in x.shape)
    return shape if dim is None else shape[dim]


def _getattr(obj, name: str):
    if name == "shape":
        return _size(obj)
    if name in ("T", "mT") and _rank(obj) == 2:
        return obj.T
    if name == "ndim":
        return _rank(obj)
    raise trace_error(f"attribute .{name} of a tensor is not supported by from_torch (supported: shape, ndim, T)")


def _getitem(obj, index):
    if isinstance(obj, (tuple, list)):  # x.shape[0], x.size()[1:], a module's tuple output
        return obj[index]
    return _index(obj, index)  # tensor indexing: slices


def _same(x, *args, **kwargs):
    return x  # contiguous(), clone(), detach-free identities


def _add(x, y, *, alpha=1):
    return x + (y * alpha if alpha != 1 else y)


def _sub(x, y, *, alpha=1):
    return x - (y * alpha if alpha != 1 else y)


def _rsub(x, y, *, alpha=1):
    return y - (x * alpha if alpha != 1 else x)


def _div(x, y, *, rounding_mode=None):
    if rounding_mode is not None:
        raise trace_error(f"div(rounding_mode={rounding_mode!r}) is not supported; only true division")
    return x / y


def _sum(x, dim=None, keepdim=False, *, dtype=None):
    return x.sum(dim, keepdim, dtype=dtype)


def _mean(x, dim=None, keepdim=False, *, dtype=None):
    return x.mean(dim, keepdim, dtype=dtype)


def _softmax(x, dim=None, _stacklevel=3, dtype=None, half_to_float=False):
    if dim is None:
        raise trace_error("softmax without dim is deprecated in torch and not supported; give dim")
    if dtype is not None:
        raise trace_error("softmax(dtype=...) is not supported; graphc does not convert dtypes inside forward")
    return F.softmax(x, dim)


def _log_softmax(x, dim=None, _stacklevel=3, dtype=None, half_to_float=False):
    if dim is None:
        raise trace_error("log_softmax without dim is not supported; give dim")
    if dtype is not None:
        raise trace_error("log_softmax(dtype=...) is not supported; graphc does not convert dtypes inside forward")
    return F.log_softmax(x, dim)


def _reduction(size_average=None, reduce=None, reduction="mean"):
    if size_average is not None or reduce is not None:
        raise trace_error("the deprecated size_average=/reduce= arguments are not supported; use reduction=")
    if isinstance(reduction, int):  # ATen spells it 0 (none), 1 (mean), 2 (sum)
        reduction = ("none", "mean", "sum")[reduction]
    return reduction


def _mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    if weight is not None:
        raise trace_error("mse_loss(weight=...) is not supported")
    return F.mse_loss(input, target, _reduction(size_average, reduce, reduction))


def _classes_args(weight, ignore_index, label_smoothing=0.0):
    if weight is not None:
        raise trace_error("class weights (weight=...) are not supported by graphc's losses")
    if ignore_index != -100:
        raise trace_error(f"ignore_index={ignore_index} is not supported by graphc's losses (only the default -100)")
    if label_smoothing:
        raise trace_error(f"label_smoothing={label_smoothing} is not supported by graphc's cross_entropy")


def _cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                   reduction="mean", label_smoothing=0.0):
    _classes_args(weight, ignore_index, label_smoothing)
    return F.cross_entropy(input, target, _reduction(size_average, reduce, reduction))


def _nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    _classes_args(weight, ignore_index)
    return F.nll_loss(input, target, _reduction(size_average, reduce, reduction))


def _aten_ce(input, target, weight=None, reduction=1, ignore_index=-100, label_smoothing=0.0):
    return _cross_entropy(input, target, weight, None, ignore_index, None, reduction, label_smoothing)


def _aten_nll(input, target, weight=None, reduction=1, ignore_index=-100):
    return _nll_loss(input, target, weight, None, ignore_index, None, reduction)


def _dropout(input, p=0.5, training=True, inplace=False):
    return F.dropout(input, p, bool(training))


def _addmm(bias, x, w_t, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise trace_error(f"addmm with beta={beta}, alpha={alpha} is not supported (only 1, 1)")
    return x @ w_t + bias


def _flatten(x, start_dim=0, end_dim=-1):
    return F.flatten(x, start_dim, end_dim)


def _linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


# ---- onto the primitive ops (issue 9): sqrt, pow, maximum, comparisons, where, cast, max, slice, concat, pad, gather


def _prim(op: str):
    return lambda *xs: dispatch(op, list(xs))


def _dtype_of(x) -> str:
    return {"float32": "f32", "float64": "f64", "int64": "i64", "bool": "bool"}[str(x.dtype)]


def _like(v, other):
    """A Python scalar as a constant of `other`'s dtype (for where/masked_fill, whose first operand is bool)."""
    if isinstance(v, (bool, int, float)):
        return dispatch("full", [], {"shape": (), "value": float(v), "dtype": _dtype_of(other)})
    return v


def _pow(x, exponent):
    if not isinstance(exponent, (int, float)):
        raise trace_error("pow with a tensor exponent is not supported; graphc's pow takes a constant exponent")
    if exponent == 2:
        return x * x
    return dispatch("pow", [x], {"exponent": float(exponent)})


def _square(x):
    return x * x


def _compare(op: str):
    def cmp(a, b):
        if isinstance(a, (int, float)):  # 0 < x: the scalar takes the tensor's dtype
            a = _like(a, b)
        return dispatch(op, [a, b])
    return cmp


def _where(cond, a, b):
    if isinstance(a, (bool, int, float)) and isinstance(b, (bool, int, float)):
        raise trace_error("torch.where with two scalar branches is not supported; make one a tensor")
    return dispatch("where", [cond, _like(a, b), _like(b, a)])


def _masked_fill(x, mask, value):
    return dispatch("where", [mask, _like(value, x), x])


def _clamp(x, min=None, max=None):
    if min is not None:
        x = dispatch("maximum", [x, _like(min, x)])
    if max is not None:
        x = dispatch("minimum", [x, _like(max, x)])
    return x


def _amax(x, dim=(), keepdim=False):
    return reduce("max", x, None if dim in ((), [], None) else dim, keepdim)


def _max(x, *args, **kwargs):
    if args or kwargs:
        raise trace_error("max(x, dim) returns indices too, which graphc does not compute; use torch.amax(x, dim)")
    return reduce("max", x)


_TORCH_DTYPES = {"torch.float32": "f32", "torch.float": "f32", "torch.float64": "f64", "torch.double": "f64",
                 "torch.int64": "i64", "torch.long": "i64", "torch.bool": "bool"}


def _cast_to(dtype: str):
    return lambda x, *a, **k: x if _dtype_of(x) == dtype else dispatch("cast", [x], {"dtype": dtype})


def _to(x, *args, **kwargs):
    dt = kwargs.get("dtype") or next((a for a in args if a in _TORCH_DTYPES), None)
    others = [a for a in args if a not in _TORCH_DTYPES and not str(a).startswith("cpu")]
    if others or set(kwargs) - {"dtype", "copy", "non_blocking"}:
        raise trace_error(f"Tensor.to{tuple(args)}: graphc runs on the CPU; only a dtype conversion is supported")
    if dt is None:
        return x
    if dt not in _TORCH_DTYPES:
        raise trace_error(f"Tensor.to({dt}): graphc supports float32, float64, int64 and bool")
    return _cast_to(_TORCH_DTYPES[dt])(x)


def _cat(tensors, dim=0):
    tensors = list(tensors)
    return dispatch("concat", tensors, {"dim": int(dim) % _rank(tensors[0])})


def _index(x, index):
    """x[...] with ints, slices (step >= 1), `...` and None: slice ops, then one reshape."""
    index = index if isinstance(index, tuple) else (index,)
    if any(not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in index):
        raise trace_error(f"indexing with {index!r}: graphc supports ints, slices, ... and None (no tensor indices)")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if index.count(Ellipsis) > 1 or used > _rank(x):
        raise trace_error(f"too many indices for a tensor of rank {_rank(x)}: {index!r}")
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (_rank(x) - used) + index[k + 1:]
    else:
        index = index + (slice(None),) * (_rank(x) - used)
    shape, d = [], 0
    for i in index:
        if i is None:
            shape.append(1)
            continue
        n = x.shape[d]
        if isinstance(i, int):
            if not -n <= i < n:
                raise trace_error(f"index {i} is out of range for dim {d} of size {n}")
            x = dispatch("slice", [x], {"dim": d, "start": i % n, "end": i % n + 1})
        else:
            start, stop, step = i.indices(n)
            if step < 1:
                raise trace_error(f"slice step {i.step} is not supported (graphc slices with step >= 1)")
            if (start, stop, step) != (0, n, 1):
                x = dispatch("slice", [x], {"dim": d, "start": start, "end": max(start, stop), "step": step})
            shape.append(x.shape[d])
        d += 1
    return x if tuple(shape) == tuple(x.shape) else x.reshape(tuple(shape))


def _pad(x, pad, mode="constant", value=None):
    if mode != "constant":
        raise trace_error(f"F.pad(mode={mode!r}) is not supported; only constant padding")
    widths = [0] * (2 * _rank(x))
    for k in range(len(pad) // 2):  # torch lists the last dim first
        d = _rank(x) - 1 - k
        widths[2 * d], widths[2 * d + 1] = pad[2 * k], pad[2 * k + 1]
    if any(w < 0 for w in widths):
        raise trace_error("F.pad with negative widths (cropping) is not supported")
    return dispatch("pad", [x], {"widths": tuple(widths), "value": float(value or 0.0)})


def _gather(x, dim, index, *, sparse_grad=False):
    return dispatch("gather", [x, index], {"dim": int(dim) % _rank(x)})


def _embedding(ids, weight, padding_idx=None, max_norm=None, *args, **kwargs):
    """weight[ids] as gather(weight, ids broadcast over the embedding dim, dim=0)."""
    if max_norm is not None:
        raise trace_error("F.embedding(max_norm=...) is not supported")
    n, d = int(math.prod(ids.shape)), weight.shape[1]
    flat = ids.reshape((n, 1))
    rows = dispatch("gather", [weight, dispatch("broadcast_to", [flat], {"shape": (n, d)})], {"dim": 0})
    return rows.reshape(tuple(ids.shape) + (d,))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        inner = (x + _pow(x, 3) * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * 0.5 * (F.tanh(inner) + 1.0)
    return x * 0.5 * (dispatch("erf", [x * (1.0 / math.sqrt(2.0))]) + 1.0)


def _silu(x, inplace=False):
    return x * F.sigmoid(x)


def _leaky_relu(x, negative_slope=0.01, inplace=False):
    return dispatch("where", [dispatch("gt", [x, _like(0.0, x)]), x, x * negative_slope])


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(_rank(x) - len(tuple(normalized_shape)), _rank(x)))
    centered = x - x.mean(dims, True)
    y = centered * dispatch("rsqrt", [(centered * centered).mean(dims, True) + eps])
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def _nn(name: str):
    """A graphc.nn layer class by name, looked up when a torch model needs it."""
    from .. import nn

    return getattr(nn, name)


def _conv_layer(m):
    if m.padding_mode != "zeros":
        raise GraphcError(f"Conv2d(padding_mode={m.padding_mode!r}) is not supported; only zero padding")
    return _nn("Conv2d")(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         bias=m.bias is not None)


def _batch_norm_layer(name: str):
    return lambda m: _nn(name)(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)


def _fn(name: str):
    """graphc.nn.functional.<name>, looked up when called."""
    return lambda *a, **k: getattr(F, name)(*a, **k)


class _Function(Module):
    """A torch layer graphc has no class for, as a graphc module around its table function."""

    def __init__(self, name: str, fn, **settings):
        super().__init__()
        self._name, self._fn, self._settings = name, fn, settings

    def forward(self, *args):
        state = {k: getattr(self, k) for k in self._parameters}
        return self._fn(*args, **state, **self._settings)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self._settings.items())

    def __repr__(self):
        return super().__repr__().replace(type(self).__name__, self._name, 1)


def _layer_norm_module(m):
    return _Function("LayerNorm", lambda x, weight=None, bias=None, **k: _layer_norm(x, weight=weight, bias=bias, **k),
                     normalized_shape=tuple(m.normalized_shape), eps=m.eps)


def _embedding_module(m):
    if m.max_norm is not None:
        raise GraphcError("nn.Embedding(max_norm=...) is not supported")
    return _Function("Embedding", lambda ids, weight: _embedding(ids, weight))


# ------------------------------------------------------------------ the tables

# torch function as the user writes it (also reached through fx's call_function) -> graphc call
FUNCTIONS = {
    "operator.add": operator.add,
    "operator.iadd": operator.add,
    "operator.sub": operator.sub,
    "operator.isub": operator.sub,
    "operator.mul": operator.mul,
    "operator.imul": operator.mul,
    "operator.truediv": operator.truediv,
    "operator.itruediv": operator.truediv,
    "operator.matmul": operator.matmul,
    "operator.neg": operator.neg,
    "operator.pos": operator.pos,
    "operator.getitem": _getitem,
    "getattr": _getattr,
    "torch.add": _add,
    "torch.sub": _sub,
    "torch.subtract": _sub,
    "torch.rsub": _rsub,
    "torch.mul": operator.mul,
    "torch.multiply": operator.mul,
    "torch.div": _div,
    "torch.divide": _div,
    "torch.true_divide": operator.truediv,
    "torch.neg": operator.neg,
    "torch.negative": operator.neg,
    "torch.matmul": operator.matmul,
    "torch.mm": operator.matmul,
    "torch.exp": F.exp,
    "torch.log": F.log,
    "torch.relu": F.relu,
    "torch.sigmoid": F.sigmoid,
    "torch.tanh": F.tanh,
    "torch.softmax": _softmax,
    "torch.log_softmax": _log_softmax,
    "torch.sum": _sum,
    "torch.mean": _mean,
    "torch.flatten": _flatten,
    "torch.reshape": _view,
    "torch.transpose": _perm_swap,
    "torch.swapaxes": _perm_swap,
    "torch.permute": _permute,
    "torch.t": _t,
    "torch.nn.functional.linear": _linear,
    "torch.nn.functional.relu": F.relu,
    "torch.nn.functional.sigmoid": F.sigmoid,
    "torch.nn.functional.tanh": F.tanh,
    "torch.nn.functional.softmax": _softmax,
    "torch.nn.functional.log_softmax": _log_softmax,
    "torch.nn.functional.dropout": _dropout,
    "torch.nn.functional.mse_loss": _mse_loss,
    "torch.nn.functional.cross_entropy": _cross_entropy,
    "torch.nn.functional.nll_loss": _nll_loss,
    "operator.pow": _pow,
    "operator.lt": _compare("lt"),
    "operator.le": _compare("le"),
    "operator.gt": _compare("gt"),
    "operator.ge": _compare("ge"),
    "operator.eq": _compare("eq"),
    "operator.ne": _compare("ne"),
    "torch.sqrt": _prim("sqrt"),
    "torch.rsqrt": _prim("rsqrt"),
    "torch.erf": _prim("erf"),
    "torch.pow": _pow,
    "torch.square": _square,
    "torch.maximum": _prim("maximum"),
    "torch.minimum": _prim("minimum"),
    "torch.lt": _compare("lt"),
    "torch.le": _compare("le"),
    "torch.gt": _compare("gt"),
    "torch.ge": _compare("ge"),
    "torch.eq": _compare("eq"),
    "torch.ne": _compare("ne"),
    "torch.where": _where,
    "torch.clamp": _clamp,
    "torch.clip": _clamp,
    "torch.amax": _amax,
    "torch.max": _max,
    "torch.cat": _cat,
    "torch.concat": _cat,
    "torch.bmm": operator.matmul,
    "torch.gather": _gather,
    "torch.nn.functional.pad": _pad,
    "torch.nn.functional.embedding": _embedding,
    "torch.nn.functional.gelu": _gelu,
    "torch.nn.functional.silu": _silu,
    "torch.nn.functional.leaky_relu": _leaky_relu,
    "torch.nn.functional.layer_norm": _layer_norm,
    "torch.conv2d": _fn("conv2d"),
    "torch.nn.functional.conv2d": _fn("conv2d"),
    "torch.nn.functional.max_pool2d": _fn("max_pool2d"),
    "torch.nn.functional.avg_pool2d": _fn("avg_pool2d"),
    "torch.nn.functional.adaptive_avg_pool2d": _fn("adaptive_avg_pool2d"),
    "torch.nn.functional.dropout2d": _fn("dropout2d"),
    "torch.nn.functional.batch_norm": _fn("batch_norm"),
}

# tensor method (fx's call_method; `x.relu()`) -> graphc call taking the tensor first
METHODS = {
    "add": _add,
    "sub": _sub,
    "mul": operator.mul,
    "div": _div,
    "neg": operator.neg,
    "matmul": operator.matmul,
    "mm": operator.matmul,
    "exp": F.exp,
    "log": F.log,
    "relu": F.relu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "sum": _sum,
    "mean": _mean,
    "view": _view,
    "reshape": _view,
    "flatten": _flatten,
    "t": _t,
    "transpose": _perm_swap,
    "permute": _permute,
    "size": _size,
    "dim": lambda x: _rank(x),
    "contiguous": _same,
    "float": _cast_to("f32"),
    "double": _cast_to("f64"),
    "long": _cast_to("i64"),
    "bool": _cast_to("bool"),
    "to": _to,
    "type_as": lambda x, other: _cast_to(_dtype_of(other))(x),
    "sqrt": _prim("sqrt"),
    "rsqrt": _prim("rsqrt"),
    "erf": _prim("erf"),
    "pow": _pow,
    "square": _square,
    "maximum": _prim("maximum"),
    "minimum": _prim("minimum"),
    "lt": _compare("lt"),
    "le": _compare("le"),
    "gt": _compare("gt"),
    "ge": _compare("ge"),
    "eq": _compare("eq"),
    "ne": _compare("ne"),
    "masked_fill": _masked_fill,
    "clamp": _clamp,
    "clip": _clamp,
    "amax": _amax,
    "max": _max,
    "bmm": operator.matmul,
    "gather": _gather,
}

# torch.nn layer (fx leaves it as one call_module) -> a graphc layer with the same settings;
# from_torch copies the parameters into it afterwards, under torch's names.
MODULES = {
    "torch.nn.Linear": lambda m: L.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    "torch.nn.ReLU": lambda m: L.ReLU(),
    "torch.nn.Sigmoid": lambda m: L.Sigmoid(),
    "torch.nn.Tanh": lambda m: L.Tanh(),
    "torch.nn.Softmax": lambda m: L.Softmax(_given_dim(m)),
    "torch.nn.LogSoftmax": lambda m: L.LogSoftmax(_given_dim(m)),
    "torch.nn.Dropout": lambda m: L.Dropout(m.p),
    "torch.nn.Flatten": lambda m: L.Flatten(m.start_dim, m.end_dim),
    "torch.nn.Identity": lambda m: L.Identity(),
    "torch.nn.MSELoss": lambda m: L.MSELoss(m.reduction),
    "torch.nn.CrossEntropyLoss": lambda m: L.CrossEntropyLoss(_loss_reduction(m)),
    "torch.nn.NLLLoss": lambda m: L.NLLLoss(_loss_reduction(m)),
    "torch.nn.GELU": lambda m: _Function("GELU", _gelu, approximate=m.approximate),
    "torch.nn.SiLU": lambda m: _Function("SiLU", _silu),
    "torch.nn.LeakyReLU": lambda m: _Function("LeakyReLU", _leaky_relu, negative_slope=m.negative_slope),
    "torch.nn.LayerNorm": _layer_norm_module,
    "torch.nn.Embedding": _embedding_module,
    "torch.nn.Conv2d": _conv_layer,
    "torch.nn.MaxPool2d": lambda m: _nn("MaxPool2d")(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                                     m.ceil_mode),
    "torch.nn.AvgPool2d": lambda m: _nn("AvgPool2d")(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                     m.count_include_pad, m.divisor_override),
    "torch.nn.AdaptiveAvgPool2d": lambda m: _nn("AdaptiveAvgPool2d")(m.output_size),
    "torch.nn.Dropout2d": lambda m: _nn("Dropout2d")(m.p),
    "torch.nn.BatchNorm1d": _batch_norm_layer("BatchNorm1d"),
    "torch.nn.BatchNorm2d": _batch_norm_layer("BatchNorm2d"),
}

# ATen overloads (graphs captured by torch.export, the fallback) -> graphc call
ATEN = {
    "aten.linear.default": _linear,
    "aten.addmm.default": _addmm,
    "aten.mm.default": operator.matmul,
    "aten.matmul.default": operator.matmul,
    "aten.t.default": _t,
    "aten.transpose.int": _perm_swap,
    "aten.permute.default": _permute,
    "aten.view.default": _view,
    "aten.reshape.default": _view,
    "aten._unsafe_view.default": _view,
    "aten.flatten.using_ints": _flatten,
    "aten.clone.default": _same,
    "aten.contiguous.default": _same,
    "aten.add.Tensor": _add,
    "aten.sub.Tensor": _sub,
    "aten.rsub.Scalar": _rsub,
    "aten.mul.Tensor": operator.mul,
    "aten.div.Tensor": operator.truediv,
    "aten.neg.default": operator.neg,
    "aten.exp.default": F.exp,
    "aten.log.default": F.log,
    "aten.relu.default": F.relu,
    "aten.sigmoid.default": F.sigmoid,
    "aten.tanh.default": F.tanh,
    "aten.softmax.int": _softmax,
    "aten._softmax.default": lambda x, dim, half_to_float=False: _softmax(x, dim),
    "aten.log_softmax.int": _log_softmax,
    "aten._log_softmax.default": lambda x, dim, half_to_float=False: _log_softmax(x, dim),
    "aten.sum.dim_IntList": _sum,
    "aten.sum.default": _sum,
    "aten.mean.dim": _mean,
    "aten.mean.default": _mean,
    "aten.dropout.default": _dropout,
    "aten.mse_loss.default": _mse_loss,
    "aten.cross_entropy_loss.default": _aten_ce,
    "aten.nll_loss.default": _aten_nll,
    "aten.sym_size.int": _size,
    "operator.getitem": _getitem,
    "operator.mul": operator.mul,
    "operator.add": operator.add,
    "operator.floordiv": operator.floordiv,
    "aten.sqrt.default": _prim("sqrt"),
    "aten.rsqrt.default": _prim("rsqrt"),
    "aten.erf.default": _prim("erf"),
    "aten.pow.Tensor_Scalar": _pow,
    "aten.maximum.default": _prim("maximum"),
    "aten.minimum.default": _prim("minimum"),
    "aten.gt.Scalar": _compare("gt"),
    "aten.lt.Scalar": _compare("lt"),
    "aten.where.self": _where,
    "aten.amax.default": _amax,
    "aten.cat.default": _cat,
    "aten.bmm.default": operator.matmul,
    "aten.slice.Tensor": lambda x, dim=0, start=None, end=None, step=1: _index(x, (slice(None),) * (dim % _rank(x)) + (slice(start, end, step),)),
    "aten.gelu.default": _gelu,
    "aten.silu.default": _silu,
}

# Ops whose `training` argument fx/export baked in as the capture-time `self.training`:
# (positional index, keyword). from_torch makes such a value follow the graphc module's mode.
TRAINING_ARGUMENT = {
    "torch.nn.functional.dropout": (2, "training"),
    "aten.dropout.default": (2, "train"),
    "torch.nn.functional.dropout2d": (2, "training"),
    "torch.nn.functional.batch_norm": (5, "training"),
}


def _given_dim(m):
    if m.dim is None:
        raise GraphcError(f"{type(m).__name__}() without dim is deprecated in torch and not supported; give dim")
    return m.dim


def _loss_reduction(m):
    _classes_args(getattr(m, "weight", None), getattr(m, "ignore_index", -100), getattr(m, "label_smoothing", 0.0))
    return m.reduction
