"""graphc.replay: a recognised loop step is replayed, bit for bit what the full recording gives,
and anything that could change the recording falls back to it."""
import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
from graphc import replay
from models import SimpleNet

rng = np.random.default_rng(0)
X = rng.standard_normal((64, 10)).astype(np.float32)
Y = rng.standard_normal((64, 1)).astype(np.float32)


def scripted_loop(enabled: bool, tensors: bool = False):
    """The standard loop, with every change a user makes mid-training; returns what it observed.
    tensors: the data as graphc Tensors (replay's fast path for a module's last call), else numpy."""
    graphc.autograd.reset()
    replay.ENABLED = enabled
    try:
        graphc.manual_seed(0)
        model, crit = SimpleNet(), nn.MSELoss()
        opt = graphc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        seen = []
        for step in range(15):
            x, y = X, Y
            if step == 4:
                opt.param_groups[0]["lr"] = 0.02           # a hyperparameter value: no recompile
            if step == 6:
                model.dropout.p = 0.25                      # a module attribute: re-recorded
            if step == 7:
                model.dropout.p = 0.5
            if step == 8:
                x, y = X[:32], Y[:32]                       # another signature
            if step == 9:
                model.eval()                                # a mode: no Dropout
            if step == 10:
                model.train()
                model.linear2.weight.requires_grad_(False)  # not a leaf any more: no joined step
            if step == 11:
                model.linear2.weight.requires_grad_(True)
            if step == 13:
                model.linear2.bias = nn.Parameter(np.full(1, 0.5, np.float32))  # replaced: read, not the old one
            if tensors:
                x, y = graphc.from_numpy(x), graphc.from_numpy(y)
            opt.zero_grad()
            out = model(x)
            loss = crit(out, y)
            loss.backward()
            opt.step()
            if step == 12:
                seen.append(out.detach().numpy().copy())    # a kept output is a value of the same plan
            del out
            seen.append(loss.item())
        seen += [p.detach().numpy().copy() for p in model.parameters()]
        return seen, dict(graphc.autograd.stats), dict(replay.stats)
    finally:
        replay.ENABLED = True


@pytest.mark.parametrize("tensors", [False, True])
def test_replayed_loop_equals_the_full_recording_bit_for_bit(caplog, tensors):
    import logging

    full, full_stats, _ = scripted_loop(False, tensors)
    caplog.set_level(logging.INFO, logger="graphc.recompiles")
    fast, stats, rstats = scripted_loop(True, tensors)
    assert "dropout at models.py:22: attributes {'p': 0.5, 'stream': 0} -> {'p': 0.25" in caplog.text
    assert "a Parameter's requires_grad changed" in caplog.text
    assert len(full) == len(fast)
    for a, b in zip(full, fast):
        np.testing.assert_array_equal(a, b)
    assert stats["replayed_steps"] >= 4, stats   # steps 2, 3, 4 (lr changed), 5, 12
    assert stats["compiles"] == full_stats["compiles"] and stats["recompiles"] == full_stats["recompiles"], \
        (stats, full_stats)
    assert rstats["replayed_calls"] > 0 and full_stats["replayed_steps"] == 0


def test_a_steady_loop_replays_without_recompiling():
    graphc.autograd.reset()
    graphc.manual_seed(0)
    model, crit = SimpleNet(), nn.MSELoss()
    tmodel = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 1))
    model.dropout.p = 0.0  # torch draws other masks: compare without dropout
    tmodel.load_state_dict({k.replace("linear1", "0").replace("linear2", "2"): torch.from_numpy(np.array(v))
                            for k, v in model.state_dict().items()})
    opt = graphc.optim.SGD(model.parameters(), lr=0.05)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.05)
    for _ in range(6):
        opt.zero_grad()
        loss = nn.MSELoss()(model(X), Y) if False else crit(model(X), Y)
        loss.backward()
        opt.step()
        topt.zero_grad()
        tloss = torch.nn.functional.mse_loss(tmodel(torch.from_numpy(X)), torch.from_numpy(Y))
        tloss.backward()
        topt.step()
        assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)
    stats = graphc.autograd.stats
    assert stats["compiles"] == 1 and stats["recompiles"] == 0 and stats["replayed_steps"] == 4, stats
    for p, tp in zip(model.parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-4, atol=1e-6)


class ReadsAValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 1)

    def forward(self, x):
        h = self.lin(x)
        return h * 2.0 if h.sum().item() > 0 else h * -1.0  # data-dependent: never replayed


class KeepsAnIntermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 1)
        self.kept = []

    def forward(self, x):
        h = self.lin(x)
        self.kept.append(h)  # a side effect a replay would skip
        return h * 2.0


class MakesAnArray(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 1)

    def forward(self, x):
        return self.lin(x) + graphc.randn(64, 1)  # fresh noise every call


@pytest.mark.parametrize("cls, why", [(ReadsAValue, "read a value"), (KeepsAnIntermediate, "kept an intermediate"),
                                      (MakesAnArray, "neither an argument nor a Parameter")])
def test_forwards_that_cannot_be_replayed_run_every_time(cls, why, monkeypatch):
    monkeypatch.setattr(graphc.autograd, "MODE", "interpret")  # no compiles: only the recording matters here
    graphc.autograd.reset()
    model = cls()
    for _ in range(3):
        (model(X) ** 2).mean().backward()
    sites = [s for by_sig in replay._sites.values() for s in by_sig.values()]
    assert len(sites) == 1 and sites[0].frag is None and why in sites[0].why, [s.why for s in sites]
    assert replay.stats["replayed_calls"] == 0
    if cls is KeepsAnIntermediate:
        assert len(model.kept) == 3


def test_number_conversions_follow_torch():
    for data in (2.75, [2.75], [[-1.5]]):
        t, tt = graphc.tensor(data), torch.tensor(data)
        assert float(t) == float(tt) and int(t) == int(tt) and bool(t) == bool(tt)
        assert isinstance(float(t), float) and isinstance(int(t), int)
    x = graphc.tensor([1.5], requires_grad=True)
    assert float(x * 2) == 3.0                      # a recorded value: computed, then converted
    assert [0, 1, 2, 3][graphc.tensor(2)] == 2 and range(graphc.tensor([3]))[-1] == 2
    with pytest.raises(TypeError, match="integer tensors"):
        [0, 1][graphc.tensor(1.0)]
    with pytest.raises(graphc.TraceError, match="2 elements cannot be converted"):
        float(graphc.tensor([1.0, 2.0]))
    with pytest.raises(graphc.TraceError, match="ambiguous"):
        bool(graphc.tensor([1.0, 2.0]))


def test_a_dead_module_leaves_no_fragment_behind(monkeypatch):
    import gc

    monkeypatch.setattr(graphc.autograd, "MODE", "interpret")
    graphc.autograd.reset()
    model = nn.Linear(10, 1)
    (model(X) ** 2).mean().backward()
    assert model.weight.grad is not None  # (runs the deferred backward)
    (model(X) ** 2).mean().backward()  # replayed: its function for the next call like it is kept (_hot)
    assert id(model) in replay._sites and id(model) in replay._hot
    key = id(model)
    del model
    gc.collect()
    assert key not in replay._sites and key not in replay._hot


def test_replayed_calls_read_their_data_as_it_was_at_the_call():
    """Tensor data (the ported script's torch.from_numpy) replays like numpy data; a numpy argument
    changed in place between the call and opt.step() is seen as it was at the call (it was copied)."""
    runs = []
    for enabled, wrap in ((False, np.array), (True, np.array), (True, graphc.from_numpy)):
        graphc.autograd.reset()
        replay.ENABLED = enabled
        try:
            graphc.manual_seed(0)
            model, crit = SimpleNet(), nn.MSELoss()
            opt = graphc.optim.SGD(model.parameters(), lr=0.05)
            x, y, losses = wrap(X.copy()), wrap(Y.copy()), []
            for _ in range(5):
                opt.zero_grad()
                loss = crit(model(x), y)
                if wrap is np.array:
                    x *= 1.5  # after the call: this step must not see it
                loss.backward()
                opt.step()
                losses.append(loss.item())
            runs.append((losses, [p.copy() for p in model.parameters()], dict(graphc.autograd.stats)))
        finally:
            replay.ENABLED = True
    (ref, ref_params, _), (got, params, stats), (_, _, tstats) = runs
    assert got == ref and all(np.array_equal(a, b) for a, b in zip(params, ref_params))
    assert stats["replayed_steps"] == 3 and tstats["replayed_steps"] == 3 and tstats["recompiles"] == 0, (stats, tstats)


def test_a_step_recorded_again_still_replays_natively(monkeypatch):
    """Tensor labels that cross_entropy reads through a view: a step recorded again (another module
    was built, so every call re-records once) leaves a replay plan that later replayed steps run on
    the native call straight, not through the runner's fallback."""
    from graphc.runtime import Executable

    graphc.autograd.reset()
    graphc.manual_seed(0)
    model, crit = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)), nn.CrossEntropyLoss()
    opt = graphc.optim.SGD(model.parameters(), lr=0.1)
    x, y = graphc.from_numpy(X), graphc.from_numpy(rng.integers(0, 3, 64))
    for step in range(8):
        if step == 3:
            nn.Linear(2, 2)  # module attributes assigned: the next calls record again
        if step == 5:
            monkeypatch.setattr(Executable, "recover", lambda *a: pytest.fail("replayed step fell back to the runner"))
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
    assert graphc.autograd.stats["replayed_steps"] >= 3 and graphc.autograd.stats["recompiles"] == 0


def test_joined_sgd_steps_fuse_the_update_and_still_give_grad():
    """Plain SGD: the joined plan fuses each weight's update into its gradient GEMM (addmm, as
    compile_train_step's) and `.grad` read after opt.step() is computed from the GEMM's operands;
    it equals the gradient of a step that ran backward on its own (grads read before the step)."""
    grads, labels = [], rng.integers(0, 3, 64)
    for read_before_step in (False, True):
        graphc.autograd.reset()
        graphc.manual_seed(0)
        model, crit = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)), nn.CrossEntropyLoss()
        opt = graphc.optim.SGD(model.parameters(), lr=0.1)
        x, y = graphc.from_numpy(X), graphc.from_numpy(labels)
        seen = []
        for _ in range(4):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            if read_before_step:
                seen.append([p.grad.copy() for p in model.parameters()])
            opt.step()
            if not read_before_step:
                seen.append([p.grad.copy() for p in model.parameters()])
        grads.append(seen)
        if not read_before_step:
            (plan,) = graphc.autograd._replays.values()
            from graphc.ir.graph import members  # (a small addmm is a loops kernel of one member)

            ops = [n.op for n in members(plan.entry.exe.graph)]
            assert ops.count("addmm") == 2, ops
    for fused, plain in zip(*grads):
        for a, b in zip(fused, plain):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_replayed_steps_tensors_outlive_its_recording():
    """A replayed step hands its tape on to the next step: the losses it returned keep their
    values, read as finished values (not lazy), and cannot be differentiated again; a module's
    next call with another shape, under no_grad, or after a Parameter is replaced, is not taken
    for its last one."""
    graphc.autograd.reset()
    graphc.manual_seed(0)
    model, crit = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1)), nn.MSELoss()
    opt = graphc.optim.SGD(model.parameters(), lr=0.1)
    x, y = graphc.from_numpy(X), graphc.from_numpy(Y)
    losses, items = [], []
    for _ in range(6):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss)
        items.append(loss.item())
    assert graphc.autograd.stats["replayed_steps"] >= 3, graphc.autograd.stats
    assert [v.item() for v in losses] == items and len(set(items)) == len(items)
    assert all(v.requires_grad and not v.is_leaf for v in losses)
    with pytest.raises(graphc.GraphcError, match="already run"):
        losses[-1].backward()
    assert (losses[0] * 2.0).item() == pytest.approx(2 * items[0])  # a finished value is data
    w, b = (p.detach().numpy().copy() for p in model[0].parameters())
    expect = lambda a: np.maximum(a @ w.T + b, 0) @ model[2].weight.detach().numpy().T + model[2].bias.detach().numpy()
    half = graphc.from_numpy(X[:16])
    np.testing.assert_allclose(model(half).detach().numpy(), expect(X[:16]), rtol=1e-5, atol=1e-6)
    with graphc.no_grad():
        out = model(x)
        assert out.is_leaf and not out.requires_grad
        np.testing.assert_allclose(out.numpy(), expect(X), rtol=1e-5, atol=1e-6)
    model[2].bias = nn.Parameter(np.full(1, 3.0, np.float32))
    np.testing.assert_allclose(model(x).detach().numpy(), expect(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", ["del", "assign", "inplace"])
def test_a_param_groups_params_changed_mid_loop_update_as_torch(change):
    """The replayed step's optimizer checks cover the groups' parameter lists: a Parameter
    dropped from a group (deleted in place, or the list reassigned) is no longer updated, and
    one put in its place is, as in torch, with replay on and off."""
    def run(lib, enabled=True):
        graphc.autograd.reset()
        replay.ENABLED = enabled
        try:
            graphc.manual_seed(0)
            model = SimpleNet()
            model.eval()
            if lib is torch:
                tm = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 1))
                with torch.no_grad():
                    for tp, p in zip(tm.parameters(), model.parameters()):
                        tp.copy_(torch.from_numpy(p.detach().numpy()))
                model, crit, x, y = tm, torch.nn.MSELoss(), torch.from_numpy(X), torch.from_numpy(Y)
                new = torch.nn.Parameter(torch.zeros(20, 10))
            else:
                crit, x, y, new = nn.MSELoss(), X, Y, nn.Parameter(np.zeros((20, 10), np.float32))
            opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            for step in range(8):
                if step == 4:
                    group = opt.param_groups[0]
                    if change == "del":
                        del group["params"][0]
                    elif change == "assign":
                        group["params"] = list(group["params"][1:])
                    else:
                        group["params"][0] = new
                opt.zero_grad()
                loss = crit(model(x), y)
                loss.backward()
                opt.step()
            return [p.detach().numpy().copy() for p in model.parameters()]
        finally:
            replay.ENABLED = True

    want = run(torch)
    for got in (run(graphc), run(graphc, enabled=False)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
