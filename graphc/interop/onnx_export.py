"""`graphc.export_onnx(model, path, *example_inputs, opset=17)`: the eval-mode forward as ONNX.

The model is traced in eval mode and optimized by graphc's inference pipeline (the graph
`graphc.compile` would run), then each graphc node becomes the ONNX nodes of its line in
`ONNX_OPS`. ONNX values keep graphc's value names (`x`, `linear1.weight`, `3`); every ONNX
node is named `%<value>:<graphc op>[/<ONNX op>]` and its doc_string holds the source line, so
a fused `linear_relu` shows as a Gemm and a Relu under one graphc name. Parameters are
initializers; dim 0 of the inputs is the symbolic `batch` (dynamic_batch=False keeps the
example's sizes): the model is traced again at batch + 1, and every dim or reshape/expand size
that differs between the two graphs follows the batch. The result passes `onnx.checker.check_model(full_check=True)`.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ..ir import GraphcError, Graph, Node
from ..ir.opdef import get_op

__all__ = ["export_onnx", "OnnxExportError", "ONNX_OPS"]

MIN_OPSET = 13  # ReduceSum's axes became an input and Softmax a single-axis op in opset 13


class OnnxExportError(GraphcError):
    """The model cannot be written as ONNX: names the op or value and why."""


class _Ctx:
    """What an op's emitter needs: onnx.helper, the graph, the opset, and where nodes go.

    `twin` is the same model traced at batch + 1 (dynamic batch only): a dim or shape attribute
    that differs between the two graphs carries the batch, one that does not is a true constant
    (a [4, 3] weight reshaped at batch 4 stays 4). That decides every dynamic dim exactly, where
    guessing from sizes could not."""

    def __init__(self, onnx, graph: Graph, opset: int, batch: int | None, twin: Graph | None = None):
        self.onnx, self.h, self.graph, self.opset, self.batch = onnx, onnx.helper, graph, opset, batch
        self.nodes, self.initializers = [], []
        self.twin_types, self.twin_attrs = {}, {}
        if twin is not None:
            if [n.op for n in twin.nodes] != [n.op for n in graph.nodes]:
                raise OnnxExportError(f"export_onnx: {graph.name}'s graph changes with the batch size (other ops at "
                                      f"batch {batch} and {batch + 1}): export with dynamic_batch=False")
            for a, b in zip(graph.inputs, twin.inputs):
                self.twin_types[a.name] = b.type
            for n, m in zip(graph.nodes, twin.nodes):
                self.twin_attrs[n.outputs[0]] = m.attr
                for v, t in zip(n.outputs, m.types):
                    self.twin_types[v] = t

    def batch_dims(self, value: str) -> list[int]:
        """The dims of `value` whose size follows the batch."""
        if value not in self.twin_types:
            return []
        return [k for k, (a, b) in enumerate(zip(self.graph.types[value].shape, self.twin_types[value].shape)) if a != b]

    def has_batch(self, value: str) -> bool:
        return bool(self.batch_dims(value))

    def add(self, onnx_op: str, inputs, outputs, node: Node, suffix: str | None = None, **attrs):
        name = f"%{node.outputs[0]}:{node.op}" + (f"/{suffix or onnx_op}" if suffix is not False else "")
        n = self.h.make_node(onnx_op, list(inputs), list(outputs), name=name,
                             doc_string=f"graphc {node.op} -> %{', %'.join(node.outputs)}" + (f" at {node.loc}" if node.loc else ""),
                             **attrs)
        self.nodes.append(n)
        return outputs[0]

    def temp(self, node: Node, what: str) -> str:
        return f"{node.outputs[0]}/{what}"

    def const(self, node: Node, what: str, array) -> str:
        name = f"{node.outputs[0]}/{what}"
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def _baked(self, node: Node, why: str):
        return OnnxExportError(f"{node.op} %{node.outputs[0]} ({node.loc or 'no source line'}) {why}: its batch size "
                               "would be baked in; export with dynamic_batch=False for a fixed batch size")

    def dynamic_shape(self, node: Node) -> list[int]:
        """The `shape` attribute of a reshape / broadcast_to under a dynamic batch: the one dim that
        follows the batch becomes -1 (Reshape infers it), or 1 where Expand broadcasts the input's."""
        shape = list(node.attr["shape"])
        if node.outputs[0] not in self.twin_attrs:
            return shape
        diff = [k for k, (a, b) in enumerate(zip(shape, self.twin_attrs[node.outputs[0]]["shape"])) if a != b]
        if not diff:
            return shape
        if node.op == "reshape" and len(diff) == 1:
            shape[diff[0]] = -1
            return shape
        if node.op == "broadcast_to":
            src = self.graph.types[node.inputs[0]].shape
            lead = len(shape) - len(src)
            if all(k >= lead and src[k - lead] == shape[k] for k in diff):
                return [1 if k in diff else d for k, d in enumerate(shape)]
        raise self._baked(node, f"gives shape {shape} with {len(diff)} dims that follow the batch")


def _binary(onnx_op):
    return lambda c, n: c.add(onnx_op, n.inputs, n.outputs, n)


def _unary(onnx_op):
    return lambda c, n: c.add(onnx_op, n.inputs[:1], n.outputs, n)


def _full(c, n):
    t = n.type
    if c.has_batch(n.outputs[0]):
        raise c._baked(n, f"makes a constant of shape {list(t.shape)} that follows the batch")
    shape = list(t.shape)
    value = np.full(shape, n.attr["value"], dtype=t.np_dtype)
    tensor = c.onnx.numpy_helper.from_array(value, n.outputs[0])
    return c.add("Constant", [], n.outputs, n, value=tensor)


def _source_constant(c, n):
    """An op with no inputs (arange): its value, computed by the op's own reference, as a Constant."""
    value = np.asarray(get_op(n.op).reference(**n.attr), dtype=n.type.np_dtype).reshape(n.type.shape)
    return c.add("Constant", [], n.outputs, n, value=c.onnx.numpy_helper.from_array(value, n.outputs[0]))


def _reshape(c, n):
    shape = c.const(n, "shape", np.asarray(c.dynamic_shape(n), np.int64))
    return c.add("Reshape", [n.inputs[0], shape], n.outputs, n)


def _reduce(onnx_op):
    def emit(c, n):
        dims = list(n.attr["dims"])
        keep = int(n.attr.get("keepdim", False))
        if not dims:  # nothing to reduce
            return c.add("Identity", n.inputs, n.outputs, n)
        axes_as_input = onnx_op == "ReduceSum" or c.opset >= 18  # ReduceMean/ReduceMax: attribute before 18
        if axes_as_input:
            return c.add(onnx_op, [n.inputs[0], c.const(n, "axes", np.asarray(dims, np.int64))], n.outputs, n, keepdims=keep)
        return c.add(onnx_op, n.inputs, n.outputs, n, axes=dims, keepdims=keep)
    return emit


def _broadcast_to(c, n):
    shape = c.const(n, "shape", np.asarray(c.dynamic_shape(n), np.int64))
    return c.add("Expand", [n.inputs[0], shape], n.outputs, n)


def _linear(relu: bool):
    def emit(c, n):
        x, w = n.inputs[0], n.inputs[1]
        out = c.temp(n, "Gemm") if relu else n.outputs[0]
        if len(c.graph.types[x].shape) == 2:
            c.add("Gemm", n.inputs, [out], n, transB=1)
        else:  # batched leading dims: MatMul with the transposed weight (+ bias)
            wt = c.add("Transpose", [w], [c.temp(n, "weight_T")], n, perm=[1, 0])
            mm = c.add("MatMul", [x, wt], [c.temp(n, "MatMul") if len(n.inputs) == 3 else out], n)
            if len(n.inputs) == 3:
                c.add("Add", [mm, n.inputs[2]], [out], n)
        if relu:
            c.add("Relu", [out], n.outputs, n)
        return n.outputs[0]
    return emit


def _softmax(onnx_op):
    return lambda c, n: c.add(onnx_op, n.inputs, n.outputs, n, axis=n.attr["dim"])


def _mse_loss(c, n):
    diff = c.add("Sub", n.inputs, [c.temp(n, "diff")], n)
    sq = c.add("Mul", [diff, diff], [c.temp(n, "square")], n)
    red = "ReduceMean" if n.attr["reduction"] == "mean" else "ReduceSum"
    return c.add(red, [sq], n.outputs, n, keepdims=0)  # no axes: over every dim


def _nll_loss(c, n):
    return c.add("NegativeLogLikelihoodLoss", n.inputs, n.outputs, n, reduction=n.attr["reduction"])


def _cross_entropy(c, n):
    return c.add("SoftmaxCrossEntropyLoss", n.inputs, n.outputs, n, reduction=n.attr["reduction"])


def _rsqrt(c, n):
    root = c.add("Sqrt", n.inputs, [c.temp(n, "Sqrt")], n)
    return c.add("Reciprocal", [root], n.outputs, n)


def _pow(c, n):
    exponent = c.const(n, "exponent", np.asarray(n.attr["exponent"], c.graph.types[n.inputs[0]].np_dtype))
    return c.add("Pow", [n.inputs[0], exponent], n.outputs, n)


def _ne(c, n):
    eq = c.add("Equal", n.inputs, [c.temp(n, "Equal")], n)
    return c.add("Not", [eq], n.outputs, n)


def _cast(c, n):
    return c.add("Cast", n.inputs, n.outputs, n, to=getattr(c.onnx.TensorProto, _ELEM[n.attr["dtype"]]))


def _slice(c, n):
    a = n.attr
    if n.outputs[0] in c.twin_attrs and c.twin_attrs[n.outputs[0]] != n.attr:
        raise c._baked(n, f"cuts dim {a['dim']} at bounds that follow the batch")
    ins = [c.const(n, k, np.asarray([v], np.int64))
           for k, v in (("starts", a["start"]), ("ends", a["end"]), ("axes", a["dim"]), ("steps", a.get("step", 1)))]
    return c.add("Slice", [n.inputs[0], *ins], n.outputs, n)


def _pad(c, n):
    if any(n.attr.get("interior") or ()):
        raise OnnxExportError(f"pad %{n.outputs[0]} with interior padding has no ONNX Pad equivalent")
    w = n.attr["widths"]
    pads = c.const(n, "pads", np.asarray(list(w[0::2]) + list(w[1::2]), np.int64))
    value = c.const(n, "value", np.asarray(n.attr.get("value", 0.0), n.type.np_dtype))
    return c.add("Pad", [n.inputs[0], pads, value], n.outputs, n, mode="constant")


def _conv2d(c, n):
    """Conv, and a Relu after it for a conv2d {relu=true} (passes/conv.py's fused epilogue); `algo`
    and `chunk` are graphc's lowering choices and do not export."""
    a = n.attr
    top, bottom, left, right = a["padding"]
    out = c.temp(n, "Conv") if a["relu"] else n.outputs[0]
    c.add("Conv", n.inputs, [out], n, strides=list(a["stride"]), pads=[top, left, bottom, right],
          dilations=list(a["dilation"]), group=a["groups"])
    if a["relu"]:
        c.add("Relu", [out], n.outputs, n)
    return n.outputs[0]


def _pool_window(n):
    top, bottom, left, right = n.attr["padding"]
    return dict(kernel_shape=list(n.attr["kernel_size"]), strides=list(n.attr["stride"]), pads=[top, left, bottom, right])


def _max_pool2d(c, n):
    if c.graph.uses(n.outputs[1]):
        raise OnnxExportError(f"max_pool2d %{n.outputs[0]}: its indices are used, and ONNX MaxPool numbers them "
                              "differently from torch; only the pooled values export")
    return c.add("MaxPool", n.inputs, n.outputs[:1], n, dilations=list(n.attr["dilation"]), **_pool_window(n))


def _avg_pool2d(c, n):
    return c.add("AveragePool", n.inputs, n.outputs, n, count_include_pad=int(n.attr["count_include_pad"]),
                 **_pool_window(n))


def _adaptive_avg_pool2d(c, n):
    h, w = c.graph.types[n.inputs[0]].shape[2:]
    oh, ow = n.attr["output_size"]
    if (oh, ow) == (1, 1):
        return c.add("GlobalAveragePool", n.inputs, n.outputs, n)
    if h % oh or w % ow:
        raise OnnxExportError(f"adaptive_avg_pool2d %{n.outputs[0]}: {h}x{w} -> {oh}x{ow} has uneven windows, "
                              "which no ONNX pooling op computes")
    return c.add("AveragePool", n.inputs, n.outputs, n, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])


# graphc op -> its ONNX emitter (one line each; forward ops of an eval-mode graph)
ONNX_OPS: dict[str, Callable] = {
    "add": _binary("Add"),
    "sub": _binary("Sub"),
    "mul": _binary("Mul"),
    "div": _binary("Div"),
    "neg": _unary("Neg"),
    "exp": _unary("Exp"),
    "log": _unary("Log"),
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "full": _full,
    "arange": _source_constant,
    "transpose": lambda c, n: c.add("Transpose", n.inputs, n.outputs, n, perm=list(n.attr["perm"])),
    "reshape": _reshape,
    "sum": _reduce("ReduceSum"),
    "mean": _reduce("ReduceMean"),
    "broadcast_to": _broadcast_to,
    "matmul": _binary("MatMul"),
    "linear": _linear(relu=False),
    "linear_relu": _linear(relu=True),
    "softmax": _softmax("Softmax"),
    "log_softmax": _softmax("LogSoftmax"),
    "mse_loss": _mse_loss,
    "nll_loss": _nll_loss,
    "cross_entropy": _cross_entropy,
    "sqrt": _unary("Sqrt"),
    "rsqrt": _rsqrt,
    "erf": _unary("Erf"),
    "pow": _pow,
    "maximum": _binary("Max"),
    "minimum": _binary("Min"),
    "eq": _binary("Equal"),
    "ne": _ne,
    "lt": _binary("Less"),
    "le": _binary("LessOrEqual"),
    "gt": _binary("Greater"),
    "ge": _binary("GreaterOrEqual"),
    "where": _binary("Where"),
    "cast": _cast,
    "max": _reduce("ReduceMax"),
    "slice": _slice,
    "concat": lambda c, n: c.add("Concat", n.inputs, n.outputs, n, axis=n.attr["dim"]),
    "pad": _pad,
    "gather": lambda c, n: c.add("GatherElements", n.inputs, n.outputs, n, axis=n.attr["dim"]),
    "index_select": lambda c, n: c.add("Gather", n.inputs, n.outputs, n, axis=n.attr["dim"]),
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,
}

_ELEM = {"f32": "FLOAT", "f64": "DOUBLE", "i64": "INT64", "bool": "BOOL"}


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxExportError("export_onnx needs the onnx package: pip install 'graphc[onnx]' (or pip install onnx)") from None
    return onnx


def _inference_graph(model, arrays) -> Graph:
    from graphc.passes import compile_pipeline

    from ..tracing import trace

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        graph = trace(model, *arrays)
    finally:
        model.train(was_training)
    # the plan before the kernel stage: ONNX gets ops, not graphc's fused kernel nodes
    return compile_pipeline(graph, "inference").graph("forward_plan")


def onnx_model(model, *example_inputs, opset: int = 17, dynamic_batch: bool = True):
    """The onnx.ModelProto export_onnx writes (checked), without writing it."""
    onnx = _import_onnx()
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise OnnxExportError(f"opset={opset}: graphc exports opsets {MIN_OPSET} to {onnx.defs.onnx_opset_version()} "
                              f"(the installed onnx's newest)")
    arrays = [x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x) for x in example_inputs]
    g = _inference_graph(model, arrays)
    missing = [n for n in g.nodes if n.op not in ONNX_OPS]
    if missing:
        ops = sorted({n.op for n in missing})
        where = "; ".join(f"%{n.outputs[0]} = {n.op}(...) at {n.loc or 'no source line'}" for n in missing[:5])
        raise OnnxExportError(f"export_onnx: {type(model).__name__} uses graphc op(s) with no ONNX mapping: "
                              f"{', '.join(ops)} ({where}); ops that export: {', '.join(sorted(ONNX_OPS))}")

    inputs = [i for i in g.inputs if i.kind == "input"]
    batch = None
    if dynamic_batch:
        firsts = {i.type.shape[0] for i in inputs if i.type.rank >= 1}
        batch = next(iter(firsts), None)
        if len(firsts) > 1:
            raise OnnxExportError("export_onnx: the inputs' first dims differ, so there is no one batch dim; "
                                  "export with dynamic_batch=False")
    twin = None
    if batch is not None:  # the same model one sample bigger: what differs carries the batch
        grown = [np.concatenate([a, a[:1]]) if a.ndim >= 1 else a for a in arrays]
        twin = _inference_graph(model, grown)
    c = _Ctx(onnx, g, opset, batch, twin)
    params = dict(model.named_parameters())
    if hasattr(model, "named_buffers"):  # BatchNorm's running statistics, where graphc has buffers
        params.update(model.named_buffers())
    used = {v for n in g.nodes for v in n.inputs} | {o.value for o in g.outputs}
    for i in g.inputs:
        if i.kind in ("param", "buffer") and i.name not in used:  # num_batches_tracked: eval reads it not
            continue
        if i.kind in ("param", "buffer"):
            c.initializers.append(onnx.numpy_helper.from_array(np.asarray(params[i.name]).view(np.ndarray), i.name))
        elif i.kind != "input":
            raise OnnxExportError(f"export_onnx: graph input %{i.name} of kind {i.kind!r} has no ONNX meaning "
                                  "(only inputs, parameters and buffers do)")
    for n in g.nodes:
        ONNX_OPS[n.op](c, n)

    def info(name, value):
        t = g.types[value]
        follows = c.batch_dims(value)
        dims = [d if k not in follows else "batch" if d == batch else f"batch*{d // batch}" if d % batch == 0
                else f"{name}_dim{k}" for k, d in enumerate(t.shape)]
        return onnx.helper.make_tensor_value_info(name, getattr(onnx.TensorProto, _ELEM[t.dtype]), dims)

    graph_inputs = [info(i.name, i.name) for i in inputs]
    outputs, seen = [], set()
    for o in g.outputs:
        name = o.value
        if name in seen or name in g.input_by_name:  # ONNX outputs must be distinct node outputs
            alias = f"output{len(outputs)}"
            c.nodes.append(onnx.helper.make_node("Identity", [name], [alias], name=f"%{name}:output"))
            name = alias
        seen.add(name)
        outputs.append(info(name, o.value))
    graph = onnx.helper.make_graph(c.nodes, g.name, graph_inputs, outputs, initializer=c.initializers,
                                   doc_string=f"graphc {g.name}: eval-mode forward after the inference pipeline")
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="graphc")
    m.ir_version = min(m.ir_version, _IR_FOR_OPSET.get(opset, m.ir_version))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # a bug in an emitter, not in the user's model
        raise OnnxExportError(f"export_onnx: the ONNX graph of {g.name} fails onnx.checker: {e}") from None
    return m


# onnxruntime reads models up to some IR version; the oldest IR that holds the opset is safest.
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def export_onnx(model, path, *example_inputs, opset: int = 17, dynamic_batch: bool = True):
    """Write `model`'s eval-mode forward to `path` as ONNX (weights as initializers); returns the path.

    Example inputs fix the shapes (dim 0 becomes the symbolic `batch` unless dynamic_batch=False).
    The model's training mode is restored afterwards. Raises OnnxExportError naming any graphc op
    that has no ONNX mapping."""
    onnx = _import_onnx()
    m = onnx_model(model, *example_inputs, opset=opset, dynamic_batch=dynamic_batch)
    onnx.save(m, os.fspath(path))
    return path
