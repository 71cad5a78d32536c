"""Layers of convolutional networks, with PyTorch's names, arguments, parameter layouts,
initialisation and buffers: Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm1d/2d,
Dropout2d. Errors raised inside a layer's forward name the layer (its repr), then the shapes
and the user's source line (from the op's shape rule via tracing)."""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from .. import random as _random
from ..ir import GraphcError
from ..ir.types import dtype_name
from ..tracing import TraceError
from . import functional as F
from .layers import Dropout
from .module import Module
from .parameter import Parameter


@contextmanager
def _named(layer: Module):
    """Prefix errors of the layer's ops with the layer itself, e.g. `Conv2d(3, 8, ...): conv2d: ...`."""
    try:
        yield
    except TraceError as e:
        raise TraceError(f"in {layer!r}: {e}") from None


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Conv2d(Module):
    """y = conv2d(x, weight, bias). weight: [out_channels, in_channels / groups, kh, kw]; torch's
    default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, fan_in = in/groups*kh*kw."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", dtype=np.float32):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise GraphcError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                              f"divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise GraphcError(f"Conv2d: padding_mode={padding_mode!r} is not supported; graphc pads with zeros")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise GraphcError(f"Conv2d: padding={padding!r}: expected 'same', 'valid', an int or a pair")
        if padding == "same" and _pair(stride) != (1, 1):
            raise GraphcError("Conv2d: padding='same' is not supported for strided convolutions")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        gen = _random.generator()
        self.weight = Parameter(gen.uniform(-bound, bound, size=(out_channels, in_channels // groups, *self.kernel_size)),
                                dtype=dtype)
        if bias:
            self.bias = Parameter(gen.uniform(-bound, bound, size=(out_channels,)), dtype=dtype)
        else:
            self.register_parameter("bias", None)

    def forward(self, input):
        with _named(self):
            return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False" if self.bias is None else "")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride or kernel_size, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        with _named(self):
            return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, input):
        with _named(self):
            return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        with _named(self):
            return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Dropout2d(Dropout):
    """Zeroes whole channels with probability p (scales the rest by 1/(1-p)); identity in eval mode.
    Dropout's constructor and checks; only the mask's shape differs."""

    def forward(self, input):
        with _named(self):
            return F.dropout2d(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace=False"


class _BatchNorm(Module):
    """torch's _BatchNorm: weight (ones) and bias (zeros) when affine; buffers running_mean (zeros),
    running_var (ones) and num_batches_tracked (int64 0) when track_running_stats."""

    _ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features), dtype=dtype)
            self.bias = Parameter(np.zeros(num_features), dtype=dtype)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, input):
        with _named(self):
            shape = tuple(input.shape)
            if len(shape) not in self._ranks:
                raise F.trace_error(f"expected a {' or '.join(f'{r}-D' for r in self._ranks)} input, got shape {list(shape)}")
            if shape[1] != self.num_features:
                raise F.trace_error(f"expected {self.num_features} channels (dim 1), got shape {list(shape)}")
            use_batch = self.training or not self.track_running_stats
            momentum = self.momentum
            if self.training and self.track_running_stats:
                tracked = self.num_batches_tracked + 1
                F._update(self.num_batches_tracked, tracked)
                if momentum is None:  # torch's cumulative moving average: weight 1 / (batches seen so far)
                    momentum = 1.0 / F.dispatch("cast", [tracked], {"dtype": dtype_name(self.running_mean.dtype)})
            return F.batch_norm(input, self.running_mean if not use_batch or self.training else None,
                                self.running_var if not use_batch or self.training else None,
                                self.weight, self.bias, use_batch, 0.0 if momentum is None else momentum, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over [N, C] or [N, C, L] (statistics per channel, dim 1)."""

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over [N, C, H, W] (statistics per channel over N, H, W)."""

    _ranks = (4,)
