"""Partition of a joint graph into forward and backward plans, and the saved-values ledger."""
from __future__ import annotations

import textwrap

import numpy as np

import graphc
from graphc.ir import interpret, parse
from graphc.passes.autodiff import grad_graph
from graphc.passes.partition import partition
from models import SimpleNet, WithLoss, mlp


def _random_inputs(g, seed=0):
    rng = np.random.default_rng(seed)
    vals = {}
    for i in g.inputs:
        if i.kind == "rng":
            vals[i.name] = np.asarray(99, np.int64)
        elif i.type.dtype == "i64":
            vals[i.name] = rng.integers(0, 3, i.type.shape).astype(np.int64)
        else:
            vals[i.name] = rng.standard_normal(i.type.shape).astype(i.type.np_dtype)
    return vals


def _check_plans(joint, part, vals):
    """Forward then backward, as a runtime would run them, give the joint graph's results."""
    want = interpret(joint, vals)
    fwd = interpret(part.forward, {i.name: vals[i.name] for i in part.forward.inputs})
    saved = {o.value: v for o, v in zip(part.forward.outputs, fwd) if o.label == "saved"}
    bwd = interpret(part.backward, {i.name: saved[i.name] if i.kind == "saved" else vals[i.name] for i in part.backward.inputs})
    fwd_want = [w for o, w in zip(joint.outputs, want) if not (o.label or "").startswith("grad:")]
    grad_want = {o.label: w for o, w in zip(joint.outputs, want) if (o.label or "").startswith("grad:")}
    for a, b in zip(fwd, fwd_want):
        np.testing.assert_array_equal(a, b)
    assert [o.label for o in part.backward.outputs] == list(grad_want)
    for o, got in zip(part.backward.outputs, bwd):
        np.testing.assert_allclose(got, grad_want[o.label], rtol=1e-6, atol=1e-7, err_msg=o.label)


def _check_ledger(part):
    fwd_saved = [o.value for o in part.forward.outputs if o.label == "saved"]
    assert [s.value for s in part.ledger] == fwd_saved
    assert [i.name for i in part.backward.inputs if i.kind == "saved"] == fwd_saved
    assert part.saved_bytes == sum(part.forward.types[v].nbytes for v in fwd_saved)
    names = {i.name for i in part.forward.inputs}
    for s in part.ledger:
        assert s.value not in names, f"%{s.value} is an input: the backward reads it directly"
        assert s.nbytes == s.type.nbytes and s.type == part.forward.types[s.value]
        assert s.users and len(s.users) == len(part.backward.users[s.value])
        assert s.reason and s.producer.startswith(f"%{s.value}:")


def _simple_net_joint():
    x, y = np.zeros((16, 10), np.float32), np.zeros((16, 1), np.float32)
    return grad_graph(graphc.trace(WithLoss(SimpleNet(), "mse"), x, y))


def test_simple_net_plans_give_the_joint_results():
    joint = _simple_net_joint()
    part = partition(joint)
    _check_plans(joint, part, _random_inputs(joint))
    _check_ledger(part)
    # relu output kept once; the dropout output is recomputed from it and the seed.
    assert [s.value for s in part.ledger if s.op == "relu"] == ["1"]
    assert part.recomputed == ["2"] and part.backward.producer("2").op == "dropout"
    relu = next(s for s in part.ledger if s.op == "relu")
    assert "relu mask: output kept (input not needed)" in relu.reason
    assert relu.loc == "models.py:21"
    # Params, inputs and the seed reach the backward as themselves, never as saved copies.
    kinds = {i.name: i.kind for i in part.backward.inputs}
    assert kinds["seed"] == "rng" and kinds["model.linear2.weight"] == "param" and kinds["x"] == "input"


def test_mlp_cross_entropy_plans_and_ledger():
    x, y = np.zeros((8, 12), np.float32), np.zeros(8, np.int64)
    joint = grad_graph(graphc.trace(WithLoss(mlp((12, 16, 16, 16, 5)), "ce"), x, y))
    part = partition(joint)
    _check_plans(joint, part, _random_inputs(joint, 1))
    _check_ledger(part)
    ops = [s.op for s in part.ledger]
    assert ops == ["relu", "relu", "relu", "log_softmax"]  # no linear outputs: relu keeps what it needs
    assert all("weight-gradient GEMM operand" in s.reason for s in part.ledger if s.op == "relu")


FUSED_SIMPLE_NET = """
graph SimpleNet {
  input %x: f32[16,10]
  input %y: f32[16,1]
  param %linear1.weight: f32[20,10]
  param %linear1.bias: f32[20]
  param %linear2.weight: f32[1,20]
  param %linear2.bias: f32[1]
  rng %seed: i64[]
  %0: f32[16,20] = linear_relu(%x, %linear1.weight, %linear1.bias)  # models.py:20
  %1: f32[16,20] = dropout(%0, %seed) {p=0.5}  # models.py:22
  %2: f32[16,1] = linear(%1, %linear2.weight, %linear2.bias)  # models.py:23
  %3: f32[] = mse_loss(%2, %y)  # train.py:9
  return %3 as loss
}"""


def test_fused_simple_net_backward_uses_linear_backward_with_relu():
    joint = grad_graph(parse(FUSED_SIMPLE_NET))
    part = partition(joint)
    ops = [n.op for n in part.backward.nodes]
    assert "relu" not in ops and "relu_backward" not in ops
    (lb1,) = [n for n in part.backward.nodes if n.op == "linear_backward" and n.attr["relu"]]
    assert lb1.inputs[3] == "0" and lb1.attr["input_grad"] is False
    _check_plans(joint, part, _random_inputs(joint, 2))
    _check_ledger(part)
    assert [s.value for s in part.ledger] == ["0", "2"]
    assert "relu mask of fused linear_relu" in part.ledger[0].reason


def test_fused_simple_net_plans_as_ir():
    part = partition(grad_graph(parse(FUSED_SIMPLE_NET)))
    assert str(part.forward) == textwrap.dedent("""\
        graph SimpleNet.forward {
          input %x: f32[16,10]
          input %y: f32[16,1]
          param %linear1.weight: f32[20,10]
          param %linear1.bias: f32[20]
          param %linear2.weight: f32[1,20]
          param %linear2.bias: f32[1]
          rng %seed: i64[]
          %0: f32[16,20] = linear_relu(%x, %linear1.weight, %linear1.bias)  # models.py:20
          %1: f32[16,20] = dropout(%0, %seed) {p=0.5}  # models.py:22
          %2: f32[16,1] = linear(%1, %linear2.weight, %linear2.bias)  # models.py:23
          %3: f32[] = mse_loss(%2, %y)  # train.py:9
          return %3 as loss, %0 as saved, %2 as saved
        }""")
    assert str(part.backward) == textwrap.dedent("""\
        graph SimpleNet.backward {
          saved %0: f32[16,20]
          saved %2: f32[16,1]
          input %x: f32[16,10]
          input %y: f32[16,1]
          param %linear1.weight: f32[20,10]
          param %linear2.weight: f32[1,20]
          rng %seed: i64[]
          %1: f32[16,20] = dropout(%0, %seed) {p=0.5}  # models.py:22
          %4: f32[] = full() {shape=[], value=1.0}  # grad of %3, train.py:9
          %5: f32[16,1] = mse_loss_backward(%4, %2, %y)  # grad of %3, train.py:9
          %6: f32[16,20], %7: f32[1,20], %8: f32[1] = linear_backward(%5, %1, %linear2.weight)  # grad of %2, models.py:23
          %9: f32[16,20] = dropout(%6, %seed) {p=0.5}  # grad of %1, models.py:22
          %10: f32[20,10], %11: f32[20] = linear_backward(%9, %x, %linear1.weight, %0) {input_grad=false, relu=true}  # grad of %0, models.py:20
          return %10 as grad:linear1.weight, %11 as grad:linear1.bias, %7 as grad:linear2.weight, %8 as grad:linear2.bias
        }""")
    text = part.format_ledger()
    assert text.startswith("saved for backward: 2 value(s), 1,344 bytes")
    assert "recomputed in backward (not saved): %1 (dropout)" in text


def test_cheap_values_of_params_and_constants_are_recomputed_not_saved():
    joint = grad_graph(parse("""graph f {
      param %x: f32[4,3]
      param %w: f32[5,3]
      %0: f32[3,5] = transpose(%w) {perm=[1,0]}
      %1: f32[4,5] = matmul(%x, %0)
      %2: f32[] = full() {shape=[], value=2.0}
      %3: f32[4,5] = mul(%1, %2)
      %4: f32[4,5] = tanh(%3)
      %5: f32[] = sum(%4) {dims=[0,1]}
      return %5
    }"""))
    part = partition(joint)
    assert [s.value for s in part.ledger] == ["4"]  # the tanh output; transpose(w) and the 2.0 are redone
    assert part.recomputed == ["0", "2"]
    _check_plans(joint, part, _random_inputs(joint, 3))
    _check_ledger(part)


def test_non_scalar_output_takes_gradient_seeds_as_backward_inputs():
    joint = grad_graph(parse("""graph f {
      input %x: f32[4,3]
      param %w: f32[2,3]
      %0: f32[4,2] = linear(%x, %w)
      %1: f32[4,2] = sigmoid(%0)
      return %1 as out
    }"""))
    part = partition(joint)
    assert [(i.name, i.kind) for i in part.backward.inputs] == [("1", "saved"), ("grad.0", "grad"), ("x", "input"), ("w", "param")]
    assert [i.name for i in part.forward.inputs] == ["x", "w"]
    assert "sigmoid output" in part.ledger[0].reason
    _check_plans(joint, part, _random_inputs(joint, 4))


def test_a_graph_without_gradients_partitions_to_an_empty_backward():
    g = parse("""graph f {
      input %x: f32[3]
      %0: f32[3] = exp(%x)
      return %0
    }""")
    part = partition(g)
    assert part.forward.nodes == g.nodes and not part.backward.nodes and part.ledger == []
