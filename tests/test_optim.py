"""graphc.optim against torch.optim: same weights, same gradient sequence, same trajectory."""
import numpy as np
import pytest
import torch

import graphc
from graphc.ir import OPS
from graphc.nn import Linear, Parameter
from graphc.optim import SGD, Adam, OptimizerError

TOL = {np.float32: 1e-6, np.float64: 1e-12}
SHAPES = [(4, 3), (3,), (2, 2, 2)]

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, weight_decay=0.01, dampening=0.1),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.02),
]
ADAM_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.02, betas=(0.3, 0.9), weight_decay=0.01),  # 1 - beta1 > 0.5: torch's other lerp formula
]


def make_pair(dtype):
    values = [np.random.randn(*s).astype(dtype) for s in SHAPES]
    ours = [Parameter(v.copy()) for v in values]
    theirs = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    return ours, theirs


def grads_sequence(dtype, steps=10):
    seq = [[np.random.randn(*s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    if steps > 3:
        seq[3][1] = None  # a parameter without a gradient is skipped, as in torch
    return seq


def set_grads(ours, theirs, grads):
    for p, t, g in zip(ours, theirs, grads):
        p.grad = None if g is None else g.copy()
        t.grad = None if g is None else torch.from_numpy(g.copy())


def assert_close(ours, theirs, dtype, what=""):
    for k, (p, t) in enumerate(zip(ours, theirs)):
        t = t.detach().numpy() if isinstance(t, torch.Tensor) else t
        assert np.asarray(p).dtype == dtype
        np.testing.assert_allclose(p, t, rtol=TOL[dtype], atol=TOL[dtype], err_msg=f"{what} param {k}")


def run(kind, config, dtype, steps=10):
    ours, theirs = make_pair(dtype)
    opt = (SGD if kind == "sgd" else Adam)(ours, **config)
    topt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(theirs, **config)
    for k, grads in enumerate(grads_sequence(dtype, steps)):
        set_grads(ours, theirs, grads)
        opt.step()
        topt.step()
        assert_close(ours, theirs, dtype, f"step {k}")
    return opt, topt, ours, theirs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_matches_torch(config, dtype):
    opt, topt, ours, theirs = run("sgd", config, dtype)
    assert opt.step_count == 10
    if config.get("momentum"):
        for p, t in zip(ours, theirs):
            np.testing.assert_allclose(opt.state_of(p)["momentum_buffer"], topt.state[t]["momentum_buffer"].numpy(),
                                       rtol=TOL[dtype], atol=TOL[dtype])
    else:
        assert all(opt.state_of(p) == {} for p in ours)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=str)
def test_adam_matches_torch(config, dtype):
    opt, topt, ours, theirs = run("adam", config, dtype)
    for p, t in zip(ours, theirs):
        st, tst = opt.state_of(p), topt.state[t]
        assert st["step"] == int(tst["step"].item())
        for name in ("exp_avg", "exp_avg_sq"):
            assert st[name].dtype == dtype
            np.testing.assert_allclose(st[name], tst[name].numpy(), rtol=TOL[dtype], atol=TOL[dtype])
    assert [opt.state_of(p)["step"] for p in ours] == [10, 9, 10]


def test_updates_are_in_place_and_grads_unchanged():
    lin = Linear(3, 2)
    w = lin.weight
    before = w.copy()
    g = np.ones_like(w)
    w.grad = g
    SGD(lin.parameters(), lr=0.5).step()
    assert lin.weight is w and np.allclose(w, before - 0.5)
    assert w.grad is g and np.all(g == 1)


def test_param_groups_and_hyperparameter_changes():
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    opt = SGD(ps, lr=0.1, momentum=0.9)
    (group,) = opt.param_groups
    assert group["params"] == ps or all(a is b for a, b in zip(group["params"], ps))
    assert {k: v for k, v in group.items() if k != "params"} == dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False)
    adam = Adam(ps)
    assert {k: v for k, v in adam.param_groups[0].items() if k != "params"} == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    # torch's way of scheduling: edit the group; the next step reads it
    opt = SGD(ps, lr=0.1)
    opt.param_groups[0]["lr"] = 1.0
    for p in ps:
        p.grad = np.ones_like(p)
    opt.step()
    assert np.all(ps[0] == -1.0)
    # a single dict group, as torch accepts
    opt = Adam([{"params": ps, "lr": 0.5}], eps=1e-3)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["eps"] == 1e-3


def test_zero_grad():
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    opt = SGD(ps, lr=0.1)
    for p in ps:
        p.grad = np.ones_like(p)
    g = ps[0].grad
    opt.zero_grad(set_to_none=False)
    assert ps[0].grad is g and not g.any()
    opt.zero_grad()
    assert all(p.grad is None for p in ps)
    opt.step()  # no gradients: nothing moves
    assert all(not p.any() for p in ps)


@pytest.mark.parametrize("make, message", [
    (lambda ps: SGD(ps, lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1), "Invalid weight_decay value: -1"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "momentum=0.9, dampening=0.1"),
    (lambda ps: Adam(ps, lr=-1.0), "Invalid learning rate: -1.0"),
    (lambda ps: Adam(ps, betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (lambda ps: Adam(ps, betas=(0.9,)), "expected two numbers"),
    (lambda ps: Adam(ps, eps=-1e-8), "Invalid epsilon value"),
    (lambda ps: Adam(ps, weight_decay=-0.1), "Invalid weight_decay value"),
    (lambda ps: Adam(ps, amsgrad=True), "amsgrad=True is not supported"),
    (lambda ps: SGD(ps, lr=0.1, maximize=True), "maximize=True is not supported"),
    (lambda ps: SGD(ps, lr=0.1, momentun=0.9), "unknown argument 'momentun'"),
    (lambda ps: SGD([], lr=0.1), "empty parameter list"),
    (lambda ps: SGD([np.zeros(3, np.int64)], lr=0.1), "must be a float32/float64 Parameter, got ndarray of int64"),
    (lambda ps: SGD(ps + ps, lr=0.1), "more than once"),
    (lambda ps: SGD([{"params": ps}, {"params": ps}], lr=0.1), "one parameter group"),
])
def test_invalid_arguments_are_rejected_like_torch(make, message):
    ps = [Parameter(np.zeros(2))]
    with pytest.raises(OptimizerError) as e:
        make(ps)
    assert message in str(e.value)
    assert isinstance(e.value, (graphc.GraphcError, ValueError))


def test_grad_of_wrong_shape_or_dtype_is_an_error():
    p = Parameter(np.zeros((2, 3), np.float32))
    opt = SGD([p], lr=0.1)
    p.grad = np.zeros((3, 2), np.float32)
    with pytest.raises(OptimizerError, match=r"parameter 0 is float32\[2, 3\] but its .grad is float32\[3, 2\]"):
        opt.step()
    p.grad = np.zeros((2, 3), np.float64)
    with pytest.raises(OptimizerError, match="float64"):
        opt.step()
    with pytest.raises(OptimizerError, match="not one of the optimizer's parameters"):
        opt.state_of(Parameter(np.zeros(1)))


# ------------------------------------------------------------------ state, checkpoints and the compiled-step contract


@pytest.mark.parametrize("kind, config", [("sgd", SGD_CONFIGS[3]), ("adam", ADAM_CONFIGS[1])])
def test_state_dict_layout_and_round_trip_with_torch(kind, config):
    dtype = np.float32
    opt, topt, ours, theirs = run(kind, config, dtype, steps=3)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]) == [0, 1, 2]
    for k in sd["state"]:
        assert sorted(sd["state"][k]) == sorted(tsd["state"][k])
    assert sd["param_groups"][0]["params"] == tsd["param_groups"][0]["params"] == [0, 1, 2]
    for key, v in sd["param_groups"][0].items():
        assert tsd["param_groups"][0][key] == v, key
    assert sd["step_count"] == 3
    # state_dict copies: stepping on does not change it
    before = {k: {n: np.copy(v) for n, v in st.items()} for k, st in sd["state"].items()}

    # torch's checkpoint into a fresh graphc optimizer, and ours into a fresh torch one: both continue alike
    ours2 = [Parameter(t.detach().numpy().copy()) for t in theirs]
    opt2 = (SGD if kind == "sgd" else Adam)(ours2, lr=123.0)
    opt2.load_state_dict(tsd)
    assert opt2.param_groups[0]["lr"] == config["lr"] and opt2.step_count == (1 if kind == "sgd" else 3)
    theirs2 = [torch.tensor(p.copy(), requires_grad=True) for p in ours]
    topt2 = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(theirs2, lr=123.0)
    topt2.load_state_dict({"state": {k: {n: torch.tensor(v) for n, v in st.items()} for k, st in sd["state"].items()},
                           "param_groups": sd["param_groups"]})
    for grads in grads_sequence(dtype, 4):
        set_grads(ours, theirs, grads)
        set_grads(ours2, theirs2, grads)
        for o in (opt, topt, opt2, topt2):
            o.step()
    assert_close(ours, theirs, dtype)
    assert_close(ours2, theirs, dtype, "torch checkpoint -> graphc")
    assert_close(ours, theirs2, dtype, "graphc checkpoint -> torch")
    for k, st in sd["state"].items():
        for n, v in st.items():
            np.testing.assert_array_equal(v, before[k][n])


def test_load_state_dict_rejects_mismatches():
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    opt = SGD(ps, lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    with pytest.raises(OptimizerError, match=r"expected one group of 1 parameters, got \[2\]"):
        SGD(ps[:1], lr=0.1).load_state_dict(sd)
    with pytest.raises(OptimizerError, match=r"unknown hyperparameter\(s\) \['dampening', 'momentum', 'nesterov'\]"):
        Adam(ps).load_state_dict(sd)
    t = torch.optim.SGD([torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)], lr=0.1, maximize=True)
    with pytest.raises(OptimizerError, match="maximize=True is not supported"):
        opt.load_state_dict(t.state_dict())
    bad = {"state": {0: {"momentum_buffer": np.zeros(5)}}, "param_groups": sd["param_groups"]}
    with pytest.raises(OptimizerError, match=r"'momentum_buffer' of parameter 0 has shape \[5\], its parameter \[2\]"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ensure_state_allocates_zeros_and_keeps_torch_semantics(dtype):
    for kind, config in [("sgd", SGD_CONFIGS[3]), ("adam", ADAM_CONFIGS[1])]:
        ours, theirs = make_pair(dtype)
        opt = (SGD if kind == "sgd" else Adam)(ours, **config)
        opt.ensure_state()
        for p in ours:
            st = opt.state_of(p)
            for name in opt.state_names:
                assert st[name].shape == p.shape and st[name].dtype == p.dtype and not st[name].any()
        arrays = [opt.state_of(p)[n] for p in ours for n in opt.state_names]
        topt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(theirs, **config)
        for grads in grads_sequence(dtype, 5):
            set_grads(ours, theirs, grads)
            opt.step()
            topt.step()
        assert_close(ours, theirs, dtype, kind)
        # the preallocated arrays were updated in place, never replaced
        assert all(a is b for a, b in zip(arrays, [opt.state_of(p)[n] for p in ours for n in opt.state_names]))
    assert SGD(ours, lr=0.1).ensure_state().state_of(ours[0]) == {}


@pytest.mark.parametrize("kind, config", [("sgd", SGD_CONFIGS[4]), ("sgd", SGD_CONFIGS[6]), ("adam", ADAM_CONFIGS[1])])
def test_a_compiled_step_following_the_contract_mixes_with_eager_steps(kind, config):
    """Emulate a compiled train step with the IR's update ops: state from ensure_state(), the i64
    step input from group_step(0), results written in place, then count_step()."""
    dtype = np.float32
    ours, theirs = make_pair(dtype)
    opt = (SGD if kind == "sgd" else Adam)(ours, **config)
    topt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(theirs, **config)
    h = opt.param_groups[0]

    def compiled_step():
        opt.ensure_state()
        step = opt.group_step(0)
        f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
        for p in ours:
            st = opt.state_of(p)
            if kind == "sgd":
                scalars = [f64(h[k]) for k in ("lr", "momentum", "dampening", "weight_decay")]
                attrs = dict(momentum=True, nesterov=h["nesterov"], weight_decay=h["weight_decay"] != 0)
                new_p, new_buf = OPS["sgd_update"].reference(p.data, p.grad, *scalars, st["momentum_buffer"], step, **attrs)
                st["momentum_buffer"][...] = new_buf
            else:
                scalars = [f64(x) for x in (h["lr"], *h["betas"], h["eps"], h["weight_decay"])]
                attrs = dict(weight_decay=h["weight_decay"] != 0, decoupled=False)
                new_p, m, v = OPS["adam_update"].reference(p.data, p.grad, st["exp_avg"], st["exp_avg_sq"], step, *scalars,
                                                           **attrs)
                st["exp_avg"][...], st["exp_avg_sq"][...] = m, v
            p[...] = new_p
        opt.count_step()

    seq = [[np.random.randn(*s).astype(dtype) for s in SHAPES] for _ in range(6)]
    for k, grads in enumerate(seq):
        set_grads(ours, theirs, grads)
        compiled_step() if k in (0, 1, 4) else opt.step()
        topt.step()
        assert_close(ours, theirs, dtype, f"step {k}")
    assert opt.step_count == 6
    if kind == "adam":
        assert all(opt.state_of(p)["step"] == 6 for p in ours)


def test_torch_switches_at_defaults_are_accepted():
    p = Parameter(np.ones(2))
    Adam([p], amsgrad=False, foreach=None, maximize=False, capturable=False, differentiable=False, fused=None)
    SGD([p], lr=0.1, foreach=False, maximize=False)


def test_closure_and_repr():
    p = Parameter(np.ones(2))
    p.grad = np.ones(2)
    opt = SGD([p], lr=0.25)
    assert opt.step(lambda: 42.0) == 42.0
    assert np.all(p == 0.75)
    r = repr(Adam([p]))
    assert r.startswith("Adam (") and "lr: 0.001" in r and "betas: (0.9, 0.999)" in r
