"""graphc.nn.init: torch.nn.init's in-place initialisers (drawn from graphc's generator,
`graphc.manual_seed` makes them reproducible). Each writes into the Parameter's own array, so
an optimizer or compiled plan holding it sees the new values; each returns the tensor."""
from __future__ import annotations

import math

import numpy as np

from .. import random as _random


def _fill(tensor, values):
    values = np.asarray(values)
    if hasattr(tensor, "_materialize") and not isinstance(tensor, np.ndarray):  # a graphc.Tensor
        tensor._materialize()[...] = values
    else:
        tensor[...] = values.astype(tensor.dtype, copy=False)
    return tensor


def calculate_gain(nonlinearity: str, param=None) -> float:
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _fans(tensor) -> tuple[int, int]:
    shape = np.shape(tensor)
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    return _fill(tensor, _random.generator().uniform(a, b, size=np.shape(tensor)))


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    return _fill(tensor, _random.generator().normal(mean, std, size=np.shape(tensor)))


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    v = _random.generator().normal(mean, std, size=np.shape(tensor))
    bad = (v < a) | (v > b)
    while bad.any():
        v[bad] = _random.generator().normal(mean, std, size=int(bad.sum()))
        bad = (v < a) | (v > b)
    return _fill(tensor, v)


def constant_(tensor, val: float):
    return _fill(tensor, np.full(np.shape(tensor), val))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def eye_(tensor):
    return _fill(tensor, np.eye(*np.shape(tensor)))


def xavier_uniform_(tensor, gain: float = 1.0):
    fan_in, fan_out = _fans(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain: float = 1.0):
    fan_in, fan_out = _fans(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(tensor, a, mode, nonlinearity) -> float:
    fan_in, fan_out = _fans(tensor)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity))


__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "eye_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]
