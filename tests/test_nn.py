"""graphc.nn against torch.nn: every layer, loss, functional and tensor operator, eager and traced."""
import numpy as np
import pytest
import scipy.stats
import torch

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.ir import interpret
from models import SimpleNet, copy_to_torch, mlp, torch_mlp, torch_simple_net

TF = torch.nn.functional
TOL = {np.float32: 1e-5, np.float64: 1e-12}


class Fn(nn.Module):
    """Wraps a function of tensors so it can be traced."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def run_traced(module, *xs):
    g = graphc.trace(module, *xs)
    inputs = dict(zip([i.name for i in g.inputs_of_kind("input")], xs))
    outs = interpret(g, {**inputs, **dict(module.named_parameters())})
    return outs[0] if len(outs) == 1 else outs


def to_torch(a):
    return torch.from_numpy(np.array(a))


def check(got, want, dtype, what):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert np.asarray(got).dtype == dtype, f"{what}: dtype {np.asarray(got).dtype}"
    assert np.shape(got) == want.shape, f"{what}: shape {np.shape(got)} vs torch {want.shape}"
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max(initial=0)), err_msg=what)


def randn(*shape, dtype=np.float32, scale=1.0):
    return (np.random.randn(*shape) * scale).astype(dtype)


def labels(n, classes):
    return np.random.randint(0, classes, size=n).astype(np.int64)


# Each case: (name, graphc fn, torch fn, inputs(dtype)). The graphc fn runs eagerly on numpy arrays
# and traced through the interpreter; the torch fn runs on the same values.
CASES = [
    ("F.linear", lambda x, w, b: F.linear(x, w, b), TF.linear, lambda d: (randn(5, 4, dtype=d), randn(3, 4, dtype=d), randn(3, dtype=d))),
    ("F.linear_nobias", lambda x, w: F.linear(x, w), TF.linear, lambda d: (randn(5, 4, dtype=d), randn(3, 4, dtype=d))),
    ("F.relu", F.relu, TF.relu, lambda d: (randn(4, 6, dtype=d),)),
    ("F.sigmoid", F.sigmoid, torch.sigmoid, lambda d: (randn(4, 6, dtype=d, scale=40),)),
    ("F.tanh", F.tanh, torch.tanh, lambda d: (randn(4, 6, dtype=d, scale=3),)),
    ("F.softmax0", lambda x: F.softmax(x, 0), lambda x: TF.softmax(x, 0), lambda d: (randn(4, 6, dtype=d, scale=5),)),
    ("F.softmax-1", lambda x: F.softmax(x, dim=-1), lambda x: TF.softmax(x, -1), lambda d: (randn(4, 6, dtype=d, scale=50),)),
    ("F.log_softmax", lambda x: F.log_softmax(x, 1), lambda x: TF.log_softmax(x, 1), lambda d: (randn(4, 6, dtype=d, scale=50),)),
    ("F.dropout_eval", lambda x: F.dropout(x, 0.5, training=False), lambda x: TF.dropout(x, 0.5, training=False), lambda d: (randn(3, 3, dtype=d),)),
    ("F.mse_loss", F.mse_loss, TF.mse_loss, lambda d: (randn(5, 3, dtype=d), randn(5, 3, dtype=d))),
    ("F.mse_loss_sum", lambda a, b: F.mse_loss(a, b, reduction="sum"), lambda a, b: TF.mse_loss(a, b, reduction="sum"),
     lambda d: (randn(5, 3, dtype=d), randn(5, 3, dtype=d))),
    ("F.cross_entropy", F.cross_entropy, TF.cross_entropy, lambda d: (randn(6, 4, dtype=d, scale=10), labels(6, 4))),
    ("F.cross_entropy_sum", lambda x, y: F.cross_entropy(x, y, reduction="sum"), lambda x, y: TF.cross_entropy(x, y, reduction="sum"),
     lambda d: (randn(6, 4, dtype=d), labels(6, 4))),
    ("F.nll_loss", F.nll_loss, TF.nll_loss, lambda d: (randn(6, 4, dtype=d), labels(6, 4))),
    ("F.flatten", lambda x: F.flatten(x, 1), lambda x: torch.flatten(x, 1), lambda d: (randn(2, 3, 4, dtype=d),)),
    # operators inside forward
    ("add_bcast", lambda a, b: a + b, lambda a, b: a + b, lambda d: (randn(4, 3, dtype=d), randn(3, dtype=d))),
    ("sub_bcast", lambda a, b: a - b, lambda a, b: a - b, lambda d: (randn(4, 1, dtype=d), randn(1, 3, dtype=d))),
    ("mul_bcast", lambda a, b: a * b, lambda a, b: a * b, lambda d: (randn(4, 3, dtype=d), randn(4, 1, dtype=d))),
    ("div_bcast", lambda a, b: a / b, lambda a, b: a / b, lambda d: (randn(4, 3, dtype=d), randn(3, dtype=d) + 3)),
    ("scalars", lambda x: (x + 2) * 0.5 - 1 / (x * x + 1), lambda x: (x + 2) * 0.5 - 1 / (x * x + 1), lambda d: (randn(4, 3, dtype=d),)),
    ("rscalars", lambda x: 3 - x / 7 + 2 * x, lambda x: 3 - x / 7 + 2 * x, lambda d: (randn(4, 3, dtype=d),)),
    ("reuse", lambda x: (x + x) + (x + x) * x, lambda x: (x + x) + (x + x) * x, lambda d: (randn(2, 3, dtype=d),)),
    ("matmul", lambda a, b: a @ b, lambda a, b: a @ b, lambda d: (randn(4, 3, dtype=d), randn(3, 5, dtype=d))),
    ("neg", lambda x: -x, lambda x: -x, lambda d: (randn(4, 3, dtype=d),)),
    ("T", lambda x: x.T, lambda x: x.T, lambda d: (randn(4, 3, dtype=d),)),
    ("T_matmul", lambda a, b: a.T @ b, lambda a, b: a.T @ b, lambda d: (randn(4, 3, dtype=d), randn(4, 2, dtype=d))),
    ("reshape", lambda x: x.reshape(2, -1), lambda x: x.reshape(2, -1), lambda d: (randn(4, 3, dtype=d),)),
    ("reshape_tuple", lambda x: x.reshape((3, 4)), lambda x: x.reshape((3, 4)), lambda d: (randn(4, 3, dtype=d),)),
    ("view", lambda x: x.view(12), lambda x: x.view(12), lambda d: (randn(4, 3, dtype=d),)),
    ("flatten", lambda x: x.flatten(), lambda x: x.flatten(), lambda d: (randn(2, 3, 4, dtype=d),)),
    ("flatten1", lambda x: x.flatten(1), lambda x: x.flatten(1), lambda d: (randn(2, 3, 4, dtype=d),)),
    ("flatten_mid", lambda x: x.flatten(0, 1), lambda x: x.flatten(0, 1), lambda d: (randn(2, 3, 4, dtype=d),)),
    ("sum", lambda x: x.sum(), lambda x: x.sum(), lambda d: (randn(4, 3, dtype=d),)),
    ("sum_dim", lambda x: x.sum(dim=1), lambda x: x.sum(dim=1), lambda d: (randn(4, 3, dtype=d),)),
    ("sum_dim_keep", lambda x: x.sum(0, keepdim=True), lambda x: x.sum(0, keepdim=True), lambda d: (randn(4, 3, dtype=d),)),
    ("sum_dims", lambda x: x.sum(dim=(0, 2)), lambda x: x.sum(dim=(0, 2)), lambda d: (randn(2, 3, 4, dtype=d),)),
    ("sum_neg_keep", lambda x: x.sum(-1, keepdim=True), lambda x: x.sum(-1, keepdim=True), lambda d: (randn(2, 3, 4, dtype=d),)),
    ("mean", lambda x: x.mean(), lambda x: x.mean(), lambda d: (randn(4, 3, dtype=d),)),
    ("mean_dim", lambda x: x.mean(dim=0), lambda x: x.mean(dim=0), lambda d: (randn(4, 3, dtype=d),)),
    ("mean_keep", lambda x: x.mean(1, keepdim=True), lambda x: x.mean(1, keepdim=True), lambda d: (randn(4, 3, dtype=d),)),
    ("center", lambda x: x - x.mean(dim=1, keepdim=True), lambda x: x - x.mean(dim=1, keepdim=True), lambda d: (randn(4, 3, dtype=d),)),
    ("methods", lambda x: x.exp().log() + x.relu() + x.sigmoid() * x.tanh(),
     lambda x: x.exp().log() + x.relu() + x.sigmoid() * x.tanh(), lambda d: (randn(4, 3, dtype=d),)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, fn, tfn, make", CASES, ids=[c[0] for c in CASES])
def test_functional_and_operators_match_torch(name, fn, tfn, make, dtype):
    xs = make(dtype)
    want = tfn(*map(to_torch, xs))
    # eager: a Module's forward sees numpy arrays with torch's tensor methods
    check(Fn(fn)(*xs), want, dtype, f"{name} eager")
    check(run_traced(Fn(fn), *xs), want, dtype, f"{name} traced")
    if name.startswith("F."):  # functional calls work on plain numpy arrays, outside any module
        check(fn(*xs), want, dtype, f"{name} eager, no module")


# ------------------------------------------------------------------ layers


def layer_pairs():
    return [
        ("Linear", lambda: nn.Linear(4, 3), lambda: torch.nn.Linear(4, 3), lambda d: (randn(5, 4, dtype=d),)),
        ("Linear_nobias", lambda: nn.Linear(4, 3, bias=False), lambda: torch.nn.Linear(4, 3, bias=False), lambda d: (randn(5, 4, dtype=d),)),
        ("ReLU", nn.ReLU, torch.nn.ReLU, lambda d: (randn(4, 5, dtype=d),)),
        ("Sigmoid", nn.Sigmoid, torch.nn.Sigmoid, lambda d: (randn(4, 5, dtype=d, scale=10),)),
        ("Tanh", nn.Tanh, torch.nn.Tanh, lambda d: (randn(4, 5, dtype=d),)),
        ("Softmax", lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), lambda d: (randn(4, 5, dtype=d),)),
        ("LogSoftmax", lambda: nn.LogSoftmax(dim=1), lambda: torch.nn.LogSoftmax(dim=1), lambda d: (randn(4, 5, dtype=d),)),
        ("Dropout_eval", lambda: nn.Dropout(0.3).eval(), lambda: torch.nn.Dropout(0.3).eval(), lambda d: (randn(4, 5, dtype=d),)),
        ("Flatten", nn.Flatten, torch.nn.Flatten, lambda d: (randn(2, 3, 4, dtype=d),)),
        ("Identity", nn.Identity, torch.nn.Identity, lambda d: (randn(2, 3, dtype=d),)),
        ("Sequential", lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2), nn.Sigmoid()),
         lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2), torch.nn.Sigmoid()),
         lambda d: (randn(5, 3, 4, dtype=d),)),
        ("MSELoss", nn.MSELoss, torch.nn.MSELoss, lambda d: (randn(5, 3, dtype=d), randn(5, 3, dtype=d))),
        ("MSELoss_sum", lambda: nn.MSELoss(reduction="sum"), lambda: torch.nn.MSELoss(reduction="sum"),
         lambda d: (randn(5, 3, dtype=d), randn(5, 3, dtype=d))),
        ("CrossEntropyLoss", nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, lambda d: (randn(7, 4, dtype=d, scale=5), labels(7, 4))),
        ("NLLLoss", nn.NLLLoss, torch.nn.NLLLoss, lambda d: (randn(7, 4, dtype=d), labels(7, 4))),
    ]


LAYERS = layer_pairs()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, make, tmake, inputs", LAYERS, ids=[c[0] for c in LAYERS])
def test_layers_match_torch(name, make, tmake, inputs, dtype):
    m, tm = make().to(dtype), tmake()
    tm.load_state_dict({k: to_torch(v) for k, v in m.state_dict().items()})
    tm = tm.to(torch.float64 if dtype == np.float64 else torch.float32)
    xs = inputs(dtype)
    want = tm(*map(to_torch, xs))
    check(m(*xs), want, dtype, f"{name} eager")
    check(run_traced(m, *xs), want, dtype, f"{name} traced")


def test_simple_net_and_mlp_match_torch_eager_and_traced():
    for m, tm, x in [(SimpleNet().eval(), torch_simple_net(), randn(8, 10)),
                     (mlp((12, 9, 7, 3)).eval(), torch_mlp((12, 9, 7, 3)), randn(6, 12))]:
        tm = copy_to_torch(m, tm).eval()
        want = tm(to_torch(x))
        check(m(x), want, np.float32, "eager")
        check(run_traced(m, x), want, np.float32, "traced")


def test_linear_init_matches_torch_distribution():
    m = nn.Linear(100, 300)
    tm = torch.nn.Linear(100, 300)
    w, b = m.weight, m.bias
    assert w.shape == (300, 100) and b.shape == (300,) and w.dtype == b.dtype == np.float32
    bound = 1 / np.sqrt(100)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound  # fills the range, not a narrower one
    tw = tm.weight.detach().numpy().ravel()
    # same distribution as torch's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
    assert scipy.stats.ks_2samp(w.ravel(), tw).pvalue > 1e-3
    assert scipy.stats.kstest(w.ravel(), scipy.stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(np.concatenate([nn.Linear(100, 300).bias for _ in range(5)]),
                              scipy.stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
    assert nn.Linear(3, 2, dtype=np.float64).weight.dtype == np.float64


def test_init_is_reproducible_under_manual_seed():
    graphc.manual_seed(7)
    a = SimpleNet().state_dict()
    graphc.manual_seed(7)
    b = SimpleNet().state_dict()
    c = SimpleNet().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])


# ------------------------------------------------------------------ dropout


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_train_statistics(p):
    x = np.random.rand(200, 500).astype(np.float32) + 0.5
    d = nn.Dropout(p)
    y = d(x)
    zeros = (y == 0).mean()
    assert abs(zeros - p) < 0.01, zeros
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    # traced: same statistics from the counter-based mask
    g = graphc.trace(d, x)
    yt = interpret(g, [x, np.int64(123)])[0]
    assert abs((yt == 0).mean() - p) < 0.01
    np.testing.assert_allclose(yt[yt != 0], x[yt != 0] / (1 - p), rtol=1e-6)


def test_dropout_reproducible_under_manual_seed_and_fresh_each_call():
    x = np.ones((20, 30), np.float32)
    d = nn.Dropout(0.5)
    graphc.manual_seed(3)
    a, b = d(x), d(x)
    graphc.manual_seed(3)
    a2, b2 = d(x), d(x)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(a, b)
    graphc.manual_seed(4)
    assert not np.array_equal(d(x), a)


def test_dropout_edge_probabilities_and_eval():
    x = randn(6, 7)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    np.testing.assert_array_equal(nn.Dropout(1.0)(x), np.zeros_like(x))
    np.testing.assert_array_equal(nn.Dropout(0.7).eval()(x), x)
    np.testing.assert_array_equal(F.dropout(x, 0.7, training=False), x)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    assert [n.op for n in graphc.trace(nn.Dropout(0.3).eval(), x).nodes] == []


# ------------------------------------------------------------------ module API


def test_module_traversal_matches_torch():
    m, tm = SimpleNet(), torch_simple_net()
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert list(m.state_dict()) == list(tm.state_dict())
    assert [type(c).__name__ for c in m.children()] == [type(c).__name__ for c in tm.children()]
    assert [type(c).__name__ for c in list(m.modules())[1:]] == [type(c).__name__ for c in list(tm.modules())[1:]]
    assert [n for n, _ in m.named_modules()] == [n for n, _ in tm.named_modules()]
    assert [n for n, _ in m.named_children()] == [n for n, _ in tm.named_children()]
    assert [p.shape for p in m.parameters()] == [tuple(p.shape) for p in tm.parameters()]
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    seq, tseq = mlp((5, 4, 3), dropout=0.1), torch_mlp((5, 4, 3), dropout=0.1)
    assert list(seq.state_dict()) == list(tseq.state_dict())
    assert len(seq) == len(tseq) and isinstance(seq[0], nn.Linear) and isinstance(seq[-1], nn.Linear)


def test_repr_matches_torch():
    assert repr(SimpleNet()).replace("SimpleNet", "X") == repr(torch_simple_net()).replace("TorchSimpleNet", "X")
    assert repr(mlp((5, 4, 3), dropout=0.1)) == repr(torch_mlp((5, 4, 3), dropout=0.1))
    for name, make, tmake, _ in LAYERS:
        if name != "Dropout_eval":
            assert repr(make()) == repr(tmake()), name


def test_weights_move_both_ways_with_torch():
    m, tm = SimpleNet(), torch_simple_net()
    m.load_state_dict(tm.state_dict())  # torch tensors in
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v.numpy())
    m2 = SimpleNet()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m2.state_dict().items()})  # numpy out
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(tm.state_dict()[k].numpy(), v)
    m.load_state_dict(m2.state_dict())  # numpy in
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v)


def test_load_state_dict_is_in_place_and_checks():
    m = SimpleNet()
    w = m.linear1.weight
    sd = {k: v + 1 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert m.linear1.weight is w and np.array_equal(w, sd["linear1.weight"])
    sd = m.state_dict()
    sd["linear1.weight"][...] = 0  # state_dict returns copies
    assert not np.array_equal(m.linear1.weight, 0)
    with pytest.raises(graphc.GraphcError, match=r"missing keys \['linear2.bias'\], unexpected keys \['extra'\]"):
        m.load_state_dict({**{k: v for k, v in sd.items() if k != "linear2.bias"}, "extra": np.zeros(1)})
    m.load_state_dict({"linear1.bias": np.zeros(20)}, strict=False)
    assert not m.linear1.bias.any()
    with pytest.raises(graphc.ShapeError, match=r"'linear1.weight' expected shape \[20, 10\], got \[10, 20\]"):
        m.load_state_dict({**sd, "linear1.weight": np.zeros((10, 20))})


def test_train_eval_flags_are_recursive():
    m = SimpleNet()
    assert m.training and all(c.training for c in m.modules())
    assert m.eval() is m and not any(c.training for c in m.modules())
    assert m.train() is m and all(c.training for c in m.modules())
    m.train(False)
    assert not m.dropout.training


def test_dtype_conversion():
    m = SimpleNet()
    x = randn(3, 10)
    ref = m.eval()(x)
    assert m.double() is m and all(p.dtype == np.float64 for p in m.parameters())
    out = m(x.astype(np.float64))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert m.float() is m and all(p.dtype == np.float32 for p in m.parameters())
    assert all(p.dtype == np.float64 for p in m.to(np.float64).parameters())
    assert graphc.trace(m, x.astype(np.float64)).input_by_name["linear1.weight"].type.dtype == "f64"


def test_parameter_basics():
    p = nn.Parameter([[1, 2], [3, 4]])
    assert p.dtype == np.float32 and p.grad is None and p.requires_grad
    assert nn.Parameter(np.zeros(3)).dtype == np.float64
    assert nn.Parameter(np.zeros(3), dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Parameter(np.zeros(3), dtype=np.int64)
    q = p * 2
    assert type(q) is graphc.Tensor and q.requires_grad  # arithmetic on a parameter is recorded, as in torch
    p[...] = q
    assert isinstance(p, nn.Parameter) and p[1, 1] == 8
    assert p.data.base is p or np.shares_memory(p.data, p)
    assert "Parameter containing" in repr(p)
    for lay in (nn.Linear(2, 3), nn.Linear(2, 3, dtype=np.float64)):
        assert all(q.grad is None for q in lay.parameters())


def test_module_assignment_rules():
    class NoInit(nn.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match="super\\(\\).__init__\\(\\)"):
        NoInit()
    m = nn.Module()
    m.a = nn.Linear(2, 2)
    m.w = nn.Parameter(np.zeros(2))
    assert [n for n, _ in m.named_parameters()] == ["w", "a.weight", "a.bias"]
    with pytest.raises(TypeError, match="cannot assign 'builtins.int' as parameter 'w'"):
        m.w = 3  # as torch: a parameter's name takes a Parameter or None
    m.w = None
    assert [n for n, _ in m.named_parameters()] == ["a.weight", "a.bias"] and m.w is None
    del m.a
    assert list(m.named_parameters()) == []
    with pytest.raises(NotImplementedError, match="must define forward"):
        m(np.zeros(2))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope


def test_eager_outputs():
    out = SimpleNet().eval()(randn(2, 10))
    assert type(out) is graphc.Tensor and out.requires_grad  # computed from parameters: recorded
    with graphc.no_grad():
        assert not SimpleNet().eval()(randn(2, 10)).requires_grad
    loss = nn.CrossEntropyLoss()(randn(3, 4), labels(3, 4))
    assert type(loss) is np.ndarray and loss.shape == ()  # numpy in, no parameters: numpy out
    # numpy functions still work on eager values inside forward
    m = Fn(lambda x: np.maximum(x, 0).sum(dim=1))
    np.testing.assert_allclose(m(np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)), [1, 7])


def test_labels_must_be_integers():
    with pytest.raises(graphc.TraceError, match="integer class indices"):
        F.cross_entropy(randn(3, 4), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(graphc.GraphcError, match="class label out of range"):
        F.cross_entropy(randn(3, 4), np.array([0, 1, 4]))


class UsesParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.random.randn(3, 4))

    def forward(self, x, k):
        colsum = F.relu(self.w).sum(dim=0, keepdim=True)  # parameters have torch's methods too
        return {"y": x @ self.w.T + colsum.mean(dim=1), "k": k + 1}


def test_parameters_inside_eager_forward_have_tensor_methods():
    m = UsesParams()
    x, k = randn(2, 4, dtype=np.float64), np.array([1, 2])
    out = m(x, k)
    assert type(out["y"]) is graphc.Tensor and type(out["k"]) is np.ndarray  # dict outputs are unwrapped too
    want = x @ m.w.T + np.maximum(m.w, 0).sum(0).mean()
    np.testing.assert_allclose(out["y"], want, rtol=1e-12)
    assert out["k"].dtype == np.int64 and out["k"].tolist() == [2, 3]
    assert type(m.w) is nn.Parameter  # outside forward it is the Parameter itself


def test_float_scalars_never_truncate_integer_tensors():
    class AddHalf(nn.Module):
        def forward(self, k):
            return k + 0.5

    k = np.array([1, 2])
    with pytest.raises(graphc.TraceError, match=r"scalar 0.5 cannot join an integer tensor \(i64\[2\]\)"):
        AddHalf()(k)
    with pytest.raises(graphc.TraceError, match=r"scalar 0.5 cannot join an integer tensor \(i64\[2\]\)"):
        graphc.trace(AddHalf(), k)


def test_reduction_dim_conventions():
    x = randn(2, 3)
    tx = to_torch(x)
    m = Fn(lambda a: (a.sum(dim=()), a.sum(dim=[0, 1]), a.sum(np.int64(1)), a.sum().sum(0), a.mean(dim=(-1,))))
    for got, want in zip(m(x), (tx.sum(dim=()), tx.sum(dim=[0, 1]), tx.sum(1), tx.sum().sum(0), tx.mean(dim=(-1,)))):
        check(got, want, np.float32, "reduction")
    for got, want in zip(run_traced(m, x), (tx.sum(dim=()), tx.sum(dim=[0, 1]), tx.sum(1), tx.sum().sum(0), tx.mean(dim=(-1,)))):
        check(got, want, np.float32, "traced reduction")
    # numpy's own functions keep numpy's meaning of axis on eager values
    e = Fn(lambda a: (np.sum(a, axis=()), np.mean(a, axis=0), np.sum(a)))(x)
    check(e[0], x, np.float32, "np.sum axis=()")
    check(e[1], x.mean(0), np.float32, "np.mean")
    check(e[2], x.sum(), np.float32, "np.sum")


def test_in_place_updates_keep_the_parameter():
    lin = nn.Linear(2, 2)
    for p in lin.parameters():
        p.grad = np.ones_like(p)
        before = p.copy()
        q = p
        q -= 0.5 * q.grad
        assert q is p and isinstance(q, nn.Parameter) and q.grad is not None
        np.testing.assert_allclose(p, before - 0.5)


def test_sequential_slices_and_copies():
    import copy
    import pickle

    seq = mlp((4, 3, 3, 2))
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and [n for n, _ in head.named_parameters()] == ["0.weight", "0.bias"]
    for clone in (copy.deepcopy(seq), pickle.loads(pickle.dumps(seq))):
        x = randn(2, 4)
        np.testing.assert_array_equal(clone(x), seq(x))
        assert all(isinstance(p, nn.Parameter) and p is not q for p, q in zip(clone.parameters(), seq.parameters()))
