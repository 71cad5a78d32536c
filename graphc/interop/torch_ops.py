"""The torch -> graphc op table of `from_torch`: one line per torch op, naming the graphc call.

Keys are the names a PyTorch user writes (`torch.nn.functional.relu`, `Tensor.view`,
`torch.nn.Linear`) or, for graphs captured by torch.export, the ATen overload
(`aten.linear.default`). Values are graphc's own front end: graphc.nn layers and functions,
graphc's tensor methods (the one method table traced and eager values share) and
graphc.tensor_methods' torch functions (tril, arange, cat, ...). The few adapters below only
translate torch's signature where it differs (ATen's integer reductions, torch's deprecated
arguments, a scalar on the left of a comparison); none re-implements an op. Nothing here
imports torch: `from_torch` resolves the names against torch when it captures a model.

Adding an op that graphc gained is one line in the matching table.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from .. import tensor_methods as TM
from ..ir import GraphcError
from ..nn import functional as F
from ..nn import layers as L
from ..tracing import dispatch, reduce, trace_error


# ------------------------------------------------------------------ adapters: torch's signature -> graphc


def _method(name: str):
    """torch's Tensor.<name> -> graphc's tensor method of the same name (tracing.TensorMethods /
    tensor_methods.METHODS: the table traced and eager values share)."""
    def call(x, *args, **kwargs):
        return getattr(x, name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"Tensor.{name}"
    return call


def _rank(x) -> int:
    return len(x.shape)


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
    """x.shape[0], a tuple output's [1], or tensor indexing (ints, slices, ..., None: graphc's x[...])."""
    return obj[index]


def _div(x, y, *, rounding_mode=None):
    if rounding_mode is not None:
        raise trace_error(f"div(rounding_mode={rounding_mode!r}) is not supported; only true division")
    return x / y


def _rsub(x, y, *, alpha=1):
    return y - (x * alpha if alpha != 1 else x)


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


def _no_class_weights(weight, ignore_index=-100):
    if weight is not None:
        raise trace_error("class weights (weight=...) are not supported by graphc's losses")
    if ignore_index != -100:
        raise trace_error(f"nll_loss(ignore_index={ignore_index}) is not supported (cross_entropy takes it)")


def _cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                   reduction="mean", label_smoothing=0.0):
    return F.cross_entropy(input, target, weight, None, ignore_index, None, _reduction(size_average, reduce, reduction),
                           label_smoothing)


def _nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    _no_class_weights(weight, ignore_index)
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


def _prim(op: str):
    return lambda *xs: dispatch(op, list(xs))


def _pow(x, exponent):
    if not isinstance(exponent, (int, float)):
        raise trace_error("pow with a tensor exponent is not supported; graphc's pow takes a constant exponent")
    return TM.pow_(x, exponent)


def _compare(op: str):
    """a < b (0 < x too): a Python scalar becomes a constant of the tensor's dtype."""
    def cmp(a, b):
        dt = TM._dtype_of(a if hasattr(a, "shape") else b)
        return dispatch(op, [TM._as_operand(a, dt), TM._as_operand(b, dt)])
    return cmp


def _amax(x, dim=(), keepdim=False):
    return reduce("max", x, None if dim in ((), [], None) else dim, keepdim)


def _max(x, dim=None, keepdim=False):
    """torch.max: of all (a 0-d tensor), along dim ((values, indices)), or elementwise of two tensors."""
    if dim is not None and not isinstance(dim, int):
        return dispatch("maximum", [x, dim])
    return x.max() if dim is None else x.max(dim, keepdim)


def _assert_is_none(value, message):
    """fx's guard for an argument traced at its default None (concrete_args)."""
    if value is not None:
        raise GraphcError(f"this model was captured for calls without that argument (it was None): {message}; "
                          "capture again with it among the example inputs")


def _cast_to(dtype):
    return lambda x, *a, **k: TM.cast(x, dtype)


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


def _index_select(x, dim, index):
    return dispatch("index_select", [x, index], {"dim": int(dim) % _rank(x)})


def _cpu_only(fn):
    """torch.ones(..., device="cpu", layout=..., pin_memory=False): graphc runs on the CPU."""
    def call(*args, device=None, layout=None, pin_memory=False, out=None, **kwargs):
        if device not in (None, "cpu") or out is not None:
            raise trace_error(f"{fn.__name__}(device={device!r}, out=...) : graphc builds constants on the CPU only")
        return fn(*args, **kwargs)

    call.__qualname__ = call.__name__ = fn.__name__
    return call


def _bool_via_f32(fn):
    """graphc's constant and tril ops have no bool dtype: torch.ones(n, n, dtype=torch.bool) and
    torch.tril of a bool mask are built in float32 and turned bool by `!= 0` (one compare)."""
    def call(*args, dtype=None, **kwargs):
        x = args[0] if args and hasattr(args[0], "shape") else None
        if dtype is np.bool_ or (x is not None and TM._dtype_of(x) == "bool"):
            if x is not None:
                args = (TM.cast(x, np.float32),) + args[1:]
            y = fn(*args, **kwargs, **({} if x is not None else {"dtype": np.float32}))
            return dispatch("ne", [y, TM._as_operand(0.0, TM._dtype_of(y))])
        return fn(*args, **kwargs, **({"dtype": dtype} if dtype is not None else {}))

    call.__qualname__ = call.__name__ = fn.__name__
    return call


def as_bool(x):
    """A bool tensor that graphc holds as int64 (a buffer), read back as bool."""
    return dispatch("ne", [x, TM._as_operand(0, "i64")])


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


def _layer_norm_layer(m):
    return _nn("LayerNorm")(m.normalized_shape, m.eps, m.elementwise_affine, bias=getattr(m, "bias", None) is not None)


def _embedding_layer(m):
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        raise GraphcError("nn.Embedding(max_norm=/scale_grad_by_freq=/sparse=) is not supported by graphc")
    return _nn("Embedding")(m.num_embeddings, m.embedding_dim, m.padding_idx)


def _given_dim(m):
    if m.dim is None:
        raise GraphcError(f"{type(m).__name__}() without dim is deprecated in torch and not supported; give dim")
    return m.dim


def _loss_reduction(m):
    _no_class_weights(getattr(m, "weight", None), getattr(m, "ignore_index", -100))
    return m.reduction


def _cross_entropy_layer(m):
    if m.weight is not None:
        raise GraphcError("nn.CrossEntropyLoss(weight=...) is not supported by graphc's losses")
    return L.CrossEntropyLoss(reduction=m.reduction, ignore_index=m.ignore_index, label_smoothing=m.label_smoothing)


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
    "operator.floordiv": operator.floordiv,  # C // n_head: Python ints at replay
    "operator.matmul": operator.matmul,
    "operator.neg": operator.neg,
    "operator.pos": operator.pos,
    "operator.pow": _pow,
    "operator.getitem": _getitem,
    "operator.lt": _compare("lt"),
    "operator.le": _compare("le"),
    "operator.gt": _compare("gt"),
    "operator.ge": _compare("ge"),
    "operator.eq": _compare("eq"),
    "operator.ne": _compare("ne"),
    "getattr": _getattr,
    "torch.fx._symbolic_trace._assert_is_none": _assert_is_none,
    "math.sqrt": math.sqrt,  # on sizes (1 / math.sqrt(k.size(-1))): Python numbers at replay
    "math.log": math.log,
    "math.ceil": math.ceil,
    "math.floor": math.floor,
    "torch.add": _method("add"),
    "torch.sub": _method("sub"),
    "torch.subtract": _method("sub"),
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
    "torch.bmm": operator.matmul,
    "torch.exp": F.exp,
    "torch.log": F.log,
    "torch.relu": F.relu,
    "torch.sigmoid": F.sigmoid,
    "torch.tanh": F.tanh,
    "torch.softmax": _softmax,
    "torch.log_softmax": _log_softmax,
    "torch.sum": _method("sum"),
    "torch.mean": _method("mean"),
    "torch.flatten": F.flatten,
    "torch.reshape": _method("reshape"),
    "torch.transpose": TM.swapdims,
    "torch.swapaxes": TM.swapdims,
    "torch.swapdims": TM.swapdims,
    "torch.permute": _method("permute"),
    "torch.t": _method("t"),
    "torch.unsqueeze": _method("unsqueeze"),
    "torch.squeeze": _method("squeeze"),
    "torch.split": TM.split,
    "torch.chunk": TM.chunk,
    "torch.narrow": _method("narrow"),
    "torch.sqrt": _prim("sqrt"),
    "torch.rsqrt": _prim("rsqrt"),
    "torch.erf": _prim("erf"),
    "torch.pow": _pow,
    "torch.square": _method("square"),
    "torch.maximum": _prim("maximum"),
    "torch.minimum": _prim("minimum"),
    "torch.lt": _compare("lt"),
    "torch.le": _compare("le"),
    "torch.gt": _compare("gt"),
    "torch.ge": _compare("ge"),
    "torch.eq": _compare("eq"),
    "torch.ne": _compare("ne"),
    "torch.where": TM.where,
    "torch.masked_fill": TM.masked_fill,
    "torch.clamp": _method("clamp"),
    "torch.clip": _method("clamp"),
    "torch.amax": _amax,
    "torch.amin": _method("amin"),
    "torch.max": _max,
    "torch.cat": TM.cat,
    "torch.concat": TM.cat,
    "torch.stack": TM.stack,
    "torch.gather": _gather,
    "torch.index_select": _index_select,
    "torch.tril": _bool_via_f32(TM.tril),
    "torch.triu": _bool_via_f32(TM.triu),
    "torch.ones": _cpu_only(_bool_via_f32(TM.ones)),
    "torch.zeros": _cpu_only(_bool_via_f32(TM.zeros)),
    "torch.full": _cpu_only(_bool_via_f32(TM.full)),
    "torch.arange": _cpu_only(TM.arange),
    "torch.conv2d": _fn("conv2d"),
    "torch.nn.functional.linear": F.linear,
    "torch.nn.functional.relu": F.relu,
    "torch.nn.functional.sigmoid": F.sigmoid,
    "torch.nn.functional.tanh": F.tanh,
    "torch.nn.functional.softmax": _softmax,
    "torch.nn.functional.log_softmax": _log_softmax,
    "torch.nn.functional.dropout": _dropout,
    "torch.nn.functional.mse_loss": _mse_loss,
    "torch.nn.functional.cross_entropy": _cross_entropy,
    "torch.nn.functional.nll_loss": _nll_loss,
    "torch.nn.functional.pad": _pad,
    "torch.nn.functional.embedding": F.embedding,
    "torch.nn.functional.gelu": F.gelu,
    "torch.nn.functional.silu": F.silu,
    "torch.nn.functional.leaky_relu": F.leaky_relu,
    "torch.nn.functional.layer_norm": F.layer_norm,
    "torch.nn.functional.scaled_dot_product_attention": F.scaled_dot_product_attention,
    "torch.nn.functional.conv2d": _fn("conv2d"),
    "torch.nn.functional.max_pool2d": _fn("max_pool2d"),
    "torch.nn.functional.avg_pool2d": _fn("avg_pool2d"),
    "torch.nn.functional.adaptive_avg_pool2d": _fn("adaptive_avg_pool2d"),
    "torch.nn.functional.dropout2d": _fn("dropout2d"),
    "torch.nn.functional.batch_norm": _fn("batch_norm"),
}

# tensor method (fx's call_method; `x.relu()`) -> graphc call taking the tensor first: graphc's
# method of the same name unless torch's signature needs an adapter
METHODS = {name: _method(name) for name in (
    "add", "sub", "mul", "neg", "matmul", "mm", "exp", "log", "relu", "sigmoid", "tanh", "sum", "mean", "view",
    "reshape", "flatten", "t", "transpose", "permute", "swapaxes", "swapdims", "contiguous", "unsqueeze", "squeeze",
    "expand", "split", "chunk", "narrow", "float", "double", "long", "to", "type_as", "sqrt", "rsqrt", "square",
    "clamp", "clip", "amax", "amin", "max", "masked_fill", "numel", "dim", "abs")}
METHODS.update({
    "tril": _bool_via_f32(TM.tril),
    "triu": _bool_via_f32(TM.triu),
    "div": _div,
    "size": _size,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "bool": _cast_to(np.bool_),
    "erf": _prim("erf"),
    "pow": _pow,
    "maximum": _prim("maximum"),
    "minimum": _prim("minimum"),
    "lt": _compare("lt"),
    "le": _compare("le"),
    "gt": _compare("gt"),
    "ge": _compare("ge"),
    "eq": _compare("eq"),
    "ne": _compare("ne"),
    "bmm": operator.matmul,
    "gather": _gather,
    "index_select": _index_select,
})

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
    "torch.nn.CrossEntropyLoss": _cross_entropy_layer,
    "torch.nn.NLLLoss": lambda m: L.NLLLoss(_loss_reduction(m)),
    "torch.nn.LeakyReLU": lambda m: L.LeakyReLU(m.negative_slope),
    "torch.nn.GELU": lambda m: _nn("GELU")(m.approximate),
    "torch.nn.SiLU": lambda m: _nn("SiLU")(),
    "torch.nn.LayerNorm": _layer_norm_layer,
    "torch.nn.Embedding": _embedding_layer,
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
    "aten.linear.default": F.linear,
    "aten.addmm.default": _addmm,
    "aten.mm.default": operator.matmul,
    "aten.matmul.default": operator.matmul,
    "aten.bmm.default": operator.matmul,
    "aten.t.default": _method("t"),
    "aten.transpose.int": TM.swapdims,
    "aten.permute.default": _method("permute"),
    "aten.view.default": _method("reshape"),
    "aten.reshape.default": _method("reshape"),
    "aten._unsafe_view.default": _method("reshape"),
    "aten.unsqueeze.default": _method("unsqueeze"),
    "aten.flatten.using_ints": F.flatten,
    "aten.clone.default": _method("contiguous"),
    "aten.contiguous.default": _method("contiguous"),
    "aten.add.Tensor": _method("add"),
    "aten.sub.Tensor": _method("sub"),
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
    "aten.sum.dim_IntList": _method("sum"),
    "aten.sum.default": _method("sum"),
    "aten.mean.dim": _method("mean"),
    "aten.mean.default": _method("mean"),
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
    "aten.where.self": TM.where,
    "aten.amax.default": _amax,
    "aten.cat.default": TM.cat,
    "aten.slice.Tensor": lambda x, dim=0, start=None, end=None, step=1: TM.narrow(x, dim, start, end, step),
    "aten.gelu.default": F.gelu,
    "aten.silu.default": F.silu,
    "aten.layer_norm.default": lambda x, shape, weight=None, bias=None, eps=1e-5, cudnn=True:
        F.layer_norm(x, shape, weight, bias, eps),
    "aten.embedding.default": lambda weight, ids, padding_idx=-1, *a: F.embedding(ids, weight),
    "aten.scaled_dot_product_attention.default": F.scaled_dot_product_attention,
}

# Ops whose `training` argument fx/export baked in as the capture-time `self.training`:
# (positional index, keyword). from_torch makes such a value follow the graphc module's mode.
TRAINING_ARGUMENT = {
    "torch.nn.functional.dropout": (2, "training"),
    "aten.dropout.default": (2, "train"),
    "torch.nn.functional.dropout2d": (2, "training"),
    "torch.nn.functional.batch_norm": (5, "training"),
}

