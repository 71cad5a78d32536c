"""The PyTorch idioms of issue 16 against torch: layers and losses (eager and traced), containers,
nn.init, Module.apply, graphc.func, compile of a plain function, (loss, logits) forwards, several
targets, int32 labels."""
import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
import graphc.nn.functional as F

rng = np.random.default_rng(0)
X = rng.standard_normal((6, 4)).astype(np.float32)
T = rng.standard_normal((6, 4)).astype(np.float32)
P = (1 / (1 + np.exp(-X))).astype(np.float32)
B = (rng.random((6, 4)) > 0.5).astype(np.float32)

CASES = [  # (graphc module, torch module, input, target or None)
    (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2), X, None),
    (nn.ELU(0.7), torch.nn.ELU(0.7), X, None),
    (nn.Softplus(), torch.nn.Softplus(), X * 5, None),
    (nn.Softplus(beta=2.0), torch.nn.Softplus(beta=2.0), X, None),
    (nn.L1Loss(), torch.nn.L1Loss(), X, T),
    (nn.L1Loss(reduction="sum"), torch.nn.L1Loss(reduction="sum"), X, T),
    (nn.SmoothL1Loss(beta=0.5), torch.nn.SmoothL1Loss(beta=0.5), X, T),
    (nn.HuberLoss(delta=0.7), torch.nn.HuberLoss(delta=0.7), X, T),
    (nn.BCELoss(), torch.nn.BCELoss(), P, B),
    (nn.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), X * 3, B),
]


class Apply(nn.Module):
    def __init__(self, m, target):
        super().__init__()
        self.m, self.has_target = m, target is not None

    def forward(self, x, *t):
        out = self.m(x, *t) if self.has_target else self.m(x)
        return out if out.ndim == 0 else (out * out).sum()


@pytest.mark.parametrize("k", range(len(CASES)))
def test_layers_and_losses_match_torch_eager_and_traced(k):
    ours, theirs, x, t = CASES[k]
    tx = torch.from_numpy(x).requires_grad_()
    args = () if t is None else (torch.from_numpy(t),)
    tout = theirs(tx, *args)
    tloss = tout if tout.ndim == 0 else (tout * tout).sum()
    tloss.backward()
    # eager, with autograd
    gx = graphc.tensor(x, requires_grad=True)
    loss = Apply(ours, t)(gx, *(() if t is None else (t,)))
    loss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    # traced and compiled
    cm = graphc.compile(Apply(ours, t), x, *(() if t is None else (t,)), input_grads=True)
    np.testing.assert_allclose(cm(x, *(() if t is None else (t,))), tloss.item(), rtol=1e-5, atol=1e-6)
    g = cm.backward()
    np.testing.assert_allclose(g if t is None else g[0], tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_containers_apply_and_init():
    ml = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1)])
    md = nn.ModuleDict({"enc": nn.Linear(2, 2)})
    pl = nn.ParameterList([nn.Parameter(np.zeros(2, np.float32))])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.ml, self.md, self.pl = ml, md, pl

        def forward(self, x):
            x = self.md["enc"](x) + self.pl[0]
            for layer in self.ml:
                x = layer(x)
            return x

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["ml.0.weight", "ml.0.bias", "ml.1.weight", "ml.1.bias",
                                                       "md.enc.weight", "md.enc.bias", "pl.0"]
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen.count("Linear") == 3

    def init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    graphc.manual_seed(0)
    net.apply(init)
    assert all(not np.asarray(m.bias).any() for m in net.modules() if isinstance(m, nn.Linear))
    bound = np.sqrt(6 / (2 + 3))
    assert np.abs(np.asarray(ml[0].weight)).max() <= bound
    x = np.ones((4, 2), np.float32)
    with graphc.no_grad():
        np.testing.assert_allclose(graphc.compile(net.eval(), x)(x), net(x), rtol=1e-6)
    w = nn.Parameter(np.zeros((200, 100), np.float32))
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(np.asarray(w).std() - np.sqrt(2 / 100)) < 0.01


def test_func_transforms_match_torch():
    def f(w, x):
        return ((x @ w).tanh() ** 2).mean()

    w = rng.standard_normal((4, 2)).astype(np.float32)
    tw = torch.from_numpy(w)
    tx = torch.from_numpy(X)
    want = torch.func.grad(f)(tw, tx).numpy()
    got = graphc.func.grad(f)(w, X)
    assert type(got) is np.ndarray
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    value, (g0, g1) = graphc.func.value_and_grad(f, argnums=(0, 1))(graphc.tensor(w), graphc.tensor(X))
    assert isinstance(g0, graphc.Tensor)
    np.testing.assert_allclose(value.item(), f(tw, tx).item(), rtol=1e-6)
    np.testing.assert_allclose(g1.numpy(), torch.func.grad(f, argnums=1)(tw, tx).numpy(), rtol=1e-4, atol=1e-7)
    out, vjp_fn = graphc.func.vjp(lambda a: a.sigmoid() * a, X)
    ct = np.ones_like(X)
    (gx,) = vjp_fn(ct)
    tout, tvjp = torch.func.vjp(lambda a: a.sigmoid() * a, tx)
    np.testing.assert_allclose(gx, tvjp(torch.ones_like(tx))[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-6)


def test_compile_a_plain_function():
    def f(x, y):
        return (x * y).relu().sum(dim=1)

    cf = graphc.compile(f, X, T)
    np.testing.assert_allclose(cf(X, T), np.maximum(X * T, 0).sum(1), rtol=1e-6)
    assert "graph f" in cf.ir(0)


class WithLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x, y):
        logits = self.lin(x)
        return F.cross_entropy(logits, y), logits


def test_backward_of_a_loss_returned_with_logits_and_int32_labels():
    m = WithLogits()
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    cm = graphc.compile(m, X, y)
    loss, logits = cm(X, y)
    cm.backward()
    tm = torch.nn.Linear(4, 3)
    tm.load_state_dict({"weight": torch.from_numpy(np.array(m.lin.weight)), "bias": torch.from_numpy(np.array(m.lin.bias))})
    tl = torch.nn.functional.cross_entropy(tm(torch.from_numpy(X)), torch.from_numpy(y).long())
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-6)
    np.testing.assert_allclose(m.lin.weight.grad, tm.weight.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_train_step_with_two_targets():
    class TwoTargets(nn.Module):
        def forward(self, out, a, b):
            return F.mse_loss(out, a) + F.mse_loss(out, b)

    lin = nn.Linear(4, 2)
    a, b = T[:, :2].copy(), T[:, 2:].copy()
    before = np.array(lin.weight)
    with graphc.no_grad():
        want = F.mse_loss(lin(X), a).item() + F.mse_loss(lin(X), b).item()
    opt = graphc.optim.SGD(lin.parameters(), lr=0.1)
    step = graphc.compile_train_step(lin, TwoTargets(), opt, X, a, b, targets=2)
    loss = step(X, a, b)
    assert loss == pytest.approx(want, rel=1e-5) and not np.allclose(before, lin.weight)
    assert "target1" in step.ir(0)


def test_dataset_base_class():
    class Squares(graphc.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return np.float32(i), np.float32(i * i)

    xs, ys = next(iter(graphc.data.DataLoader(Squares(), batch_size=4)))
    assert xs.tolist() == [0, 1, 2, 3] and ys.tolist() == [0, 1, 4, 9]
    with pytest.raises(NotImplementedError):
        len(graphc.data.Dataset())
