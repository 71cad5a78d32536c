"""graphc.export_onnx: the eval-mode forward as a checked ONNX model that onnxruntime runs to
graphc's numbers, with graphc's value names on its nodes and a dynamic batch dim."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import graphc  # noqa: E402
import graphc.nn as nn  # noqa: E402
import graphc.nn.functional as F  # noqa: E402
from graphc.interop.onnx_export import ONNX_OPS, OnnxExportError  # noqa: E402
from models import SimpleNet, mlp  # noqa: E402


def run_onnx(path, **feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def x_of(n, d=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_mlp_round_trip_checker_onnxruntime_and_dynamic_batch(tmp_path):
    model = mlp((12, 32, 16, 5), dropout=0.2)
    x = x_of(64)
    path = graphc.export_onnx(model, tmp_path / "mlp.onnx", x)
    assert model.training  # export used eval mode and put the mode back
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].name == "input"  # Sequential.forward's argument, as graphc.trace names it
    assert [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == ["batch", 12]
    assert sorted(i.name for i in m.graph.initializer) == sorted(model.state_dict())
    model.eval()
    for n in (64, 3):  # the batch dim is dynamic
        (got,) = run_onnx(path, input=x_of(n))
        np.testing.assert_allclose(got, model(x_of(n)), rtol=1e-5, atol=1e-6)
    # nodes carry graphc's value names and ops: the fused linear_relu is a Gemm and a Relu under one name
    names = [n.name for n in m.graph.node]
    assert any(name.endswith(":linear_relu/Gemm") for name in names)
    assert any(name.endswith(":linear_relu/Relu") for name in names)
    assert all(name.startswith("%") for name in names)
    assert "Dropout" not in {n.op_type for n in m.graph.node}


def test_simple_net_nodes_name_graphc_values_and_source_lines(tmp_path):
    model = SimpleNet()
    x = x_of(8, 10)
    path = graphc.export_onnx(model, tmp_path / "simple.onnx", x, opset=13)
    m = onnx.load(str(path))
    assert m.opset_import[0].version == 13
    ops = [(n.name, n.op_type) for n in m.graph.node]
    assert [t for _, t in ops] == ["Gemm", "Relu", "Gemm"]
    assert all("models.py:" in n.doc_string for n in m.graph.node)
    model.eval()
    np.testing.assert_allclose(run_onnx(path, x=x)[0], model(x), rtol=1e-5, atol=1e-6)


class Everything(nn.Module):
    """Most exportable forward ops in one graph: arithmetic, reductions, shapes, softmax, a loss."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 4, bias=False)

    def forward(self, x, labels):
        h = self.a(x)
        h = (h.exp() + 1.0).log() - h.sigmoid() * h.tanh() / 2.0
        h = -self.b(h)
        logp = F.log_softmax(h, 1)
        s = F.softmax(h, 1) + logp.mean(dim=0, keepdim=True) + h.sum(dim=1, keepdim=True)
        t = (s.T @ s).reshape(2, 8).T.flatten()
        losses = F.cross_entropy(h * 1.5, labels) + F.nll_loss(logp, labels, reduction="sum")
        return losses + t.sum() * 0.01 + F.mse_loss(s, s * 0.5)


def test_every_mapped_forward_op_matches_onnxruntime(tmp_path):
    model = Everything()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 5).astype(np.int64)
    path = graphc.export_onnx(model, tmp_path / "every.onnx", x, labels, dynamic_batch=False)
    types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Exp", "Log", "Sigmoid", "Tanh", "Neg", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "Transpose",
            "MatMul", "Reshape", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"} <= types
    (got,) = run_onnx(path, x=x, labels=labels)
    np.testing.assert_allclose(got, model(x, labels), rtol=1e-5, atol=1e-6)


def test_op_without_onnx_mapping_and_batch_mixing_reshape_are_clear_errors(tmp_path, monkeypatch):
    model = SimpleNet()
    monkeypatch.delitem(ONNX_OPS, "relu")
    monkeypatch.delitem(ONNX_OPS, "linear_relu")
    with pytest.raises(OnnxExportError, match=r"no ONNX mapping: linear_relu \(%\d+ = linear_relu\(\.\.\.\) at models\.py:\d+"):
        graphc.export_onnx(model, tmp_path / "x.onnx", x_of(4, 10))
    monkeypatch.undo()

    class DropLast(nn.Module):  # slice bounds that follow the batch: no static ONNX Slice says that
        def forward(self, x):
            return x[: x.shape[0] - 1] * 2.0

    with pytest.raises(OnnxExportError, match=r"slice %\d+ \(test_interop_onnx.py:\d+\) cuts dim 0 at bounds that "
                                              r"follow the batch[\s\S]*dynamic_batch=False"):
        graphc.export_onnx(DropLast(), tmp_path / "f.onnx", x_of(4, 3))
    path = graphc.export_onnx(DropLast(), tmp_path / "f.onnx", x_of(4, 3), dynamic_batch=False)
    np.testing.assert_allclose(run_onnx(path, x=x_of(4, 3))[0], x_of(4, 3)[:3] * 2)

    class FlattenAll(nn.Module):  # the one dim that follows the batch becomes Reshape's -1
        def forward(self, x):
            return x.reshape(-1) * 2.0

    path = graphc.export_onnx(FlattenAll(), tmp_path / "f.onnx", x_of(4, 3))
    out = onnx.load(str(path)).graph.output[0]
    assert [d.dim_param for d in out.type.tensor_type.shape.dim] == ["batch*3"]
    np.testing.assert_allclose(run_onnx(path, x=x_of(6, 3))[0], x_of(6, 3).reshape(-1) * 2)
    with pytest.raises(OnnxExportError, match="opset"):
        graphc.export_onnx(model, tmp_path / "x.onnx", x_of(4, 10), opset=9)


def test_from_torch_model_exports(tmp_path):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    x = x_of(4, 10)
    gm = graphc.from_torch(tm, x)
    path = graphc.export_onnx(gm, tmp_path / "t.onnx", x)
    np.testing.assert_allclose(run_onnx(path, input=x_of(9, 10))[0],
                               tm(torch.from_numpy(x_of(9, 10))).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_transformer_style_ops_export(tmp_path):
    """issue 9's primitives (through from_torch's TinyAttention): index_select (the Embedding), slice, batched MatMul, Where, ..."""
    torch = pytest.importorskip("torch")
    from test_interop_torch import TinyAttention

    torch.manual_seed(5)
    tm = TinyAttention().eval()
    ids = np.random.default_rng(5).integers(0, 11, (3, 4)).astype(np.int64)
    gm = graphc.from_torch(tm, ids)
    path = graphc.export_onnx(gm, tmp_path / "att.onnx", ids, dynamic_batch=False)
    types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Gather", "Slice", "MatMul", "Where", "Greater", "Concat", "Erf", "Max", "Pow", "ReduceMax",
            "Reciprocal"} <= types
    (got,) = run_onnx(path, ids=ids)
    np.testing.assert_allclose(got, tm(torch.from_numpy(ids)).detach().numpy(), rtol=1e-5, atol=1e-5)


class Primitives(nn.Module):
    """Primitive ops written against graphc's dispatch (the front end gains them in other issues)."""

    def forward(self, x):
        from graphc.tracing import dispatch

        lo = dispatch("minimum", [x, x * 0.5])
        flags = [dispatch("cast", [dispatch(cmp, [x, lo])], {"dtype": "f32"}) for cmp in ("ne", "le", "ge", "eq", "lt")]
        padded = dispatch("pad", [x], {"widths": (0, 0, 1, 2), "value": 0.5})
        head = dispatch("slice", [padded], {"dim": 1, "start": 0, "end": 4})
        return dispatch("concat", [flags[0] + flags[1] + flags[2] + flags[3] + flags[4], head], {"dim": 1})


def test_remaining_primitives_export(tmp_path):
    x = x_of(5, 4)
    x[0, 0] = 0.0  # a tie for eq/le/ge
    path = graphc.export_onnx(Primitives(), tmp_path / "p.onnx", x)
    types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Min", "Not", "Equal", "LessOrEqual", "GreaterOrEqual", "Less", "Cast", "Pad", "Slice", "Concat"} <= types
    (got,) = run_onnx(path, x=x)
    np.testing.assert_allclose(got, Primitives()(x), rtol=1e-6)


def test_only_values_computed_from_inputs_carry_the_dynamic_batch(tmp_path):
    class Reshaped(nn.Module):  # a [4, 3] weight reshaped, exported at batch 4: not a batch dim
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

        def forward(self, x):
            return x @ self.w.reshape(3, 4)

    model = Reshaped()
    path = graphc.export_onnx(model, tmp_path / "r.onnx", x_of(4, 3))
    out = onnx.load(str(path)).graph.output[0]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 4]
    np.testing.assert_allclose(run_onnx(path, x=x_of(7, 3))[0], model(x_of(7, 3)), rtol=1e-5, atol=1e-6)


def test_cnn_exports_with_batchnorm_statistics_as_initializers(tmp_path):
    torch = pytest.importorskip("torch")
    from test_interop_torch import SmallCNN

    torch.manual_seed(7)
    tm = SmallCNN()
    x = np.random.default_rng(7).standard_normal((4, 1, 8, 8)).astype(np.float32)
    tm(torch.from_numpy(x))  # one training-mode call: running statistics away from 0 and 1
    tm.eval()
    gm = graphc.from_torch(tm, x)
    path = graphc.export_onnx(gm, tmp_path / "cnn.onnx", x)
    m = onnx.load(str(path))
    assert {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm"} <= {n.op_type for n in m.graph.node}
    inits = {i.name for i in m.graph.initializer}
    assert "bn1.running_mean" in inits and "bn1.num_batches_tracked" not in inits  # only what eval reads
    for n in (4, 2):
        xb = np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(run_onnx(path, x=xb)[0], tm(torch.from_numpy(xb)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_fused_conv_relu_exports_conv_then_relu(tmp_path):
    """passes/conv.py fuses relu into conv2d {relu=true}: the export must keep the relu."""
    model = graphc.nn.Sequential(graphc.nn.Conv2d(1, 2, 3), graphc.nn.ReLU()).eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 5, 5)).astype(np.float32)
    path = graphc.export_onnx(model, tmp_path / "cr.onnx", x)
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["Conv", "Relu"]
    np.testing.assert_allclose(run_onnx(path, input=x)[0], model(x), rtol=1e-5, atol=1e-6)


def test_char_gpt_round_trip_with_dynamic_batch(tmp_path):
    """samples/char_gpt.py's model, small: embeddings (Gather of rows), causal attention
    (arange constants, Where, batched MatMul), LayerNorm, GELU; batch 3 at export, 1 and 5 run."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples"))
    try:
        from char_gpt import GPTConfig, gpt_classes, init_weights
    finally:
        sys.path.pop(0)
    graphc.manual_seed(0)
    model = gpt_classes(graphc)(GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=8))
    init_weights(model)
    model.eval()
    ids = lambda n: np.random.default_rng(n).integers(0, 13, (n, 8)).astype(np.int64)  # noqa: E731
    path = graphc.export_onnx(model, tmp_path / "gpt.onnx", ids(3))
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == ["batch", 8]
    assert {"Gather", "Where", "MatMul", "Softmax", "Erf", "ReduceMean"} <= {n.op_type for n in m.graph.node}
    assert any(n.name.endswith(":softmax/Softmax") and "char_gpt.py:" in n.doc_string for n in m.graph.node)
    assert "transformer.wte.weight" in {i.name for i in m.graph.initializer}
    cm = graphc.compile(model, ids(3), mode="interpret")
    for n in (3, 1, 5):
        np.testing.assert_allclose(run_onnx(path, idx=ids(n))[0], cm(ids(n)), rtol=1e-5, atol=1e-6)
