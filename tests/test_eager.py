"""graphc.Tensor and autograd by lazy capture, against torch; the one method table; the module fixes."""
import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.eager import Tensor
from graphc.tracing import Proxy


def public(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


def test_eager_and_traced_share_one_method_table():
    """Whatever works on an eager tensor exists on a traced value, and the other way round."""
    traced = public(Proxy) - {"name", "tracer", "type"}  # what a traced value is: its IR name, trace and type
    assert public(Tensor) == traced, (sorted(public(Tensor) - traced), sorted(traced - public(Tensor)))
    ops = {n for n in dir(graphc.tracing.TensorMethods) if n.startswith("__") and n.endswith("__")}
    for cls in (Tensor, Proxy, nn.Parameter):
        assert all(getattr(cls, n) is not None for n in ops)
    # parameters have the table too
    assert public(graphc.tracing.TensorMethods) <= public(nn.Parameter)


def test_every_tensor_methods_entry_is_what_the_tensor_classes_call():
    """One implementation per method: each tensor_methods.METHODS entry is the very function eager
    tensors, traced values and parameters expose (a shadowed duplicate would never run), and
    install() refuses a name the method table already defines."""
    from graphc import tensor_methods
    for name, fn in tensor_methods.METHODS.items():
        for cls in (Tensor, Proxy, nn.Parameter, graphc.tracing.EagerArray):
            assert getattr(cls, name) is fn, (cls.__name__, name)

    class Table:
        def transpose(self, a, b): ...
    saved = dict(tensor_methods.METHODS)
    try:
        tensor_methods.METHODS["transpose"] = lambda self, *a: self
        with pytest.raises(AssertionError, match="duplicates Table.transpose"):
            tensor_methods.install(Table)
    finally:
        tensor_methods.METHODS.clear()
        tensor_methods.METHODS.update(saved)


def test_creation_functions_follow_torch():
    assert graphc.tensor([1.0, 2.0]).dtype == np.float32 and graphc.tensor([1, 2]).dtype == np.int64
    assert graphc.tensor(np.zeros(2)).dtype == np.float64  # numpy arrays keep their dtype
    a = np.arange(3.0)
    t = graphc.from_numpy(a)
    a[0] = 7
    assert t[0].item() == 7.0
    assert graphc.zeros(2, 3).shape == (2, 3) and graphc.ones((2,)).tolist() == [1.0, 1.0]
    assert graphc.full((2,), 3).dtype == np.int64 and graphc.arange(4).tolist() == [0, 1, 2, 3]
    assert graphc.zeros_like(graphc.ones(2, dtype=graphc.float64)).dtype == np.float64
    graphc.manual_seed(0)
    assert graphc.randn(3, 4).shape == (3, 4) and graphc.rand(2).dtype == np.float32
    assert graphc.cat([graphc.ones(2), graphc.zeros(3)]).shape == (5,)
    assert graphc.stack([graphc.ones(2), graphc.zeros(2)], dim=1).shape == (2, 2)
    assert graphc.tensor(np.array([1, 2], np.int32)).dtype == np.int64


def test_autograd_of_a_function_matches_torch():
    x0 = np.array([0.5, -1.5, 2.0], np.float32)
    x = graphc.tensor(x0, requires_grad=True)
    tx = torch.tensor(x0, requires_grad=True)
    for _ in range(3):  # interpreted, then compiled, then the cached plan
        x.grad = None
        tx.grad = None
        y = (x ** 2 * 3 + x.exp() - x.abs() + x.sigmoid() * x.tanh()).sum() / x.numel()
        ty = (tx ** 2 * 3 + tx.exp() - tx.abs() + tx.sigmoid() * tx.tanh()).sum() / tx.numel()
        y.backward()
        ty.backward()
        np.testing.assert_allclose(y.item(), ty.item(), rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5)
    assert x.is_leaf and not y.is_leaf and x.grad.requires_grad is False


def test_gradients_accumulate_and_no_grad_records_nothing():
    w = graphc.tensor([1.0, 2.0], requires_grad=True)
    (w * w).sum().backward()
    (w * 3).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [2 + 3, 4 + 3])
    with graphc.no_grad():
        z = w * 2
    assert not z.requires_grad and z.is_leaf

    @graphc.no_grad()
    def f(v):
        return v + 1

    assert not f(w).requires_grad and graphc.is_grad_enabled()
    with graphc.no_grad():
        with graphc.enable_grad():
            assert (w * 2).requires_grad
    with graphc.inference_mode():
        assert not (w * 2).requires_grad
    with pytest.raises(graphc.TraceError, match="does not require grad"):
        graphc.tensor([1.0]).sum().backward()
    y = (w * 2).sum()
    y.backward()
    with pytest.raises(graphc.GraphcError, match="already run"):
        y.backward()


def test_reading_a_value_then_backward():
    w = graphc.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    h = (w @ w).relu()
    loss = h.mean()
    assert loss.item() == pytest.approx(np.mean(np.array([[7, 10], [15, 22]])))  # forward only
    loss.backward()
    tw = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    (tw @ tw).relu().mean().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy())
    np.testing.assert_allclose(h.detach().numpy(), (tw @ tw).detach().numpy())  # still readable after backward


def test_non_scalar_backward_takes_a_gradient():
    x = graphc.tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    with pytest.raises(graphc.TraceError, match="only for scalar outputs"):
        y.backward()
    y.backward(graphc.tensor([1.0, 0.5]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_standard_loop_matches_torch_and_compiles_once():
    graphc.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    tmodel = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32).astype(np.int32)  # int32 labels work
    opt = graphc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    graphc.autograd.reset()
    for step in range(6):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        topt.zero_grad()
        tloss = tcrit(tmodel(torch.from_numpy(x)), torch.from_numpy(y).long())
        tloss.backward()
        topt.step()
        assert loss.item() == pytest.approx(tloss.item(), rel=1e-5, abs=1e-6)
        if step == 5:  # after a joined step, .grad holds this step's gradients as in torch
            for p, tp in zip(model.parameters(), tmodel.parameters()):
                np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-4, atol=1e-6)
    for (n, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-4, atol=1e-6, err_msg=n)
    stats = graphc.autograd.stats
    assert stats["compiles"] == 1 and stats["recompiles"] == 0 and stats["joined_steps"] == 5, stats


def test_reading_grads_between_backward_and_step_runs_them_apart():
    lin = nn.Linear(3, 1)
    opt = graphc.optim.SGD(lin.parameters(), lr=0.5)
    x = np.ones((2, 3), np.float32)
    graphc.autograd.reset()
    for _ in range(3):
        opt.zero_grad()
        loss = (lin(x) ** 2).mean()
        loss.backward()
        g = np.array(lin.weight.grad)  # e.g. gradient clipping reads them
        w = np.array(lin.weight)
        opt.step()
        np.testing.assert_allclose(lin.weight, w - 0.5 * g, rtol=1e-6)
    assert graphc.autograd.stats["joined_steps"] == 0


def test_lazy_values_see_weights_as_they_were():
    lin = nn.Linear(2, 1)
    x = np.ones((1, 2), np.float32)
    before = lin(x)  # recorded, not yet computed
    want = (x @ np.asarray(lin.weight).T + np.asarray(lin.bias)).copy()
    lin.weight.grad = np.ones_like(lin.weight.view(np.ndarray))
    graphc.optim.SGD([lin.weight], lr=1.0).step()
    np.testing.assert_allclose(before.detach().numpy(), want, rtol=1e-6)


# ------------------------------------------------------------------ the silent wrong results of issue 16


class L2(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x).sum() + 0.1 * sum((p ** 2).sum() for p in self.parameters())


def test_parameters_read_through_parameters_are_graph_inputs():
    m = L2()
    g = graphc.trace(m, np.zeros((4, 3), np.float32))
    assert sum(n.op == "mul" and n.inputs[0] == n.inputs[1] and n.inputs[0].startswith("lin.") for n in g.nodes) == 2, g
    cm = graphc.compile(m, np.zeros((4, 3), np.float32))
    cm(np.ones((4, 3), np.float32))
    cm.backward()
    w = np.asarray(m.lin.weight)
    np.testing.assert_allclose(m.lin.weight.grad, 4 + 0.2 * w, rtol=1e-5)


class Wrapper(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def test_submodules_keep_their_mode_when_compiling_a_wrapper():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9)).eval()
    w = Wrapper(net)
    x = np.ones((2, 4), np.float32)
    cm = graphc.compile(w, x)
    assert net.training is False and w.training is True
    with graphc.no_grad():
        np.testing.assert_allclose(cm(x), net(x), rtol=1e-6)
    assert "dropout" not in cm.ir(0)


def test_assigning_a_plain_array_to_a_parameter_name_raises():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign .* as parameter 'weight'"):
        lin.weight = lin.weight - 0.1
    assert "weight" in dict(lin.named_parameters())


def test_replacing_a_parameter_after_compiling_is_seen():
    lin = nn.Linear(2, 1)
    x = np.ones((1, 2), np.float32)
    cm = graphc.compile(lin, x)
    cm(x)
    lin.weight = nn.Parameter(np.full((1, 2), 2.0, np.float32))
    np.testing.assert_allclose(cm(x), 4.0 + np.asarray(lin.bias)[None], rtol=1e-6)
    opt = graphc.optim.SGD(lin.parameters(), lr=0.1)
    step = graphc.compile_train_step(lin, nn.MSELoss(), opt, x, np.zeros((1, 1), np.float32))
    step(x, np.zeros((1, 1), np.float32))
    lin.weight = nn.Parameter(np.zeros((1, 2), np.float32))
    with pytest.raises(graphc.GraphcError, match="replaced after compiling"):
        step(x, np.zeros((1, 1), np.float32))


def test_data_has_torchs_semantics():
    lin = nn.Linear(2, 2)
    before = np.array(lin.weight)
    lin.weight.data -= 1.0  # in place, no error
    np.testing.assert_allclose(lin.weight, before - 1)
    lin.weight.data = np.zeros((2, 2), np.float32)
    assert isinstance(lin.weight, nn.Parameter) and not np.asarray(lin.weight).any()
    t = graphc.tensor([1.0, 2.0], requires_grad=True)
    assert not t.data.requires_grad
    t.data = graphc.tensor([3.0, 4.0])
    assert t.tolist() == [3.0, 4.0] and t.requires_grad


def test_hand_written_gradient_descent_under_no_grad():
    w = graphc.tensor([0.0], requires_grad=True)
    for _ in range(50):
        loss = ((w - 3.0) ** 2).sum()
        loss.backward()
        with graphc.no_grad():
            w -= 0.1 * w.grad
            w.grad.zero_()
    assert w.item() == pytest.approx(3.0, abs=1e-3)


def test_methods_eager_and_traced_agree():
    class M(nn.Module):
        def forward(self, x):
            return (x.unsqueeze(0).squeeze(0).t().t() ** 2 + x.abs().sqrt() + x.clamp(-0.5, 0.5)
                    + x.pow(3) + x.float() + x.reshape(-1).reshape(x.size(0), x.size(1)))

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    m = M()
    tx = torch.from_numpy(x)
    want = (tx ** 2 + tx.abs().sqrt() + tx.clamp(-0.5, 0.5) + tx.pow(3) + tx + tx).numpy()
    np.testing.assert_allclose(np.asarray(m(graphc.tensor(x))), want, rtol=1e-5)
    np.testing.assert_allclose(graphc.compile(m.eval(), x)(x), want, rtol=1e-5)
    t = graphc.tensor(x)
    assert t.argmax(dim=1).tolist() == tx.argmax(dim=1).tolist()
    assert t.max().item() == pytest.approx(tx.max().item())
    values, idx = t.max(dim=0)
    np.testing.assert_allclose(values.numpy(), tx.max(dim=0).values.numpy())
    assert (t > 0).float().mean().item() == pytest.approx((tx > 0).float().mean().item())


def test_recompile_reasons_are_counted_and_logged(caplog):
    import logging

    graphc.autograd.reset()
    caplog.set_level(logging.INFO, logger="graphc.recompiles")
    lin = nn.Linear(3, 1)
    for batch in (4, 4, 4, 8, 8):
        (lin(np.ones((batch, 3), np.float32)) ** 2).mean().backward()
    assert lin.weight.grad is not None  # runs the last, deferred backward
    stats = graphc.autograd.stats
    assert stats["compiles"] == 2 and stats["recompiles"] == 1, stats
    assert "changed shape: f32[4,3] -> f32[8,3]" in caplog.text
    from graphc.log import configure_from_env

    import os
    os.environ["GRAPHC_LOG"] = "recompiles"
    try:
        configure_from_env()
        assert logging.getLogger("graphc.recompiles").isEnabledFor(logging.INFO)
    finally:
        del os.environ["GRAPHC_LOG"]
        logging.getLogger("graphc.recompiles").setLevel(logging.NOTSET)
