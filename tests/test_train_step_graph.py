"""The train-step graph (forward + loss + backward + optimizer update), interpreted, against
torch.optim: the same weights and optimizer state after one step and after several."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.ir import GraphcError, interpret, parse
from graphc.passes.autodiff import grad_graph
from graphc.passes.train_step import OptimizerSpec, build_train_step, hyper_values
from models import copy_to_torch, mlp, torch_mlp

SIZES = (6, 8, 8, 3)
BATCH = 5


class _Loss(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return F.cross_entropy(self.model(x), y)


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], BATCH).astype(np.int64))
            for _ in range(n)]


def _setup(spec: OptimizerSpec):
    model = mlp(SIZES)
    x, y = _batches(1)[0]
    step = build_train_step(graphc.trace(_Loss(model), x, y), spec)
    params = {f"model.{k}": np.array(v) for k, v in model.state_dict().items()}
    state = {i.name: np.zeros(i.type.shape, i.type.np_dtype) for i in step.inputs if i.kind == "state"}
    state.update(hyper_values(spec))  # the hyperparameters are runtime inputs of the graph
    return model, step, params, state


def _run(step, params, state, x, y):
    """One interpreted call; writes every update:<name> output back into params/state."""
    res = interpret(step, {"x": x, "y": y, **params, **state})
    loss = None
    for o, r in zip(step.outputs, res):
        if o.label == "loss":
            loss = float(r)
        else:
            target = o.label[len("update:"):]
            (params if target in params else state)[target] = r
    return loss


def _torch_opt(spec: OptimizerSpec, params):
    h = dict(spec.hyper)
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.kind](params, **h)


def _compare(spec: OptimizerSpec, steps: int):
    model, step, params, state = _setup(spec)
    t = copy_to_torch(model, torch_mlp(SIZES))
    opt = _torch_opt(spec, t.parameters())
    for k, (x, y) in enumerate(_batches(steps, seed=3)):
        loss = _run(step, params, state, x, y)
        opt.zero_grad()
        tloss = TF.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        opt.step()
        np.testing.assert_allclose(loss, tloss.item(), rtol=1e-5, err_msg=f"loss at step {k}")
        for name, p in t.named_parameters():
            np.testing.assert_allclose(params[f"model.{name}"], p.detach().numpy(), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} after step {k + 1}")
            for s in spec.state_names():
                np.testing.assert_allclose(state[f"state.model.{name}.{s}"], opt.state[p][s].numpy(), rtol=1e-4, atol=1e-7,
                                           err_msg=f"{s} of {name} after step {k + 1}")
        assert state["state.group0.step"] == k + 1


SGD_CASES = {
    "plain": {"lr": 0.1},
    "momentum-wd-nesterov": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2, "nesterov": True},
    "momentum-dampening": {"lr": 0.05, "momentum": 0.8, "dampening": 0.5, "weight_decay": 1e-3},
}


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_one_step_matches_torch(case):
    _compare(OptimizerSpec("sgd", SGD_CASES[case]), steps=1)


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_several_steps_feeding_state_back_match_torch(case):
    _compare(OptimizerSpec("sgd", SGD_CASES[case]), steps=4)


@pytest.mark.parametrize("hyper", [{"lr": 1e-2}, {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}],
                         ids=["default", "wd"])
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_steps_match_torch(hyper, kind):
    _compare(OptimizerSpec(kind, hyper), steps=1)
    _compare(OptimizerSpec(kind, hyper), steps=4)


def test_graph_layout_inputs_and_output_labels():
    _, step, params, _ = _setup(OptimizerSpec("adam", {"lr": 1e-3}))
    state = [i.name for i in step.inputs if i.kind == "state"]
    assert state == [f"state.{p}.{s}" for p in params for s in ("exp_avg", "exp_avg_sq")] + ["state.group0.step"]
    assert [i.name for i in step.inputs if i.kind == "hyper"] == [f"hyper.group0.{n}" for n in
                                                                  ("lr", "beta1", "beta2", "eps", "weight_decay")]
    labels = [o.label for o in step.outputs]
    assert labels == ["loss"] + [f"update:{p}" for p in params] + [f"update:{s}" for s in state]
    assert all(i.type == graphc.ir.TensorType((), "f64") for i in step.inputs if i.kind == "hyper")
    assert [n.op for n in step.nodes].count("adam_update") == len(params)
    assert step.meta["optimizer"]["kind"] == "adam"
    assert parse(str(step)) == step


def test_sgd_without_momentum_has_no_buffers():
    _, step, params, _ = _setup(OptimizerSpec("sgd", {"lr": 0.1}))
    assert [i.name for i in step.inputs if i.kind == "state"] == ["state.group0.step"]
    assert [o.label for o in step.outputs][1:] == [f"update:{p}" for p in params] + ["update:state.group0.step"]


def test_accepts_a_joint_graph_and_skips_params_the_loss_does_not_reach():
    g = parse("""graph f {
      input %x: f32[3]
      param %w: f32[3]
      param %unused: f32[3]
      %0: f32[3] = mul(%x, %w)
      %1: f32[] = sum(%0) {dims=[0]}
      return %1
    }""")
    step = build_train_step(grad_graph(g), OptimizerSpec("sgd", {"lr": 0.5, "momentum": 0.9}))
    assert [o.label for o in step.outputs] == ["loss", "update:w", "update:state.w.momentum_buffer",
                                               "update:state.group0.step"]
    x, w = np.array([1.0, 2.0, 3.0], np.float32), np.ones(3, np.float32)
    res = interpret(step, {"x": x, "w": w, "unused": w, "state.w.momentum_buffer": np.full(3, 7.0, np.float32),
                           "state.group0.step": np.asarray(0, np.int64),
                           **hyper_values(OptimizerSpec("sgd", {"lr": 0.5, "momentum": 0.9}))})
    np.testing.assert_allclose(res[1], w - 0.5 * x)  # first step: buffer = gradient, not 0.9 * 7 + grad
    np.testing.assert_allclose(res[2], x)


@pytest.mark.parametrize("kind,hyper,match", [
    ("rmsprop", {}, "not supported"),
    ("sgd", {"lr": 0.1, "betas": (0.9, 0.9)}, "unknown hyperparameter"),
    ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov"),
    ("sgd", {"lr": -1.0}, "lr and weight_decay must be >= 0"),
    ("adam", {"betas": (0.9, 1.5)}, "betas"),
])
def test_bad_optimizer_spec_is_an_error(kind, hyper, match):
    with pytest.raises(GraphcError, match=match):
        OptimizerSpec(kind, hyper)


def test_loss_graph_must_have_one_scalar_output():
    g = parse("""graph f {
      param %w: f32[3]
      %0: f32[3] = exp(%w)
      return %0
    }""")
    with pytest.raises(GraphcError, match="float scalar loss"):
        build_train_step(g, OptimizerSpec("sgd", {"lr": 0.1}))


def test_param_groups_each_read_their_own_hyperparameters():
    """Two groups (no weight decay on biases, another lr): each update node reads its group's
    hyper inputs, and the interpreted step equals torch's with the same groups."""
    model = mlp(SIZES)
    names = [f"model.{k}" for k in model.state_dict()]
    group_of = {n: (1 if n.endswith("bias") else 0) for n in names}
    groups = ({"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}, {"lr": 0.3, "momentum": 0.0})
    spec = OptimizerSpec("sgd", groups=groups, group_of=group_of)
    x, y = _batches(1)[0]
    step = build_train_step(graphc.trace(_Loss(model), x, y), spec)
    for n in step.nodes:
        if n.op == "sgd_update":
            k = group_of[n.inputs[0]]
            assert n.inputs[2] == f"hyper.group{k}.lr" and n.attr["momentum"] == (k == 0)
            assert n.attr["weight_decay"] == (k == 0)
    params = {f"model.{k}": np.array(v) for k, v in model.state_dict().items()}
    state = {i.name: np.zeros(i.type.shape, i.type.np_dtype) for i in step.inputs if i.kind == "state"}
    state.update(hyper_values(spec))
    t = copy_to_torch(model, torch_mlp(SIZES))
    tp = dict(t.named_parameters())
    opt = torch.optim.SGD([{"params": [p for n, p in tp.items() if not n.endswith("bias")], **groups[0]},
                           {"params": [p for n, p in tp.items() if n.endswith("bias")], **groups[1]}])
    for x, y in _batches(3, seed=5):
        _run(step, params, state, x, y)
        opt.zero_grad()
        TF.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    for n, p in tp.items():
        np.testing.assert_allclose(params[f"model.{n}"], p.detach().numpy(), rtol=1e-4, atol=1e-6, err_msg=n)
