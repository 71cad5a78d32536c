"""Convolutional networks against torch: generated Conv2d/pool configurations (reference and native
kernels), LeNet-5 and a ResNet-style block with BatchNorm (forward, every gradient, running
statistics, three SGD-momentum steps; float32 and float64), module buffers and state_dict,
errors, the saved-values ledger and the memory plan's scratch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.inspect.html_code import plan_calls
from graphc.ir import OPS, GraphBuilder, TensorType, interpret
from graphc.passes.autodiff import grad_graph
from graphc.runtime.kernels import run_kernel
from conv_cases import torch_conv2d

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-10)}


# ------------------------------------------------------------------ generated configurations


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = max(1, dh * (kh - 1) + 1 - pad[0] - pad[1]) + draw(st.integers(0, 5))
    w = max(1, dw * (kw - 1) + 1 - pad[2] - pad[3]) + draw(st.integers(0, 5))
    n = draw(st.integers(1, 3))
    algo = draw(st.sampled_from(["im2col", "direct", "wide"])) if (sh, sw) == (1, 1) else "im2col"
    chunk = draw(st.integers(0, 2)) if algo != "direct" else 0  # samples per GEMM (0: all)
    attrs = {"stride": (sh, sw), "padding": pad, "dilation": (dh, dw), "groups": groups, "algo": algo, "chunk": chunk}
    return (n, cin, h, w), (cout, cin // groups, kh, kw), draw(st.booleans()), attrs


def _one_op_grads(op, arrays, attrs, gy_seed=0):
    """(outputs, gradients of every float input) of one op through the IR's reference path."""
    b = GraphBuilder(op)
    names = [b.add_input(f"a{k}", TensorType.of(a), "param") for k, a in enumerate(arrays)]
    out = b.emit(op, names, attrs)
    y = out[0] if isinstance(out, tuple) else out
    g = b.build([y]).verify()
    joint = grad_graph(g, seeds="inputs")
    gy = np.random.default_rng(gy_seed).standard_normal(g.types[y].shape).astype(arrays[0].dtype)
    res = interpret(joint, arrays + [gy])
    return res[0], res[1:], gy


@settings(max_examples=25, deadline=None)
@given(conv_configs(), st.sampled_from([np.float32, np.float64]))
def test_conv2d_configs_match_torch_and_kernels(cfg, dt):
    xs, ws, bias, attrs = cfg
    r = np.random.default_rng(1)
    arrays = [r.standard_normal(xs).astype(dt), r.standard_normal(ws).astype(dt)] + ([r.standard_normal(ws[0]).astype(dt)] if bias else [])
    y, grads, gy = _one_op_grads("conv2d", arrays, attrs)
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    ty = torch_conv2d(ts[0], ts[1], ts[2] if bias else None, attrs)
    (ty * torch.from_numpy(gy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[dt])
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g, t.grad.numpy(), **TOL[dt])
    # the native kernels on the same arrays
    np.testing.assert_allclose(run_kernel("conv2d", arrays, attrs)[0], y, **TOL[dt])
    native = run_kernel("conv2d_backward", [gy, arrays[0], arrays[1]], {**attrs, "bias_grad": bias})
    for g, t in zip(native, ts):
        np.testing.assert_allclose(g, t.grad.numpy(), **TOL[dt])


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h, w = kh + draw(st.integers(0, 5)), kw + draw(st.integers(0, 5))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), (kh, kw), (sh, sw), (ph, pw)


@settings(max_examples=25, deadline=None)
@given(pool_configs(), st.sampled_from(["max", "avg", "avg_exclude_pad", "adaptive"]), st.sampled_from([np.float32, np.float64]))
def test_pool_configs_match_torch_and_kernels(cfg, kind, dt):
    xs, k, s, (ph, pw) = cfg
    x = np.random.default_rng(2).standard_normal(xs).astype(dt)
    tx = torch.tensor(x, requires_grad=True)
    if kind == "max":
        op, attrs = "max_pool2d", {"kernel_size": k, "stride": s, "padding": (ph, ph, pw, pw)}
        ty = TF.max_pool2d(tx, k, s, (ph, pw))
    elif kind == "adaptive":
        out = (max(1, xs[2] - k[0] + 1), max(1, xs[3] // s[1]))
        op, attrs = "adaptive_avg_pool2d", {"output_size": out}
        ty = TF.adaptive_avg_pool2d(tx, out)
    else:
        cip = kind == "avg"
        op, attrs = "avg_pool2d", {"kernel_size": k, "stride": s, "padding": (ph, ph, pw, pw), "count_include_pad": cip}
        ty = TF.avg_pool2d(tx, k, s, (ph, pw), count_include_pad=cip)
    y, (gx,), gy = _one_op_grads(op, [x], attrs)
    (ty * torch.from_numpy(gy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[dt])
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TOL[dt])
    outs = run_kernel(op, [x], attrs)
    np.testing.assert_allclose(outs[0], y, **TOL[dt])
    if kind == "max":
        back = run_kernel("max_pool2d_backward", [gy, outs[1]], {"input_size": xs[2:]})
    elif kind == "adaptive":
        back = run_kernel("adaptive_avg_pool2d_backward", [gy], {"input_size": xs[2:]})
    else:
        back = run_kernel("avg_pool2d_backward", [gy], {**attrs, "input_size": xs[2:]})
    np.testing.assert_allclose(back[0], tx.grad.numpy(), **TOL[dt])

    if kind == "max":  # the native argmax is the reference's, index for index
        np.testing.assert_array_equal(outs[1], OPS["max_pool2d"].reference(x, **OPS["max_pool2d"].normalize_attrs(attrs))[1])



@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_llvm_op_kernels_equal_numbas(dt, monkeypatch):
    """The conv and pool kernels generated as LLVM IR per node (runtime/conv_llvm.py) against
    numba's library kernels they replace (GRAPHC_OP_LLVM=0), which keep running under
    GRAPHC_LLVM=0 and NUMBA_DISABLE_JIT: wide (padding, dilation, groups, a last smaller chunk)
    and strided im2col convs, forward and every backward output; every pooling, max_pool2d's
    indices exactly (with NaN and ties)."""
    rng = np.random.default_rng(5)
    tol = dict(rtol=1e-4, atol=1e-5) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)

    def both(op, ins, attrs):
        got = {}
        for mode in ("0", "1"):
            monkeypatch.setenv("GRAPHC_OP_LLVM", mode)
            got[mode] = run_kernel(op, ins, attrs)
        for a, b in zip(got["0"], got["1"]):
            if a.dtype == np.int64 or op == "max_pool2d":
                np.testing.assert_array_equal(b, a)
            else:
                np.testing.assert_allclose(b, a, **tol, err_msg=f"{op} {attrs}")
        return got["1"]

    x = rng.standard_normal((3, 4, 7, 6)).astype(dt)
    w = rng.standard_normal((6, 2, 3, 2)).astype(dt)
    b = rng.standard_normal(6).astype(dt)
    thin = rng.standard_normal((2, 4, 2, 1)).astype(dt)  # more padding than input: a tap's span starts past the row
    wide_k = rng.standard_normal((6, 2, 3, 3)).astype(dt)
    for xx, ww, attrs in ((x, w, {"padding": (1, 0, 2, 1), "dilation": (2, 1), "groups": 2, "algo": "wide", "chunk": 2}),
                          (x, w, {"stride": (2, 3), "padding": (1, 1, 0, 2), "groups": 2, "algo": "im2col", "chunk": 2}),
                          (thin, wide_k, {"stride": (2, 1), "padding": (2, 2, 2, 0), "groups": 2, "algo": "im2col"})):
        attrs = {**attrs, "relu": True}
        (y,) = both("conv2d", [xx, ww, b], attrs)
        gy = rng.standard_normal(y.shape).astype(dt)
        for input_grad in (True, False):
            both("conv2d_backward", [gy, xx, ww, y], {**attrs, "input_grad": input_grad, "bias_grad": True})
    xp = np.round(rng.standard_normal((2, 3, 7, 8)) * 2).astype(dt)  # ties
    xp[0, 1, 2, 3] = np.nan
    for pool in ({"kernel_size": (2, 2), "stride": (2, 2)}, {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 1, 1, 1)}):
        y, idx = both("max_pool2d", [xp], pool)
        both("max_pool2d_backward", [rng.standard_normal(y.shape).astype(dt), idx], {"input_size": (7, 8)})
        for cip in (True, False):
            (a,) = both("avg_pool2d", [xp], {**pool, "count_include_pad": cip})
            both("avg_pool2d_backward", [rng.standard_normal(a.shape).astype(dt)],
                 {**pool, "count_include_pad": cip, "input_size": (7, 8)})
    (a,) = both("adaptive_avg_pool2d", [xp], {"output_size": (3, 5)})
    both("adaptive_avg_pool2d_backward", [rng.standard_normal(a.shape).astype(dt)], {"input_size": (7, 8)})

@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_max_pool_kernel_ties_nan_and_minus_inf_pick_the_references_argmax(dt):
    """Ties keep the first maximum, the first NaN wins, a window of -inf still gets an index, and
    padding never wins: the native kernel's compare-and-select matches numpy's argmax rule."""
    x = np.array([[1, 1, -np.inf, -np.inf, 2, np.nan],
                  [1, 0, -np.inf, -np.inf, np.nan, np.nan],
                  [-5, -7, 3, 3, 0, 0],
                  [-6, -5, 3, 4, -0.0, 0.0]], dt)[None, None]
    for attrs in ({"kernel_size": (2, 2), "stride": (2, 2)}, {"kernel_size": (3, 3), "stride": (1, 2), "padding": (1, 1, 1, 1)}):
        attrs = OPS["max_pool2d"].normalize_attrs(attrs)
        want = OPS["max_pool2d"].reference(x, **attrs)
        got = run_kernel("max_pool2d", [x], attrs)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


# ------------------------------------------------------------------ models


class LeNet5(nn.Module):
    """Workload C's model: the same code runs with graphc.nn and torch.nn (`nn` argument)."""

    def __init__(self):
        super().__init__()
        _lenet_layers(self, nn)

    def forward(self, x):
        return self.classifier(self.features(x))


def _lenet_layers(self, nn):
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, 10))


class TorchLeNet5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        _lenet_layers(self, torch.nn)

    forward = LeNet5.forward


class Block(nn.Module):
    """A ResNet basic block: conv-BN-relu-conv-BN, plus a 1x1 conv-BN shortcut, then relu; pooled head."""

    def __init__(self):
        super().__init__()
        _block_layers(self, nn)

    def forward(self, x):
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y))
        y = (y + self.bn3(self.short(x))).relu()
        return self.bn4(self.fc(self.pool(y).flatten(1)))


def _block_layers(self, nn, cin=3, cout=8):
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cout, 5)
        self.bn4 = nn.BatchNorm1d(5)


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        _block_layers(self, torch.nn)

    forward = Block.forward


def _twins(make, make_torch, dt):
    graphc.manual_seed(0)
    m = make()
    t = make_torch().to(torch.float64 if dt == np.float64 else torch.float32)
    if dt == np.float64:
        m.double()
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    return m, t


def _check_state(m, t, dt):
    theirs = t.state_dict()
    assert list(m.state_dict()) == list(theirs)
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(v, theirs[k].numpy(), **TOL[dt], err_msg=k)


@pytest.mark.parametrize("which,dt,mode", [("lenet", np.float32, "jit"), ("lenet", np.float64, "interpret"),
                                            ("block", np.float32, "interpret"), ("block", np.float64, "interpret")],
                         ids=["lenet-f32", "lenet-f64-interpret", "block-f32-interpret", "block-f64-interpret"])
def test_models_match_torch(which, dt, mode):
    """LeNet in float32 runs its forward and backward plans natively (conv lowerings, the fused
    relu, pooling: every native kernel of the model against torch); its train steps and eval
    forward, and the other cases, run the same plans on the reference interpreter (two native
    plan compiles instead of four; the native train step runs in bench_cnn and test_samples).
    Their native kernels are checked against the references op by op (test_runtime_kernels.py,
    float32 and float64) and kernel by kernel (test_kernels.py), and the BatchNorm CNN of
    samples/digits_cnn.py trains natively in test_samples.py: a native compile of the block's
    BatchNorm plans took minutes here."""
    make, make_t, shape = {"lenet": (LeNet5, TorchLeNet5, (6, 1, 28, 28)), "block": (Block, TorchBlock, (4, 3, 9, 9))}[which]
    r = np.random.default_rng(0)
    x = r.standard_normal(shape).astype(dt)
    y = r.integers(0, 5, shape[0]).astype(np.int64)
    m, t = _twins(make, make_t, dt)

    # forward and every parameter's gradient (compiled, training mode), running stats updated once
    cm = graphc.compile(m, x, mode=mode)
    out = cm(x)
    tout = t(torch.from_numpy(x))
    np.testing.assert_allclose(out, tout.detach().numpy(), **TOL[dt])
    gy = r.standard_normal(out.shape).astype(dt)
    cm.backward(gy)
    tout.backward(torch.from_numpy(gy))
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, dict(t.named_parameters())[name].grad.numpy(), **TOL[dt], err_msg=name)
    _check_state(m, t, dt)

    # three SGD-momentum train steps
    opt = graphc.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(t.parameters(), lr=0.05, momentum=0.9)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y, mode="interpret")
    for _ in range(3):
        loss = step(x, y)
        topt.zero_grad()
        tloss = TF.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(loss, tloss.item(), **TOL[dt])
    _check_state(m, t, dt)

    # eval mode reads the running statistics
    m.eval()
    t.eval()
    np.testing.assert_allclose(graphc.compile(m, x, mode="interpret")(x), t(torch.from_numpy(x)).detach().numpy(), **TOL[dt])


def test_batchnorm_eager_and_state_dict_round_trip():
    graphc.manual_seed(0)
    bn, tbn = nn.BatchNorm1d(4, momentum=0.3), torch.nn.BatchNorm1d(4, momentum=0.3)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for _ in range(2):
        np.testing.assert_allclose(bn(x), tbn(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert dict(bn.named_buffers()).keys() == {"running_mean", "running_var", "num_batches_tracked"}
    _check_state(bn, tbn, np.float32)
    tbn.running_mean.fill_(0.5)
    bn.load_state_dict(tbn.state_dict())
    assert bn.running_mean[0] == 0.5 and bn.num_batches_tracked == 2
    bn.register_buffer("scratch", np.zeros(3, np.float32), persistent=False)
    assert "scratch" not in bn.state_dict() and "scratch" in dict(bn.named_buffers())


def test_batchnorm_momentum_none_is_a_cumulative_average_as_torch():
    """momentum=None: running stats weight the k-th batch by 1/k (num_batches_tracked), eagerly and
    compiled (the interpreter runs the compiled plan; its native kernels are the ordinary ones)."""
    x = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float32)
    for compiled in (False, True):
        graphc.manual_seed(0)
        bn, tbn = nn.BatchNorm2d(3, momentum=None), torch.nn.BatchNorm2d(3, momentum=None)
        run = graphc.compile(bn, x, mode="interpret") if compiled else bn
        for k in range(3):
            xk = (x * (k + 1) + k).astype(np.float32)
            np.testing.assert_allclose(run(xk), tbn(torch.from_numpy(xk)).detach().numpy(), rtol=1e-5, atol=1e-5)
        _check_state(bn, tbn, np.float32)
        assert bn.num_batches_tracked == 3 and "momentum=None" in repr(bn)


def test_dropout2d_zeroes_whole_channels_and_flatten_permute_trace():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout2d(0.5)
            self.scale = nn.Parameter(np.ones(1, np.float32))

        def forward(self, x):
            return (self.drop(x) * self.scale).permute(0, 2, 3, 1).transpose(1, 2).reshape(x.shape[0], -1)

    x = np.ones((4, 6, 3, 2), np.float32)
    y = graphc.compile(M(), x)(x).reshape(4, 2, 3, 6)
    per_channel = y.transpose(0, 3, 1, 2).reshape(4, 6, 6)
    assert set(np.unique(per_channel.min(axis=2))) <= {0.0, 2.0}
    assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))
    m = M().eval()
    np.testing.assert_array_equal(graphc.compile(m, x)(x), np.ones((4, 36), np.float32))


# ------------------------------------------------------------------ errors


def _trace_error(model, x):
    with pytest.raises(graphc.TraceError) as e:
        graphc.trace(model, x)
    return str(e.value)


class _ConvPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 8, 5), nn.MaxPool2d(4)

    def forward(self, x):
        return self.pool(self.conv(x))  # the line the errors name


def test_errors_name_the_layer_the_shapes_and_the_line():
    msg = _trace_error(_ConvPool(), np.zeros((2, 4, 8, 8), np.float32))
    assert "Conv2d(3, 8, kernel_size=(5, 5)" in msg and "3 channels" in msg and "[2,4,8,8]" in msg, msg
    assert "return self.pool(self.conv(x))" in msg and "test_conv.py" in msg, msg
    msg = _trace_error(_ConvPool(), np.zeros((2, 3, 4, 8), np.float32))
    assert "Conv2d(3, 8" in msg and "f32[2,3,4,8] height 4" in msg and "smaller than the kernel" in msg, msg
    assert "return self.pool(self.conv(x))" in msg, msg
    msg = _trace_error(_ConvPool(), np.zeros((2, 3, 6, 6), np.float32))
    assert "MaxPool2d(kernel_size=4" in msg and "f32[2,8,2,2] height 2" in msg and "smaller than the kernel" in msg, msg
    assert "return self.pool(self.conv(x))" in msg, msg

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(x)  # the line the error names

    msg = _trace_error(One(), np.zeros((1, 3), np.float32))
    assert "BatchNorm1d(3" in msg and "more than 1 value per channel" in msg and "[1, 3]" in msg, msg
    assert "test_conv.py" in msg and "return self.bn(x)" in msg, msg


# ------------------------------------------------------------------ plans: ledger, scratch, kernels


def test_ledger_keeps_pool_indices_and_memory_plan_has_conv_scratch():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 2))
    x = np.zeros((2, 1, 8, 8), np.float32)
    cm = graphc.compile(m, x)
    ledger = cm.plans.ledger
    idx = [s for s in ledger if s.type.dtype == "i64"]
    assert len(idx) == 1 and "argmax indices" in idx[0].reason
    exe = next(iter(cm.executables.values()))
    conv = [k for k, n in enumerate(exe.graph.nodes) if n.op == "conv2d"]
    assert conv and exe.memory_plan.scratch.get(conv[0]), "im2col scratch is planned memory"
    assert "conv2d_backward" in cm.ir("backward_plan")


def test_eval_batchnorm_folds_into_the_conv_weights():
    """Eval mode: conv -> BatchNorm becomes one conv2d with scaled weights and a shifted bias
    (fold_conv_affine, recorded); values as torch's. A per-channel operand computed from the conv's
    own output (a batch statistic) must not fold."""
    def make(nn):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5))

    graphc.manual_seed(0)
    m, t = make(nn), make(torch.nn)
    x = np.random.default_rng(0).standard_normal((4, 3, 10, 10)).astype(np.float32)
    m(x)  # training-mode calls move the running statistics away from 0 and 1
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    m.eval(), t.eval()
    cm = graphc.compile(m, x, mode="interpret")
    np.testing.assert_allclose(cm(x), t(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    plan = cm.graph("forward_plan")
    activations = [n.op for n in plan.nodes if n.type.shape in ((4, 4, 10, 10), (4, 5, 4, 4))]
    assert activations == ["conv2d", "conv2d"], activations
    assert sum(r.fused for r in cm.plans.fusion_records if r.pattern == "conv2d+affine") == 2

    class Centered(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y - y.mean((0, 2, 3), keepdim=True)

    cm = graphc.compile(Centered().eval(), x, mode="interpret")
    assert not any(r.pattern == "conv2d+affine" for r in cm.plans.fusion_records)


def test_kernel_count_of_conv_bias_relu_pool():
    """conv2d with its bias and relu epilogue (fuse_conv_relu), then max_pool2d: two kernel calls
    (three before the fusion). The pool stays apart, and the record says why; the backward has no
    relu_backward (conv2d_backward {relu=true} masks gy itself). lower_conv chose the wide im2col
    for this stride-1 layer and says so."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
    x = np.zeros((2, 3, 10, 10), np.float32)
    cm = graphc.compile(m.eval(), x)
    exe = next(iter(cm.executables.values()))
    calls = [k for c in plan_calls(exe.source.text) for k in c.kernels]
    assert calls == ["ir_conv2d_wide_forward", "ir_max_pool2d"], calls  # (k_ir_...: LLVM op kernels)
    assert "conv2d(%input, %0.weight, %0.bias) {algo=\"wide\", relu=true}" in cm.ir("forward_plan")
    records = [r for r in cm.plans.fusion_records if r.pattern.startswith("conv2d+")]
    assert [r.fused for r in records] == [True, False] and "argmax indices" in records[1].reason
    notes = [n for s in cm.plans.stages if s.name == "lower_conv" for n in s.notes]
    assert any("algo=wide: stride 1: windows unrolled as wide rows" in n and "K = C/groups*kh*kw = 27" in n
               for n in notes), notes
    train = graphc.compile(m.train(), x)
    assert "relu" not in train.ir("backward_plan").replace("relu=true", "")


def test_batchnorm_train_step_has_no_materialized_broadcast_or_lone_elementwise_pass():
    """Training BatchNorm's primitives fuse: broadcast_to (the gradients of its means) is read
    through broadcast strides inside the consumer's loop, never copied out, and the reshaped
    weight and bias ([1,C,1,1] views of the parameters, moved to the top of the plan) no longer
    split normalise, scale, shift and relu into separate passes. Counted on the plan: every
    activation-sized node but one add is a kernel or a conv/pool op, and no sum_to runs as a pass
    of its own (B's step: 71 -> 47 kernel calls)."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6 * 6, 2))
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), graphc.optim.SGD(m.parameters(), lr=0.1), x, y,
                                     mode="interpret")
    plan = step.ir("kernels")
    big = [ln.split("= ")[1].split("(")[0] for ln in plan.splitlines()
           if "f32[4,4,6,6]" in ln.split("=")[0] and " = " in ln and not ln.startswith("    ")]
    assert "broadcast_to" not in big and "mul" not in big, big
    # one lone pass remains: the backward's last add of the mean's gradient, whose per-channel
    # operand is computed after the reduction kernel before it (a kernel does not wait for it)
    assert big.count("add") <= 1, big
    assert set(big) <= {"kernel", "conv2d", "conv2d_backward", "reshape", "add"}, big  # (reshape: a view)
    # the sums of the backward (sum_to rewritten as sum) reduce inside the kernels computing their operands
    assert not [ln for ln in plan.splitlines() if not ln.startswith("    ") and "= sum_to(" in ln]


def test_max_pool_window_wholly_in_the_padding():
    """A dilated window with every tap in the padding: -inf, as torch, and no gradient. Its argmax
    index is -1, which the backward's scatter skips (b370c9c: it wrote one element before dx).
    torch's own backward scatters such windows' gradients to indices it made up ([0, 1, 1] here)."""
    x = np.random.default_rng(0).standard_normal((1, 1, 3, 1)).astype(np.float32)

    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, kernel_size=(1, 2), stride=1, padding=(0, 1), dilation=(1, 2)).sum()

    want = torch.nn.functional.max_pool2d(torch.from_numpy(x), (1, 2), 1, (0, 1), (1, 2))
    assert torch.isinf(want).all()
    for mode in ("jit", "interpret"):
        cm = graphc.compile(Pool(), x, input_grads=True, mode=mode)
        assert cm(x) == -np.inf, mode
        assert np.array_equal(cm.backward(), np.zeros_like(x)), mode


def test_max_pool_of_minus_inf_credits_the_first_tap_inside_the_input():
    """Every tap -inf: torch's argmax is the window's first tap inside the input (a padding tap is
    never one), so its gradient goes there; jit and the reference interpreter agree with it."""
    x = np.full((1, 2, 3, 3), -np.inf, np.float32)
    x[0, 1, 1, 1] = 0.5  # one finite value: its windows credit it

    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 2, stride=1, padding=1).sum()

    t = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.max_pool2d(t, 2, stride=1, padding=1).sum().backward()
    for mode in ("jit", "interpret"):
        cm = graphc.compile(Pool(), x, input_grads=True, mode=mode)
        cm(x)
        assert np.array_equal(cm.backward(), t.grad.numpy()), mode
