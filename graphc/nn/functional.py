"""graphc.nn.functional: PyTorch's functional names. Each call is one IR op when traced,
or the op's reference kernel when called eagerly on numpy arrays."""
from __future__ import annotations

import numpy as np

from .. import random as _random
from ..tracing import Proxy, current_tracer, dispatch, trace_error
from ..tracing import flatten as _flatten


def _dim(x, dim: int) -> int:
    rank = len(x.shape)
    if not -rank <= dim < rank:
        raise trace_error(f"dim {dim} is out of range for a tensor of shape {list(x.shape)}")
    return dim % rank


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias, weight in PyTorch's [out_features, in_features] layout."""
    return dispatch("linear", [input, weight] + ([bias] if bias is not None else []))


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


def mse_loss(input, target, reduction: str = "mean"):
    return dispatch("mse_loss", [input, target], {"reduction": _reduction(reduction)})


def nll_loss(input, target, reduction: str = "mean"):
    return dispatch("nll_loss", [input, _labels(target)], {"reduction": _reduction(reduction)})


def cross_entropy(input, target, reduction: str = "mean"):
    """log_softmax + nll_loss, as PyTorch defines it; the fusion pass makes it one stable op."""
    return nll_loss(log_softmax(input, 1), target, reduction)


def _labels(target):
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
