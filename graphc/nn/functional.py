"""graphc.nn.functional: PyTorch's functional names. Each call is one IR op when traced,
or the op's reference kernel when called eagerly on numpy arrays."""
from __future__ import annotations

import numpy as np

from .. import random as _random
from ..tracing import Proxy, current_tracer, dispatch, trace_error
from ..tracing import flatten as _flatten
from ..tracing import reshape as _reshape
from .transformer_functional import (embedding, gelu, layer_norm, scaled_dot_product_attention,  # noqa: F401
                                     silu, _cross_entropy_general)


def _dim(x, dim: int) -> int:
    rank = len(x.shape)
    if not -rank <= dim < rank:
        raise trace_error(f"dim {dim} is out of range for a tensor of shape {list(x.shape)}")
    return dim % rank


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias, weight in PyTorch's [out_features, in_features] layout.

    Inputs of any rank apply to the last dim (as in torch): the leading dims are flattened into
    one GEMM's rows and restored after."""
    args = [weight] + ([bias] if bias is not None else [])
    s = tuple(input.shape)
    if len(s) == 2:
        return dispatch("linear", [input] + args)
    if not s:
        raise trace_error(f"linear: input must have at least 1 dim, got a 0-d tensor for weight {list(weight.shape)}")
    rows = int(np.prod(s[:-1], dtype=np.int64))
    y = dispatch("linear", [_reshape(input, (rows, s[-1]))] + args)
    return _reshape(y, s[:-1] + (int(weight.shape[0]),))


def relu(input, inplace: bool = False):
    return dispatch("relu", [input])


def sigmoid(input):
    return dispatch("sigmoid", [input])


def tanh(input):
    return dispatch("tanh", [input])


def exp(input):
    return dispatch("exp", [input])


def log(input):
    return dispatch("log", [input])


def softmax(input, dim: int):
    return dispatch("softmax", [input], {"dim": _dim(input, dim)})


def log_softmax(input, dim: int):
    return dispatch("log_softmax", [input], {"dim": _dim(input, dim)})


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training.

    Traced, the mask comes from the step's `seed` input (fresh every compiled call); eagerly,
    from graphc's global generator (`graphc.manual_seed`)."""
    if not 0.0 <= p <= 1.0:
        raise trace_error(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    tracer = current_tracer() if not isinstance(input, Proxy) else input.tracer
    if tracer is not None:
        return dispatch("dropout", [input, tracer.seed()], {"p": float(p), "stream": tracer.next_stream()})
    return dispatch("dropout", [input, np.asarray(_random.next_seed(), dtype=np.int64)], {"p": float(p), "stream": 0})


def _reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum"):
        raise trace_error(f"reduction={reduction!r} is not supported; graphc supports 'mean' and 'sum'")
    return reduction


def _reduce(loss, reduction: str):
    """An elementwise loss reduced as torch's `reduction` says ('none', 'mean', 'sum')."""
    if reduction == "none":
        return loss
    return loss.mean() if _reduction(reduction) == "mean" else loss.sum()


# ---- activations and losses as compositions of ops (their gradients follow from the op table's VJPs)


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False):
    """relu(x) - slope * relu(-x)."""
    return relu(input) - relu(-input) * negative_slope


def elu(input, alpha: float = 1.0, inplace: bool = False):
    """relu(x) + alpha * (exp(-relu(-x)) - 1): x for x > 0, alpha * (exp(x) - 1) below."""
    return relu(input) + (exp(-relu(-input)) - 1.0) * alpha


def softplus(input, beta: float = 1.0, threshold: float = 20.0):
    """log(1 + exp(beta x)) / beta, in the stable form relu(bx) + log(1 + exp(-|bx|)), divided by beta
    (beyond torch's threshold both are x to float precision)."""
    bx = input * beta if beta != 1.0 else input
    out = relu(bx) + log(exp(-bx.abs()) + 1.0)
    return out / beta if beta != 1.0 else out


def l1_loss(input, target, reduction: str = "mean"):
    return _reduce((input - target).abs(), reduction)


def _min_with(d, bound: float):
    """min(d, bound) = d - relu(d - bound)."""
    return d - relu(d - bound)


def smooth_l1_loss(input, target, reduction: str = "mean", beta: float = 1.0):
    """0.5 d**2 / beta where d = |x - y| < beta, else d - 0.5 beta; as m = min(d, beta): 0.5 m**2 / beta + (d - m)."""
    d = (input - target).abs()
    if beta == 0.0:
        return _reduce(d, reduction)
    m = _min_with(d, beta)
    return _reduce(m * m * (0.5 / beta) + (d - m), reduction)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0):
    """0.5 d**2 where d < delta, else delta (d - 0.5 delta); as m = min(d, delta): 0.5 m**2 + delta (d - m)."""
    d = (input - target).abs()
    m = _min_with(d, delta)
    return _reduce(m * m * 0.5 + (d - m) * delta, reduction)


def _clamped_log(p):
    """log(p) clamped below at -100, as torch's binary_cross_entropy does."""
    return relu(log(p) + 100.0) - 100.0


def binary_cross_entropy(input, target, weight=None, reduction: str = "mean"):
    """-(y log p + (1 - y) log(1 - p)), each log clamped at -100 as in torch."""
    loss = -(target * _clamped_log(input) + (1.0 - target) * _clamped_log(1.0 - input))
    return _reduce(loss * weight if weight is not None else loss, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction: str = "mean", pos_weight=None):
    """The stable form relu(x) - x y + log(1 + exp(-|x|))."""
    if pos_weight is not None:
        raise trace_error("binary_cross_entropy_with_logits: pos_weight is not supported yet")
    loss = relu(input) - input * target + log(exp(-input.abs()) + 1.0)
    return _reduce(loss * weight if weight is not None else loss, reduction)


def mse_loss(input, target, reduction: str = "mean"):
    return dispatch("mse_loss", [input, target], {"reduction": _reduction(reduction)})


def nll_loss(input, target, reduction: str = "mean"):
    return dispatch("nll_loss", [input, _labels(target)], {"reduction": _reduction(reduction)})


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    """log_softmax + nll_loss over [N, C] logits, as PyTorch defines it.

    With the defaults it is log_softmax + nll_loss, which the fusion pass makes one stable op;
    that path rejects a label out of [0, C), the default ignore_index -100 included. Passing
    ignore_index explicitly (nanoGPT uses -1) or label_smoothing > 0 gives torch's general
    formula as a composition (gather, where, sums): ignored rows count for nothing, the mean
    divides by the rows kept."""
    if weight is not None or size_average is not None or reduce is not None:
        raise trace_error("cross_entropy: weight=, size_average= and reduce= are not supported")
    reduction = _reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise trace_error(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if ignore_index == -100 and label_smoothing == 0.0:
        return nll_loss(log_softmax(input, 1), target, reduction)
    return _cross_entropy_general(input, _labels(target), ignore_index, reduction, float(label_smoothing))


def _labels(target):
    if hasattr(target, "_materialize"):  # a graphc.Tensor of labels: its values
        target = target._materialize()
    if isinstance(target, Proxy):
        if target.type.dtype != "i64":
            raise trace_error(f"class labels must be int64 class indices, got {target.type}")
        return target
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise trace_error(f"class labels must be integer class indices, got dtype {t.dtype}")
    return t.astype(np.int64, copy=False)


def flatten(input, start_dim: int = 0, end_dim: int = -1):
    return _flatten(input, start_dim, end_dim)


# ------------------------------------------------------------------ convolutional networks


def _pair(v, what: str) -> tuple[int, int]:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(t) != 2 or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in t):
        raise trace_error(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(t[0]), int(t[1])


def _conv_padding(padding, kernel, dilation, stride) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): torch's padding=int/pair, "valid" (none) or "same" (output size
    = input size; an odd total pad puts the extra row/column at the bottom/right, as torch does)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise trace_error(f"conv2d: padding={padding!r}: expected 'valid', 'same', an int or a pair of ints")
        if stride != (1, 1):
            raise trace_error(f"conv2d: padding='same' is not supported for strided convolutions (stride={stride})")
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise trace_error(f"conv2d: padding must be >= 0, got {padding!r}")
    return (ph, ph, pw, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """torch.nn.functional.conv2d: input [N, C, H, W], weight [O, C/groups, kh, kw], bias [O]."""
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    kernel = tuple(weight.shape[2:]) if len(weight.shape) == 4 else (1, 1)
    attrs = {"stride": stride, "padding": _conv_padding(padding, kernel, dilation, stride), "dilation": dilation,
             "groups": int(groups)}
    return dispatch("conv2d", [input, weight] + ([bias] if bias is not None else []), attrs)


def _pool_attrs(kernel_size, stride, padding, ceil_mode: bool, op: str) -> dict:
    if ceil_mode:
        raise trace_error(f"{op}: ceil_mode=True is not supported; graphc computes output sizes in floor mode")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    return {"kernel_size": kernel, "stride": stride, "padding": (ph, ph, pw, pw)}


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """torch's max_pool2d (stride defaults to kernel_size); with return_indices, also the argmax
    indices (flat h * W + w per plane, int64), as torch returns them."""
    attrs = {**_pool_attrs(kernel_size, stride, padding, ceil_mode, "max_pool2d"), "dilation": _pair(dilation, "dilation")}
    y, idx = dispatch("max_pool2d", [input], attrs)
    return (y, idx) if return_indices else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override=None):
    if divisor_override is not None:
        raise trace_error("avg_pool2d: divisor_override is not supported")
    attrs = {**_pool_attrs(kernel_size, stride, padding, ceil_mode, "avg_pool2d"), "count_include_pad": bool(count_include_pad)}
    return dispatch("avg_pool2d", [input], attrs)


def adaptive_avg_pool2d(input, output_size):
    """Output [N, C, *output_size] (None keeps that input size), with torch's window bounds."""
    shape = tuple(input.shape)
    if len(shape) != 4:
        raise trace_error(f"adaptive_avg_pool2d: expected a 4-D input [batch, channels, height, width], got shape {list(shape)}")
    size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    size = tuple(shape[2 + k] if s is None else s for k, s in enumerate(size))
    return dispatch("adaptive_avg_pool2d", [input], {"output_size": _pair(size, "output_size")})


def dropout2d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero whole channels with probability p (scaling the rest by 1/(1-p)): one dropout mask of
    shape [N, C, 1, 1], broadcast over the plane."""
    shape = tuple(input.shape)
    if len(shape) not in (3, 4):
        raise trace_error(f"dropout2d: expected a 3-D or 4-D input, got shape {list(shape)}")
    if not training or p == 0.0:
        return input
    mask_shape = shape[:-2] + (1, 1)
    dt = "f32" if np.dtype(input.dtype) == np.float32 else "f64"
    ones = dispatch("full", [], {"shape": mask_shape, "value": 1.0, "dtype": dt}) if isinstance(input, Proxy) \
        else np.ones(mask_shape, dtype=input.dtype)
    return input * dropout(ones, p, True)


def _rsqrt(x):
    return dispatch("rsqrt", [x])


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5):
    """torch.nn.functional.batch_norm over dim 1 of [N, C], [N, C, L] or [N, C, H, W], written with
    primitive ops (mean, sub, mul, rsqrt), so autodiff derives its backward and the kernel pass
    fuses it. Training: batch statistics (biased variance), and running_mean/running_var (when
    given) move towards the batch's mean and unbiased variance by `momentum`, in place."""
    shape = tuple(input.shape)
    if len(shape) < 2:
        raise trace_error(f"batch_norm: expected an input of at least 2 dims [batch, channels, ...], got shape {list(shape)}")
    c = shape[1]
    dims = (0,) + tuple(range(2, len(shape)))
    bshape = (1, c) + (1,) * (len(shape) - 2)
    n = int(np.prod([shape[d] for d in dims], dtype=np.int64))
    if training:
        if n <= 1:
            raise trace_error(f"batch_norm: expected more than 1 value per channel when training, got input size {list(shape)}")
        mean = input.mean(dims, keepdim=True)
        xc = input - mean
        var = (xc * xc).mean(dims, keepdim=True)
        y = xc * _rsqrt(var + eps)
        if running_mean is not None:
            _update(running_mean, running_mean * (1.0 - momentum) + mean.reshape(c) * momentum)
        if running_var is not None:
            _update(running_var, running_var * (1.0 - momentum) + var.reshape(c) * (momentum * n / (n - 1)))
    else:
        if running_mean is None or running_var is None:
            raise trace_error("batch_norm: running_mean and running_var are needed when training=False")
        y = (input - running_mean.reshape(bshape)) * _rsqrt(running_var.reshape(bshape) + eps)
    if weight is not None:
        y = y * weight.reshape(bshape)
    if bias is not None:
        y = y + bias.reshape(bshape)
    return y


def _update(buf, value):
    from ..tracing import update_buffer

    update_buffer(buf, value)
