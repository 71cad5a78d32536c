"""graphc.from_torch: torch models captured with torch.fx (or torch.export) run, train and
inspect as graphc models, matching torch in outputs, gradients and optimizer steps."""
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import graphc  # noqa: E402
import graphc.nn as nn  # noqa: E402
from graphc.interop.torch_fx import TorchImportError  # noqa: E402
from graphc.ir.ops import dropout_mask  # noqa: E402
from models import assert_same_weights, train_like_torch  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)


class SimpleNet(tnn.Module):
    """The seed document's SimpleNet, written in torch."""

    def __init__(self):
        super(SimpleNet, self).__init__()
        self.linear1 = tnn.Linear(10, 20)
        self.relu = tnn.ReLU()
        self.dropout = tnn.Dropout(0.5)
        self.linear2 = tnn.Linear(20, 1)

    def forward(self, x):
        x = self.linear1(x)
        x = self.relu(x)
        x = self.dropout(x)
        x = self.linear2(x)
        return x


class Residual(tnn.Module):
    """A residual add, tensor methods, shapes read in forward, and F.dropout(training=self.training)."""

    def __init__(self, p=0.25):
        super().__init__()
        self.p = p
        self.inp = tnn.Linear(6, 16)
        self.block = tnn.Sequential(tnn.Linear(16, 16), tnn.Tanh())
        self.out = tnn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x).relu()
        h = h + self.block(h)
        h = TF.dropout(h, self.p, self.training)
        h = h.view(x.size(0), -1).sigmoid() * 2.0 - h.mean(dim=1, keepdim=True)
        return self.out(h)


class ShapeBranch(tnn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.fc = tnn.Linear(5, 3)

    def forward(self, x):
        if x.shape[1] == 5:
            return torch.relu(self.fc(x))
        return x


class UsesFFT(tnn.Module):
    def __init__(self):
        super().__init__()
        self.fc = tnn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.fft.fft(x).real)


def mlp():
    return tnn.Sequential(tnn.Linear(12, 32), tnn.ReLU(), tnn.Linear(32, 16), tnn.ReLU(), tnn.Linear(16, 5))


def data(n=8, d=10, classes=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if classes:
        return x, rng.integers(0, classes, n).astype(np.int64)
    return x, rng.standard_normal((n, 1)).astype(np.float32)


def torch_out(tm, x):
    return tm(torch.from_numpy(x)).detach().numpy()


def line_of(fn, text):
    src, start = inspect.getsourcelines(fn)
    return start + next(k for k, ln in enumerate(src) if text in ln)


# ------------------------------------------------------------------ SimpleNet


def test_simple_net_maps_layer_for_layer_with_torch_names_and_source_lines():
    torch.manual_seed(0)
    tm = SimpleNet()
    x, _ = data()
    gm = graphc.from_torch(tm, x)
    assert isinstance(gm, nn.Module) and type(gm).__name__ == "SimpleNet" and gm.captured_with == "torch.fx"
    assert list(gm.state_dict()) == list(tm.state_dict())
    assert isinstance(gm.linear1, nn.Linear) and isinstance(gm.dropout, nn.Dropout) and gm.dropout.p == 0.5
    g = graphc.trace(gm, x)
    assert [n.op for n in g.nodes] == ["linear", "relu", "dropout", "linear"]
    assert [i.name for i in g.inputs if i.kind == "input"] == ["x"]
    lines = [int(n.loc.split(":")[1]) for n in g.nodes]
    assert all(n.loc.startswith("test_interop_torch.py:") for n in g.nodes)
    assert lines == [line_of(SimpleNet.forward, t) for t in ("self.linear1(x)", "self.relu(x)", "self.dropout(x)",
                                                             "self.linear2(x)")]
    gm.eval()
    tm.eval()
    np.testing.assert_allclose(gm(x), torch_out(tm, x), **TOL)  # eager
    np.testing.assert_allclose(graphc.compile(gm, x)(x), torch_out(tm, x), **TOL)


def test_simple_net_gradients_and_three_sgd_steps_match_torch_with_the_same_dropout_masks():
    torch.manual_seed(1)
    tm = SimpleNet()
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    x, y = data()
    tx = torch.from_numpy(x)

    def torch_forward(seed):  # torch's SimpleNet with graphc's mask for this call's seed
        mask = torch.from_numpy(dropout_mask(seed, 0.5, 0, (8, 20), np.float32))
        return tm.linear2(torch.relu(tm.linear1(tx)) * mask)

    gm = graphc.from_torch(tm, x)
    cm = graphc.compile(gm, x, mode="interpret")  # the mapping is under test, not codegen: no numba compile
    gy = np.random.default_rng(1).standard_normal((8, 1)).astype(np.float32)
    graphc.manual_seed(7)
    seed = graphc.random.next_seed()
    graphc.manual_seed(7)
    np.testing.assert_allclose(cm(x), torch_forward(seed).detach().numpy(), **TOL)
    cm.backward(gy)
    torch_forward(seed).backward(torch.from_numpy(gy))
    for (name, p), tp in zip(gm.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), **TOL, err_msg=name)
    tm.zero_grad()

    gm2 = graphc.from_torch(tm, x)
    step = graphc.compile_train_step(gm2, nn.MSELoss(), graphc.optim.SGD(gm2.parameters(), lr=0.1, momentum=0.9), x, y,
                                     mode="interpret")
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    graphc.manual_seed(42)
    seeds = [graphc.random.next_seed() for _ in range(3)]
    graphc.manual_seed(42)
    train_like_torch(step, tm, topt, TF.mse_loss, x, y, tforward=lambda k: torch_forward(seeds[k]))
    for k, v in gm2.state_dict().items():
        np.testing.assert_allclose(v.numpy(), tm.state_dict()[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=k)
    # the weights go back into a fresh torch model with the same keys
    fresh = SimpleNet()
    fresh.load_state_dict(gm2.state_dict())
    np.testing.assert_allclose(torch_out(fresh.eval(), x), torch_out(tm.eval(), x), **TOL)
    # from_torch copied: the first graphc model's weights are still the torch model's starting point
    for k, v in gm.numpy_state_dict().items():
        np.testing.assert_array_equal(v, before[k].numpy())


def test_simple_net_trains_with_dropout_and_switches_mode():
    gm = graphc.from_torch(SimpleNet(), data()[0])
    x, y = data(64)
    assert "dropout" in str(graphc.trace(gm, x))
    step = graphc.compile_train_step(gm, nn.MSELoss(), graphc.optim.SGD(gm.parameters(), lr=0.05), x, y,
                                     mode="interpret")
    losses = [step(x, y) for _ in range(30)]
    assert losses[-1] < losses[0]
    gm.eval()
    assert "dropout" not in str(graphc.trace(gm, x))


# ------------------------------------------------------------------ nn.Sequential MLP


def test_sequential_mlp_gradients_and_three_adam_steps_match_torch():
    torch.manual_seed(2)
    tm = mlp()
    x, labels = data(16, 12, classes=5)
    gm = graphc.from_torch(tm, x)
    assert list(gm.state_dict()) == list(tm.state_dict()) == [f"{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
    np.testing.assert_allclose(gm(x), torch_out(tm, x), **TOL)

    cm = graphc.compile(gm, x, mode="interpret")
    gy = np.random.default_rng(3).standard_normal((16, 5)).astype(np.float32)
    cm(x)
    cm.backward(gy)
    tm(torch.from_numpy(x)).backward(torch.from_numpy(gy))
    for (name, p), tp in zip(gm.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), **TOL, err_msg=name)
    gm.zero_grad()
    tm.zero_grad()

    opt = graphc.optim.Adam(gm.parameters(), lr=0.01)
    topt = torch.optim.Adam(tm.parameters(), lr=0.01)
    step = graphc.compile_train_step(gm, nn.CrossEntropyLoss(), opt, x, labels, mode="interpret")
    train_like_torch(step, tm, topt, TF.cross_entropy, x, labels)
    assert_same_weights(gm, tm)


# ------------------------------------------------------------------ residual add and tensor methods


def test_residual_module_with_tensor_methods_matches_torch():
    torch.manual_seed(3)
    tm = Residual()
    x, _ = data(8, 6)
    y = np.random.default_rng(4).standard_normal((8, 4)).astype(np.float32)
    gm = graphc.from_torch(tm, x)
    ops = [n.op for n in graphc.trace(gm, x).nodes]
    assert "dropout" in ops and "add" in ops and "sigmoid" in ops  # F.dropout follows training mode
    gm.eval()
    tm.eval()
    assert "dropout" not in [n.op for n in graphc.trace(gm, x).nodes]
    np.testing.assert_allclose(gm(x), torch_out(tm, x), **TOL)

    cm = graphc.compile(gm, x, mode="interpret")
    np.testing.assert_allclose(cm(x[:5]), torch_out(tm, x[:5]), **TOL)  # x.size(0) re-read at another batch

    tm = Residual(p=0.0)  # train mode without dropout: gradients and steps comparable to torch's
    gm = graphc.from_torch(tm, x)
    cm = graphc.compile(gm, x, mode="interpret")
    cm(x)
    gy = np.ones((8, 4), np.float32)
    cm.backward(gy)
    tm(torch.from_numpy(x)).backward(torch.from_numpy(gy))
    for (name, p), tp in zip(gm.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    tm.zero_grad()

    gm2 = graphc.from_torch(tm, x)
    step = graphc.compile_train_step(gm2, nn.MSELoss(), graphc.optim.SGD(gm2.parameters(), lr=0.1), x, y,
                                     mode="interpret")
    topt = torch.optim.SGD(tm.parameters(), lr=0.1)
    train_like_torch(step, tm, topt, TF.mse_loss, x, y)
    assert_same_weights(gm2, tm)
    assert "Tensor.view" in gm2.captured() and "torch.nn.functional.dropout" in gm2.captured()


def test_torch_export_is_the_fallback_when_fx_cannot_trace():
    torch.manual_seed(4)
    tm = ShapeBranch()
    x, _ = data(4, 5)
    gm = graphc.from_torch(tm, x)
    assert gm.captured_with == "torch.export"
    assert list(gm.state_dict()) == ["fc.weight", "fc.bias"]
    np.testing.assert_allclose(gm(x), torch_out(tm, x), **TOL)
    g = graphc.trace(gm, x)
    assert [n.op for n in g.nodes] == ["linear", "relu"]
    assert g.nodes[1].loc == f"test_interop_torch.py:{line_of(ShapeBranch.forward, 'torch.relu')}"


# ------------------------------------------------------------------ what cannot be mapped


def test_unsupported_op_names_op_node_source_line_and_what_is_supported():
    with pytest.raises(TorchImportError) as e:
        graphc.from_torch(UsesFFT(), np.zeros((2, 8), np.float32))
    msg = str(e.value)
    assert "torch.fft.fft" in msg and "fx node 'fft_fft'" in msg
    assert f"test_interop_torch.py:{line_of(UsesFFT.forward, 'torch.fft.fft')}" in msg
    assert "return self.fc(torch.fft.fft(x).real)" in msg
    assert "supported torch functions:" in msg and "torch.nn.functional.relu" in msg and "torch.nn.Linear" in msg
    assert isinstance(e.value, graphc.GraphcError)

    class TwoGaps(tnn.Module):  # every gap is reported at once, before anything is built or returned
        def __init__(self):
            super().__init__()
            self.fc = tnn.Linear(8, 8)

        def forward(self, x):
            return torch.cumsum(self.fc(torch.fft.fft(x).real), 1).relu()

    with pytest.raises(TorchImportError, match=r"uses 2 op\(s\) graphc cannot map \(captured with torch.fx\): "
                                               r"torch.fft.fft, torch.cumsum"):
        graphc.from_torch(TwoGaps(), np.zeros((2, 8), np.float32))


def test_unsupported_layer_and_bad_shapes_are_clear():
    class WithConv(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.GRU(3, 3)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(TorchImportError, match=r"torch\.nn\.(modules\.rnn\.)?GRU.*fx node 'conv'"):
        graphc.from_torch(WithConv(), np.zeros((2, 3), np.float32))

    class Square(tnn.Module):
        def forward(self, x):
            return x @ x

    with pytest.raises(graphc.GraphcError, match=r"matmul[\s\S]*test_interop_torch.py:\d+[\s\S]*return x @ x"):
        graphc.from_torch(Square(), np.zeros((2, 3), np.float32))
    with pytest.raises(graphc.GraphcError, match="torch.nn.Module"):
        graphc.from_torch(nn.Linear(2, 2), np.zeros((1, 2), np.float32))


# ------------------------------------------------------------------ transformer-style ops (issue 9's primitives)


class TinyAttention(tnn.Module):
    """Embedding, LayerNorm, slicing, batched matmul, where, cat, GELU, and elementwise primitives."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.d = d
        self.emb = tnn.Embedding(vocab, d)
        self.ln = tnn.LayerNorm(d)
        self.qkv = tnn.Linear(d, 3 * d)
        self.proj = tnn.Linear(2 * d, d)
        self.act = tnn.GELU()

    def forward(self, ids):
        b, t = ids.shape
        h = self.ln(self.emb(ids))
        qkv = self.qkv(h.view(b * t, self.d)).view(b, t, 3 * self.d)
        q, k, v = qkv[:, :, :self.d], qkv[..., self.d:2 * self.d], qkv[:, :, 2 * self.d:]
        att = q @ k.transpose(-2, -1) / torch.sqrt(torch.tensor(float(self.d)))
        att = torch.where(att > 0, att, att * 0.1).softmax(dim=-1)
        out = torch.cat([torch.bmm(att, v), h], dim=-1)
        out = self.act(self.proj(out.reshape(b * t, 2 * self.d)))
        out = torch.maximum(out, out.pow(3)) + out.clamp(min=-0.5).square() - TF.silu(out)
        return out.amax(dim=1) + TF.leaky_relu(out, 0.2).sum(dim=1) + out[:, 1:2].sum(dim=1)


def test_transformer_style_ops_match_torch_in_value_and_gradient():
    torch.manual_seed(5)
    tm = TinyAttention()
    ids = np.random.default_rng(5).integers(0, 11, (3, 4)).astype(np.int64)
    gm = graphc.from_torch(tm, ids)
    assert list(gm.state_dict()) == list(tm.state_dict())
    ops = {n.op for n in graphc.trace(gm, ids).nodes}
    assert {"index_select", "rsqrt", "slice", "matmul", "where", "concat", "erf", "maximum", "pow", "max"} <= ops
    np.testing.assert_allclose(gm(ids), torch_out(tm, ids), rtol=1e-5, atol=1e-5)
    cm = graphc.compile(gm, ids, mode="interpret")
    cm(ids)
    gy = np.random.default_rng(6).standard_normal((12,)).astype(np.float32)
    cm.backward(gy)
    tm(torch.from_numpy(ids)).backward(torch.from_numpy(gy))
    for (name, p), tp in zip(gm.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------ CNN layers (issue 10)


class SmallCNN(tnn.Module):
    """Conv2d, BatchNorm2d (buffers), pooling, Dropout2d and a view(x.size(0), -1) head."""

    def __init__(self, p=0.0):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = tnn.BatchNorm2d(4)
        self.pool = tnn.MaxPool2d(2)
        self.conv2 = tnn.Conv2d(4, 6, 3, stride=1, bias=False)
        self.drop = tnn.Dropout2d(p)
        self.gap = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = TF.avg_pool2d(self.drop(self.conv2(x)), 1)
        return self.fc(self.gap(x).view(x.size(0), -1))


def test_cnn_with_batchnorm_buffers_matches_torch_in_value_gradient_and_steps():
    torch.manual_seed(6)
    tm = SmallCNN()
    x = np.random.default_rng(6).standard_normal((4, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 1], np.int64)
    gm = graphc.from_torch(tm, x)
    assert list(gm.state_dict()) == list(tm.state_dict())  # bn1.running_mean, ..., num_batches_tracked
    ops = {n.op for n in graphc.trace(gm, x).nodes}
    assert {"conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"} <= ops

    step = graphc.compile_train_step(gm, nn.CrossEntropyLoss(), graphc.optim.SGD(gm.parameters(), lr=0.1), x, labels,
                                     mode="interpret")
    topt = torch.optim.SGD(tm.parameters(), lr=0.1)
    train_like_torch(step, tm, topt, TF.cross_entropy, x, labels)  # training mode: batch statistics, running stats move
    for k, v in gm.state_dict().items():
        np.testing.assert_allclose(v.numpy(), tm.state_dict()[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    gm.eval()
    tm.eval()
    np.testing.assert_allclose(gm(x), torch_out(tm, x), rtol=1e-5, atol=1e-5)
