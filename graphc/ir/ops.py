"""The op table: every op graphc knows, one entry each.

Each entry: the shape/dtype rule (the decorated function), the numpy reference kernel
(`@op.ref`) and the VJP rule (`@op.grad`), on adjacent lines.
Native kernels live in runtime/kernels.py under the same names.
"""
from __future__ import annotations

import numpy as np

from . import rng
from .errors import GraphcError, ShapeError
from .opdef import OPS, Attr, defop, get_op, no_gradient  # noqa: F401  (re-exported)
from .types import TensorType

# ------------------------------------------------------------------ shape helpers


def _fmt(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _same_dtype(op: str, *types: TensorType) -> str:
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        raise ShapeError(f"{op}: dtype mismatch: " + " vs ".join(str(t) for t in types) + " (graphc does not promote dtypes; convert one operand)")
    return types[0].dtype


def _float(op: str, t: TensorType, what: str = "input") -> None:
    if not t.is_float:
        raise ShapeError(f"{op}: {what} must be float (f32 or f64), got {t}")


def broadcast_shape(op: str, *types: TensorType) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*(t.shape for t in types)))
    except ValueError:
        raise ShapeError(f"{op}: shapes " + " and ".join(_fmt(t.shape) for t in types) + " do not broadcast") from None


def _check_dim(op: str, t: TensorType, dim: int) -> None:
    if not 0 <= dim < t.rank:
        raise ShapeError(f"{op}: dim {dim} is out of range for {t} (rank {t.rank})")


def _reduced(shape, dims, keepdim):
    return tuple((1 if keepdim else None) if i in dims else s for i, s in enumerate(shape) if keepdim or i not in dims)


# VJP rules: vjp(b, node, gys, needs) -> one gradient value name per input (None where not needed).
# `b` emits IR (b.emit(op, inputs, attrs); b.types[value] is a value's type); autodiff stamps
# every emitted node with `grad of <node>` and the node's source line. `gys` has one entry per
# output (None where no gradient flows); `needs[i]` says whether input i wants a gradient.


def _sum_to(b, g, like):
    """Undo broadcasting: reduce g to the shape of value `like` (no node when shapes agree)."""
    shape = b.types[like].shape
    return g if b.types[g].shape == shape else b.emit("sum_to", [g], {"shape": shape})


def _broadcast_back(b, g, like):
    shape = b.types[like].shape
    return g if b.types[g].shape == shape else b.emit("broadcast_to", [g], {"shape": shape})


def _scalar(b, value: float, like):
    return b.emit("full", [], {"shape": (), "value": float(value), "dtype": b.types[like].dtype})


# ------------------------------------------------------------------ elementwise


def _binary(name: str, fn):
    @defop(name, 2, doc=f"elementwise {name} with numpy broadcasting", kind="broadcast", tags=("recompute",))
    def rule(t):
        return TensorType(broadcast_shape(name, *t), _same_dtype(name, *t))

    rule.ref(fn)
    return rule


add = _binary("add", lambda a, b: a + b)
sub = _binary("sub", lambda a, b: a - b)
mul = _binary("mul", lambda a, b: a * b)
div = _binary("div", lambda a, b: a / b)


@add.grad
def _(b, node, gys, needs):
    gy, (x, y) = gys[0], node.inputs
    return [_sum_to(b, gy, x) if needs[0] else None, _sum_to(b, gy, y) if needs[1] else None]


@sub.grad
def _(b, node, gys, needs):
    gy, (x, y) = gys[0], node.inputs
    return [_sum_to(b, gy, x) if needs[0] else None, _sum_to(b, b.emit("neg", [gy]), y) if needs[1] else None]


@mul.grad
def _(b, node, gys, needs):
    gy, (x, y) = gys[0], node.inputs
    return [_sum_to(b, b.emit("mul", [gy, y]), x) if needs[0] else None,
            _sum_to(b, b.emit("mul", [gy, x]), y) if needs[1] else None]


@div.grad
def _(b, node, gys, needs):
    # d(x/y)/dy = -(x/y)/y: reuses the output instead of squaring y.
    gy, (x, y), q = gys[0], node.inputs, node.out
    return [_sum_to(b, b.emit("div", [gy, y]), x) if needs[0] else None,
            _sum_to(b, b.emit("neg", [b.emit("div", [b.emit("mul", [gy, q]), y])]), y) if needs[1] else None]


def _unary(name: str, fn, doc: str, tags=()):
    @defop(name, 1, doc=doc, tags=tags, kind="elementwise")
    def rule(t):
        _float(name, t[0])
        return t[0]

    rule.ref(fn)
    return rule


def _sigmoid(x):
    # exp of a non-positive number only: no overflow warnings for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


neg = _unary("neg", lambda x: -x, "-x", tags=("recompute",))
exp = _unary("exp", np.exp, "e**x")
log = _unary("log", np.log, "natural logarithm")
relu = _unary("relu", lambda x: np.maximum(x, 0).astype(x.dtype), "max(x, 0)", tags=("recompute",))
sigmoid = _unary("sigmoid", _sigmoid, "1 / (1 + e**-x)")
tanh = _unary("tanh", np.tanh, "hyperbolic tangent")


neg.grad(lambda b, node, gys, needs: [b.emit("neg", [gys[0]])])
exp.grad(lambda b, node, gys, needs: [b.emit("mul", [gys[0], node.out])])
log.grad(lambda b, node, gys, needs: [b.emit("div", [gys[0], node.inputs[0]])])
# relu, sigmoid and tanh differentiate from their output: one saved value, not input and output.
relu.grad(lambda b, node, gys, needs: [b.emit("relu_backward", [gys[0], node.out])])
sigmoid.grad(lambda b, node, gys, needs: [b.emit("sigmoid_backward", [gys[0], node.out])])
tanh.grad(lambda b, node, gys, needs: [b.emit("tanh_backward", [gys[0], node.out])])


@defop("full", 0, {"shape": Attr("ints"), "value": Attr("float"), "dtype": Attr("str", "f32", ("f32", "f64", "i64"))}, kind="elementwise", tags=("recompute",),
       doc="a constant tensor filled with one value (Python scalars in user code become these)")
def full(t, shape, value, dtype):
    return TensorType(shape, dtype)


@full.ref
def _(shape, value, dtype):
    return np.full(shape, value, dtype=TensorType((), dtype).np_dtype)


full.grad(no_gradient("a constant: it has no inputs"))


# ------------------------------------------------------------------ shapes


@defop("transpose", 1, {"perm": Attr("ints")}, doc="permute dims (x.T reverses them)", kind="injective", tags=("recompute",))
def transpose(t, perm):
    x = t[0]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"transpose: perm {list(perm)} is not a permutation of the {x.rank} dims of {x}")
    return x.with_shape(x.shape[p] for p in perm)


@transpose.ref
def _(x, perm):
    return np.ascontiguousarray(np.transpose(x, perm))


@transpose.grad
def _(b, node, gys, needs):
    perm = node.attr["perm"]
    inverse = tuple(sorted(range(len(perm)), key=lambda k: perm[k]))
    return [b.emit("transpose", [gys[0]], {"perm": inverse})]


@defop("reshape", 1, {"shape": Attr("ints")}, doc="same elements, new shape (sizes must match)", kind="injective", tags=("recompute",))
def reshape(t, shape):
    x = t[0]
    if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) != x.size:
        raise ShapeError(f"reshape: cannot reshape {x} ({x.size} elements) to {_fmt(shape)}")
    return x.with_shape(shape)


@reshape.ref
def _(x, shape):
    return np.reshape(x, shape).copy()


reshape.grad(lambda b, node, gys, needs: [b.emit("reshape", [gys[0]], {"shape": b.types[node.inputs[0]].shape})])


def _reduction(name: str, fn, doc: str):
    @defop(name, 1, {"dims": Attr("ints"), "keepdim": Attr("bool", False)}, kind="reduce", doc=doc)
    def rule(t, dims, keepdim):
        x = t[0]
        if name == "mean":
            _float(name, x)
        for d in dims:
            _check_dim(name, x, d)
        if list(dims) != sorted(set(dims)):
            raise ShapeError(f"{name}: dims {list(dims)} must be sorted and distinct")
        return x.with_shape(_reduced(x.shape, dims, keepdim))

    rule.ref(lambda x, dims, keepdim: np.asarray(fn(x, axis=tuple(dims), keepdims=keepdim), dtype=x.dtype))
    return rule


sum_ = _reduction("sum", np.sum, "sum over dims (an empty dims list sums nothing)")
mean = _reduction("mean", np.mean, "mean over dims")


def _reduction_grad(b, node, gy):
    """Broadcast gy back over the reduced dims (reinserting them first when keepdim=false)."""
    x, dims = node.inputs[0], node.attr["dims"]
    shape = b.types[x].shape
    if not dims:
        return gy
    if not node.attr["keepdim"]:
        gy = b.emit("reshape", [gy], {"shape": tuple(1 if k in dims else s for k, s in enumerate(shape))})
    return b.emit("broadcast_to", [gy], {"shape": shape})


sum_.grad(lambda b, node, gys, needs: [_reduction_grad(b, node, gys[0])])


@mean.grad
def _(b, node, gys, needs):
    shape = b.types[node.inputs[0]].shape
    n = int(np.prod([shape[d] for d in node.attr["dims"]], dtype=np.int64))
    gy = gys[0] if n == 1 else b.emit("mul", [gys[0], _scalar(b, 1.0 / n, gys[0])])
    return [_reduction_grad(b, node, gy)]


@defop("sum_to", 1, {"shape": Attr("ints")}, kind="reduce", doc="sum a broadcast value back down to `shape` (gradients of broadcasting)")
def sum_to(t, shape):
    x = t[0]
    try:
        if tuple(np.broadcast_shapes(tuple(shape), x.shape)) != x.shape:
            raise ValueError
    except ValueError:
        raise ShapeError(f"sum_to: {x} does not broadcast from {_fmt(shape)}") from None
    return x.with_shape(shape)


def sum_to_shape(x: np.ndarray, shape) -> np.ndarray:
    shape = tuple(shape)
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    return np.asarray(x.sum(axis=axes, keepdims=True).reshape(shape), dtype=x.dtype) if axes else x.copy()


sum_to.ref(sum_to_shape)


sum_to.grad(lambda b, node, gys, needs: [_broadcast_back(b, gys[0], node.inputs[0])])


@defop("broadcast_to", 1, {"shape": Attr("ints")}, kind="broadcast", doc="repeat along broadcast dims (gradients of reductions); "
       "in a kernel it is its operand read through broadcast strides, never a materialized copy",
       tags=("recompute",))
def broadcast_to(t, shape):
    x = t[0]
    try:
        if tuple(np.broadcast_shapes(tuple(shape), x.shape)) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ShapeError(f"broadcast_to: {x} does not broadcast to {_fmt(shape)}") from None
    return x.with_shape(shape)


broadcast_to.ref(lambda x, shape: np.broadcast_to(x, shape).copy())


broadcast_to.grad(lambda b, node, gys, needs: [_sum_to(b, gys[0], node.inputs[0])])


# ------------------------------------------------------------------ linear algebra


@defop("matmul", 2, kind="gemm",
       doc="matrix product a @ b as torch.matmul for operands of rank >= 2: the last two dims multiply, "
           "the leading (batch) dims broadcast")
def matmul(t):
    a, b = t
    dt = _same_dtype("matmul", a, b)
    _float("matmul", a)
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul: operands must have rank >= 2 (reshape a vector to [1, n] or [n, 1]), got {a} @ {b}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: inner dims differ: {a} @ {b} (expected a.shape[-1] == b.shape[-2], "
                         f"got {a.shape[-1]} != {b.shape[-2]})")
    batch = broadcast_shape("matmul (batch dims)", a.with_shape(a.shape[:-2]), b.with_shape(b.shape[:-2]))
    return TensorType((*batch, a.shape[-2], b.shape[-1]), dt)


matmul.ref(lambda a, b: np.matmul(a, b))


def _swap_last(b, v):
    """v with its last two dims swapped (a transpose node)."""
    r = b.types[v].rank
    return b.emit("transpose", [v], {"perm": (*range(r - 2), r - 1, r - 2)})


@matmul.grad
def _(b, node, gys, needs):
    # batch dims that were broadcast are summed back (sum_to), as for elementwise broadcasting
    gy, (x, w) = gys[0], node.inputs
    return [_sum_to(b, b.emit("matmul", [gy, _swap_last(b, w)]), x) if needs[0] else None,
            _sum_to(b, b.emit("matmul", [_swap_last(b, x), gy]), w) if needs[1] else None]


def _linear_rule(op: str, t):
    x, w = t[0], t[1]
    dt = _same_dtype(op, *t)
    _float(op, x)
    if w.rank != 2:
        raise ShapeError(f"{op}: weight must be 2-D (out_features, in_features), got {w}")
    if x.rank != 2:
        raise ShapeError(f"{op}: input must be 2-D (batch, in_features={w.shape[1]}), got {x}")
    if x.shape[1] != w.shape[1]:
        raise ShapeError(f"{op}: expected input with {w.shape[1]} features (last dim), got {x} for weight {w}")
    if len(t) == 3 and t[2].shape != (w.shape[0],):
        raise ShapeError(f"{op}: bias must be [{w.shape[0]}], got {t[2]}")
    return TensorType((x.shape[0], w.shape[0]), dt)


def _linear_ref(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


@defop("linear", (2, 3), kind="gemm", doc="y = x @ w.T + b (PyTorch's layout: w is [out, in])")
def linear(t):
    return _linear_rule("linear", t)


linear.ref(_linear_ref)


@linear.decomp
def _(b, node):
    x, w = node.inputs[0], node.inputs[1]
    y = b.emit("matmul", [x, b.emit("transpose", [w], {"perm": (1, 0)})])
    return b.emit("add", [y, node.inputs[2]]) if len(node.inputs) == 3 else y


@defop("linear_relu", (2, 3), doc="fused relu(x @ w.T + b): one pass over the GEMM output", kind="gemm", tags=("fused",))
def linear_relu(t):
    return _linear_rule("linear_relu", t)


linear_relu.ref(lambda x, w, b=None: np.maximum(_linear_ref(x, w, b), 0).astype(x.dtype))


def _linear_grad(b, node, gys, needs, relu: bool):
    """One linear_backward node for dx, dw, db; a fused linear_relu passes its output as the relu mask."""
    gy, x, w = gys[0], node.inputs[0], node.inputs[1]
    has_bias = len(node.inputs) == 3
    bias_grad = has_bias and needs[2]
    outs = b.emit("linear_backward", [gy, x, w] + ([node.out] if relu else []),
                  {"relu": relu, "input_grad": needs[0], "bias_grad": bias_grad})
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    dx = outs.pop(0) if needs[0] else None
    dw = outs.pop(0)
    db = outs.pop(0) if bias_grad else None
    return [dx, dw if needs[1] else None] + ([db] if has_bias else [])


linear.grad(lambda b, node, gys, needs: _linear_grad(b, node, gys, needs, relu=False))
linear_relu.grad(lambda b, node, gys, needs: _linear_grad(b, node, gys, needs, relu=True))


# ------------------------------------------------------------------ softmax and losses


def _softmax_rule(name):
    @defop(name, 1, {"dim": Attr("int")}, kind="opaque", doc=f"{name} along dim (numerically stable)")
    def rule(t, dim):
        _float(name, t[0])
        _check_dim(name, t[0], dim)
        return t[0]

    return rule


def _log_softmax(x, dim):
    m = x.max(axis=dim, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


softmax = _softmax_rule("softmax")
softmax.ref(lambda x, dim: np.exp(_log_softmax(x, dim)))
log_softmax = _softmax_rule("log_softmax")
log_softmax.ref(_log_softmax)


def _shifted(b, x, dim):
    """x - max(x, dim): the stable start of softmax and log_softmax."""
    return b.emit("sub", [x, b.emit("max", [x], {"dims": (dim,), "keepdim": True})])


@softmax.decomp
def _(b, node):
    e = b.emit("exp", [_shifted(b, node.inputs[0], node.attr["dim"])])
    return b.emit("div", [e, b.emit("sum", [e], {"dims": (node.attr["dim"],), "keepdim": True})])


@log_softmax.decomp
def _(b, node):
    z = _shifted(b, node.inputs[0], node.attr["dim"])
    return b.emit("sub", [z, b.emit("log", [b.emit("sum", [b.emit("exp", [z])], {"dims": (node.attr["dim"],), "keepdim": True})])])


softmax.grad(lambda b, node, gys, needs: [b.emit("softmax_backward", [gys[0], node.out], {"dim": node.attr["dim"]})])
log_softmax.grad(lambda b, node, gys, needs: [b.emit("log_softmax_backward", [gys[0], node.out], {"dim": node.attr["dim"]})])


_REDUCTION = Attr("str", "mean", ("mean", "sum"))


@defop("mse_loss", 2, {"reduction": _REDUCTION}, kind="opaque", doc="mean (or sum) of (input - target)**2")
def mse_loss(t, reduction):
    a, b = t
    dt = _same_dtype("mse_loss", a, b)
    _float("mse_loss", a)
    if a.shape != b.shape:
        raise ShapeError(f"mse_loss: target shape {_fmt(b.shape)} must equal input shape {_fmt(a.shape)}")
    return TensorType((), dt)


@mse_loss.decomp
def _(b, node):
    d = b.emit("sub", list(node.inputs))
    r = node.attr["reduction"]
    return b.emit(r, [b.emit("mul", [d, d])], {"dims": tuple(range(b.types[d].rank))})


@mse_loss.ref
def _(a, b, reduction):
    d = (a - b) ** 2
    return np.asarray(d.mean() if reduction == "mean" else d.sum(), dtype=a.dtype)


@mse_loss.grad
def _(b, node, gys, needs):
    gx = b.emit("mse_loss_backward", [gys[0], *node.inputs], {"reduction": node.attr["reduction"]})
    return [gx if needs[0] else None, b.emit("neg", [gx]) if needs[1] else None]


def _class_rule(op: str, x: TensorType, labels: TensorType) -> None:
    _float(op, x)
    if x.rank != 2:
        raise ShapeError(f"{op}: input must be [batch, classes], got {x}")
    if labels.dtype != "i64" or labels.shape != (x.shape[0],):
        raise ShapeError(f"{op}: target must be i64[{x.shape[0]}] class indices, got {labels}")


def _check_labels(labels, classes):
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise GraphcError(f"class label out of range: labels must be in [0, {classes}), got min {labels.min()} max {labels.max()}")


def _pick(x, labels):
    return x[np.arange(x.shape[0]), labels]


@defop("nll_loss", 2, {"reduction": _REDUCTION}, kind="opaque", doc="-mean(logp[i, label_i])")
def nll_loss(t, reduction):
    _class_rule("nll_loss", *t)
    return TensorType((), t[0].dtype)


@nll_loss.ref
def _(logp, labels, reduction):
    _check_labels(labels, logp.shape[1])
    v = -_pick(logp, labels)
    return np.asarray(v.mean() if reduction == "mean" else v.sum(), dtype=logp.dtype)


@nll_loss.grad
def _(b, node, gys, needs):
    logp, labels = node.inputs
    classes = b.types[logp].shape[1]
    return [b.emit("nll_loss_backward", [gys[0], labels], {"reduction": node.attr["reduction"], "classes": classes}), None]


@defop("cross_entropy", 2, {"reduction": _REDUCTION}, doc="fused log_softmax + nll_loss via log-sum-exp", kind="opaque", tags=("fused",))
def cross_entropy(t, reduction):
    _class_rule("cross_entropy", *t)
    return TensorType((), t[0].dtype)


@cross_entropy.decomp
def _(b, node):
    x, labels = node.inputs
    n = b.types[x].shape[0]
    lp = log_softmax.decompose(b, node.replace(op="log_softmax", inputs=(x,), attrs=(("dim", 1),)))
    picked = b.emit("gather", [lp, b.emit("reshape", [labels], {"shape": (n, 1)})], {"dim": 1})
    return b.emit("neg", [b.emit(node.attr["reduction"], [picked], {"dims": (0, 1)})])


@cross_entropy.ref
def _(logits, labels, reduction):
    _check_labels(labels, logits.shape[1])
    v = -_pick(_log_softmax(logits, 1), labels)
    return np.asarray(v.mean() if reduction == "mean" else v.sum(), dtype=logits.dtype)


cross_entropy.grad(lambda b, node, gys, needs: [
    b.emit("cross_entropy_backward", [gys[0], *node.inputs], {"reduction": node.attr["reduction"]}), None])


# ------------------------------------------------------------------ randomness


# "recompute": the mask is a function of the seed, so the output is cheap to redo
@defop("dropout", 2, {"p": Attr("float"), "stream": Attr("int", 0)}, kind="elementwise", tags=("recompute",),
       doc="x * keep / (1 - p), keep[i] = uniform(seed, stream, i) >= p. The mask is a pure function "
           "of (seed, stream, i): backward recomputes it instead of saving it")
def dropout(t, p, stream):
    x, seed = t
    _float("dropout", x)
    if seed.dtype != "i64" or seed.shape != ():
        raise ShapeError(f"dropout: seed must be i64[], got {seed}")
    if not 0.0 <= p < 1.0:
        raise ShapeError(f"dropout: p must be in [0, 1), got {p}")
    return x


def dropout_mask(seed, p: float, stream: int, shape, dtype) -> np.ndarray:
    """The scaled keep-mask (0 or 1/(1-p)) that dropout multiplies by."""
    n = int(np.prod(shape, dtype=np.int64))
    keep = rng.uniform(int(seed), stream, n) >= p
    return (keep * (1.0 / (1.0 - p))).astype(dtype).reshape(shape)


dropout.ref(lambda x, seed, p, stream: x * dropout_mask(seed, p, stream, x.shape, x.dtype))


@dropout.decomp
def _(b, node):
    (x, seed), p, t = node.inputs, node.attr["p"], b.types[node.inputs[0]]
    u = b.emit("uniform", [seed], {"shape": t.shape, "stream": node.attr["stream"], "dtype": "f64"})
    keep = b.emit("ge", [u, b.emit("full", [], {"shape": (), "value": p, "dtype": "f64"})])
    scale = b.emit("full", [], {"shape": (), "value": 1.0 / (1.0 - p), "dtype": t.dtype})
    zero = b.emit("full", [], {"shape": (), "value": 0.0, "dtype": t.dtype})
    return b.emit("mul", [x, b.emit("where", [keep, scale, zero])])


# The mask is recomputed from (seed, stream): dropout of gy with the same attributes.
dropout.grad(lambda b, node, gys, needs: [b.emit("dropout", [gys[0], node.inputs[1]], dict(node.attrs)), None])


# ------------------------------------------------------------------ backward ops
# Emitted by VJP rules; fused so that the backward plan makes one pass where it can.


def _like_first(name, n_in, doc, attrs=None, kind="elementwise"):
    @defop(name, n_in, attrs, doc=doc, tags=("backward",), kind=kind)
    def rule(t, **_):
        _same_dtype(name, *[x for x in t if x.is_float])
        for x in t[1:]:
            if x.is_float and x.shape != t[0].shape:
                raise ShapeError(f"{name}: operand shapes differ: " + ", ".join(str(x) for x in t))
        return t[0]

    return rule


relu_backward = _like_first("relu_backward", 2, "gy * (y > 0), y = relu output")
relu_backward.ref(lambda gy, y: np.where(y > 0, gy, 0).astype(gy.dtype))
sigmoid_backward = _like_first("sigmoid_backward", 2, "gy * y * (1 - y), y = sigmoid output")
sigmoid_backward.ref(lambda gy, y: gy * y * (1 - y))
tanh_backward = _like_first("tanh_backward", 2, "gy * (1 - y**2), y = tanh output")
tanh_backward.ref(lambda gy, y: gy * (1 - y * y))
softmax_backward = _like_first("softmax_backward", 2, "y * (gy - sum(gy * y, dim)), y = softmax output", {"dim": Attr("int")}, kind="opaque")
softmax_backward.ref(lambda gy, y, dim: y * (gy - (gy * y).sum(axis=dim, keepdims=True)))
log_softmax_backward = _like_first("log_softmax_backward", 2, "gy - exp(y) * sum(gy, dim), y = log_softmax output", {"dim": Attr("int")}, kind="opaque")
log_softmax_backward.ref(lambda gy, y, dim: gy - np.exp(y) * gy.sum(axis=dim, keepdims=True))


@softmax_backward.decomp
def _(b, node):
    gy, y = node.inputs
    s = b.emit("sum", [b.emit("mul", [gy, y])], {"dims": (node.attr["dim"],), "keepdim": True})
    return b.emit("mul", [y, b.emit("sub", [gy, s])])


@log_softmax_backward.decomp
def _(b, node):
    gy, y = node.inputs
    s = b.emit("sum", [gy], {"dims": (node.attr["dim"],), "keepdim": True})
    return b.emit("sub", [gy, b.emit("mul", [b.emit("exp", [y]), s])])


@defop("mse_loss_backward", 3, {"reduction": _REDUCTION}, kind="broadcast", tags=("backward",), doc="d mse / d input = gy * 2 (input - target) / N")
def mse_loss_backward(t, reduction):
    gy, a, b = t
    if gy.shape != ():
        raise ShapeError(f"mse_loss_backward: gy must be a scalar, got {gy}")
    _same_dtype("mse_loss_backward", gy, a, b)
    return a


@mse_loss_backward.ref
def _(gy, a, b, reduction):
    scale = 2.0 / (a.size if reduction == "mean" else 1)
    return ((a - b) * (gy * scale)).astype(a.dtype)


@defop("cross_entropy_backward", 3, {"reduction": _REDUCTION}, kind="opaque", tags=("backward",), doc="d ce / d logits = gy * (softmax(logits) - onehot(labels)) / N")
def cross_entropy_backward(t, reduction):
    gy, x, labels = t
    _class_rule("cross_entropy_backward", x, labels)
    if gy.shape != () or gy.dtype != x.dtype:
        raise ShapeError(f"cross_entropy_backward: gy must be {x.dtype}[], got {gy}")
    return x


@cross_entropy_backward.ref
def _(gy, x, labels, reduction):
    g = np.exp(_log_softmax(x, 1))
    g[np.arange(x.shape[0]), labels] -= 1
    return (g * (gy / (x.shape[0] if reduction == "mean" else 1))).astype(x.dtype)


@defop("nll_loss_backward", 2, {"reduction": _REDUCTION, "classes": Attr("int")}, kind="opaque", tags=("backward",), doc="d nll / d logp = -gy / N at each label, 0 elsewhere")
def nll_loss_backward(t, reduction, classes):
    gy, labels = t
    if gy.shape != () or not gy.is_float:
        raise ShapeError(f"nll_loss_backward: gy must be a float scalar, got {gy}")
    if labels.dtype != "i64" or labels.rank != 1:
        raise ShapeError(f"nll_loss_backward: labels must be i64[batch], got {labels}")
    return TensorType((labels.shape[0], classes), gy.dtype)


@nll_loss_backward.ref
def _(gy, labels, reduction, classes):
    g = np.zeros((labels.shape[0], classes), dtype=gy.dtype)
    g[np.arange(labels.shape[0]), labels] = -gy / (labels.shape[0] if reduction == "mean" else 1)
    return g


@defop("linear_backward", (3, 4), {"relu": Attr("bool", False), "input_grad": Attr("bool", True), "bias_grad": Attr("bool", True)},
       kind="opaque", tags=("backward",),
       doc="gradients of linear / linear_relu in one op. Inputs (gy, x, w[, y]); with relu=true the "
           "mask y > 0 is applied to gy on the fly. Outputs: dx (if input_grad), dw, db (if bias_grad)")
def linear_backward(t, relu, input_grad, bias_grad):
    gy, x, w = t[:3]
    _same_dtype("linear_backward", *t)
    if relu != (len(t) == 4):
        raise ShapeError(f"linear_backward: relu={relu} needs {'4' if relu else '3'} inputs (gy, x, w{', y' if relu else ''}), got {len(t)}")
    if gy.shape != (x.shape[0], w.shape[0]) or x.rank != 2 or x.shape[1] != w.shape[1]:
        raise ShapeError(f"linear_backward: inconsistent shapes gy {gy}, x {x}, w {w}")
    if relu and t[3].shape != gy.shape:
        raise ShapeError(f"linear_backward: y {t[3]} must match gy {gy}")
    outs = [x] if input_grad else []
    outs.append(w)
    if bias_grad:
        outs.append(w.with_shape((w.shape[0],)))
    return tuple(outs)


@linear_backward.ref
def _(gy, x, w, y=None, *, relu, input_grad, bias_grad):
    gz = np.where(y > 0, gy, 0).astype(gy.dtype) if relu else gy
    outs = [gz @ w] if input_grad else []
    outs.append(gz.T @ x)
    if bias_grad:
        outs.append(gz.sum(axis=0).astype(gy.dtype))
    return tuple(outs)


@linear_backward.decomp
def _(b, node):
    """dz = relu_backward(gy, y) (with relu), then dx = dz @ w, dw = dz.T @ x, db = sum(dz, 0): the
    form in which the kernel pass gives each GEMM its epilogue and prologue (passes/kernels.py)."""
    gy, x, w = node.inputs[:3]
    a = node.attr
    dz = b.emit("relu_backward", [gy, node.inputs[3]]) if a["relu"] else gy
    outs = [b.emit("matmul", [dz, w])] if a["input_grad"] else []
    outs.append(b.emit("matmul", [b.emit("transpose", [dz], {"perm": (1, 0)}), x]))
    if a["bias_grad"]:
        outs.append(b.emit("sum", [dz], {"dims": (0,)}))
    return outs


for _op in OPS.values():
    if "backward" in _op.tags:
        _op.grad(no_gradient("a backward op: graphc does not take second derivatives"))
del _op


# ------------------------------------------------------------------ optimizer updates
# The last nodes of a train-step graph. Each returns new values; the runtime writes them back
# into the param and state buffers (outputs labelled "update:<name>"). Formulas are
# torch.optim's, step for step, so one graphc step equals one torch step.
# Hyperparameters (lr, momentum, betas, ...) are f64[] operands, not attributes: a train step
# reads them from the optimizer's param_groups at every call, so a scheduler never recompiles.
# The attributes are the structure only (which terms exist), as torch's own `if` tests have it.

SGD_SCALARS = ("lr", "momentum", "dampening", "weight_decay")
ADAM_SCALARS = ("lr", "beta1", "beta2", "eps", "weight_decay")


def _check_update_operand(op: str, p: TensorType, what: str, t: TensorType) -> None:
    if t != p:
        raise ShapeError(f"{op}: {what} must have the param's type {p}, got {t}")


def _check_step(op: str, t: TensorType) -> None:
    if t.dtype != "i64" or t.shape != ():
        raise ShapeError(f"{op}: step must be i64[] (steps already taken), got {t}")


def _check_scalars(op: str, names, types) -> None:
    for name, t in zip(names, types):
        if t != TensorType((), "f64"):
            raise ShapeError(f"{op}: hyperparameter {name} must be f64[] (read from the optimizer at each step), got {t}")


@defop("sgd_update", (6, 8), kind="opaque", tags=("optimizer",), attrs={"momentum": Attr("bool", False), "nesterov": Attr("bool", False),
                                                         "weight_decay": Attr("bool", False)},
       doc="torch.optim.SGD for one param. Inputs (p, g, lr, momentum, dampening, weight_decay), then (buf, step) "
           "with momentum=true; outputs p' (and buf'). Attributes say which terms exist (torch's momentum != 0, "
           "nesterov, weight_decay != 0). step = steps already taken: at step 0 the buffer starts as d_p, as torch's does")
def sgd_update(t, momentum, nesterov, weight_decay):
    want = 8 if momentum else 6
    if len(t) != want:
        raise ShapeError(f"sgd_update: momentum={str(momentum).lower()} takes {want} inputs "
                         f"(p, g, lr, momentum, dampening, weight_decay{', buf, step' if momentum else ''}), got {len(t)}")
    p = t[0]
    _float("sgd_update", p, "param")
    _check_update_operand("sgd_update", p, "grad", t[1])
    _check_scalars("sgd_update", SGD_SCALARS, t[2:6])
    if nesterov and not momentum:
        raise ShapeError("sgd_update: nesterov needs momentum")
    if not momentum:
        return p
    _check_update_operand("sgd_update", p, "momentum buffer", t[6])
    _check_step("sgd_update", t[7])
    return p, p


@sgd_update.ref
def _(p, g, lr, momentum_, dampening, weight_decay_, buf=None, step=None, *, momentum, nesterov, weight_decay):
    # Python floats, so numpy computes in the param's dtype as torch does with its scalar arguments
    lr, mom, damp, wd = (float(x) for x in (lr, momentum_, dampening, weight_decay_))
    d_p = g + wd * p if weight_decay else g
    if not momentum:
        return (p - lr * d_p).astype(p.dtype)
    buf = d_p.copy() if int(step) == 0 else mom * buf + (1 - damp) * d_p
    d_p = d_p + mom * buf if nesterov else buf
    return (p - lr * d_p).astype(p.dtype), buf.astype(p.dtype)


@defop("adam_update", (10, 11), kind="opaque", tags=("optimizer",), attrs={"weight_decay": Attr("bool", False), "decoupled": Attr("bool", False)},
       doc="torch.optim.Adam / AdamW (amsgrad=False) for one param. Inputs (p, g, exp_avg, exp_avg_sq, step, lr, "
           "beta1, beta2, eps, weight_decay), then an optional grad_scale (a scalar of the param's dtype: g * grad_scale "
           "is the gradient, clip_grad_norm's coefficient, so no pass writes the scaled gradient); outputs p', exp_avg', "
           "exp_avg_sq'. Bias correction uses t = step + 1. weight_decay=true: the term exists (added to g; "
           "decoupled=true: p *= 1 - lr*weight_decay first, AdamW)")
def adam_update(t, weight_decay, decoupled):
    p = t[0]
    _float("adam_update", p, "param")
    for what, x in zip(("grad", "exp_avg", "exp_avg_sq"), t[1:4]):
        _check_update_operand("adam_update", p, what, x)
    _check_step("adam_update", t[4])
    _check_scalars("adam_update", ADAM_SCALARS, t[5:10])
    if len(t) == 11 and t[10] != TensorType((), p.dtype):
        raise ShapeError(f"adam_update: grad_scale must be a scalar of the param's dtype {p.dtype}[], got {t[10]}")
    return p, p, p


@adam_update.ref
def _(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay_, grad_scale=None, *, weight_decay, decoupled):
    if grad_scale is not None:
        g = g * grad_scale  # in the param's dtype, as the mul node it replaces
    lr, beta1, beta2, eps, wd = (float(x) for x in (lr, beta1, beta2, eps, weight_decay_))
    if weight_decay and decoupled:
        p = p * (1 - lr * wd)
    elif weight_decay:
        g = g + wd * p
    w = 1 - beta1
    # torch updates exp_avg with lerp, whose formula switches at weight 0.5; keep its rounding.
    m = m + w * (g - m) if w < 0.5 else g - (g - m) * (1 - w)
    v = beta2 * v + (1 - beta2) * (g * g)
    t = int(step) + 1
    bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
    denom = np.sqrt(v) / bias2 ** 0.5 + eps
    p = p - (lr / bias1) * (m / denom)
    return p.astype(p.dtype), m.astype(p.dtype), v.astype(p.dtype)


@defop("addmm", (3, 4), {"trans_a": Attr("bool", False), "trans_b": Attr("bool", False),
                        "alpha": Attr("float", 1.0), "beta": Attr("float", 1.0)}, kind="opaque", tags=("optimizer",),
       doc="BLAS gemm's contract, as torch.addmm: beta * c + alpha * s * op(a) @ op(b) with op(x) = x.T where "
           "trans_x; s an optional f64[] runtime scalar (a learning rate). Made by passes/update_gemm.py from an SGD "
           "update of a weight gradient, so the GEMM writes the new weight itself: no gradient buffer, no update pass")
def addmm(t, trans_a, trans_b, alpha, beta):
    c, a, b = t[:3]
    _float("addmm", c)
    _same_dtype("addmm", c, a, b)
    if a.rank != 2 or b.rank != 2 or c.rank != 2:
        raise ShapeError(f"addmm: operands must be 2-D, got c {c}, a {a}, b {b}")
    (m, k), (k2, n) = (a.shape[::-1] if trans_a else a.shape), (b.shape[::-1] if trans_b else b.shape)
    if k != k2 or c.shape != (m, n):
        raise ShapeError(f"addmm: op(a) {[m, k]} @ op(b) {[k2, n]} does not give c's shape {list(c.shape)}")
    if len(t) == 4 and t[3] != TensorType((), "f64"):
        raise ShapeError(f"addmm: the scalar s must be f64[] (a runtime hyperparameter), got {t[3]}")
    return c


@addmm.ref
def _(c, a, b, s=None, *, trans_a, trans_b, alpha, beta):
    # Python floats, so numpy computes in c's dtype (as torch with scalar arguments)
    scale = float(alpha) * (float(s) if s is not None else 1.0)
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    return (float(beta) * c + scale * prod).astype(c.dtype) if beta != 1.0 else (c + scale * prod).astype(c.dtype)


addmm.grad(no_gradient("made after autodiff (passes/update_gemm.py), as an optimizer update"))
sgd_update.grad(no_gradient("an optimizer update: it runs after the gradients"))
adam_update.grad(no_gradient("an optimizer update: it runs after the gradients"))


# ------------------------------------------------------------------ collectives
# Data-parallel training: every rank runs the same plan on its own shard of the batch, and the
# gradients are averaged across ranks before the update. The process group reaches the plan as
# a `comm` input (i64[COMM_WORDS] of MPI handles that the runtime's kernel reads); the numpy
# reference cannot call MPI from the IR floor, so graphc.distributed registers the reduction it
# uses in COLLECTIVES["all_reduce_sum"] (sum a flat array across ranks, in place). Without one
# the world is this process alone.

COMM_WORDS = 8
COLLECTIVES: dict = {"all_reduce_sum": None}


@defop("all_reduce", (2, 1 << 20), {"ranks": Attr("int"), "bucket": Attr("int", 0),
                                    "op": Attr("str", "mean", ("mean", "sum"))}, tags=("collective",), kind="opaque",
       doc="inputs (comm, x1, ..., xn): the sum or mean over the `ranks` processes of a data-parallel job of "
           "each float xi, sent as one message (bucket `bucket`); outputs the n results, same types")
def all_reduce(t, ranks, bucket, op):
    comm, *xs = t
    if comm != TensorType((COMM_WORDS,), "i64"):
        raise ShapeError(f"all_reduce: the first input must be the communicator, i64[{COMM_WORDS}], got {comm}")
    for x in xs:
        _float("all_reduce", x)
    _same_dtype("all_reduce", *xs)
    if ranks < 1:
        raise ShapeError(f"all_reduce: ranks must be >= 1, got {ranks}")
    return tuple(xs)


@all_reduce.ref
def _(comm, *xs, ranks, bucket, op):
    flat = np.concatenate([x.ravel() for x in xs]) if xs else np.zeros(0)
    if ranks > 1:
        reduce = COLLECTIVES["all_reduce_sum"]
        if reduce is None:
            raise GraphcError(f"all_reduce over {ranks} ranks: this process has no process group; "
                              f"call graphc.distributed.init() in a job started with mpiexec -n {ranks}")
        reduce(flat, ranks)
        if op == "mean":
            flat /= flat.dtype.type(ranks)
    out, k = [], 0
    for x in xs:
        out.append(flat[k:k + x.size].reshape(x.shape).astype(x.dtype))
        k += x.size
    return tuple(out)


all_reduce.grad(no_gradient("a collective over the gradients: it runs after them, before the update"))


# The primitives added for the kernel stage (math, comparisons, movement, indexing) live in their
# own module; importing it registers them in the same table.
from . import primitives  # noqa: E402,F401
# conv2d and the 2-D poolings (issue 10)
from . import ops_conv  # noqa: E402,F401


# ------------------------------------------------------------------ composite layers: a decomposition only
# Reference and VJP come from the decomposition (opdef.derive); passes/decompose.py rewrites the
# op into it before lowering, so it needs no native kernel either.


@defop("layer_norm", (1, 3), {"eps": Attr("float", 1e-5)}, kind="opaque", tags=("composite",),
       doc="torch's layer_norm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias (biased var)")
def layer_norm(t, eps):
    x = t[0]
    _float("layer_norm", x)
    _same_dtype("layer_norm", *t)
    for k, p in enumerate(t[1:], 1):
        if p.shape != x.shape[-1:]:
            raise ShapeError(f"layer_norm: {('weight', 'bias')[k - 1]} must be [{x.shape[-1]}] (the last dim of {x}), got {p}")
    return x


@layer_norm.decomp
def _(b, node):
    x, last = node.inputs[0], (b.types[node.inputs[0]].rank - 1,)
    d = b.emit("sub", [x, b.emit("mean", [x], {"dims": last, "keepdim": True})])
    var = b.emit("mean", [b.emit("mul", [d, d])], {"dims": last, "keepdim": True})
    eps = b.emit("full", [], {"shape": (), "value": node.attr["eps"], "dtype": b.types[x].dtype})
    y = b.emit("mul", [d, b.emit("rsqrt", [b.emit("add", [var, eps])])])
    for op, p in zip(("mul", "add"), node.inputs[1:]):
        y = b.emit(op, [y, p])
    return y


from .opdef import derive  # noqa: E402

derive()
