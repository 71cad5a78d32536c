"""Autodiff: every op's VJP against finite differences (float64) and torch.autograd (float32),
reuse and branching, provenance, whole models against torch, and IR-in/IR-out checks."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
import torch.nn.functional as TF

import graphc
from graphc.ir import OPS, GraphBuilder, GraphcError, TensorType, interpret, parse
from graphc.ir.opdef import _NoGradient
from graphc.ir.ops import dropout_mask
from graphc.passes.autodiff import autodiff, grad_graph
import conv_cases
from models import SimpleNet, WithLoss, copy_to_torch, mlp, torch_mlp, torch_simple_net

# ------------------------------------------------------------------ the op spec table
# One or more example applications per differentiable op. Inputs: ("f", shape) any float,
# ("pos", shape) positive, ("away", shape) |x| >= 0.2 (kinks), ("labels", n, classes),
# ("seed",). Float inputs are params, so every one of them is differentiated.


@dataclass
class Spec:
    inputs: list
    torch: Callable
    attrs: dict = field(default_factory=dict)


def _red(fn):
    return lambda t, a: fn(t[0], dim=tuple(a["dims"]), keepdim=a.get("keepdim", False))


SPECS: dict[str, list[Spec]] = {
    "add": [Spec([("f", (3, 4)), ("f", (4,))], lambda t, a: t[0] + t[1]),
            Spec([("f", (3, 1)), ("f", (2, 1, 4))], lambda t, a: t[0] + t[1])],
    "sub": [Spec([("f", (3, 1)), ("f", (1, 4))], lambda t, a: t[0] - t[1])],
    "mul": [Spec([("f", (3, 4)), ("f", (3, 4))], lambda t, a: t[0] * t[1]),
            Spec([("f", ()), ("f", (2, 3))], lambda t, a: t[0] * t[1])],
    "div": [Spec([("f", (3, 4)), ("pos", (4,))], lambda t, a: t[0] / t[1])],
    "neg": [Spec([("f", (3, 4))], lambda t, a: -t[0])],
    "exp": [Spec([("f", (3, 4))], lambda t, a: t[0].exp())],
    "log": [Spec([("pos", (3, 4))], lambda t, a: t[0].log())],
    "relu": [Spec([("away", (3, 4))], lambda t, a: t[0].relu())],
    "sigmoid": [Spec([("f", (3, 4))], lambda t, a: t[0].sigmoid())],
    "tanh": [Spec([("f", (3, 4))], lambda t, a: t[0].tanh())],
    "transpose": [Spec([("f", (2, 3, 4))], lambda t, a: t[0].permute(*a["perm"]), {"perm": (2, 0, 1)})],
    "reshape": [Spec([("f", (3, 4))], lambda t, a: t[0].reshape(a["shape"]), {"shape": (2, 3, 2)})],
    "sum": [Spec([("f", (3, 4))], _red(torch.sum), {"dims": (1,)}),
            Spec([("f", (2, 3, 4))], _red(torch.sum), {"dims": (0, 2), "keepdim": True}),
            Spec([("f", (3, 4))], _red(torch.sum), {"dims": (0, 1)})],
    "mean": [Spec([("f", (3, 4))], _red(torch.mean), {"dims": (0,), "keepdim": True}),
             Spec([("f", (2, 3, 4))], _red(torch.mean), {"dims": (0, 1, 2)})],
    "sum_to": [Spec([("f", (2, 3, 4))], lambda t, a: t[0].sum_to_size(a["shape"]), {"shape": (3, 1)})],
    "broadcast_to": [Spec([("f", (3, 1))], lambda t, a: t[0].broadcast_to(a["shape"]), {"shape": (2, 3, 4)})],
    "matmul": [Spec([("f", (3, 4)), ("f", (4, 5))], lambda t, a: t[0] @ t[1])],
    "linear": [Spec([("f", (3, 4)), ("f", (5, 4)), ("f", (5,))], lambda t, a: TF.linear(*t)),
               Spec([("f", (3, 4)), ("f", (5, 4))], lambda t, a: TF.linear(*t))],
    "linear_relu": [Spec([("f", (3, 4)), ("f", (5, 4)), ("f", (5,))], lambda t, a: TF.linear(*t).relu())],
    "softmax": [Spec([("f", (3, 4))], lambda t, a: torch.softmax(t[0], a["dim"]), {"dim": 1})],
    "log_softmax": [Spec([("f", (3, 4))], lambda t, a: torch.log_softmax(t[0], a["dim"]), {"dim": 0})],
    "mse_loss": [Spec([("f", (3, 4)), ("f", (3, 4))], lambda t, a: TF.mse_loss(*t)),
                 Spec([("f", (3, 4)), ("f", (3, 4))], lambda t, a: TF.mse_loss(*t, reduction="sum"), {"reduction": "sum"})],
    "nll_loss": [Spec([("f", (4, 5)), ("labels", 4, 5)], lambda t, a: TF.nll_loss(*t)),
                 Spec([("f", (4, 5)), ("labels", 4, 5)], lambda t, a: TF.nll_loss(*t, reduction="sum"), {"reduction": "sum"})],
    "cross_entropy": [Spec([("f", (4, 5)), ("labels", 4, 5)], lambda t, a: TF.cross_entropy(*t)),
                      Spec([("f", (4, 5)), ("labels", 4, 5)], lambda t, a: TF.cross_entropy(*t, reduction="sum"), {"reduction": "sum"})],
    "dropout": [Spec([("f", (3, 4)), ("seed",)],
                     lambda t, a: t[0] * torch.from_numpy(dropout_mask(t[1], a["p"], a["stream"], tuple(t[0].shape), t[0].detach().numpy().dtype)),
                     {"p": 0.3, "stream": 2})],
}

def _idx(t, dim, index):
    return t[0].gather(dim, index)


SPECS.update({
    "sqrt": [Spec([("pos", (3, 4))], lambda t, a: t[0].sqrt())],
    "rsqrt": [Spec([("pos", (3, 4))], lambda t, a: t[0].rsqrt())],
    "erf": [Spec([("f", (3, 4))], lambda t, a: torch.erf(t[0]))],
    "pow": [Spec([("pos", (3, 4))], lambda t, a: t[0] ** a["exponent"], {"exponent": 2.5}),
            Spec([("f", (3, 4))], lambda t, a: t[0] ** a["exponent"], {"exponent": 3.0})],
    "maximum": [Spec([("f", (3, 4)), ("f", (4,))], lambda t, a: torch.maximum(t[0], t[1]))],
    "minimum": [Spec([("f", (3, 1)), ("f", (2, 1, 4))], lambda t, a: torch.minimum(t[0], t[1]))],
    "where": [Spec([("cond", (3, 4)), ("f", (3, 4)), ("f", (4,))], lambda t, a: torch.where(t[0], t[1], t[2])),
              Spec([("cond", (3, 1)), ("f", ()), ("f", (1, 4))], lambda t, a: torch.where(t[0], t[1], t[2]))],
    "cast": [Spec([("f", (3, 4))], lambda t, a: t[0].double(), {"dtype": "f64"})],
    "max": [Spec([("f", (3, 4))], lambda t, a: torch.amax(t[0], dim=a["dims"], keepdim=a["keepdim"]), {"dims": (1,)}),
            Spec([("f", (2, 3, 4))], lambda t, a: torch.amax(t[0], dim=a["dims"], keepdim=a["keepdim"]),
                 {"dims": (0, 2), "keepdim": True})],
    "slice": [Spec([("f", (5, 4))], lambda t, a: t[0][1:4], {"dim": 0, "start": 1, "end": 4}),
              Spec([("f", (3, 7))], lambda t, a: t[0][:, 1:6:2], {"dim": 1, "start": 1, "end": 6, "step": 2}),
              Spec([("f", (3, 7))], lambda t, a: t[0][:, 2::3], {"dim": 1, "start": 2, "end": 99, "step": 3})],
    "concat": [Spec([("f", (2, 3)), ("f", (4, 3))], lambda t, a: torch.cat(t, a["dim"]), {"dim": 0}),
               Spec([("f", (2, 1)), ("f", (2, 3)), ("f", (2, 2))], lambda t, a: torch.cat(t, a["dim"]), {"dim": 1})],
    "pad": [Spec([("f", (2, 3))], lambda t, a: TF.pad(t[0], (0, 3, 1, 2), value=a["value"]),
                 {"widths": (1, 2, 0, 3), "value": 0.5})],
    "gather": [Spec([("f", (4, 3)), ("index", (6, 3), 4)], lambda t, a: t[0].gather(a["dim"], t[1]), {"dim": 0}),
               Spec([("f", (2, 5, 3)), ("index", (2, 2, 3), 5)], lambda t, a: t[0].gather(a["dim"], t[1]), {"dim": 1})],
    "index_select": [Spec([("f", (4, 3)), ("index", (6,), 4)], lambda t, a: t[0].index_select(a["dim"], t[1]), {"dim": 0}),
                     Spec([("f", (2, 5, 3)), ("index", (7,), 5)], lambda t, a: t[0].index_select(a["dim"], t[1]), {"dim": 1})],
    "index_add": [Spec([("f", (4, 3)), ("index", (6,), 4), ("f", (6, 3))],
                       lambda t, a: t[0].index_add(a["dim"], t[1], t[2]), {"dim": 0}),
                  Spec([("f", (2, 5, 3)), ("index", (4,), 5), ("f", (2, 4, 3))],
                       lambda t, a: t[0].index_add(a["dim"], t[1], t[2]), {"dim": 1})],
    "scatter_add": [Spec([("f", (4, 3)), ("index", (6, 3), 4), ("f", (6, 3))],
                         lambda t, a: t[0].scatter_add(a["dim"], t[1], t[2]), {"dim": 0})],
})
SPECS["matmul"] += [Spec([("f", (2, 3, 4)), ("f", (4, 5))], lambda t, a: t[0] @ t[1]),
                    Spec([("f", (3, 1, 2, 4)), ("f", (2, 4, 3))], lambda t, a: t[0] @ t[1])]
SPECS["layer_norm"] = [
    Spec([("f", (3, 5)), ("f", (5,)), ("f", (5,))], lambda t, a: TF.layer_norm(t[0], (5,), t[1], t[2], a["eps"])),
    Spec([("f", (2, 3, 4))], lambda t, a: TF.layer_norm(t[0], (4,), eps=a["eps"]), {"eps": 1e-3})]
NONDIFF = ("labels", "seed", "cond", "index")
SPECS.update(conv_cases.grad_specs(Spec))  # conv2d and pooling: tests/conv_cases.py
CASES = [(op, k) for op in SPECS for k in range(len(SPECS[op]))]
SEED = 1234


def _inputs(spec: Spec, dtype, rng) -> list:
    vals = []
    for kind, *rest in spec.inputs:
        if kind == "labels":
            vals.append(rng.integers(0, rest[1], size=rest[0]).astype(np.int64))
        elif kind == "index":  # ("index", shape, bound): i64 indices in [0, bound)
            vals.append(rng.integers(0, rest[1], size=rest[0]).astype(np.int64))
        elif kind == "cond":
            vals.append(rng.standard_normal(rest[0]) > 0)
        elif kind == "seed":
            vals.append(np.asarray(SEED, dtype=np.int64))
        else:
            x = rng.standard_normal(rest[0])
            if kind == "pos":
                x = np.abs(x) + 0.5
            elif kind == "away":
                x = np.sign(x) * (np.abs(x) + 0.2)
            vals.append(np.asarray(x, dtype=dtype))
    return vals


def _op_graph(op: str, spec: Spec, vals):
    """`op` applied to params (float inputs), an input (labels) or the rng seed."""
    b = GraphBuilder(op)
    names = []
    for k, ((kind, *_), v) in enumerate(zip(spec.inputs, vals)):
        t = TensorType.of(v)
        names.append(b.add_input(f"a{k}", t, {"labels": "input", "index": "input", "cond": "input", "seed": "rng"}.get(kind, "param")))
    out = b.emit(op, names, spec.attrs)
    return b.build([out[0] if isinstance(out, tuple) else out]).verify()  # max_pool2d: y, not its indices


def _vjp(op, spec, dtype, rng):
    """(input values, cotangent, graphc gradients of every float input, forward graph)."""
    vals = _inputs(spec, dtype, rng)
    g = _op_graph(op, spec, vals)
    joint = grad_graph(g, seeds="inputs")
    out_t = g.types[g.outputs[0].value]
    gy = np.asarray(rng.standard_normal(out_t.shape), dtype=out_t.np_dtype)
    res = interpret(joint, vals + [gy])
    assert [o.label for o in joint.outputs[1:]] == [f"grad:a{k}" for k, (kind, *_) in enumerate(spec.inputs)
                                                  if kind not in NONDIFF]
    return vals, gy, res[1:], g


def test_every_op_has_a_vjp_or_no_gradient_marker():
    missing = [name for name, op in OPS.items() if op.vjp is None]
    assert not missing, f"ops without a VJP rule or no_gradient marker: {missing}"


def test_every_differentiable_op_has_a_gradient_spec():
    differentiable = [name for name, op in OPS.items() if not isinstance(op.vjp, _NoGradient)]
    missing = [name for name in differentiable if name not in SPECS]
    assert not missing, f"differentiable ops without a spec in tests/test_autodiff.py SPECS: {missing}"
    assert not set(SPECS) - set(differentiable), "specs for ops that have no gradient"


@pytest.mark.parametrize("op,k", CASES, ids=[f"{o}-{k}" for o, k in CASES])
def test_vjp_matches_finite_differences_f64(op, k):
    spec = SPECS[op][k]
    rng = np.random.default_rng(k)
    vals, gy, grads, g = _vjp(op, spec, np.float64, rng)
    phi = lambda vs: float((interpret(g, vs)[0] * gy).sum())  # noqa: E731
    floats = [i for i, (kind, *_) in enumerate(spec.inputs) if kind not in NONDIFF]
    eps = 1e-6
    for i, grad in zip(floats, grads):
        fd = np.zeros_like(vals[i])
        for idx in np.ndindex(vals[i].shape):
            hi = [v.copy() for v in vals]
            lo = [v.copy() for v in vals]
            hi[i][idx] += eps
            lo[i][idx] -= eps
            fd[idx] = (phi(hi) - phi(lo)) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7, err_msg=f"{op}: d/d input {i}")


@pytest.mark.parametrize("op,k", CASES, ids=[f"{o}-{k}" for o, k in CASES])
def test_forward_matches_torch_f64(op, k):
    """The numpy reference of every differentiable op against torch, in float64."""
    spec = SPECS[op][k]
    vals = _inputs(spec, np.float64, np.random.default_rng(k))
    attrs = OPS[op].normalize_attrs(spec.attrs)
    want = spec.torch([int(v) if kind == "seed" else torch.tensor(v) for (kind, *_), v in zip(spec.inputs, vals)], attrs)
    got = OPS[op].reference(*vals, **attrs)
    got = got[0] if isinstance(got, tuple) else got  # max_pool2d: y (its indices are not differentiable)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=op)


@pytest.mark.parametrize("op,k", CASES, ids=[f"{o}-{k}" for o, k in CASES])
def test_vjp_matches_torch_f32(op, k):
    spec = SPECS[op][k]
    rng = np.random.default_rng(k)  # the same inputs as the float64 check, rounded
    vals, gy, grads, _ = _vjp(op, spec, np.float32, rng)
    ts = []
    for (kind, *_), v in zip(spec.inputs, vals):
        ts.append(int(v) if kind == "seed" else torch.tensor(v, requires_grad=kind not in NONDIFF))
    y = spec.torch(ts, {**OPS[op].normalize_attrs(spec.attrs)})
    (y * torch.from_numpy(gy)).sum().backward()
    floats = [t for (kind, *_), t in zip(spec.inputs, ts) if kind not in NONDIFF]
    for t, grad in zip(floats, grads):
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_no_gradient_op_on_the_path_is_an_error():
    g = parse("""graph f {
      param %w: f32[3]
      input %g: f32[3]
      %0: f32[3] = relu_backward(%g, %w)
      %1: f32[] = sum(%0) {dims=[0]}
      return %1
    }""")
    with pytest.raises(GraphcError, match="relu_backward has no gradient: a backward op"):
        grad_graph(g)


# ------------------------------------------------------------------ the walk: reuse, branches, reachability


def _grads(text: str, inputs: dict, **kw):
    joint = grad_graph(parse(text), **kw)
    res = interpret(joint, inputs)
    return joint, {o.label: r for o, r in zip(joint.outputs, res) if o.label}


def test_reuse_sums_gradients():
    # b = a + a; c = b + b; loss = sum(c * a) = 4 sum(a^2): d/da = 8a
    a = np.array([1.0, -2.0, 3.0], np.float32)
    _, grads = _grads("""graph f {
      param %a: f32[3]
      %0: f32[3] = add(%a, %a)
      %1: f32[3] = add(%0, %0)
      %2: f32[3] = mul(%1, %a)
      %3: f32[] = sum(%2) {dims=[0]}
      return %3
    }""", {"a": a})
    np.testing.assert_allclose(grads["grad:a"], 8 * a)


def test_value_used_by_two_branches_matches_torch():
    g = parse("""graph f {
      param %x: f32[2,3]
      param %w: f32[3]
      %0: f32[2,3] = tanh(%x)
      %1: f32[2,3] = mul(%0, %w)
      %2: f32[2,3] = exp(%0)
      %3: f32[2,3] = add(%1, %2)
      %4: f32[] = mean(%3) {dims=[0,1]}
      return %4
    }""")
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    res = interpret(grad_graph(g), [x, w])
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    h = tx.tanh()
    (h * tw + h.exp()).mean().backward()
    np.testing.assert_allclose(res[1], tx.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(res[2], tw.grad.numpy(), rtol=1e-5)


def test_values_that_do_not_reach_the_loss_get_no_gradient_nodes():
    joint = grad_graph(parse("""graph f {
      param %a: f32[3]
      param %unused: f32[3]
      %0: f32[3] = exp(%a)
      %1: f32[3] = neg(%0)
      %2: f32[3] = exp(%unused)
      %3: f32[] = sum(%0) {dims=[0]}
      return %3
    }"""))
    backward = joint.nodes[4:]
    assert {n.grad_of for n in backward} == {"3", "0"}
    assert [o.label for o in joint.outputs] == [None, "grad:a"]
    assert joint.meta["autodiff"]["unreached"] == ["unused"]


def test_wrt_selects_inputs_and_rejects_bad_names():
    text = """graph f {
      input %x: f32[3]
      param %w: f32[3]
      %0: f32[3] = mul(%x, %w)
      %1: f32[] = sum(%0) {dims=[0]}
      return %1
    }"""
    joint = grad_graph(parse(text), wrt=["x"])
    assert [o.label for o in joint.outputs] == [None, "grad:x"]
    with pytest.raises(GraphcError, match="not an input"):
        grad_graph(parse(text), wrt=["nope"])
    with pytest.raises(GraphcError, match="not a scalar loss"):
        grad_graph(parse(text.replace("return %1", "return %0")), seeds="ones")


def test_autodiff_pass_form():
    g = graphc.trace(WithLoss(SimpleNet().eval(), "mse"), np.zeros((4, 10), np.float32), np.zeros((4, 1), np.float32))
    joint, changed = autodiff(g)
    assert changed and joint == grad_graph(g)
    assert autodiff(joint) == (joint, False)


# ------------------------------------------------------------------ provenance


def test_backward_nodes_name_their_forward_node_and_source_line():
    g = graphc.trace(WithLoss(SimpleNet(), "mse"), np.zeros((4, 10), np.float32), np.zeros((4, 1), np.float32))
    joint = grad_graph(g)
    fwd = {n.outputs[0]: n for n in g.nodes}
    for n in joint.nodes[len(g.nodes):]:
        assert n.grad_of in fwd, f"backward node {n} has no forward node"
        assert n.loc == fwd[n.grad_of].loc
    text = str(joint)
    assert "# grad of %0, models.py:20" in text  # linear1 -> linear_backward
    assert parse(text) == joint


# ------------------------------------------------------------------ whole models against torch


def _torch_grads(tmodel, prefix="model."):
    return {f"grad:{prefix}{k}": p.grad.numpy() for k, p in tmodel.named_parameters()}


def _check_grads(joint, res, expected):
    got = {o.label: r for o, r in zip(joint.outputs, res) if o.label}
    assert sorted(got) == sorted(expected)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_simple_net_train_mode_gradients_match_torch_with_the_same_mask():
    model = SimpleNet()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 10)).astype(np.float32), rng.standard_normal((16, 1)).astype(np.float32)
    g = graphc.trace(WithLoss(model, "mse"), x, y)
    joint = grad_graph(g)
    seed = 77
    res = interpret(joint, {"x": x, "y": y, "seed": np.asarray(seed, np.int64),
                            **{f"model.{k}": v for k, v in model.state_dict().items()}})

    (drop,) = [n for n in g.nodes if n.op == "dropout"]
    mask = torch.from_numpy(dropout_mask(seed, drop.attr["p"], drop.attr["stream"], (16, 20), np.float32))
    t = copy_to_torch(model, torch_simple_net())
    loss = TF.mse_loss(t.linear2(t.relu(t.linear1(torch.from_numpy(x))) * mask), torch.from_numpy(y))
    loss.backward()
    np.testing.assert_allclose(res[0], loss.item(), rtol=1e-5)
    _check_grads(joint, res, _torch_grads(t))


def test_mlp_cross_entropy_gradients_match_torch():
    sizes = (12, 16, 16, 16, 5)  # three hidden layers
    model = mlp(sizes)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 12)).astype(np.float32), rng.integers(0, 5, 8).astype(np.int64)
    joint = grad_graph(graphc.trace(WithLoss(model, "ce"), x, y))
    assert {"log_softmax_backward", "nll_loss_backward"} <= {n.op for n in joint.nodes}
    res = interpret(joint, {"x": x, "y": y, **{f"model.{k}": v for k, v in model.state_dict().items()}})
    t = copy_to_torch(model, torch_mlp(sizes))
    loss = TF.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    np.testing.assert_allclose(res[0], loss.item(), rtol=1e-5)
    _check_grads(joint, res, _torch_grads(t))


# ------------------------------------------------------------------ IR in, IR out


def _lit(src: str, expected: str, **kw):
    got = str(grad_graph(parse(textwrap.dedent(src)), **kw))
    assert got == textwrap.dedent(expected).strip(), "\n" + got


def test_ir_reuse_of_a_value():
    _lit("""
        graph f {
          param %a: f32[3]
          %0: f32[3] = add(%a, %a)
          %1: f32[3] = add(%0, %0)
          %2: f32[] = sum(%1) {dims=[0]}
          return %2 as loss
        }""", """
        graph f {
          param %a: f32[3]
          %0: f32[3] = add(%a, %a)
          %1: f32[3] = add(%0, %0)
          %2: f32[] = sum(%1) {dims=[0]}
          %3: f32[] = full() {shape=[], value=1.0}  # grad of %2
          %4: f32[1] = reshape(%3) {shape=[1]}  # grad of %2
          %5: f32[3] = broadcast_to(%4) {shape=[3]}  # grad of %2
          %6: f32[3] = add(%5, %5)  # grad of %0
          %7: f32[3] = add(%6, %6)  # grad of %a
          return %2 as loss, %7 as grad:a
        }""")


def test_ir_broadcasting_product_reduces_with_sum_to():
    _lit("""
        graph f {
          param %x: f32[4,3]
          param %s: f32[3]
          %0: f32[4,3] = mul(%x, %s)  # net.py:2
          %1: f32[] = mean(%0) {dims=[0,1]}  # net.py:3
          return %1
        }""", """
        graph f {
          param %x: f32[4,3]
          param %s: f32[3]
          %0: f32[4,3] = mul(%x, %s)  # net.py:2
          %1: f32[] = mean(%0) {dims=[0,1]}  # net.py:3
          %2: f32[] = full() {shape=[], value=1.0}  # grad of %1, net.py:3
          %3: f32[] = full() {shape=[], value=0.08333333333333333}  # grad of %1, net.py:3
          %4: f32[] = mul(%2, %3)  # grad of %1, net.py:3
          %5: f32[1,1] = reshape(%4) {shape=[1,1]}  # grad of %1, net.py:3
          %6: f32[4,3] = broadcast_to(%5) {shape=[4,3]}  # grad of %1, net.py:3
          %7: f32[4,3] = mul(%6, %s)  # grad of %0, net.py:2
          %8: f32[4,3] = mul(%6, %x)  # grad of %0, net.py:2
          %9: f32[3] = sum_to(%8) {shape=[3]}  # grad of %0, net.py:2
          return %1, %7 as grad:x, %9 as grad:s
        }""")


def test_ir_fused_linear_relu_with_dropout():
    _lit("""
        graph net {
          input %x: f32[8,4]
          param %w1: f32[6,4]
          param %b1: f32[6]
          param %w2: f32[1,6]
          rng %seed: i64[]
          %0: f32[8,6] = linear_relu(%x, %w1, %b1)  # net.py:5
          %1: f32[8,6] = dropout(%0, %seed) {p=0.5}  # net.py:6
          %2: f32[8,1] = linear(%1, %w2)  # net.py:7
          return %2 as out
        }""", """
        graph net {
          input %x: f32[8,4]
          param %w1: f32[6,4]
          param %b1: f32[6]
          param %w2: f32[1,6]
          rng %seed: i64[]
          grad %grad.0: f32[8,1]
          %0: f32[8,6] = linear_relu(%x, %w1, %b1)  # net.py:5
          %1: f32[8,6] = dropout(%0, %seed) {p=0.5}  # net.py:6
          %2: f32[8,1] = linear(%1, %w2)  # net.py:7
          %3: f32[8,6], %4: f32[1,6] = linear_backward(%grad.0, %1, %w2) {bias_grad=false}  # grad of %2, net.py:7
          %5: f32[8,6] = dropout(%3, %seed) {p=0.5}  # grad of %1, net.py:6
          %6: f32[6,4], %7: f32[6] = linear_backward(%5, %x, %w1, %0) {input_grad=false, relu=true}  # grad of %0, net.py:5
          return %2 as out, %6 as grad:w1, %7 as grad:b1, %4 as grad:w2
        }""")


# ------------------------------------------------------------------ random expressions (reuse everywhere)

_UNARY = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "neg": torch.neg, "exp": lambda t: torch.exp(t * 0.1)}
_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(_UNARY) + sorted(_BINARY)), st.integers(0, 99), st.integers(0, 99)),
                min_size=1, max_size=8))
def test_random_expressions_with_reused_values_match_torch(program):
    """Each step applies an op to earlier values (often the same one twice); the loss sums them all."""
    b = GraphBuilder("expr")
    vals = [b.add_input("a", TensorType((3,)), "param"), b.add_input("w", TensorType((2, 3)), "param")]
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal(3).astype(np.float32), "w": rng.standard_normal((2, 3)).astype(np.float32)}
    ts = [torch.tensor(arrays["a"], requires_grad=True), torch.tensor(arrays["w"], requires_grad=True)]
    leaves = list(ts)
    for op, i, j in program:
        x, y = vals[i % len(vals)], vals[j % len(vals)]
        tx, ty = ts[i % len(ts)], ts[j % len(ts)]
        if op in _UNARY:
            # exp(0.1 x) keeps values small over long chains
            if op == "exp":
                x = b.emit("mul", [x, b.emit("full", [], {"shape": (), "value": 0.1})])
            vals.append(b.emit(op, [x]))
            ts.append(_UNARY[op](tx))
        else:
            vals.append(b.emit(op, [x, y]))
            ts.append(_BINARY[op](tx, ty))
    total = None
    for v in vals[2:]:
        s = b.emit("sum", [v], {"dims": tuple(range(b.types[v].rank))})
        total = s if total is None else b.emit("add", [total, s])
    joint = grad_graph(b.build([total]))
    got = {o.label[len("grad:"):]: r for o, r in zip(joint.outputs, interpret(joint, arrays)) if o.label}
    sum(t.sum() for t in ts[2:]).backward()
    for name, leaf in zip(["a", "w"], leaves):
        if leaf.grad is None:  # the loss does not reach it: no gradient output, as in torch
            assert name not in got
        else:
            np.testing.assert_allclose(got[name], leaf.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
