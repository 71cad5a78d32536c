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

from ..ir import GraphcError
from ..nn import functional as F
from ..nn import layers as L
from ..tracing import dispatch, trace_error


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
    if hasattr(type(obj), "__getitem__"):  # tensor indexing, where graphc supports it
        return obj[index]
    raise trace_error(f"indexing a tensor (x[{index!r}]) is not supported by graphc yet")


def _same(x, *args, **kwargs):
    return x  # contiguous(), clone(), detach-free identities


def _float(x):
    if str(x.dtype) != "float32":
        raise trace_error(f".float() would convert {x.dtype} to float32; graphc does not convert dtypes inside forward")
    return x


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
    "float": _float,
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
}

# Ops whose `training` argument fx/export baked in as the capture-time `self.training`:
# (positional index, keyword). from_torch makes such a value follow the graphc module's mode.
TRAINING_ARGUMENT = {
    "torch.nn.functional.dropout": (2, "training"),
    "aten.dropout.default": (2, "train"),
}


def _given_dim(m):
    if m.dim is None:
        raise GraphcError(f"{type(m).__name__}() without dim is deprecated in torch and not supported; give dim")
    return m.dim


def _loss_reduction(m):
    _classes_args(getattr(m, "weight", None), getattr(m, "ignore_index", -100), getattr(m, "label_smoothing", 0.0))
    return m.reduction
