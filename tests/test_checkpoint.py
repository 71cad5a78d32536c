"""Checkpoints: graphc.save / graphc.load, a run resumed in a new process continuing bit for bit,
all-or-nothing loading, and gradient accumulation equal to the large batch."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
from graphc.checkpoint import CheckpointError
from graphc.optim import OptimizerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_save_load_round_trips_nested_values_exactly(tmp_path):
    obj = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float64(2.5)},
           "state": {0: {"step": 3, "exp_avg": np.ones(2)}, 1: {}}, "groups": [{"lr": 0.1, "betas": (0.9, 0.999)}],
           "epoch": 7, "best": float("inf"), "nan": float("nan"), "name": "run", "flag": True, "none": None,
           "big": 2**100 + 1, "ids": (1, 2), "i64": np.arange(3), "bits": 0.1 + 0.2}
    graphc.save(obj, tmp_path / "a.ckpt")
    back = graphc.load(tmp_path / "a.ckpt")
    assert set(back) == set(obj) and set(back["state"]) == {0, 1}
    np.testing.assert_array_equal(back["model"]["w"], obj["model"]["w"])
    assert back["model"]["w"].dtype == np.float32 and back["i64"].dtype == obj["i64"].dtype
    assert back["model"]["b"] == 2.5 and isinstance(back["model"]["b"], np.float64)
    assert back["groups"][0]["betas"] == (0.9, 0.999) and back["ids"] == (1, 2)
    assert back["best"] == float("inf") and back["nan"] != back["nan"] and back["bits"] == 0.1 + 0.2
    assert back["big"] == 2**100 + 1 and back["none"] is None and back["flag"] is True
    assert back["state"][0]["step"] == 3


def test_the_file_is_an_npz_with_a_json_header_and_no_pickle(tmp_path):
    graphc.save({"w": np.ones(3)}, tmp_path / "a.ckpt")
    with zipfile.ZipFile(tmp_path / "a.ckpt") as z:
        assert sorted(z.namelist()) == ["__graphc__.npy", "a0.npy"]
    with np.load(tmp_path / "a.ckpt", allow_pickle=False) as z:
        header = json.loads(z["__graphc__"].tobytes())
    assert header["format"] == "graphc-checkpoint" and header["value"] == {"__dict__": [["w", {"__array__": "a0"}]]}


def test_what_cannot_be_saved_or_loaded_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint\['sched'\]\['fn'\] is a builtins.function"):
        graphc.save({"sched": {"fn": lambda e: e}}, tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="array of object"):
        graphc.save({"x": np.array([object()])}, tmp_path / "a.ckpt")
    assert not os.listdir(tmp_path)  # nothing half-written
    (tmp_path / "junk").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable graphc checkpoint"):
        graphc.load(tmp_path / "junk")
    np.savez(tmp_path / "plain.npz", x=np.ones(2))
    with pytest.raises(CheckpointError, match="not a graphc checkpoint"):
        graphc.load(tmp_path / "plain.npz")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil.ckpt", "w") as z:
        z.writestr("__graphc__.npy", open(tmp_path / "pickled.npy", "rb").read())
    with pytest.raises(CheckpointError):  # an object array would need pickle: refused, never run
        graphc.load(tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="no such file"):
        graphc.load(tmp_path / "missing.ckpt")


def test_load_state_dict_is_all_or_nothing():
    graphc.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    good = {k: v + 1 for k, v in before.items()}
    for bad, match in [({**good, "2.bias": np.zeros(3, np.float32)}, r"'2.bias'.*expected shape \[2\], got \[3\]"),
                       ({k: v for k, v in good.items() if k != "2.weight"}, r"missing keys \['2.weight'\]"),
                       ({**good, "extra": np.zeros(1)}, r"unexpected keys \['extra'\]"),
                       ({**good, "2.bias": np.array(["a", "b"])}, r"'2.bias'.*dtype <U1")]:
        with pytest.raises(graphc.GraphcError, match=match) as e:
            m.load_state_dict(bad)
        assert "nothing was loaded" in str(e.value)
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
    m.load_state_dict(good)
    np.testing.assert_array_equal(np.asarray(m[2].bias), good["2.bias"])


def test_optimizer_load_state_dict_is_all_or_nothing():
    ps = [nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(3))]
    opt = graphc.optim.Adam(ps, lr=0.1)
    for p in ps:
        p.grad = np.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    bad = {**sd, "state": {0: sd["state"][0], 1: {**sd["state"][1], "exp_avg": np.zeros(4)}}}
    bad["param_groups"] = [{**sd["param_groups"][0], "lr": 0.5}]
    with pytest.raises(OptimizerError, match=r"'exp_avg' of parameter 1 has shape \[4\]"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.state_of(ps[1])["exp_avg"].shape == (3,)
    with pytest.raises(OptimizerError, match="expected a dict with 'state' and 'param_groups'"):
        opt.load_state_dict({})


RUN = r'''
import sys, numpy as np, graphc, graphc.nn as nn
from graphc.data import DataLoader, TensorDataset
from graphc.optim.lr_scheduler import StepLR
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
graphc.manual_seed(0)
r = np.random.default_rng(0)
x = r.standard_normal((40, 6)).astype(np.float32)
y = r.integers(0, 3, 40).astype(np.int64)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
opt = graphc.optim.Adam([{"params": [model[0].weight, model[3].weight], "weight_decay": 1e-2},
                         {"params": [model[0].bias, model[3].bias]}], lr=1e-2)
sched = StepLR(opt, step_size=3, gamma=0.5)
loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)  # 5 steps an epoch, global generator
# the interpreter runs the plan: what must survive the new process is the state (weights, Adam's
# moments, group steps, scheduler, RNG stream), not native code (the rest of the suite compiles that)
step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x[:8], y[:8], mode="interpret")
first = 0
if mode == "resume":
    ckpt = graphc.load(path)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    graphc.random.set_state(ckpt["rng"])
    first = ckpt["epoch"]
last = 2 if mode == "save" else 4
losses = []
for epoch in range(first, last):
    for xb, yb in loader:
        losses.append(step(xb, yb))
    sched.step()
if mode == "save":
    graphc.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": last, "rng": graphc.random.get_state()}, path)
graphc.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "losses": losses}, out)
'''


def test_a_resumed_run_continues_bit_for_bit_in_a_new_process(tmp_path, cache_dir):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir))

    def run(mode, out):
        r = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "run.ckpt"), str(tmp_path / out)],
                           env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        return graphc.load(tmp_path / out)

    straight = run("straight", "straight.ckpt")  # 20 steps (4 epochs)
    first = run("save", "first.ckpt")            # 10 steps, then a checkpoint
    resumed = run("resume", "resumed.ckpt")      # a new process: load, 10 more
    assert straight["losses"] == first["losses"] + resumed["losses"]
    for k, v in straight["model"].items():
        np.testing.assert_array_equal(resumed["model"][k], v, err_msg=k)
    for idx, st in straight["optimizer"]["state"].items():
        for name, v in st.items():
            np.testing.assert_array_equal(resumed["optimizer"]["state"][idx][name], v)
    assert resumed["optimizer"]["param_groups"] == straight["optimizer"]["param_groups"]
    assert resumed["optimizer"]["group_steps"] == straight["optimizer"]["group_steps"] == [20, 20]


def test_gradient_accumulation_equals_the_large_batch():
    """The PyTorch loop pattern on a CompiledModule: backward() accumulates .grad over k
    micro-batches; scale by 1/k (the loss is a mean) and step once. Equals one step on the
    large batch, and torch's accumulation."""
    k, micro = 4, 8
    r = np.random.default_rng(0)
    x = r.standard_normal((k * micro, 6)).astype(np.float64)
    y = r.integers(0, 3, k * micro).astype(np.int64)

    class WithLoss(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            return nn.functional.cross_entropy(self.model(x), y)

    def make():
        graphc.manual_seed(3)
        return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()

    big, acc = make(), make()
    opt_big = graphc.optim.SGD(big.parameters(), lr=0.5, momentum=0.9)
    # the large-batch step is the reference: the interpreter runs it (one numba compile fewer); the
    # accumulating CompiledModule below is native code
    graphc.compile_train_step(big, nn.CrossEntropyLoss(), opt_big, x, y, mode="interpret")(x, y)

    opt = graphc.optim.SGD(acc.parameters(), lr=0.5, momentum=0.9)
    cm = graphc.compile(WithLoss(acc), x[:micro], y[:micro])
    for i in range(k):
        cm(x[i * micro:(i + 1) * micro], y[i * micro:(i + 1) * micro])
        cm.backward()                      # .grad += d(micro-batch mean loss)
    for p in acc.parameters():
        p.grad /= k                        # the mean over the large batch
    opt.step()
    opt.zero_grad()
    for (n, p), q in zip(big.named_parameters(), acc.parameters()):
        np.testing.assert_allclose(q, p, rtol=1e-12, atol=1e-14, err_msg=n)

    tm = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3)).double()
    graphc.manual_seed(3)
    init = make()
    with torch.no_grad():
        for tp, p in zip(tm.parameters(), init.parameters()):
            tp.copy_(torch.from_numpy(np.array(p)))
    topt = torch.optim.SGD(tm.parameters(), lr=0.5, momentum=0.9)
    for i in range(k):
        loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x[i * micro:(i + 1) * micro])),
                                                 torch.from_numpy(y[i * micro:(i + 1) * micro]))
        (loss / k).backward()
    topt.step()
    for p, tp in zip(acc.parameters(), tm.parameters()):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
