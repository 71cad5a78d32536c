"""Conv2d and pooling entries of the op-table walks: kernel-vs-reference cases for
test_runtime_kernels.py and gradient specs for test_autodiff.py (kept here, beside each other)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF


def _tpad(x, padding, value=0.0):
    t, b, left, r = padding
    return TF.pad(x, (left, r, t, b), value=value)


def torch_conv2d(x, w, b, a):
    return TF.conv2d(_tpad(x, a["padding"]), w, b, stride=a["stride"], dilation=a["dilation"], groups=a["groups"])


def _sym(padding):
    t, b, left, r = padding
    assert t == b and left == r, "torch's pooling pads symmetrically"
    return (t, left)


def torch_max_pool2d(x, a):
    return TF.max_pool2d(x, a["kernel_size"], a["stride"], _sym(a["padding"]), a["dilation"])


def torch_avg_pool2d(x, a):
    return TF.avg_pool2d(x, a["kernel_size"], a["stride"], _sym(a["padding"]), count_include_pad=a["count_include_pad"])


CONV_A = {"stride": (2, 1), "padding": (1, 2, 0, 1), "dilation": (1, 2), "groups": 2}
# the direct lowering (stride 1) with groups, dilation, asymmetric padding and the relu epilogue
DIRECT_A = {"padding": (1, 2, 0, 1), "dilation": (1, 2), "groups": 2, "algo": "direct"}
# the wide im2col lowering: the same, one sample per GEMM (the batch of 2 in two chunks)
WIDE_A = {**DIRECT_A, "algo": "wide", "chunk": 1}
POOL_A = {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 1, 1, 1)}


def kernel_cases(dt, f):
    """op -> [(inputs, attrs)] for each conv/pool op (f(*shape, dtype=) draws uniform floats)."""
    x = f(2, 4, 7, 6, dtype=dt)
    idx = np.array([[[[0, 5], [7, 11]]]], np.int64).repeat(2, 0).repeat(3, 1)
    return {
        "conv2d": [([x, f(6, 2, 3, 2, dtype=dt), f(6, dtype=dt)], CONV_A), ([x, f(3, 4, 1, 1, dtype=dt)], {}),
                   ([x, f(5, 4, 3, 3, dtype=dt), f(5, dtype=dt)], {"padding": (1, 1, 1, 1)}),
                   ([x, f(6, 2, 3, 2, dtype=dt), f(6, dtype=dt)], {**DIRECT_A, "relu": True}),
                   ([x, f(3, 4, 1, 1, dtype=dt)], {"algo": "direct"}),
                   ([x, f(6, 2, 3, 2, dtype=dt), f(6, dtype=dt)], {**CONV_A, "chunk": 1, "relu": True}),
                   ([x, f(5, 4, 3, 3, dtype=dt)], {"padding": (1, 1, 1, 1), "relu": True}),
                   ([x, f(6, 2, 3, 2, dtype=dt), f(6, dtype=dt)], {**WIDE_A, "relu": True}),
                   ([x, f(3, 4, 1, 1, dtype=dt)], {"algo": "wide"})],
        "conv2d_backward": [([f(2, 6, 4, 5, dtype=dt), x, f(6, 2, 3, 2, dtype=dt)], CONV_A),
                            ([f(2, 3, 7, 6, dtype=dt), x, f(3, 4, 1, 1, dtype=dt)], {"bias_grad": False}),
                            ([f(2, 5, 5, 4, dtype=dt), x, f(5, 4, 3, 3, dtype=dt)], {"input_grad": False}),
                            ([f(2, 6, 8, 5, dtype=dt), x, f(6, 2, 3, 2, dtype=dt), f(2, 6, 8, 5, dtype=dt)],
                             {**DIRECT_A, "relu": True}),
                            ([f(2, 3, 7, 6, dtype=dt), x, f(3, 4, 1, 1, dtype=dt)], {"algo": "direct", "bias_grad": False}),
                            ([f(2, 6, 4, 5, dtype=dt), x, f(6, 2, 3, 2, dtype=dt), f(2, 6, 4, 5, dtype=dt)],
                             {**CONV_A, "chunk": 1, "relu": True}),
                            ([f(2, 5, 5, 4, dtype=dt), x, f(5, 4, 3, 3, dtype=dt), f(2, 5, 5, 4, dtype=dt)],
                             {"input_grad": False, "relu": True}),
                            ([f(2, 6, 8, 5, dtype=dt), x, f(6, 2, 3, 2, dtype=dt), f(2, 6, 8, 5, dtype=dt)],
                             {**WIDE_A, "relu": True}),
                            ([f(2, 3, 7, 6, dtype=dt), x, f(3, 4, 1, 1, dtype=dt)], {"algo": "wide", "bias_grad": False}),
                            ([f(2, 5, 7, 6, dtype=dt), x, f(5, 4, 3, 3, dtype=dt)],
                             {"algo": "wide", "padding": (1, 1, 1, 1), "input_grad": False})],
        "max_pool2d": [([x], {**POOL_A, "dilation": (1, 2)}), ([x], {"kernel_size": (2, 2), "stride": (2, 2)})],
        "max_pool2d_backward": [([f(2, 3, 2, 2, dtype=dt), idx], {"input_size": (4, 3)})],
        "avg_pool2d": [([x], POOL_A), ([x], {**POOL_A, "count_include_pad": False})],
        "avg_pool2d_backward": [([f(2, 4, 4, 7, dtype=dt)], {**POOL_A, "input_size": (7, 6)}),
                                ([f(2, 4, 4, 7, dtype=dt)], {**POOL_A, "count_include_pad": False, "input_size": (7, 6)})],
        "adaptive_avg_pool2d": [([x], {"output_size": (3, 4)}), ([x], {"output_size": (1, 1)})],
        "adaptive_avg_pool2d_backward": [([f(2, 4, 3, 4, dtype=dt)], {"input_size": (7, 6)})],
    }


def grad_specs(Spec):
    """op -> [Spec] for test_autodiff's finite-difference and torch checks."""
    return {
        "conv2d": [Spec([("f", (2, 4, 6, 5)), ("f", (6, 2, 3, 2)), ("f", (6,))],
                        lambda t, a: torch_conv2d(t[0], t[1], t[2], a), CONV_A),
                   Spec([("f", (2, 3, 5, 5)), ("f", (4, 3, 3, 3))], lambda t, a: torch_conv2d(t[0], t[1], None, a),
                        {"padding": (1, 1, 1, 1)}),
                   Spec([("f", (2, 4, 6, 5)), ("f", (6, 2, 3, 2)), ("f", (6,))],
                        lambda t, a: torch_conv2d(t[0], t[1], t[2], a).relu(), {**DIRECT_A, "relu": True}),
                   Spec([("f", (2, 4, 6, 5)), ("f", (6, 2, 3, 2)), ("f", (6,))],
                        lambda t, a: torch_conv2d(t[0], t[1], t[2], a).relu(), {**WIDE_A, "relu": True})],
        "max_pool2d": [Spec([("f", (2, 3, 6, 5))], lambda t, a: torch_max_pool2d(t[0], a), {**POOL_A, "dilation": (1, 2)})],
        "avg_pool2d": [Spec([("f", (2, 3, 6, 5))], lambda t, a: torch_avg_pool2d(t[0], a), POOL_A),
                       Spec([("f", (2, 3, 6, 5))], lambda t, a: torch_avg_pool2d(t[0], a), {**POOL_A, "count_include_pad": False})],
        "adaptive_avg_pool2d": [Spec([("f", (2, 3, 7, 5))], lambda t, a: TF.adaptive_avg_pool2d(t[0], a["output_size"]),
                                     {"output_size": (3, 2)})],
    }
