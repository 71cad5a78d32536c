"""Real training loops with a compiled train step, against torch: hyperparameters as runtime
inputs (schedulers never recompile), parameter groups, AdamW, frozen parameters."""
import logging

import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
from graphc.optim import lr_scheduler as S
from models import assert_same_weights, copy_to_torch, mlp, torch_mlp

SIZES = (6, 12, 3)


def setup(seed=1):
    graphc.manual_seed(seed)
    m = mlp(SIZES)
    return m, copy_to_torch(m, torch_mlp(SIZES))


def batches(n, batch=8, seed=0):
    r = np.random.default_rng(seed)
    return [(r.standard_normal((batch, SIZES[0])).astype(np.float32), r.integers(0, SIZES[-1], batch).astype(np.int64))
            for _ in range(n)]


def torch_step(tm, topt, x, y):
    topt.zero_grad()
    loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    topt.step()
    return loss.item()


def groups_of(params: dict, lr2=None):
    """No weight decay on biases (the usual practice), and optionally another lr for them."""
    decay = [p for n, p in params.items() if not n.endswith("bias")]
    no_decay = [p for n, p in params.items() if n.endswith("bias")]
    second = {"params": no_decay, "weight_decay": 0.0}
    if lr2 is not None:
        second["lr"] = lr2
    return [{"params": decay}, second]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_a_scheduler_changing_lr_every_step_compiles_once_and_matches_torch(kind):
    m, tm = setup()
    if kind == "sgd":
        opt = graphc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        sched, tsched = S.CosineAnnealingLR(opt, T_max=200), torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=200)
    else:  # OneCycleLR also cycles betas[0] every step
        opt = graphc.optim.Adam(m.parameters(), lr=1e-3)
        topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
        sched = S.OneCycleLR(opt, max_lr=0.05, total_steps=200)
        tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.05, total_steps=200)
    data = batches(200)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, *data[0])
    for x, y in data:
        loss = step(x, y)
        tloss = torch_step(tm, topt, x, y)
        sched.step()
        tsched.step()
        assert sched.get_last_lr() == tsched.get_last_lr()
    assert step.compile_count == 1 and len(step._specs) == 1
    np.testing.assert_allclose(loss, tloss, rtol=1e-4)
    assert_same_weights(m, tm, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_param_groups_in_a_compiled_step_match_torch(kind):
    m, tm = setup()
    ours, theirs = dict(m.named_parameters()), dict(tm.named_parameters())
    make = {"sgd": (graphc.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
            "adam": (graphc.optim.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
            "adamw": (graphc.optim.AdamW, torch.optim.AdamW, dict(lr=1e-2))}[kind]
    opt = make[0](groups_of(ours, lr2=0.05), **make[2])
    topt = make[1](groups_of(theirs, lr2=0.05), **make[2])
    data = batches(6)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, *data[0])
    for k, (x, y) in enumerate(data):
        step(x, y) if k % 3 else _eager(m, opt, x, y)  # eager and compiled steps mix
        torch_step(tm, topt, x, y)
    assert_same_weights(m, tm)
    assert step.compile_count == 1


def _eager(m, opt, x, y):
    """One eager-optimizer step: compiled forward + backward fill .grad, then opt.step()."""
    cm = graphc.compile(_WithLoss(m), x, y)
    cm(x, y)
    cm.backward()
    opt.step()
    opt.zero_grad()


class _WithLoss(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.model(x), y)


def test_add_param_group_and_structure_changes_respecialise_and_say_so(caplog):
    m, tm = setup()
    ours, theirs = dict(m.named_parameters()), dict(tm.named_parameters())
    first = [n for n in ours if n.startswith("0.")]
    opt = graphc.optim.SGD([ours[n] for n in first], lr=0.1)
    topt = torch.optim.SGD([theirs[n] for n in first], lr=0.1)
    data = batches(6)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, *data[0])
    step(*data[0]), torch_step(tm, topt, *data[0])
    rest = [n for n in ours if n not in first]
    opt.add_param_group({"params": [ours[n] for n in rest], "lr": 0.05, "momentum": 0.9})
    topt.add_param_group({"params": [theirs[n] for n in rest], "lr": 0.05, "momentum": 0.9})
    with caplog.at_level(logging.INFO, logger="graphc"):
        step(*data[1]), torch_step(tm, topt, *data[1])
    assert step.compile_count == 2 and "1 -> 2 param groups" in step.compile_log[-1]
    assert "1 -> 2 param groups" in caplog.text
    opt.param_groups[0]["momentum"] = topt.param_groups[0]["momentum"] = 0.5  # a term switched on
    with caplog.at_level(logging.WARNING, logger="graphc"):
        step(*data[2]), torch_step(tm, topt, *data[2])
    assert step.compile_count == 3 and "group 0 momentum: False -> True" in step.compile_log[-1]
    for x, y in data[3:]:
        opt.param_groups[1]["lr"] *= 0.5  # values only: no new plan
        topt.param_groups[1]["lr"] *= 0.5
        step(x, y), torch_step(tm, topt, x, y)
    assert step.compile_count == 3
    assert_same_weights(m, tm)


@pytest.mark.parametrize("where", ["optimizer holds it", "optimizer does not"])
def test_frozen_parameters_are_not_trained_like_torch(where):
    m, tm = setup()
    m[0].weight.requires_grad = False
    tm[0].weight.requires_grad_(False)
    w0 = np.array(m[0].weight)
    params = m.parameters() if where == "optimizer holds it" else [p for p in m.parameters() if p.requires_grad]
    opt = graphc.optim.SGD(params, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD([p for p in tm.parameters()], lr=0.1, momentum=0.9)
    data = batches(3)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, *data[0])
    assert "update:0.weight" not in step.ir("train_step_plan")
    for x, y in data:
        step(x, y), torch_step(tm, topt, x, y)
    np.testing.assert_array_equal(np.asarray(m[0].weight), w0)
    assert m[0].weight.grad is None and tm[0].weight.grad is None
    assert_same_weights(m, tm)


def test_invalid_hyperparameters_after_compiling_are_graphc_errors():
    m, _ = setup()
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    x, y = batches(1)[0]
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, x, y)
    w = np.array(m[0].weight)
    for bad, match in [(float("nan"), "must be finite"), ("0.1", "must be a number, got str"), (-1.0, "Invalid learning rate")]:
        opt.param_groups[0]["lr"] = bad
        with pytest.raises(graphc.GraphcError, match=match) as e:
            step(x, y)
        assert "param_groups[0]" in str(e.value)
    np.testing.assert_array_equal(np.asarray(m[0].weight), w)  # nothing ran
    with pytest.raises(graphc.GraphcError, match="must be a number"):
        graphc.optim.SGD(m.parameters(), lr="0.1")


def test_a_torch_optimizer_is_a_clear_error():
    m, tm = setup()
    x, y = batches(1)[0]
    with pytest.raises(graphc.GraphcError, match="graphc.optim optimizer .* got torch.optim.SGD|got torch.SGD"):
        graphc.compile_train_step(m, nn.CrossEntropyLoss(), torch.optim.SGD(tm.parameters(), lr=0.1), x, y)


def test_freezing_a_parameter_after_compiling_is_seen_by_the_next_step():
    """requires_grad switched off between steps (fine-tuning's second phase): the next step
    re-specialises and leaves that weight alone, as torch does."""
    m, tm = setup()
    opt = graphc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    data = batches(4)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), opt, *data[0])
    for x, y in data[:2]:
        step(x, y), torch_step(tm, topt, x, y)
    m[0].weight.requires_grad = False
    tm[0].weight.requires_grad_(False)
    w0 = np.array(m[0].weight)
    for x, y in data[2:]:
        step(x, y), torch_step(tm, topt, x, y)
    np.testing.assert_array_equal(np.asarray(m[0].weight), w0)
    assert step.compile_count == 2
    assert_same_weights(m, tm)
