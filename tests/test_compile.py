"""graphc.compile and graphc.compile_train_step against PyTorch, in jit and interpret mode, float32 and float64."""
import tracemalloc

import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.ir.ops import dropout_mask
from graphc.runtime import InputError
from models import SimpleNet, assert_same_weights, copy_to_torch, mlp, torch_mlp, torch_simple_net, train_like_torch

MODES = ["jit", "interpret"]
SIZES = (10, 16, 8, 3)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def data(batch=8, dtype=np.float32, features=10, out=3, labels=False, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((batch, features)).astype(dtype)
    y = r.integers(0, out, batch).astype(np.int64) if labels else r.standard_normal((batch, out)).astype(dtype)
    return x, y


def twins(dtype=np.float32, sizes=SIZES):
    graphc.manual_seed(1)
    m = mlp(sizes).to(dtype)
    return m, copy_to_torch(m, torch_mlp(sizes))


def assert_close(a, b, dtype=np.float32):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL[dtype])


# ------------------------------------------------------------------ forward and backward


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_mlp_forward_backward_match_torch(mode, dtype):
    m, tm = twins(dtype)
    x, _ = data(dtype=dtype)
    cm = graphc.compile(m, x, mode=mode)
    y = cm(x)
    ty = tm(torch.from_numpy(x))
    assert_close(y, ty.detach().numpy(), dtype)
    gy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    assert cm.backward(gy) is None  # no input gradients with the default pipeline
    ty.backward(torch.from_numpy(gy))
    for (name, p), tp in zip(m.named_parameters(), tm.parameters()):
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert_close(p.grad, tp.grad.numpy(), dtype)


def test_jit_and_interpret_agree_on_simple_net_with_dropout():
    x, _ = data(batch=64, out=1)
    results = []
    for mode in MODES:
        graphc.manual_seed(5)
        m = SimpleNet()
        cm = graphc.compile(m, x, mode=mode)
        graphc.manual_seed(7)
        y = cm(x)
        cm.backward(np.ones_like(y))
        results.append([y] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert_close(a, b)


def test_simple_net_eval_matches_torch():
    graphc.manual_seed(0)
    m = SimpleNet().eval()
    tm = copy_to_torch(m, torch_simple_net()).eval()
    x, _ = data(batch=64, out=1)
    cm = graphc.compile(m, x)
    assert not cm.training and "remove_dropout" in cm.stages
    assert_close(cm(x), tm(torch.from_numpy(x)).detach().numpy())
    with pytest.raises(graphc.GraphcError, match="eval mode"):
        cm.backward(np.ones((64, 1), np.float32))


def test_gradients_accumulate_like_torch():
    m, tm = twins()
    x, _ = data()
    cm = graphc.compile(m, x)
    gy = np.ones((8, 3), np.float32)
    for _ in range(2):
        cm(x)
        cm.backward(gy)
        tm(torch.from_numpy(x)).backward(torch.from_numpy(gy))
    for p, tp in zip(m.parameters(), tm.parameters()):
        assert_close(p.grad, tp.grad.numpy())
    with pytest.raises(graphc.GraphcError, match="forward call first"):
        cm.backward(gy)  # once per forward


class LossNet(nn.Module):
    """A module whose forward returns the loss: compiled the same way."""

    def __init__(self):
        super().__init__()
        self.net = mlp(SIZES)

    def forward(self, x, y):
        return F.cross_entropy(self.net(x), y)


def test_loss_module_with_eager_optimizer_matches_torch():
    graphc.manual_seed(2)
    model = LossNet()
    tm = copy_to_torch(model.net, torch_mlp(SIZES))
    opt = graphc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    x, y = data(labels=True)
    cm = graphc.compile(model, x, y)
    for _ in range(3):
        loss = cm(x, y)
        assert loss.shape == () and loss.dtype == np.float32
        cm.backward()
        opt.step()
        opt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert float(loss) == pytest.approx(tloss.item(), rel=1e-5)
    for p, tp in zip(model.parameters(), tm.parameters()):
        assert_close(p, tp.detach().numpy())


# ------------------------------------------------------------------ dropout


def test_dropout_mask_reproducible_scaled_and_reused_by_backward():
    graphc.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.25))
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    cm = graphc.compile(m, x)
    graphc.manual_seed(11)
    seed = graphc.random.next_seed()
    graphc.manual_seed(11)
    y1 = cm(x)
    gy = np.random.default_rng(1).standard_normal(y1.shape).astype(np.float32)
    cm.backward(gy)
    graphc.manual_seed(11)
    assert np.array_equal(cm(x), y1)  # reproducible under manual_seed
    assert not np.array_equal(cm(x), y1)  # a fresh seed per call

    mask = dropout_mask(seed, 0.25, 0, (16, 32), np.float32)
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert 0.6 < (mask > 0).mean() < 0.9
    h = x @ m[0].weight.T + m[0].bias
    assert_close(y1, h * mask)
    # the backward applies the same mask: dW = (gy * mask)^T x
    assert_close(m[0].weight.grad, (gy * mask).T @ x)
    assert_close(m[0].bias.grad, (gy * mask).sum(0))


def test_train_and_eval_switch_dropout():
    graphc.manual_seed(0)
    m = SimpleNet()
    x, _ = data(batch=64, out=1)
    cm = graphc.compile(m, x)
    assert cm.training
    a, b = cm(x), cm(x)
    assert not np.array_equal(a, b)
    cm.eval()
    assert not m.training
    c, d = cm(x), cm(x)
    assert np.array_equal(c, d)
    tm = copy_to_torch(m, torch_simple_net()).eval()
    assert_close(c, tm(torch.from_numpy(x)).detach().numpy())
    cm.train()
    assert m.training and not np.array_equal(cm(x), c)


# ------------------------------------------------------------------ train steps


def torch_optimizer(kind, params, hyper):
    return torch.optim.SGD(params, **hyper) if kind == "sgd" else torch.optim.Adam(params, **hyper)


def graphc_optimizer(kind, params, hyper):
    return graphc.optim.SGD(params, **hyper) if kind == "sgd" else graphc.optim.Adam(params, **hyper)


OPTIMIZERS = [
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.02)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind, hyper", OPTIMIZERS, ids=["sgd-nesterov-wd", "sgd-dampening-wd", "adam-wd"])
def test_ten_train_steps_match_torch(kind, hyper, dtype):
    x, y = data(dtype=dtype, labels=True)
    m, tm = twins(dtype)
    opt = graphc_optimizer(kind, m.parameters(), hyper)
    topt = torch_optimizer(kind, tm.parameters(), hyper)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    # the interpreter runs the same plan on a second copy of the weights
    m2, _ = twins(dtype)
    opt2 = graphc_optimizer(kind, m2.parameters(), hyper)
    step2 = graphc.compile_train_step(m2, nn.CrossEntropyLoss(), opt2, x, y, mode="interpret")
    state_arrays = [a for p in m.parameters() for a in opt.state_of(p).values() if isinstance(a, np.ndarray)]
    for k in range(10):
        loss = step(x, y)
        loss2 = step2(x, y)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        assert isinstance(loss, float)
        assert loss == pytest.approx(tloss.item(), rel=1e-5 if dtype == np.float32 else 1e-10)
        assert loss2 == pytest.approx(loss, rel=1e-5 if dtype == np.float32 else 1e-10)
    assert opt.step_count == 10
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for (name, p), p2, tp in zip(m.named_parameters(), m2.parameters(), tm.parameters()):
        np.testing.assert_allclose(p, tp.detach().numpy(), **tol, err_msg=name)
        np.testing.assert_allclose(p2, p, **tol, err_msg=name)
        state, tstate = opt.state_of(p), topt.state[tp]
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if key in tstate:
                np.testing.assert_allclose(state[key], tstate[key].numpy(), **tol, err_msg=f"{name} {key}")
    # the optimizer's arrays were updated in place, never replaced
    assert all(any(a is b for b in state_arrays)
               for p in m.parameters() for a in opt.state_of(p).values() if isinstance(a, np.ndarray))


def test_train_step_with_dropout_matches_torch_with_the_same_masks():
    graphc.manual_seed(3)
    m = SimpleNet()
    tm = copy_to_torch(m, torch_simple_net())
    opt = graphc.optim.SGD(m.parameters(), lr=0.1, momentum=0.5)
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.5)
    x, y = data(batch=64, out=1)
    step = graphc.compile_train_step(m, nn.MSELoss(), opt, x, y)
    graphc.manual_seed(42)
    seeds = [graphc.random.next_seed() for _ in range(5)]
    graphc.manual_seed(42)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for s in seeds:
        loss = step(x, y)
        mask = torch.from_numpy(dropout_mask(s, 0.5, 0, (64, 20), np.float32))
        out = tm.linear2(torch.relu(tm.linear1(tx)) * mask)
        tloss = torch.nn.functional.mse_loss(out, ty)
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-5)
    for p, tp in zip(m.parameters(), tm.parameters()):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_train_step_state_is_the_models_and_optimizers():
    m, _ = twins()
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    x, y = data(labels=True)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    before = m.state_dict()
    eager_before = m(x)
    step(x, y)
    after = m.state_dict()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    assert opt.step_count == 1
    assert not np.array_equal(m(x), eager_before)
    # an eager step in between is seen by the compiled one, and vice versa
    cm = graphc.compile(m, x)
    cm(x)
    cm.backward(np.ones((8, 3), np.float32))
    opt.step()
    opt.zero_grad()
    assert opt.step_count == 2
    w = m[0].weight.copy()
    step(x, y)
    assert opt.step_count == 3 and not np.array_equal(w, m[0].weight)


def test_lr_change_respecialises():
    m, _ = twins()
    opt = graphc.optim.SGD(m.parameters(), lr=0.0)
    x, y = data(labels=True)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    w = m[0].weight.copy()
    step(x, y)
    assert np.array_equal(w, m[0].weight)  # lr 0: nothing moves
    opt.param_groups[0]["lr"] = 0.5
    step(x, y)
    assert not np.array_equal(w, m[0].weight)


# ------------------------------------------------------------------ signatures and bad inputs


def test_other_batch_sizes_specialise_and_are_cached():
    m, tm = twins()
    x, y = data(labels=True)
    cm = graphc.compile(m, x)
    for batch in (8, 5, 8, 5):
        xb, _ = data(batch=batch)
        assert_close(cm(xb), tm(torch.from_numpy(xb)).detach().numpy())
    assert len(cm._specs) == 2
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    xb, yb = data(batch=5, labels=True)
    assert isinstance(step(xb, yb), float) and isinstance(step(x, y), float)
    assert len(step._specs) == 2 and opt.step_count == 2


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((8, 11), np.float32), r"expected size 10 in dim 1.*got 11"),
    (np.zeros((8, 10, 1), np.float32), r"expected rank 2.*got rank 3"),
    (np.zeros((8, 10), np.float64), r"expected dtype float32.*got float64"),
    (np.zeros(10, np.float32), r"expected rank 2.*got rank 1"),
])
def test_bad_inputs_name_expected_and_actual(bad, msg):
    m, _ = twins()
    x, y = data(labels=True)
    cm = graphc.compile(m, x)
    with pytest.raises(InputError, match=msg):
        cm(bad)
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    w = m[0].weight.copy()
    with pytest.raises(InputError, match=msg):
        step(bad, y)
    with pytest.raises(InputError, match="dtype"):
        step(x, y.astype(np.int32))
    assert np.array_equal(w, m[0].weight) and opt.step_count == 0


def test_bad_labels_and_arguments():
    m, _ = twins()
    x, y = data(labels=True)
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    with pytest.raises(graphc.GraphcError, match="out of range"):
        step(x, np.full(8, 7, np.int64))
    with pytest.raises(InputError, match="takes 2 inputs"):
        step(x)
    other = graphc.optim.SGD(mlp(SIZES).parameters(), lr=0.1)
    with pytest.raises(graphc.GraphcError, match="are not the model's"):
        graphc.compile_train_step(m, nn.CrossEntropyLoss(), other, x, y)


def test_nan_flows_through_compiled_forward():
    m, tm = twins()
    x, _ = data()
    x[2, 3] = np.nan
    cm = graphc.compile(m, x)
    y = cm(x)
    ty = tm(torch.from_numpy(x)).detach().numpy()
    assert np.array_equal(np.isnan(y), np.isnan(ty)) and np.isnan(y[2]).all()


# ------------------------------------------------------------------ inspection and memory


def test_inspection_surface():
    m, _ = twins()
    x, y = data(labels=True)
    opt = graphc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    assert step.stages[0] == "traced" and step.stages[-3:] == ["train_step_plan", "kernels", "threads"]
    assert "sgd_update" in step.ir("train_step_plan") and step.graph(-1) is step.plans.train_step
    exe = step.executables["train_step_plan"]
    assert exe.compile_info.status in ("compiled", "cached", "reused") and step.compile_info is exe.compile_info
    text = step.memory_plan()
    assert "peak" in text and "train_step_plan" in text
    # every update lands in the param / state array itself, none is computed aside
    mp = exe.memory_plan
    updates = [o.value for o in step.graph(-1).outputs if o.label.startswith("update:")]
    assert not mp.update_copies and all(mp.slots[v].kind == "inplace" for v in updates)
    assert "linear_relu" in step.fusion_report()
    assert "+" in step.diff("traced", "train_step_plan")
    assert "autodiff" in step.passes_report() or "build_train_step" in step.passes_report()
    cm = graphc.compile(m, x)
    assert set(cm.executables) == {"forward_plan", "backward_plan"}
    assert "saved" in cm.saved_report()
    assert "backward_plan" in cm.memory_plan()


def test_train_step_steady_state_reuses_buffers():
    m, _ = twins()
    x, y = data(labels=True)
    opt = graphc.optim.Adam(m.parameters(), lr=0.01)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    exe = step.executables["train_step_plan"]
    arenas = dict(exe.arenas)
    params = [p.__array_interface__["data"][0] for p in m.parameters()]
    step(x, y)
    tracemalloc.start()
    snap = tracemalloc.take_snapshot()
    for _ in range(50):
        step(x, y)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap, "filename") if s.size_diff > 0)
    tracemalloc.stop()
    assert grown < 8192, grown  # one activation array per step would be 50 x 2 KB at least
    assert all(exe.arenas[k] is v for k, v in arenas.items())
    assert params == [p.__array_interface__["data"][0] for p in m.parameters()]


@pytest.mark.parametrize("mode", MODES)
def test_input_gradients_on_request(mode):
    m, tm = twins()
    x, _ = data()
    cm = graphc.compile(m, x, mode=mode, input_grads=True)
    gy = np.random.default_rng(4).standard_normal((8, 3)).astype(np.float32)
    cm(x)
    gx = cm.backward(gy)
    tx = torch.from_numpy(x).requires_grad_()
    tm(tx).backward(torch.from_numpy(gy))
    assert_close(gx, tx.grad.numpy())
    for p, tp in zip(m.parameters(), tm.parameters()):
        assert_close(p.grad, tp.grad.numpy())


def test_second_process_loads_the_train_step_from_cache(cache_dir):
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, time
        t0 = time.perf_counter()
        import numpy as np, graphc, graphc.nn as nn
        sys.path.insert(0, sys.argv[1])
        from models import SimpleNet
        graphc.manual_seed(0)
        m = SimpleNet()
        opt = graphc.optim.SGD(m.parameters(), lr=0.01)
        x = np.ones((64, 10), np.float32); y = np.ones((64, 1), np.float32)
        step = graphc.compile_train_step(m, nn.MSELoss(), opt, x, y)
        step(x, y)
        print(step.compile_info.status, round(time.perf_counter() - t0, 3))
    """)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir))
    tests = os.path.dirname(os.path.abspath(__file__))
    runs = [subprocess.run([sys.executable, "-c", code, tests], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout.split()[0] == "compiled" and runs[1].stdout.split()[0] == "cached", [r.stdout for r in runs]


def test_frozen_parameters_are_not_trained():
    m, tm = twins()
    x, y = data(labels=True)
    first = m[0]
    opt = graphc.optim.SGD([p for p in m.parameters() if not any(p is q for q in first.parameters())], lr=0.1)
    topt = torch.optim.SGD(list(tm.parameters())[2:], lr=0.1)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    w0 = first.weight.copy()
    train_like_torch(step, tm, topt, torch.nn.functional.cross_entropy, x, y, steps=2)
    assert np.array_equal(first.weight, w0)
    assert_same_weights(m, tm, rtol=1e-5, atol=1e-6)
    # requires_grad=False params get no .grad from a compiled backward, as in torch
    first.weight.requires_grad = False
    cm = graphc.compile(m, x)
    cm(x)
    cm.backward(np.ones((8, 3), np.float32))
    assert first.weight.grad is None and first.bias.grad is not None


def test_seed_block_keeps_the_generators_sequence():
    """next_seed() draws seeds a block at a time; generator() rewinds to where single draws would
    have left it, so seeds and every other draw are the numbers they were one at a time."""
    graphc.manual_seed(5)
    n = 3 * graphc.random.MAX_SEED_BLOCK + 5  # blocks grow while no other draw rewinds the generator
    got = [graphc.random.next_seed() for _ in range(3)], graphc.random.generator().random(3), \
        [graphc.random.next_seed() for _ in range(n)], graphc.random.generator().integers(0, 9, 4), \
        [graphc.random.next_seed() for _ in range(7)], graphc.random.generator().random(2)
    g = np.random.default_rng(5)
    bg = g.bit_generator
    want = [bg.random_raw() >> 1 for _ in range(3)], g.random(3), \
        [bg.random_raw() >> 1 for _ in range(n)], g.integers(0, 9, 4), [bg.random_raw() >> 1 for _ in range(7)], g.random(2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
