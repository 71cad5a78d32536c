"""graphc.optim.lr_scheduler against torch.optim.lr_scheduler, value by value, step by step."""
import json

import numpy as np
import pytest
import torch

import graphc
from graphc.nn import Parameter
from graphc.optim import lr_scheduler as S

T = torch.optim.lr_scheduler

CASES = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[5, 12, 12, 30], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.97),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=17, eta_min=1e-3),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=11),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lr_lambda=lambda e: 1.0 / (1 + e) ** 0.5),
    "LambdaLR-per-group": lambda m, o: m.LambdaLR(o, lr_lambda=[lambda e: 0.9 ** e, lambda e: 1.0 + e]),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=41),
    "OneCycleLR-3phase-linear": lambda m, o: m.OneCycleLR(o, max_lr=0.3, total_steps=41, three_phase=True,
                                                          anneal_strategy="linear"),
    "SequentialLR": lambda m, o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.2, total_iters=4),
                                                    m.CosineAnnealingLR(o, T_max=20)], milestones=[5]),
}


def optimizers(kind):
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    ts = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    if kind == "sgd":
        return (graphc.optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.1, momentum=0.9),
                torch.optim.SGD([{"params": ts[:1]}, {"params": ts[1:], "lr": 0.05}], lr=0.1, momentum=0.9))
    return (graphc.optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.1),
            torch.optim.Adam([{"params": ts[:1]}, {"params": ts[1:], "lr": 0.05}], lr=0.1))


def assert_groups_equal(opt, topt):
    for g, tg in zip(opt.param_groups, topt.param_groups):
        assert g["lr"] == tg["lr"]  # exactly: the same formulas, term for term
        for key in ("momentum", "betas", "initial_lr", "max_lr", "min_lr"):
            if key in tg:
                assert g[key] == (tuple(tg[key]) if key == "betas" else tg[key]), key


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("case", CASES)
def test_schedulers_match_torch_value_by_value(case, kind):
    opt, topt = optimizers(kind)
    sched, tsched = CASES[case](S, opt), CASES[case](T, topt)
    assert_groups_equal(opt, topt)
    for epoch in range(40):
        opt.step(), topt.step()
        sched.step(), tsched.step()
        assert sched.get_last_lr() == tsched.get_last_lr(), f"epoch {epoch}"
        assert_groups_equal(opt, topt)
        assert sched.last_epoch == tsched.last_epoch


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("LambdaLR")])
def test_state_dict_resumes_like_torch_and_is_plain_data(case):
    opt, topt = optimizers("sgd")
    sched, tsched = CASES[case](S, opt), CASES[case](T, topt)
    for _ in range(9):
        sched.step(), tsched.step()
    sd = sched.state_dict()
    tsd = tsched.state_dict()
    assert set(sd) <= set(tsd) | {"_is_initial"}, set(sd) - set(tsd)
    # JSON-able (what graphc.save keeps in its header), and loadable into a fresh scheduler
    sd = json.loads(json.dumps(sd, default=lambda o: dict(o)))
    opt2, _ = optimizers("sgd")
    opt2.load_state_dict(opt.state_dict())
    sched2 = CASES[case](S, opt2)
    sched2.load_state_dict(sd)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(12):
        sched.step(), sched2.step(), tsched.step()
        assert sched2.get_last_lr() == sched.get_last_lr() == tsched.get_last_lr()


@pytest.mark.parametrize("mode, threshold_mode", [("min", "rel"), ("max", "abs")])
def test_reduce_lr_on_plateau_matches_torch(mode, threshold_mode):
    opt, topt = optimizers("sgd")
    kw = dict(mode=mode, factor=0.5, patience=2, threshold=0.01, threshold_mode=threshold_mode, cooldown=1,
              min_lr=[1e-3, 1e-4])
    sched, tsched = S.ReduceLROnPlateau(opt, **kw), T.ReduceLROnPlateau(topt, **kw)
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.5, 0.5, 0.51, 0.52, 0.53, 0.54, 0.55, 0.2] * 3
    for k, v in enumerate(metrics):
        sched.step(v), tsched.step(v)
        assert sched.get_last_lr() == tsched.get_last_lr(), k
        assert sched.num_bad_epochs == tsched.num_bad_epochs and sched.in_cooldown == tsched.in_cooldown


def test_bad_arguments_are_graphc_errors():
    opt, topt = optimizers("sgd")
    with pytest.raises(graphc.GraphcError, match="expects a graphc.optim optimizer"):
        S.StepLR(topt, step_size=2)
    with pytest.raises(graphc.GraphcError, match="Factor should be < 1.0"):
        S.ReduceLROnPlateau(opt, factor=2.0)
    with pytest.raises(graphc.GraphcError, match="total_steps"):
        S.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(graphc.GraphcError, match="one milestone fewer"):
        S.SequentialLR(opt, [S.StepLR(opt, 2)], milestones=[3])
    with pytest.raises(graphc.GraphcError, match="no 'initial_lr'"):
        S.StepLR(optimizers("sgd")[0], step_size=2, last_epoch=4)
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=2)
    sched.step(), sched.step()
    with pytest.raises(graphc.GraphcError, match="Tried to step 3 times"):
        sched.step()
