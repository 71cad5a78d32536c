"""The kernel stage (passes/kernels.py, runtime/lower.py): kernel counts per model (as
tinygrad's schedule tests), golden stage text, the IR form of a kernel (print, parse, verify,
interpret), and jit = interpret = torch over generated MLPs (hypothesis)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import graphc
import graphc.nn as nn
from graphc.ir import GraphBuilder, TensorType, VerifyError, interpret, parse
from graphc.ir.graph import members
from graphc.passes.kernels import kernel_count, kernels
from graphc.passes.manager import PassContext
from graphc.runtime import Executable
from models import SimpleNet, assert_same_weights, copy_to_torch, mlp, train_like_torch

R = np.random.default_rng(0)


def _train_step(model, loss, x, y, opt="sgd", mode="jit"):
    o = graphc.optim.SGD(model.parameters(), lr=0.05) if opt == "sgd" else graphc.optim.Adam(model.parameters(), lr=0.01)
    return graphc.compile_train_step(model, loss, o, x, y, mode=mode)


def _stage(step, name="kernels"):
    return step.graph(name)


def _kernel_nodes(g):
    return [n for n in g.nodes if n.op == "kernel"]


# ------------------------------------------------------------------ kernel counts per model


def test_simple_net_train_step_kernels():
    x, y = R.random((64, 10), np.float32), R.random((64, 1), np.float32)
    step = _train_step(SimpleNet(), nn.MSELoss(), x, y, mode="interpret")
    g = _stage(step)
    ks = _kernel_nodes(g)
    # forward GEMMs with epilogues (the second also computes the loss: mse_loss decomposed, its mean
    # reduced in the epilogue); the loss gradient and its bias gradient in one reduce kernel;
    # linear_backward decomposed: the dx GEMM takes the dropout and relu masks and the bias gradient;
    # each weight-gradient GEMM writes its SGD update itself (addmm, transposed operand as a flag),
    # small enough to be a loop nest: a gemm kernel {impl="loops"} of one member (passes/gemm_impl.py)
    assert [[m.op for m in k.body.nodes] for k in ks] == [
        ["linear_relu", "dropout", "gt"], ["linear", "sub", "mul", "mean"], ["mse_loss_backward", "sum"],
        ["matmul", "mul", "mul", "where", "relu_backward", "sum"], ["addmm"], ["addmm"]]
    # (the one-output layer's GEMM: a dot product per row, lower_small_gemm.gemm_dots)
    assert [k.attr.get("impl") for k in ks] == ["loops", "loops", None, "loops", "loops", "loops"]
    assert kernel_count(g) == 9  # 4 kernels, 2 addmm, 2 bias sgd_update, the step counter
    assert not any(n.op in ("dropout", "uniform") for k in ks[1:] for n in k.body.nodes)  # no second draw
    assert "kernel count" in step.passes_report() or "kernels" in step.passes_report()


def test_m_mlp_train_step_kernels():
    x, y = R.random((128, 784), np.float32), R.integers(0, 10, 128)
    step = _train_step(mlp((784, 512, 512, 10)), nn.CrossEntropyLoss(), x, y, mode="interpret")
    g = _stage(step)
    ks = _kernel_nodes(g)
    # dx GEMMs with the next relu mask and bias gradient as epilogue; dW GEMMs write the SGD update
    # (addmm); the last layer's bias gradient (the loss gradient summed over the batch) is a
    # one-node reduce kernel (a generated loop, not the library's strided reduction)
    assert [[m.op for m in k.body.nodes] for k in ks] == [["matmul", "relu_backward", "sum"], ["sum"], ["matmul", "relu_backward", "sum"]]
    # forward GEMMs, loss, loss gradient, 2 dx GEMM kernels, 3 addmm, the last layer's bias gradient,
    # 3 bias updates, step counter
    assert kernel_count(g) == 3 + 1 + 1 + 2 + 3 + 1 + 3 + 1


def _graph(build):
    b = GraphBuilder("t")
    outs = build(b)
    return b.build(outs if isinstance(outs, list) else [outs]).verify()


def _run_kernels(g):
    ctx = PassContext("kernels")
    new, changed = kernels(g, ctx)
    new.verify()
    return new, ctx


def test_residual_add_fuses_into_the_gemm_epilogue():
    def build(b):
        x = b.add_input("x", TensorType((8, 16)))
        w = b.add_input("w", TensorType((16, 16)), "param")
        h = b.emit("linear_relu", [x, w])
        return b.emit("relu", [b.emit("add", [h, x])])

    g = _graph(build)
    new, ctx = _run_kernels(g)
    assert kernel_count(new) == 1 and new.nodes[0].attr["kind"] == "gemm"
    assert [m.op for m in new.nodes[0].body.nodes] == ["linear_relu", "add", "relu"]
    _agree(g, new)


def _softmax(b, x, dim):
    m = b.emit("max", [x], {"dims": (dim,), "keepdim": True})
    e = b.emit("exp", [b.emit("sub", [x, m])])
    return b.emit("div", [e, b.emit("sum", [e], {"dims": (dim,), "keepdim": True})])


def test_softmax_from_primitives_is_one_rows_kernel():
    g = _graph(lambda b: _softmax(b, b.add_input("x", TensorType((4, 7))), 1))
    new, ctx = _run_kernels(g)
    # max, sub + exp, sum, div: one pass over each row per reduction, the division in the last
    assert kernel_count(new) == 1 and new.nodes[0].attr["kind"] == "rows"
    assert [m.op for m in new.nodes[0].body.nodes] == ["max", "sub", "exp", "sum", "div"]
    _agree(g, new)


def test_softmax_over_another_dim_stays_apart():
    """A reduction of a dim other than the last ends its kernel, recorded."""
    g = _graph(lambda b: _softmax(b, b.add_input("x", TensorType((4, 7))), 0))
    new, ctx = _run_kernels(g)
    assert not any(n.attr.get("kind") == "rows" for n in _kernel_nodes(new))
    reasons = [r.reason for r in ctx.fusion_records if not r.fused]
    assert any("a reduction ends its kernel" in r for r in reasons)
    _agree(g, new)


def test_attention_scores_mask_and_softmax_and_its_backward_are_rows_kernels():
    """scale, causal mask, softmax (decomposed by the kernel pass) -> one rows kernel; so is
    softmax_backward and log_softmax(_backward); a rows kernel takes no GEMM, recorded."""
    def build(b):
        s = b.add_input("s", TensorType((2, 3, 5, 5)))
        gy = b.add_input("gy", TensorType((2, 3, 5, 5)))
        mask = b.emit("le", [b.emit("arange", [], {"size": 5, "dtype": "i64"}),
                             b.emit("reshape", [b.emit("arange", [], {"size": 5, "dtype": "i64"})], {"shape": (5, 1)})])
        z = b.emit("where", [mask, b.emit("mul", [s, b.emit("full", [], {"shape": (), "value": 0.25})]),
                             b.emit("full", [], {"shape": (), "value": float("-inf")})])
        p = b.emit("softmax", [z], {"dim": 3})
        lp = b.emit("log_softmax", [s], {"dim": 3})
        return [b.emit("softmax_backward", [gy, p], {"dim": 3}), b.emit("log_softmax_backward", [gy, lp], {"dim": 3})]

    g = _graph(build)
    new, ctx = _run_kernels(g)
    rows = [k for k in _kernel_nodes(new) if k.attr["kind"] == "rows"]
    # (scale, mask, softmax, its backward), (log_softmax), (log_softmax_backward: its sum(gy) is
    # computed after the log_softmax kernel starts, so it starts a kernel of its own)
    assert [len(k.body.nodes) for k in rows] == [11, 7, 3]
    assert not any(n.op in ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward") for n in new.nodes)
    assert any("decomposed" in n and "rows kernel" in n for n in ctx.notes)
    _agree(g, new, jit=False)  # (the GPT tests run these kernels compiled)


def test_layer_norm_backward_shapes_become_row_reductions():
    """sum_to a row shape is a row sum; broadcast_to read by broadcasting ops is dropped (noted)."""
    def build(b):
        x = b.add_input("x", TensorType((6, 8)))
        r = b.emit("sum_to", [x], {"shape": (6, 1)})
        return b.emit("mul", [x, b.emit("broadcast_to", [r], {"shape": (6, 8)})])

    g = _graph(build)
    new, ctx = _run_kernels(g)
    assert kernel_count(new) == 1 and new.nodes[0].attr["kind"] == "rows"
    assert [m.op for m in new.nodes[0].body.nodes] == ["sum", "mul"]
    assert any("broadcast_to" in n and "dropped" in n for n in ctx.notes)
    _agree(g, new)


def test_layer_norm_from_primitives():
    def build(b):
        x = b.add_input("x", TensorType((6, 32)))
        w = b.add_input("w", TensorType((32,)), "param")
        bias = b.add_input("b", TensorType((32,)), "param")
        mu = b.emit("mean", [x], {"dims": (1,), "keepdim": True})
        d = b.emit("sub", [x, mu])
        var = b.emit("mean", [b.emit("mul", [d, d])], {"dims": (1,), "keepdim": True})
        eps = b.emit("full", [], {"shape": (), "value": 1e-5})
        r = b.emit("rsqrt", [b.emit("add", [var, eps])])
        return b.emit("add", [b.emit("mul", [b.emit("mul", [d, r]), w]), bias])

    g = _graph(build)
    new, ctx = _run_kernels(g)
    # one rows kernel: mean; sub + mul, mean; add + rsqrt once per row; mul + mul + add
    assert kernel_count(new) == 1 and _kernel_nodes(new)[0].attr["kind"] == "rows", new
    _agree(g, new)


def _agree(g, new, jit=True):
    args = [R.standard_normal(i.type.shape).astype(i.type.np_dtype) for i in g.inputs]
    want = interpret(g, args)
    for got in (interpret(new, args), *([_jit(new, args)] if jit else [])):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _jit(g, args):
    exe = Executable(g, mode="jit")
    exe.run(*args)
    return [np.array(o) for o in exe.outputs]


# ------------------------------------------------------------------ the IR form of a kernel

GOLDEN_SIMPLE_NET = """\
  %1: f32[64,20], %2: f32[64,20], %29: bool[64,20] = kernel(%x, %linear1.weight, %linear1.bias, %seed, %28) {impl="loops", kind="gemm"} {
    %1: f32[64,20] = linear_relu(%x, %linear1.weight, %linear1.bias)
    %2: f32[64,20] = dropout(%1, %seed) {p=0.5}
    %29: bool[64,20] = gt(%2, %28)
  }
  %3: f32[64,1], %4: f32[] = kernel(%2, %linear2.weight, %linear2.bias, %target) {impl="loops", kind="gemm"} {
    %3: f32[64,1] = linear(%2, %linear2.weight, %linear2.bias)
    %19: f32[64,1] = sub(%3, %target)
    %20: f32[64,1] = mul(%19, %19)
    %4: f32[] = mean(%20) {dims=[0,1]}
  }
  %6: f32[64,1], %9: f32[1] = kernel(%5, %3, %target) {kind="reduce"} {
    %6: f32[64,1] = mse_loss_backward(%5, %3, %target)
    %9: f32[1] = sum(%6) {dims=[0]}
  }
  %26: f32[64,20], %12: f32[20] = kernel(%6, %linear2.weight, %30, %28, %29, %1) {impl="loops", kind="gemm"} {
    %7: f32[64,20] = matmul(%6, %linear2.weight)
    %31: f32[64,20] = mul(%7, %30)
    %32: f32[64,20] = mul(%7, %28)
    %33: f32[64,20] = where(%29, %31, %32)
    %26: f32[64,20] = relu_backward(%33, %1)
    %12: f32[20] = sum(%26) {dims=[0]}
  }
  %13: f32[20,10] = kernel(%linear1.weight, %26, %x, %hyper.group0.lr) {impl="loops", kind="gemm"} {
    %13: f32[20,10] = addmm(%linear1.weight, %26, %x, %hyper.group0.lr) {alpha=-1.0, trans_a=true}
  }
  %14: f32[20] = sgd_update(%linear1.bias, %12, %hyper.group0.lr, %hyper.group0.momentum, %hyper.group0.dampening, %hyper.group0.weight_decay)
  %15: f32[1,20] = kernel(%linear2.weight, %6, %2, %hyper.group0.lr) {impl="loops", kind="gemm"} {
    %15: f32[1,20] = addmm(%linear2.weight, %6, %2, %hyper.group0.lr) {alpha=-1.0, trans_a=true}
  }"""


def test_every_stage_records_each_nodes_phase_where_it_was_made():
    """Tracing makes forward nodes, autodiff backward ones (grad_of), the train-step build the
    optimizer's (updates and the step counter); passes that replace nodes pass the phase on, so
    every stage, kernel members included, says it in the IR text and parses it back."""
    x, y = R.random((16, 10), np.float32), R.random((16, 1), np.float32)
    step = _train_step(SimpleNet(), nn.MSELoss(), x, y, mode="interpret")
    for stage in step.stages:
        g = step.graph(stage)
        nodes = list(members(g))
        assert all(n.phase == "backward" for n in nodes if n.grad_of), stage
        updated = {o.value for o in g.outputs if (o.label or "").startswith("update:")}
        makers = [n for n in nodes if set(n.outputs) & updated]
        if makers:  # every update (parameters, momentum, the step counter) is made in the optimizer phase
            assert {n.phase for n in makers} == {"optimizer"}, stage
        assert {n.phase for n in nodes} <= {"forward", "backward", "optimizer"}
        assert parse(str(g)) == g, stage
    kernels_ = step.graph("kernels")
    text = step.ir("kernels")
    assert "# optimizer" in text
    assert {n.phase for n in members(kernels_) if n.op == "linear_relu"} == {"forward"}
    # the phase is what the text says, not guessed from where a node's inputs come from
    g = parse("graph p {\n  input %x: f32[3]\n  %0: f32[3] = neg(%x)  # optimizer, my.py:3\n"
              "  %1: f32[3] = neg(%0)  # grad of %0\n  %2: f32[3] = neg(%1)  # forward, grad of %0\n  return %2\n}")
    assert [n.phase for n in g.nodes] == ["optimizer", "backward", "forward"]
    assert g.nodes[0].loc == "my.py:3" and parse(str(g)) == g
    from graphc.inspect.roles import phases
    assert list(phases(g).values()) == ["optimizer", "backward", "forward"]


def _no_comments(text: str) -> str:
    return "\n".join(ln.split("  #")[0] for ln in text.splitlines())


def test_golden_simple_net_kernel_stage():
    x, y = R.random((64, 10), np.float32), R.random((64, 1), np.float32)
    step = _train_step(SimpleNet(), nn.MSELoss(), x, y, mode="interpret")
    text = step.ir("kernels")
    assert GOLDEN_SIMPLE_NET in _no_comments(text)
    g = parse(text)
    assert parse(str(g)) == g == step.graph("kernels")


GOLDEN_MLP = """graph t {
  input %x: f32[4,3]
  param %w: f32[5,3]
  param %b: f32[5]
  %3: f32[4] = kernel(%x, %w, %b) {kind="gemm"} {
    %0: f32[4,5] = linear(%x, %w, %b)
    %1: f32[4,5] = tanh(%0)
    %2: f32[4,5] = sigmoid(%1)
    %3: f32[4] = sum(%2) {dims=[1]}
  }
  return %3
}"""


def test_golden_small_model_round_trips_and_runs():
    def build(b):
        x = b.add_input("x", TensorType((4, 3)))
        w = b.add_input("w", TensorType((5, 3)), "param")
        bias = b.add_input("b", TensorType((5,)), "param")
        h = b.emit("sigmoid", [b.emit("tanh", [b.emit("linear", [x, w, bias])])])
        return b.emit("sum", [h], {"dims": (1,)})

    g = _graph(build)
    new, _ = _run_kernels(g)
    assert str(new) == GOLDEN_MLP
    assert parse(GOLDEN_MLP) == new
    _agree(g, new)


GOLDEN_LINEAR_BACKWARD = ("""graph t {
  input %gy: f32[8,6]
  input %x: f32[8,5]
  param %w: f32[6,5]
  input %y: f32[8,6]
  %0: f32[8,5], %1: f32[6,5], %2: f32[6] = linear_backward(%gy, %x, %w, %y) {relu=true}
  return %0, %1, %2
}""", """graph t {
  input %gy: f32[8,6]
  input %x: f32[8,5]
  param %w: f32[6,5]
  input %y: f32[8,6]
  %3: f32[8,6], %2: f32[6] = kernel(%gy, %y) {kind="reduce"} {
    %3: f32[8,6] = relu_backward(%gy, %y)
    %2: f32[6] = sum(%3) {dims=[0]}
  }
  %0: f32[8,5] = matmul(%3, %w)
  %1: f32[6,5] = kernel(%3, %x) {kind="gemm"} {
    %5: f32[6,8] = transpose(%3) {perm=[1,0]}
    %1: f32[6,5] = matmul(%5, %x)
  }
  return %0, %1, %2
}""")


def test_linear_backward_is_decomposed_for_its_gemms():
    """IR in, IR out: the relu mask and bias gradient in one loop, dx a plain GEMM, dw a GEMM that
    reads dz transposed as a view (no transpose copy); output names kept."""
    before, after = GOLDEN_LINEAR_BACKWARD
    g = parse(before)
    new, ctx = _run_kernels(g)
    assert str(new) == after
    assert any("linear_backward(...) decomposed" in n for n in ctx.notes)
    _agree(g, new)


def test_backward_dropout_reads_its_mask_from_the_forward_output():
    """relu -> dropout, and in backward dropout -> relu_backward: the backward draws no random
    numbers, and the result is bit-equal to the redraw, NaN / inf / -0.0 gradients included."""
    def build(b):
        h = b.add_input("h", TensorType((6, 7)))
        gy = b.add_input("gy", TensorType((6, 7)))
        seed = b.add_input("seed", TensorType((), "i64"), "rng")
        r = b.emit("relu", [h])
        y = b.emit("dropout", [r, seed], {"p": 0.4})
        d = b.emit("dropout", [gy, seed], {"p": 0.4}, grad_of=y)
        return [y, b.emit("relu_backward", [d, r], grad_of=r)]

    g = _graph(build)
    new, ctx = _run_kernels(g)
    assert [n.op for n in members(new) if n.op in ("dropout", "uniform")] == ["dropout"]  # the forward's only
    assert any("keep mask read from the forward" in n for n in ctx.notes)
    h = R.standard_normal((6, 7)).astype(np.float32)
    h[0, :3] = [np.inf, np.nan, 0.0]
    gy = R.standard_normal((6, 7)).astype(np.float32)
    gy[1, :4] = [np.nan, np.inf, -np.inf, -0.0]
    gy[2:4] = np.nan
    args = [h, gy, np.int64(1234)]
    want = interpret(g, args)
    for got in (interpret(new, args), _jit(new, args)):
        for a, b in zip(got, want):
            assert np.array_equal(np.signbit(a), np.signbit(b)) and np.array_equal(a, b, equal_nan=True)


def test_every_fusable_op_has_a_loop_expression():
    """The kernel pass fuses ops by their op-table kind; the lowering must have the scalar
    expression of each (`full` is never fused: constants are filled once)."""
    from graphc.ir.ops import OPS
    from graphc.runtime.lower import EXPR

    fusable = {n for n, op in OPS.items() if op.kind in ("elementwise", "broadcast")} - {"full"}
    assert sorted(fusable - set(EXPR)) == []


def test_arange_fuses_with_its_consumer():
    def build(b):
        x = b.add_input("x", TensorType((5,)))
        r = b.emit("arange", [], {"start": 2.0, "step": 0.5, "size": 5, "dtype": "f32"})
        return b.emit("mul", [b.emit("add", [r, x]), x])

    g = _graph(build)
    new, _ = _run_kernels(g)
    assert [[m.op for m in k.body.nodes] for k in _kernel_nodes(new)] == [["arange", "add", "mul"]]
    _agree(g, new)


def test_verify_rejects_a_broken_kernel():
    bad = GOLDEN_MLP.replace("    %2: f32[4,5] = sigmoid(%1)\n", "")
    with pytest.raises(VerifyError, match="body's outputs|not defined"):
        parse(bad)
    with pytest.raises(VerifyError, match="kind one of"):
        parse(GOLDEN_MLP.replace('{kind="gemm"}', '{kind="fast"}'))


def test_disable_kernels_keeps_the_plan():
    x, y = R.random((64, 10), np.float32), R.random((64, 1), np.float32)
    o = graphc.optim.SGD(SimpleNet().parameters(), lr=0.1)
    m = SimpleNet()
    step = graphc.compile_train_step(m, nn.MSELoss(), graphc.optim.SGD(m.parameters(), lr=0.1), x, y,
                                     mode="interpret", disable=["kernels"])
    assert "kernels" not in step.stages and o is not None


# ------------------------------------------------------------------ jit = interpret = torch over random MLPs

ACTS = {"relu": (nn.ReLU, torch.nn.ReLU), "tanh": (nn.Tanh, torch.nn.Tanh), "sigmoid": (nn.Sigmoid, torch.nn.Sigmoid)}


def _models(widths, acts, drop):
    g_layers, t_layers = [], []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        g_layers.append(nn.Linear(a, b))
        t_layers.append(torch.nn.Linear(a, b))
        if k < len(widths) - 2:
            g_layers.append(ACTS[acts[k]][0]())
            t_layers.append(ACTS[acts[k]][1]())
            if drop[k]:
                g_layers.append(nn.Dropout(0.3))
                t_layers.append(torch.nn.Dropout(0.3))
    return nn.Sequential(*g_layers), torch.nn.Sequential(*t_layers)


@settings(max_examples=4, deadline=None)
@given(depth=st.integers(1, 4), data=st.data())
def test_random_mlps_jit_interpret_torch_agree(depth, data):
    """Each example is a new numba compile (~5 s of CPU): 4 a run (each CI run draws new ones)."""
    widths = [data.draw(st.integers(1, 64)) for _ in range(depth + 1)]
    acts = [data.draw(st.sampled_from(sorted(ACTS))) for _ in range(depth)]
    drop = [data.draw(st.booleans()) for _ in range(depth)]
    loss = data.draw(st.sampled_from(["mse", "ce"]))
    opt = data.draw(st.sampled_from(["sgd", "adam"]))
    batch = data.draw(st.integers(1, 16))
    if loss == "ce" and widths[-1] < 2:
        widths[-1] = 2
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="data seed"))  # reproducible examples
    x = rng.standard_normal((batch, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], batch) if loss == "ce" else rng.standard_normal((batch, widths[-1])).astype(np.float32)
    loss_g = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    results = {}
    for mode in ("jit", "interpret"):
        graphc.manual_seed(11)
        model, tmodel = _models(widths, acts, drop)
        step = _train_step(model, loss_g, x, y, opt, mode)
        graphc.manual_seed(12)
        losses = [step(x, y) for _ in range(3)]
        results[mode] = (losses, [np.array(p) for p in model.parameters()])
    (l1, p1), (l2, p2) = results["jit"], results["interpret"]
    # Adam divides by sqrt(v): a weight whose gradients are rounding-sized moves by up to lr per step,
    # so float32 sums in another order may move it by more than sgd's 1e-5 (seen: 2e-5 after 3 steps)
    ptol = dict(rtol=1e-4, atol=1e-4 if opt == "adam" else 1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-4, atol=1e-5)  # the same dropout masks: same numbers
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, **ptol)
    if not any(drop[:depth - 1]):  # torch draws other masks: compare where no dropout runs
        graphc.manual_seed(11)
        model, tmodel = _models(widths, acts, drop)
        copy_to_torch(model, tmodel)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.05) if opt == "sgd" else torch.optim.Adam(tmodel.parameters(), lr=0.01)
        tl = torch.nn.CrossEntropyLoss() if loss == "ce" else torch.nn.MSELoss()
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        tlosses = []
        for _ in range(3):
            topt.zero_grad()
            out = tl(tmodel(tx), ty)
            out.backward()
            topt.step()
            tlosses.append(out.item())
        np.testing.assert_allclose(l1, tlosses, rtol=1e-4, atol=1e-5)
        for a, b in zip(p1, tmodel.parameters()):
            np.testing.assert_allclose(a, b.detach().numpy(), **ptol)


def test_layer_norm_layer_trains_like_torch():
    """nn.LayerNorm (an op with a decomposition only) in a train step against torch."""
    graphc.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    t = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    copy_to_torch(model, t)
    x, y = R.standard_normal((5, 6)).astype(np.float32), R.standard_normal((5, 2)).astype(np.float32)
    step = _train_step(model, nn.MSELoss(), x, y)
    train_like_torch(step, t, torch.optim.SGD(t.parameters(), lr=0.05), torch.nn.functional.mse_loss, x, y)
    assert_same_weights(model, t, rtol=1e-4, atol=1e-5)


def test_sum_to_is_rewritten_only_where_one_sum_equals_it():
    """sum_to -> sum {dims, keepdim} (so it fuses as a reduction) only where a single sum gives the
    same shape: size-1 dims kept, or leading dims dropped, not both."""
    from graphc.passes.kernels import _sum_dims

    assert _sum_dims((64, 32, 8, 8), (1, 32, 1, 1)) == ((0, 2, 3), True)
    assert _sum_dims((64, 10), (10,)) == ((0,), False)
    assert _sum_dims((4, 5, 6), (5, 6)) == ((0,), False)
    assert _sum_dims((4, 5, 6), (5, 1)) is None  # leading dim dropped and a size-1 dim kept
    assert _sum_dims((3,), (2, 3)) is None


# ------------------------------------------------------------------ the GPT's backward and attention shapes


def test_a_lone_sum_over_leading_dims_is_a_reduce_kernel():
    """A bias gradient summed over [B, T] that joins nothing is a one-node reduce kernel (a
    generated loop), recorded like every kernel."""
    def build(b):
        x = b.add_input("x", TensorType((4, 6, 8)))
        w = b.add_input("w", TensorType((8, 8)), "param")
        return [b.emit("sum", [x], {"dims": [0, 1]}), b.emit("matmul", [b.emit("reshape", [x], {"shape": [24, 8]}), w])]

    g = _graph(build)
    new, ctx = _run_kernels(g)
    # (the 24x8x8 matmul stays a BLAS call: 8 outputs fill half a vector, passes/gemm_impl.py)
    assert [[m.op for m in k.body.nodes] for k in _kernel_nodes(new)] == [["sum"]]
    assert _kernel_nodes(new)[0].attr["kind"] == "reduce"
    _agree(g, new)


def test_layernorm_backward_recompute_moves_into_the_weight_gradient_kernel():
    """x_hat = x_c * rstd recomputed from saved values at the top of the backward, read only by
    the weight gradient's product (with the upstream gradient, made later by a GEMM): the
    product, its sum and x_hat are one reduce kernel, x_hat never written."""
    def build(b):
        xc = b.add_input("xc", TensorType((2, 3, 8)))
        rstd = b.add_input("rstd", TensorType((2, 3, 1)))
        dy = b.add_input("dy", TensorType((6, 8)))
        w = b.add_input("w", TensorType((8, 8)), "param")
        lw = b.add_input("lw", TensorType((8,)), "param")
        xhat = b.emit("mul", [xc, rstd])
        h = b.emit("reshape", [b.emit("matmul", [dy, w])], {"shape": [2, 3, 8]})
        dx = b.emit("mul", [h, lw])
        dw = b.emit("sum", [b.emit("mul", [h, xhat])], {"dims": [0, 1]})
        return [dx, dw]

    g = _graph(build)
    new, ctx = _run_kernels(g)
    ks = _kernel_nodes(new)
    assert [[m.op for m in k.body.nodes] for k in ks] == [["mul", "mul", "mul", "sum"]]
    assert ks[0].attr["kind"] == "reduce" and not any(n.op == "mul" for n in new.nodes)
    _agree(g, new)


def test_a_causal_mask_from_constants_lets_the_scale_join_the_softmax_rows_kernel():
    """The mask arange(T)[None] <= arange(T)[:, None] is computed from constants only: it moves to
    the top of the plan, so the scale (before it in the plan) and the masked softmax are one rows
    kernel."""
    def build(b):
        s = b.add_input("s", TensorType((2, 3, 4, 4)))
        scaled = b.emit("mul", [s, b.emit("full", [], {"shape": [], "value": 0.25})])
        ar = b.emit("arange", [], {"size": 4, "dtype": "i64"})
        mask = b.emit("le", [b.emit("reshape", [ar], {"shape": [1, 4]}), b.emit("reshape", [ar], {"shape": [4, 1]})])
        w = b.emit("where", [mask, scaled, b.emit("full", [], {"shape": [], "value": float("-inf")})])
        m = b.emit("max", [w], {"dims": [3], "keepdim": True})
        e = b.emit("exp", [b.emit("sub", [w, m])])
        return b.emit("div", [e, b.emit("sum", [e], {"dims": [3], "keepdim": True})])

    g = _graph(build)
    new, ctx = _run_kernels(g)
    ks = _kernel_nodes(new)
    assert len(ks) == 1 and ks[0].attr["kind"] == "rows" and ks[0].body.nodes[0].op == "mul"
    _agree(g, new)


def test_a_train_steps_backward_recompute_stays_out_of_the_forward_loop():
    """GELU's backward term exp(-x^2/2) reads only forward values: it could join the forward's
    elementwise kernel, but would then be written there and kept until the backward; it is
    computed in the backward's kernel instead (every forward elementwise loop is forward only)."""
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 1))  # on [B, T, C]: GELU is a loop of its own
    x, y = R.random((4, 8, 6), np.float32), R.random((4, 8, 1), np.float32)
    g = _stage(_train_step(model, nn.MSELoss(), x, y, mode="interpret"))
    ks = [k for k in _kernel_nodes(g) if k.attr["kind"] == "elementwise" and k.body.nodes[0].phase == "forward"]
    assert ks and all(m.phase == "forward" for k in ks for m in k.body.nodes)
    assert any(m.op == "exp" and m.phase == "backward" for k in _kernel_nodes(g) for m in k.body.nodes)


def _one_hot_grad(b, n=12, c=7, grad_of=True, gather=False, rows=1):
    """scatter_add(zeros [n, c], labels [n, rows], g, dim=1) read by a log_softmax backward's rows."""
    p = b.add_input("p", TensorType((n, c)))
    labels = b.add_input("labels", TensorType((n, rows), "i64"))
    gy = b.add_input("gy", TensorType((n, rows)))
    zeros = b.emit("full", [], {"shape": (n, c), "value": 0.0})
    s = b.emit("scatter_add", [zeros, labels, gy], {"dim": 1}, grad_of=p if grad_of else None)
    out = [b.emit("sub", [s, b.emit("mul", [p, b.emit("sum", [s], {"dims": (1,), "keepdim": True})])])]
    return out + ([b.emit("gather", [p, labels], {"dim": 1})] if gather else [])


@pytest.mark.parametrize("kw", [{}, {"grad_of": False, "gather": True}])
def test_a_gradients_one_hot_scatter_add_is_a_where_in_its_readers_rows_kernel(kw):
    g = _graph(lambda b: _one_hot_grad(b, **kw))
    new, ctx = _run_kernels(g)
    assert not any(n.op == "scatter_add" for n in members(new))
    rows = [n for n in _kernel_nodes(new) if n.attr["kind"] == "rows"]
    assert len(rows) == 1 and {"eq", "where", "sum", "sub"} <= {m.op for m in rows[0].body.nodes}
    assert any("one element per row" in note for note in ctx.notes)
    args = [R.standard_normal((12, 7)).astype(np.float32), R.integers(0, 7, (12, 1)),
            R.standard_normal((12, 1)).astype(np.float32)]
    want = interpret(g, args)
    for got in (interpret(new, args), _jit(new, args)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [{"grad_of": False}, {"rows": 2}])
def test_a_scatter_add_that_is_not_a_checked_one_hot_stays(kw):
    """Unchecked ids (no gradient, no gather of them) or two ids per row: scatter_add stays."""
    new, ctx = _run_kernels(_graph(lambda b: _one_hot_grad(b, **kw)))
    assert any(n.op == "scatter_add" for n in members(new))


def test_a_train_steps_layer_norm_x_hat_is_recomputed_by_the_backward_not_written():
    """x_hat = (x - mean) * rstd: the backward reads x - mean and rstd anyway, so it recomputes x_hat
    (passes/remat.py) in its weight gradient's kernel; the forward's rows kernel keeps it in registers."""
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 1))
    x, y = R.random((4, 8, 6), np.float32), R.random((4, 8, 1), np.float32)
    step = _train_step(model, nn.MSELoss(), x, y, mode="interpret")
    g = _stage(step)
    copies = [m for k in _kernel_nodes(g) for m in k.body.nodes if m.phase == "backward" and m.grad_of is None]
    assert [m.op for m in copies] == ["mul"]
    fwd = [k for k in _kernel_nodes(g) if k.attr["kind"] == "rows" and k.body.nodes[0].phase == "forward"]
    assert len(fwd) == 1 and copies[0].inputs[0] in fwd[0].outputs and copies[0].outputs[0] not in fwd[0].outputs
    xhat = next(m for m in fwd[0].body.nodes if m.op == "mul" and m.inputs == copies[0].inputs)
    assert xhat.outputs[0] not in fwd[0].outputs  # (it was, before: written for the backward)
    _, ctx = _run_kernels(step.graph("train_step_plan"))
    assert any("recomputed as" in note for note in ctx.notes)


@pytest.mark.parametrize("batch,width", [(8, 16), (512, 64)])
def test_a_train_steps_gelu_writes_neither_scaled_copy_of_the_gemm_product(batch, width):
    """GELU(x) = x/2 * (1 + erf(x/sqrt(2))) of a linear's product x: x/sqrt(2) and x/2 are cheap
    products of x, which is in memory anyway (a GEMM's output), so the backward recomputes them
    from x (passes/remat.py) and no forward kernel writes them, whether GELU is the GEMM's
    epilogue (8x16) or a loop of its own (512x64); the GELU output, a GEMM's operand, is read
    where it is, not recomputed; the step trains as torch does."""
    graphc.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, width), nn.GELU(), nn.Linear(width, 1))
    x, y = R.random((batch, 6), np.float32), R.random((batch, 1), np.float32)
    step = _train_step(model, nn.MSELoss(), x, y, mode="interpret")
    g = _stage(step)
    body = [m for k in _kernel_nodes(g) for m in k.body.nodes] + [m for m in g.nodes if m.op != "kernel"]
    (x_,) = [m.outputs[0] for m in body if m.op == "linear" and m.types[0].shape == (batch, width)]
    scaled = {m.outputs[0] for m in body if m.phase == "forward" and m.op == "mul" and m.inputs[0] == x_}
    assert len(scaled) == 2  # x / sqrt(2) and x / 2
    fwd_out = {o for k in _kernel_nodes(g) if k.body.nodes[0].phase == "forward" for o in k.outputs}
    assert not scaled & fwd_out
    _, ctx = _run_kernels(step.graph("train_step_plan"))
    assert sum("from operands in memory anyway" in note for note in ctx.notes) == 2, ctx.notes
    t = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.GELU(), torch.nn.Linear(width, 1))
    copy_to_torch(model, t)
    step = _train_step(model, nn.MSELoss(), x, y)
    train_like_torch(step, t, torch.optim.SGD(t.parameters(), lr=0.05), torch.nn.functional.mse_loss, x, y)
    assert_same_weights(model, t, rtol=1e-4, atol=1e-5)
