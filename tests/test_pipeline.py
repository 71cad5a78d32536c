"""compile_pipeline: the stages and plans for each mode, checked against the unoptimized graphs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.ir import GraphcError, interpret
from graphc.passes import INFERENCE_PIPELINE, TRAINING_PIPELINE, PassError, compile_pipeline
from graphc.passes.autodiff import grad_graph
from graphc.passes.train_step import OptimizerSpec, build_train_step
from models import SimpleNet, WithLoss

TOL = {"rtol": 1e-4, "atol": 1e-5}


def ops(g):
    """The ops a plan runs, kernel bodies flattened (the plan before the kernel stage grouped it)."""
    from graphc.ir.graph import members

    return [n.op for n in members(g)]


def values_for(graphs, model, seed=0):
    """Input values by name for every input of `graphs`: the model's real params, random rest."""
    rng = np.random.default_rng(seed)
    vals = dict(model.state_dict())
    for g in graphs:
        for i in g.inputs:
            if i.name in vals:
                continue
            if i.kind == "rng":
                vals[i.name] = np.asarray(rng.integers(0, 2**40), dtype=np.int64)
            elif i.kind == "hyper":
                vals[i.name] = np.asarray(rng.uniform(0.01, 0.5), dtype=np.float64)
            elif i.name == "state.group0.step":
                vals[i.name] = np.asarray(3, dtype=np.int64)  # steps taken so far
            elif i.type.dtype == "i64":
                classes = next(u for u in g.users[i.name] if u.op in ("nll_loss", "cross_entropy")).inputs[0]
                vals[i.name] = rng.integers(0, g.types[classes].shape[1], i.type.shape).astype(np.int64)
            else:
                x = rng.standard_normal(i.type.shape)
                vals[i.name] = (np.abs(x) if i.kind == "state" else x).astype(i.type.np_dtype)
    return vals


def run(g, vals):
    return interpret(g, {i.name: vals[i.name] for i in g.inputs})


def run_training(plans, vals):
    """Forward plan, then backward plan on its saved values: (model outputs, {grad label: value})."""
    fwd = run(plans.forward, vals)
    outs = [v for o, v in zip(plans.forward.outputs, fwd) if o.label != "saved"]
    saved = {o.value: v for o, v in zip(plans.forward.outputs, fwd) if o.label == "saved"}
    grads = run(plans.backward, {**vals, **saved})
    return outs, {o.label: v for o, v in zip(plans.backward.outputs, grads)}


def run_joint(joint, vals):
    res = run(joint, vals)
    outs = [v for o, v in zip(joint.outputs, res) if not (o.label or "").startswith("grad:")]
    return outs, {o.label: v for o, v in zip(joint.outputs, res) if (o.label or "").startswith("grad:")}


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **TOL)


# ------------------------------------------------------------------ SimpleNet


def simple_net_graph(batch=8):
    return graphc.trace(SimpleNet(), np.zeros((batch, 10), np.float32))


def test_inference_of_a_train_mode_trace_equals_the_eval_mode_model():
    model = SimpleNet()
    g = graphc.trace(model, np.zeros((8, 10), np.float32))
    plans = compile_pipeline(g, "inference")
    assert plans.stage_names == ["traced", *_stage_names(INFERENCE_PIPELINE), "forward_plan", "kernels", "threads"]
    assert ops(plans.forward) == ["linear_relu", "linear"]
    assert plans.backward is None and plans.train_step is None and plans.ledger is None
    assert [i.name for i in plans.forward.inputs] == [i.name for i in g.inputs]  # seed stays: same signature
    eval_graph = graphc.trace(model.eval(), np.zeros((8, 10), np.float32))
    vals = values_for([g], model)
    assert_same(run(plans.forward, vals), run(eval_graph, vals))
    # (and the 8x20x10 linear_relu and the 8x1x20 linear, a dot product per row, as loops kernels of
    # one member: passes/gemm_impl.py)
    assert [r.pattern for r in plans.fusion_records if r.fused] == ["linear+relu", "kernel:gemm", "kernel:gemm"]


def _stage_names(pipeline):
    seen, out = {}, []
    for p in pipeline:
        seen[p] = seen.get(p, 0) + 1
        out.append(p if seen[p] == 1 else f"{p}.{seen[p]}")
    return out


def test_training_simple_net_forward_and_backward_are_fused():
    model = SimpleNet()
    g = graphc.trace(model, np.zeros((8, 10), np.float32))
    plans = compile_pipeline(g, "training")
    assert plans.stage_names == ["traced", *_stage_names(TRAINING_PIPELINE), "forward_plan", "backward_plan",
                                 "forward_kernels", "forward_threads", "backward_kernels", "backward_threads"]
    assert len(set(plans.stage_names)) == len(plans.stage_names)
    assert "linear_relu" in ops(plans.forward) and "relu" not in ops(plans.forward)
    before_kernels = plans.stage("backward_plan").graph  # the kernel stage decomposes linear_backward
    fused_bwd = [n for n in before_kernels.nodes if n.op == "linear_backward" and n.attr["relu"]]
    assert len(fused_bwd) == 1 and "relu_backward" not in ops(before_kernels)
    assert plans.ledger == plans.partition.ledger and plans.stage("backward_threads").graph is plans.backward
    vals = values_for([g, grad_graph(g)], model)
    outs, grads = run_training(plans, vals)
    ref_outs, ref_grads = run_joint(grad_graph(g), vals)
    assert_same(outs, ref_outs)
    assert sorted(grads) == sorted(ref_grads) == [f"grad:{p}" for p in sorted(model.state_dict())]
    assert_same([grads[k] for k in sorted(grads)], [ref_grads[k] for k in sorted(grads)])


def test_training_with_cross_entropy_loss_fuses_the_loss():
    model = WithLoss(SimpleNet2(), "ce")
    g = graphc.trace(model, np.zeros((6, 4), np.float32), np.zeros(6, np.int64))
    assert "log_softmax" in ops(g)
    plans = compile_pipeline(g, "training")
    assert "cross_entropy" in ops(plans.forward) and "log_softmax" not in ops(plans.forward)
    assert "cross_entropy_backward" in ops(plans.backward)
    vals = values_for([g], model)
    outs, grads = run_training(plans, vals)
    ref_outs, ref_grads = run_joint(grad_graph(g), vals)
    assert_same(outs, ref_outs)
    assert_same([grads[k] for k in sorted(grads)], [ref_grads[k] for k in sorted(ref_grads)])
    op_fusions = [r.pattern for r in plans.fusion_records if r.fused and not r.pattern.startswith("kernel:")]
    assert op_fusions == ["linear+relu", "log_softmax+nll_loss"]  # then the kernel stage's kernel:* records
    assert any(r.pattern.startswith("kernel:") for r in plans.fusion_records if r.fused)


class SimpleNet2(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


@pytest.mark.parametrize("spec", [OptimizerSpec("sgd", {"lr": 0.1, "momentum": 0.9}), OptimizerSpec("adam", {"lr": 0.01})])
def test_train_step_plan(spec):
    model = WithLoss(SimpleNet(), "mse")
    g = graphc.trace(model, np.zeros((8, 10), np.float32), np.zeros((8, 1), np.float32))
    plans = compile_pipeline(g, "train_step", optimizer=spec)
    names = plans.stage_names
    assert names[0] == "traced" and names[-3:] == ["train_step_plan", "kernels", "threads"] and "build_train_step" in names
    assert names.index("fuse_linear_relu") < names.index("build_train_step") < names.index("dce.2")
    step = plans.train_step
    assert step is plans.stage("threads").graph and plans.backward is None
    assert plans.forward is plans.stage(names[names.index("build_train_step") - 1]).graph
    assert "linear_relu" in ops(step) and "relu" not in ops(step)
    assert step.outputs[0].label == "loss"
    reference = build_train_step(g, spec)  # the same step without any optimization
    vals = values_for([reference], model)
    assert [o.label for o in step.outputs] == [o.label for o in reference.outputs]
    assert_same(run(step, vals), run(reference, vals))


def test_train_step_needs_an_optimizer():
    g = graphc.trace(WithLoss(SimpleNet(), "mse"), np.zeros((8, 10), np.float32), np.zeros((8, 1), np.float32))
    with pytest.raises(GraphcError, match="needs an optimizer"):
        compile_pipeline(g, "train_step")


def test_bad_mode_and_essential_stages():
    g = simple_net_graph()
    with pytest.raises(GraphcError, match="mode='eval': expected one of 'inference', 'training', 'train_step'"):
        compile_pipeline(g, "eval")
    with pytest.raises(GraphcError, match="cannot run without the 'autodiff' stage"):
        compile_pipeline(g, "training", disable=["autodiff"])
    with pytest.raises(GraphcError, match="needs 'autodiff' in the pass list"):
        compile_pipeline(g, "training", passes=["dce"])


def test_custom_pass_list_and_disable():
    g = simple_net_graph()
    plans = compile_pipeline(g, "inference", passes=["remove_dropout", "dce"])
    assert plans.stage_names == ["traced", "remove_dropout", "dce", "forward_plan", "kernels", "threads"]
    assert ops(plans.forward) == ["linear", "relu", "linear"]
    plans = compile_pipeline(g, "training", disable=["fuse_linear_relu"])
    assert "fuse_linear_relu" not in plans.stage_names
    assert "relu" in ops(plans.forward) and "linear_relu" not in ops(plans.forward)
    assert not any(n.attr.get("relu") for n in plans.backward.nodes if n.op == "linear_backward")


def test_stage_lookup_by_name():
    plans = compile_pipeline(simple_net_graph(), "training")
    assert plans.ir("forward_kernels") == str(plans.forward)
    assert plans.graph("traced").nodes[1].op == "relu"
    with pytest.raises(GraphcError, match="no stage 'nope'; stages: traced, decompose, fold_constants"):
        plans.stage("nope")


def test_checked_mode_catches_a_broken_partition(monkeypatch):
    import graphc.passes.partition as partition_module

    real = partition_module.partition

    def broken(joint):
        part = real(joint)
        # the backward forgets to apply dropout's mask to the gradient
        nodes = tuple(n for n in part.backward.nodes if not (n.op == "dropout" and n.grad_of))
        dropped = next(n for n in part.backward.nodes if n.op == "dropout" and n.grad_of)
        nodes = tuple(n.replace(inputs=tuple(dropped.inputs[0] if i == dropped.out else i for i in n.inputs))
                      for n in nodes)
        return partition_module.Partition(part.forward, part.backward.replace(nodes=nodes), part.ledger)

    monkeypatch.setattr(partition_module, "partition", broken)
    with pytest.raises(PassError, match=r"partition \(after traced -> .* -> dce.2\) changed the results of the "
                                        r"backward plan: output 0 \(%\d+ as grad:linear1.weight"):
        compile_pipeline(simple_net_graph(), "training", check=True)


# ------------------------------------------------------------------ property: random MLPs


@st.composite
def mlps(draw):
    depth = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    act = draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid]))
    p = draw(st.sampled_from([0.0, 0.3]))
    loss = draw(st.sampled_from([None, "mse", "ce"]))
    if loss == "ce":
        widths[-1] = max(widths[-1], 2)
    graphc.manual_seed(draw(st.integers(0, 1000)))
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if k < depth - 1:
            layers.append(act())
            if p:
                layers.append(nn.Dropout(p))
    model = nn.Sequential(*layers)
    if not draw(st.booleans()):
        model.eval()
    batch = draw(st.integers(1, 4))
    examples = [np.zeros((batch, widths[0]), np.float32)]
    if loss:
        model = WithLoss(model, loss)
        examples.append(np.zeros(batch, np.int64) if loss == "ce" else np.zeros((batch, widths[-1]), np.float32))
    return model, examples


@settings(max_examples=20, deadline=None)
@given(mlps(), st.integers(0, 2**31))
def test_default_pipelines_keep_results_on_random_mlps(model_and_examples, seed):
    model, examples = model_and_examples
    g = graphc.trace(model, *examples)
    joint = grad_graph(g)
    vals = values_for([g, joint], model, seed)

    plans = compile_pipeline(g, "inference")
    # inference semantics: dropout is the identity, i.e. every dropout at p=0
    want = run(g.replace(nodes=tuple(n.replace(attrs=(("p", 0.0), ("stream", n.attr["stream"])))
                                     if n.op == "dropout" else n for n in g.nodes)), vals)
    assert_same(run(plans.forward, vals), want)
    assert "dropout" not in ops(plans.forward)

    plans = compile_pipeline(g, "training")
    outs, grads = run_training(plans, vals)
    ref_outs, ref_grads = run_joint(joint, vals)
    assert_same(outs, ref_outs)
    assert sorted(grads) == sorted(ref_grads)
    assert_same([grads[k] for k in sorted(grads)], [ref_grads[k] for k in sorted(grads)])
