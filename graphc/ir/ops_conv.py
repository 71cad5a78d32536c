"""Op-table entries of convolutional networks: conv2d and the 2-D poolings, with their backward ops.

Layout is PyTorch's NCHW; weights are [out_channels, in_channels / groups, kh, kw]. Each entry
keeps its shape rule, numpy reference kernel and VJP rule side by side, as in ops.py (which
imports this module). Attributes are always spelled out in full:
  stride (sh, sw), padding (top, bottom, left, right) (asymmetric for padding="same" with an
  even effective kernel, as torch pads), dilation (dh, dw), groups.
Convolution and pooling are not compositions of the elementwise primitives: they are GEMM-like
(conv2d, with a bias/activation epilogue) or opaque window ops. The native kernels live in
runtime/kernels_conv.py.
"""
from __future__ import annotations

import numpy as np

from .errors import ShapeError
from .opdef import Attr, defop, no_gradient
from .types import TensorType

PAIR = Attr("ints", (1, 1))
PAD4 = Attr("ints", (0, 0, 0, 0))


def _fmt(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _pair_check(op: str, name: str, v, lo: int) -> None:
    if len(v) != 2 or min(v) < lo:
        raise ShapeError(f"{op}: {name} must be two ints >= {lo}, got {list(v)}")


def out_size(op: str, size: int, pad0: int, pad1: int, k: int, stride: int, dil: int, what: str, x=None) -> int:
    """PyTorch's output size (floor mode), or a ShapeError (naming the input x) when the padded
    input is smaller than the window."""
    span = dil * (k - 1) + 1
    padded = size + pad0 + pad1
    if padded < span:
        raise ShapeError(f"{op}: input {'' if x is None else f'{x} '}{what} {size} (padded: {padded}) is smaller "
                         f"than the kernel's extent {span} "
                         f"(kernel {k}, dilation {dil}); use a smaller kernel, more padding or a larger input")
    return (padded - span) // stride + 1


def _window_out(op: str, x: TensorType, kernel, stride, padding, dilation) -> tuple[int, int]:
    _pair_check(op, "kernel_size", kernel, 1)
    _pair_check(op, "stride", stride, 1)
    _pair_check(op, "dilation", dilation, 1)
    if len(padding) != 4 or min(padding) < 0:
        raise ShapeError(f"{op}: padding must be four ints >= 0 (top, bottom, left, right), got {list(padding)}")
    if x.rank != 4:
        raise ShapeError(f"{op}: input must be 4-D [batch, channels, height, width], got {x}")
    if not x.is_float:
        raise ShapeError(f"{op}: input must be float (f32 or f64), got {x}")
    oh = out_size(op, x.shape[2], padding[0], padding[1], kernel[0], stride[0], dilation[0], "height", x)
    ow = out_size(op, x.shape[3], padding[2], padding[3], kernel[1], stride[1], dilation[1], "width", x)
    return oh, ow


def windows(x: np.ndarray, kernel, stride, padding, dilation, fill=0.0) -> np.ndarray:
    """x [N, C, H, W] -> [N, C, kh, kw, OH, OW]: every window element, padded with `fill`."""
    n, c, h, w = x.shape
    pt, pb, pl, pr = padding
    kh, kw = kernel
    (sh, sw), (dh, dw) = stride, dilation
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.full((n, c, h + pt + pb, w + pl + pr), fill, dtype=x.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    out = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
    return out


def unwindow(cols: np.ndarray, hw, kernel, stride, padding, dilation) -> np.ndarray:
    """The adjoint of `windows`: add every window element back into an [N, C, H, W] array."""
    n, c, kh, kw, oh, ow = cols.shape
    h, w = hw
    pt, pb, pl, pr = padding
    (sh, sw), (dh, dw) = stride, dilation
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += cols[:, :, i, j]
    return np.ascontiguousarray(xp[:, :, pt:pt + h, pl:pl + w])


# ------------------------------------------------------------------ conv2d

# algo: how the runtime lowers it, a choice recorded on the node by passes/conv.py (the values
# are the same either way): "im2col" (windows unrolled, one BLAS GEMM per group) or "direct"
# (stride-1 loop nests over wide rows, no unrolled matrix) or "wide" (stride-1 im2col in the
# direct loops' wide-row layout, one contiguous copy per tap, then BLAS).
# chunk: im2col's and wide's samples per GEMM (0: the whole batch), chosen by the same pass so
# that one chunk's matrix stays in cache.
CONV_ALGOS = ("im2col", "direct", "wide")
_CONV = {"stride": PAIR, "padding": PAD4, "dilation": PAIR, "groups": Attr("int", 1), "algo": Attr("str", "im2col"),
         "chunk": Attr("int", 0)}
# relu: a fused relu epilogue (passes/conv.py's fuse_conv_relu, as linear_relu for linear); its
# backward then takes the output y and masks gy where y <= 0, so no relu / relu_backward kernels run.
_RELU = {"relu": Attr("bool", False)}
# threads: how many threads the kernel's loops are split over, a choice recorded on the node by
# passes/parallel.py (the values are the same; conv2d_backward's dW and db are summed per thread
# and added after, equal within float rounding). The reference interpreter ignores it.
_THREADS = {"threads": Attr("int", 1)}


def _threads_check(op: str, threads: int) -> None:
    if threads < 1:
        raise ShapeError(f"{op}: threads must be >= 1, got {threads}")


def _algo_check(op: str, algo: str, stride, chunk: int = 0) -> None:
    if chunk < 0:
        raise ShapeError(f"{op}: chunk must be >= 0 (0: the whole batch), got {chunk}")
    if algo not in CONV_ALGOS:
        raise ShapeError(f"{op}: algo must be one of {', '.join(CONV_ALGOS)}, got {algo!r}")
    if algo in ("direct", "wide") and tuple(stride) != (1, 1):
        raise ShapeError(f"{op}: algo=\"{algo}\" needs stride 1, got stride {list(stride)}")


def _conv_rule(op: str, x: TensorType, w: TensorType, b: TensorType | None, stride, padding, dilation, groups):
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        raise ShapeError(f"{op}: dtype mismatch: input {x}, weight {w}" + (f", bias {b}" if b is not None else "")
                         + " (graphc does not promote dtypes; convert one operand)")
    if w.rank != 4:
        raise ShapeError(f"{op}: weight must be 4-D [out_channels, in_channels/groups, kh, kw], got {w}")
    if groups < 1 or w.shape[0] % groups:
        raise ShapeError(f"{op}: out_channels {w.shape[0]} must be divisible by groups={groups}")
    if x.rank != 4:
        raise ShapeError(f"{op}: expected a 4-D input [batch, {w.shape[1] * groups} channels, height, width], got {x}")
    if x.shape[1] != w.shape[1] * groups:
        raise ShapeError(f"{op}: groups={groups}, weight {w} expects an input with {w.shape[1] * groups} channels, "
                         f"got {x} with {x.shape[1]} channels")
    if b is not None and b.shape != (w.shape[0],):
        raise ShapeError(f"{op}: bias must be [{w.shape[0]}], got {b}")
    oh, ow = _window_out(op, x, w.shape[2:], stride, padding, dilation)
    return TensorType((x.shape[0], w.shape[0], oh, ow), x.dtype)


def _conv_ref(x, w, b=None, *, stride, padding, dilation, groups, algo="im2col", chunk=0, relu=False, threads=1):
    cols = windows(x, w.shape[2:], stride, padding, dilation)  # [N, C, kh, kw, OH, OW]
    n, c, kh, kw, oh, ow = cols.shape
    g, co = groups, w.shape[0]
    cols = cols.reshape(n, g, (c // g) * kh * kw, oh * ow)
    wg = w.reshape(g, co // g, (c // g) * kh * kw)
    y = np.einsum("gok,ngkp->ngop", wg, cols).reshape(n, co, oh, ow)
    if b is not None:
        y = y + b.reshape(1, co, 1, 1)
    if relu:
        y = np.maximum(y, 0)
    return np.ascontiguousarray(y, dtype=x.dtype)


@defop("conv2d", (2, 3), {**_CONV, **_RELU, **_THREADS}, kind="gemm",
       doc="2-D convolution (cross-correlation, as torch): x [N,C,H,W], w [O,C/groups,kh,kw], optional bias [O]; "
           "relu=true applies relu to the result (a fused epilogue)")
def conv2d(t, stride, padding, dilation, groups, algo, chunk, relu, threads):
    _algo_check("conv2d", algo, stride, chunk)
    _threads_check("conv2d", threads)
    return _conv_rule("conv2d", t[0], t[1], t[2] if len(t) == 3 else None, stride, padding, dilation, groups)


conv2d.ref(_conv_ref)


@conv2d.grad
def _(b, node, gys, needs):
    gy, x, w = gys[0], node.inputs[0], node.inputs[1]
    has_bias = len(node.inputs) == 3
    bias_grad = has_bias and needs[2]
    ins = [gy, x, w] + ([node.outputs[0]] if node.attr["relu"] else [])
    outs = b.emit("conv2d_backward", ins, {**dict(node.attrs), "input_grad": needs[0], "bias_grad": bias_grad,
                                           "threads": 1})  # passes/parallel.py splits each kernel itself
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    dx = outs.pop(0) if needs[0] else None
    dw = outs.pop(0)
    db = outs.pop(0) if bias_grad else None
    return [dx, dw if needs[1] else None] + ([db] if has_bias else [])


@defop("conv2d_backward", (3, 4), {**_CONV, **_RELU, **_THREADS, "input_grad": Attr("bool", True),
                                   "bias_grad": Attr("bool", True)},
       tags=("backward",), kind="gemm",
       doc="gradients of conv2d in one op. Inputs (gy, x, w, and y with relu=true: gy is masked where y <= 0); "
           "outputs dx (if input_grad), dw, db (if bias_grad). The windows of x are rebuilt here rather than "
           "saved by the forward")
def conv2d_backward(t, stride, padding, dilation, groups, algo, chunk, relu, input_grad, bias_grad, threads):
    _threads_check("conv2d_backward", threads)
    gy, x, w = t[:3]
    if (len(t) == 4) != relu:
        raise ShapeError(f"conv2d_backward: takes the forward's output y as a 4th input exactly when relu=true "
                         f"(relu={relu}, {len(t)} inputs)")
    if relu and t[3] != gy:
        raise ShapeError(f"conv2d_backward: y must have gy's type {gy}, got {t[3]}")
    _algo_check("conv2d_backward", algo, stride, chunk)
    y = _conv_rule("conv2d_backward", x, w, None, stride, padding, dilation, groups)
    if gy != y:
        raise ShapeError(f"conv2d_backward: gy must be {y} (the conv2d output), got {gy}")
    outs = [x] if input_grad else []
    outs.append(w)
    if bias_grad:
        outs.append(w.with_shape((w.shape[0],)))
    return tuple(outs)


@conv2d_backward.ref
def _(gy, x, w, y=None, *, stride, padding, dilation, groups, input_grad, bias_grad, algo="im2col", chunk=0, threads=1,
      relu=False):
    if relu:
        gy = np.where(y > 0, gy, 0).astype(gy.dtype)
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    g = groups
    oh, ow = gy.shape[2:]
    gyg = gy.reshape(n, g, co // g, oh * ow)
    outs = []
    if input_grad:
        wg = w.reshape(g, co // g, cg * kh * kw)
        dcols = np.einsum("gok,ngop->ngkp", wg, gyg).reshape(n, c, kh, kw, oh, ow)
        outs.append(unwindow(dcols, (h, wd), (kh, kw), stride, padding, dilation).astype(x.dtype))
    cols = windows(x, (kh, kw), stride, padding, dilation).reshape(n, g, cg * kh * kw, oh * ow)
    outs.append(np.einsum("ngop,ngkp->gok", gyg, cols).reshape(w.shape).astype(x.dtype))
    if bias_grad:
        outs.append(gy.sum(axis=(0, 2, 3)).astype(x.dtype))
    return tuple(outs)


# ------------------------------------------------------------------ pooling

_POOL = {"kernel_size": Attr("ints"), "stride": Attr("ints"), "padding": PAD4}


def _pool_pad_check(op: str, kernel, padding, dilation=(1, 1)) -> None:
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if max(padding[0], padding[1]) * 2 > eff[0] or max(padding[2], padding[3]) * 2 > eff[1]:
        raise ShapeError(f"{op}: padding {list(padding)} should be at most half of the kernel size {list(kernel)}")


@defop("max_pool2d", 1, {**_POOL, **_THREADS, "dilation": PAIR}, kind="opaque",
       doc="max over each window (padding counts as -inf). Outputs y and the argmax as a flat index "
           "h * W + w into the input plane (torch's return_indices), which the backward scatters to")
def max_pool2d(t, kernel_size, stride, padding, dilation, threads):
    x = t[0]
    _threads_check("max_pool2d", threads)
    _pool_pad_check("max_pool2d", kernel_size, padding, dilation)
    oh, ow = _window_out("max_pool2d", x, kernel_size, stride, padding, dilation)
    y = x.with_shape((x.shape[0], x.shape[1], oh, ow))
    return y, TensorType(y.shape, "i64")


@max_pool2d.ref
def _(x, *, kernel_size, stride, padding, dilation, threads=1):
    n, c, h, w = x.shape
    cols = windows(x, kernel_size, stride, padding, dilation, fill=-np.inf)
    kh, kw, oh, ow = cols.shape[2:]
    flat = cols.reshape(n, c, kh * kw, oh, ow)
    inside = windows(np.ones((1, 1, h, w), bool), kernel_size, stride, padding, dilation, fill=False)
    inside = inside.reshape(1, 1, kh * kw, oh, ow)
    k = flat.argmax(axis=2)  # the first maximum in window order, as torch's CPU kernel
    # torch looks at the taps inside the input only: where every one is -inf and a padding tap
    # comes first, the first tap inside; a window wholly in the padding has none (index -1)
    first_inside = np.broadcast_to(inside.argmax(axis=2), k.shape)
    k = np.where(np.take_along_axis(np.broadcast_to(inside, flat.shape), k[:, :, None], axis=2)[:, :, 0], k, first_inside)
    y = np.take_along_axis(flat, k[:, :, None], axis=2)[:, :, 0]
    i, j = k // kw, k % kw
    rows = np.arange(oh)[:, None] * stride[0] - padding[0] + i * dilation[0]
    cols_ = np.arange(ow)[None, :] * stride[1] - padding[2] + j * dilation[1]
    idx = np.where(np.broadcast_to(inside.any(axis=2), k.shape), rows * w + cols_, -1)
    return np.ascontiguousarray(y, dtype=x.dtype), idx.astype(np.int64)


@max_pool2d.grad
def _(b, node, gys, needs):
    if gys[1] is not None:
        raise ShapeError("max_pool2d: its indices output has no gradient")
    h, w = b.types[node.inputs[0]].shape[2:]
    oh, ow = node.types[0].shape[2:]
    a = node.attr
    tiled = (tuple(a["kernel_size"]) == (2, 2) and tuple(a["stride"]) == (2, 2) and not any(a["padding"])
             and tuple(a["dilation"]) == (1, 1) and (h, w) == (2 * oh, 2 * ow))
    return [b.emit("max_pool2d_backward", [gys[0], node.outputs[1]], {"input_size": (h, w), "tiled": tiled})]


# tiled: the forward's windows were 2x2 with stride 2, no padding, and covered the input exactly
# (H = 2 OH, W = 2 OW), so each input element is in one window: the kernel then writes every dx
# element once (its window's gradient where the index is its own, else 0) instead of zeroing dx
# and scattering. Set by max_pool2d's VJP; the values are the same either way.
@defop("max_pool2d_backward", 2, {"input_size": Attr("ints"), "tiled": Attr("bool", False), **_THREADS},
       tags=("backward",), kind="opaque",
       doc="gradient of max_pool2d: each gy element added at its window's argmax (the saved indices)")
def max_pool2d_backward(t, input_size, tiled, threads):
    gy, idx = t
    _threads_check("max_pool2d_backward", threads)
    if idx.dtype != "i64" or idx.shape != gy.shape or gy.rank != 4:
        raise ShapeError(f"max_pool2d_backward: expected gy [N,C,OH,OW] and i64 indices of the same shape, got {gy}, {idx}")
    if tiled and tuple(input_size) != (2 * gy.shape[2], 2 * gy.shape[3]):
        raise ShapeError(f"max_pool2d_backward: tiled=true needs input_size = 2 x gy's [{2 * gy.shape[2]}, "
                         f"{2 * gy.shape[3]}], got {list(input_size)}")
    return gy.with_shape((*gy.shape[:2], *input_size))


@max_pool2d_backward.ref
def _(gy, idx, *, input_size, tiled=False, threads=1):
    n, c = gy.shape[:2]
    dx = np.zeros((n * c, input_size[0] * input_size[1]), dtype=gy.dtype)
    rows = np.repeat(np.arange(n * c), idx[0, 0].size)
    kept = idx.reshape(-1) >= 0  # -1: a window wholly in the padding, no input element to credit
    np.add.at(dx, (rows[kept], idx.reshape(-1)[kept]), gy.reshape(-1)[kept])
    return dx.reshape(n, c, *input_size)


def _avg_divisor(hw, kernel, stride, padding, oh, ow, count_include_pad):
    """[OH, OW] window sizes: kh*kw with count_include_pad, else only the elements inside the input."""
    if count_include_pad:
        return np.full((oh, ow), kernel[0] * kernel[1], dtype=np.float64)
    ones = np.ones((1, 1, *hw))
    return windows(ones, kernel, stride, padding, (1, 1)).sum(axis=(2, 3))[0, 0]


@defop("avg_pool2d", 1, {**_POOL, "count_include_pad": Attr("bool", True)}, kind="opaque",
       doc="mean over each window (torch's avg_pool2d: zero padding counted unless count_include_pad=false)")
def avg_pool2d(t, kernel_size, stride, padding, count_include_pad):
    x = t[0]
    _pool_pad_check("avg_pool2d", kernel_size, padding)
    oh, ow = _window_out("avg_pool2d", x, kernel_size, stride, padding, (1, 1))
    return x.with_shape((x.shape[0], x.shape[1], oh, ow))


@avg_pool2d.ref
def _(x, *, kernel_size, stride, padding, count_include_pad):
    cols = windows(x, kernel_size, stride, padding, (1, 1))
    div = _avg_divisor(x.shape[2:], kernel_size, stride, padding, *cols.shape[4:], count_include_pad)
    return (cols.sum(axis=(2, 3)) / div).astype(x.dtype)


avg_pool2d.grad(lambda b, node, gys, needs: [b.emit("avg_pool2d_backward", [gys[0]], {
    **dict(node.attrs), "input_size": b.types[node.inputs[0]].shape[2:]})])


@defop("avg_pool2d_backward", 1, {**_POOL, "count_include_pad": Attr("bool", True), "input_size": Attr("ints")},
       tags=("backward",), kind="opaque", doc="gradient of avg_pool2d: gy / window size spread over each window")
def avg_pool2d_backward(t, kernel_size, stride, padding, count_include_pad, input_size):
    gy = t[0]
    if gy.rank != 4 or len(input_size) != 2:
        raise ShapeError(f"avg_pool2d_backward: expected gy [N,C,OH,OW] and a two-int input_size, got {gy}, {list(input_size)}")
    x = gy.with_shape((*gy.shape[:2], *input_size))
    if _window_out("avg_pool2d_backward", x, kernel_size, stride, padding, (1, 1)) != gy.shape[2:]:
        raise ShapeError(f"avg_pool2d_backward: gy {gy} is not the pooled shape of an input {x}")
    return x


@avg_pool2d_backward.ref
def _(gy, *, kernel_size, stride, padding, count_include_pad, input_size):
    n, c, oh, ow = gy.shape
    div = _avg_divisor(input_size, kernel_size, stride, padding, oh, ow, count_include_pad)
    g = (gy / div).astype(gy.dtype)
    cols = np.broadcast_to(g[:, :, None, None], (n, c, *kernel_size, oh, ow))
    return unwindow(cols, input_size, kernel_size, stride, padding, (1, 1)).astype(gy.dtype)


def adaptive_bounds(size: int, out: int) -> tuple[list[int], list[int]]:
    """torch's adaptive windows: [floor(i*size/out), ceil((i+1)*size/out)) for each output i."""
    return [i * size // out for i in range(out)], [-(-(i + 1) * size // out) for i in range(out)]


@defop("adaptive_avg_pool2d", 1, {"output_size": Attr("ints")}, kind="opaque",
       doc="mean over torch's adaptive windows, so the output is [N, C, *output_size] for any input size")
def adaptive_avg_pool2d(t, output_size):
    x = t[0]
    if x.rank != 4 or not x.is_float:
        raise ShapeError(f"adaptive_avg_pool2d: input must be a float 4-D [batch, channels, height, width], got {x}")
    if len(output_size) != 2 or min(output_size) < 1:
        raise ShapeError(f"adaptive_avg_pool2d: output_size must be two ints >= 1, got {list(output_size)}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ShapeError(f"adaptive_avg_pool2d: input {x} has an empty spatial size")
    return x.with_shape((x.shape[0], x.shape[1], *output_size))


@adaptive_avg_pool2d.ref
def _(x, *, output_size):
    (h0, h1), (w0, w1) = adaptive_bounds(x.shape[2], output_size[0]), adaptive_bounds(x.shape[3], output_size[1])
    y = np.empty((*x.shape[:2], *output_size), dtype=x.dtype)
    for i in range(output_size[0]):
        for j in range(output_size[1]):
            y[:, :, i, j] = x[:, :, h0[i]:h1[i], w0[j]:w1[j]].mean(axis=(2, 3))
    return y


adaptive_avg_pool2d.grad(lambda b, node, gys, needs: [b.emit("adaptive_avg_pool2d_backward", [gys[0]], {
    "input_size": b.types[node.inputs[0]].shape[2:]})])


@defop("adaptive_avg_pool2d_backward", 1, {"input_size": Attr("ints")}, tags=("backward",), kind="opaque",
       doc="gradient of adaptive_avg_pool2d: gy / window size spread over each (possibly overlapping) window")
def adaptive_avg_pool2d_backward(t, input_size):
    gy = t[0]
    return gy.with_shape((*gy.shape[:2], *input_size))


@adaptive_avg_pool2d_backward.ref
def _(gy, *, input_size):
    oh, ow = gy.shape[2:]
    (h0, h1), (w0, w1) = adaptive_bounds(input_size[0], oh), adaptive_bounds(input_size[1], ow)
    dx = np.zeros((*gy.shape[:2], *input_size), dtype=gy.dtype)
    for i in range(oh):
        for j in range(ow):
            dx[:, :, h0[i]:h1[i], w0[j]:w1[j]] += gy[:, :, i:i + 1, j:j + 1] / ((h1[i] - h0[i]) * (w1[j] - w0[j]))
    return dx


for _op in (conv2d_backward, max_pool2d_backward, avg_pool2d_backward, adaptive_avg_pool2d_backward):
    _op.grad(no_gradient("a backward op: graphc does not take second derivatives"))
del _op

