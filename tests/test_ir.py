"""The IR: text form (print/parse round trip), verifier errors, networkx view, reference interpreter."""
import inspect
import re
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc
import graphc.nn as nn
from graphc.ir import (OPS, Graph, GraphBuilder, Input, Node, Output, ParseError, ShapeError, TensorType,
                       VerifyError, interpret, parse)
from models import SimpleNet, copy_to_torch, torch_simple_net


def _forward_line(cls, needle: str) -> int:
    src, start = inspect.getsourcelines(cls.forward)
    return start + next(k for k, line in enumerate(src) if needle in line)


def simple_graph(train=False, batch=8, dtype=np.float32):
    m = SimpleNet().to(dtype)
    m.train(train)
    return m, graphc.trace(m, np.zeros((batch, 10), dtype))


# ------------------------------------------------------------------ text form


def test_print_one_node_per_line_with_type_and_location():
    _, g = simple_graph(train=True, batch=64)
    lines = str(g).splitlines()
    assert lines[0] == "graph SimpleNet {"
    assert lines[1] == "  input %x: f32[64,10]"
    assert "  param %linear1.weight: f32[20,10]" in lines
    assert "  rng %seed: i64[]" in lines
    node_lines = [ln for ln in lines if " = " in ln]
    assert len(node_lines) == len(g.nodes) == 4
    l1 = _forward_line(SimpleNet, "self.linear1(x)")
    assert node_lines[0] == f"  %0: f32[64,20] = linear(%x, %linear1.weight, %linear1.bias)  # models.py:{l1}"
    assert node_lines[1] == f"  %1: f32[64,20] = relu(%0)  # models.py:{l1 + 1}"
    assert node_lines[2] == f"  %2: f32[64,20] = dropout(%1, %seed) {{p=0.5}}  # models.py:{l1 + 2}"
    assert node_lines[3] == f"  %3: f32[64,1] = linear(%2, %linear2.weight, %linear2.bias)  # models.py:{l1 + 3}"
    assert lines[-2:] == ["  return %3", "}"]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parse_print_round_trip_simple_net(train, dtype):
    _, g = simple_graph(train, dtype=dtype)
    back = parse(str(g))
    assert back == g
    assert str(back) == str(g)


HAND_WRITTEN = """
graph Hand.v2 {
  input %x: f32[8,10]
  input %labels: i64[8]
  param %w: f32[3,10]
  rng %seed: i64[]
  %0: f32[8,3] = linear(%x, %w)  # my model.py:7
  %1: f32[] = full() {shape=[], value=1e-05}
  %2: f32[] = full() {shape=[], value=-inf}
  %3: f32[8,3] = add(%0, %1)
  %4: f32[8,3] = dropout(%3, %seed) {p=0.25, stream=3}
  %5: f32[8,1] = sum(%4) {dims=[1], keepdim=true}
  %6: f32[] = cross_entropy(%4, %labels) {reduction="sum"}
  %7: f32[] = full() {shape=[], value=1.0}  # grad of %6
  %8: f32[8,3] = cross_entropy_backward(%7, %4, %labels) {reduction="sum"}  # grad of %4, my model.py:9
  %9: f32[8,10], %10: f32[3,10] = linear_backward(%8, %x, %w) {bias_grad=false}  # grad of %0
  %11: i64[2] = full() {shape=[2], value=-3.0, dtype="i64"}
  return %6 as loss, %10 as grad:w, %5, %2 as update:state.x.exp_avg
}
"""


def test_parse_hand_written_ir_fills_defaults_and_round_trips():
    g = parse(HAND_WRITTEN)
    assert g.name == "Hand.v2"
    assert g.producer("4").attr == {"p": 0.25, "stream": 3}
    assert g.producer("3").attr == {}
    assert g.producer("1").attr == {"dtype": "f32", "shape": (), "value": 1e-05}
    assert g.producer("9").outputs == ("9", "10")
    assert g.producer("9").attr == {"relu": False, "input_grad": True, "bias_grad": False}
    assert g.producer("8").grad_of == "4" and g.producer("8").loc == "my model.py:9"
    assert g.producer("7").grad_of == "6" and g.producer("7").loc is None
    assert g.producer("0").loc == "my model.py:7"
    assert [o.label for o in g.outputs] == ["loss", "grad:w", None, "update:state.x.exp_avg"]
    assert parse(str(g)) == g
    # defaults are not printed
    assert "stream=0" not in str(g) and "keepdim=false" not in str(g)
    assert 'reduction="sum"' in str(g)


def test_equality_sees_every_detail():
    g = parse(HAND_WRITTEN)
    assert parse(str(g).replace("value=1e-05", "value=2e-05")) != g
    assert parse(str(g).replace("my model.py:7", "my model.py:8")) != g
    assert parse(str(g).replace("as loss", "as loss2")) != g


@pytest.mark.parametrize("text, where", [
    ("graph g {\n  input %x f32[2]\n  return %x\n}", "line 2"),
    ("graph g {\n  input %x: f32[2]\n  %0: f32[2] = relu(%x\n  return %0\n}", "line 3"),
    ("graph g {\n  input %x: q32[2]\n  return %x\n}", "line 2"),
    ("graph g {\n  input %x: f32[2]\n  %0: f32[2] = frobnicate(%x)\n  return %0\n}", "unknown op 'frobnicate'"),
    ("graph g {\n  input %x: f32[2]\n  %0: f32[2] = relu(x)\n  return %0\n}", "bad operand 'x'"),
    ("graph g {\n  input %x: f32[2]\n", "incomplete graph"),
    ("graph g {\n  input %x: f32[2]\n  return %x as !\n}", "bad output"),
])
def test_parse_errors_name_the_line(text, where):
    with pytest.raises(ParseError, match=re.escape(where)):
        parse(text)


# ------------------------------------------------------------------ the property: parse(str(g)) == g for generated models


class GenNet(nn.Module):
    """An MLP whose depth, widths, activation, dropout and tensor-method tail are drawn by hypothesis."""

    def __init__(self, widths, act, p, tail, dtype):
        super().__init__()
        layers = []
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b, dtype=dtype))
            if k < len(widths) - 2:
                layers.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[act]())
                if p:
                    layers.append(nn.Dropout(p))
        self.body = nn.Sequential(*layers)
        self.mix = nn.Parameter(np.random.randn(widths[-1], widths[-1]), dtype=dtype)
        self.tail = tail

    def forward(self, x):
        h = self.body(x)
        b, w = h.shape
        for t in self.tail:
            if t == "scalars":
                h = h * 0.5 + 1
            elif t == "rscalars":
                h = 2.0 - h / 3
            elif t == "neg":
                h = -h
            elif t == "T":
                h = (h.T * 1.5).T
            elif t == "reshape":
                h = h.reshape(-1).reshape(b, w)
            elif t == "flatten":
                h = h.reshape(b, w, 1).flatten(1)
            elif t == "center":
                h = h - h.mean(dim=1, keepdim=True)
            elif t == "colsum":
                h = h + h.sum(dim=0) / b  # [w] broadcast over [b, w]
            elif t == "matmul":
                h = h @ self.mix
            elif t == "rmatmul":
                h = (self.mix @ h.T).T
            elif t == "methods":
                h = h.tanh().sigmoid()
        return h


class WithLoss(nn.Module):
    """forward(x, y) returns the loss: the shape of a training graph."""

    def __init__(self, net, loss):
        super().__init__()
        self.net = net
        self.loss = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()

    def forward(self, x, y):
        return self.loss(self.net(x), y)


TAILS = ["scalars", "rscalars", "neg", "T", "reshape", "flatten", "center", "colsum", "matmul", "rmatmul", "methods"]


@st.composite
def generated_models(draw):
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    act = draw(st.sampled_from(["relu", "sigmoid", "tanh"]))
    p = draw(st.sampled_from([0.0, 0.0, 0.3]))
    tail = draw(st.lists(st.sampled_from(TAILS), max_size=4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    train = draw(st.booleans())
    loss = draw(st.sampled_from([None, "mse", "cross_entropy"]))
    batch = draw(st.integers(1, 5))
    net = GenNet(widths, act, p, tail, dtype)
    model = net if loss is None else WithLoss(net, loss)
    model.train(train)
    x = np.random.randn(batch, widths[0]).astype(dtype)
    examples = [x]
    if loss == "mse":
        examples.append(np.random.randn(batch, widths[-1]).astype(dtype))
    elif loss == "cross_entropy":
        examples.append(np.random.randint(0, widths[-1], size=batch).astype(np.int64))
    return model, examples


@settings(max_examples=25, deadline=None)
@given(generated_models())
def test_parse_of_print_is_identity_for_generated_models(case):
    model, examples = case
    g = graphc.trace(model, *examples)
    assert parse(str(g)) == g
    assert parse(str(g)).verify() == g
    assert all(n.loc and n.loc.startswith("test_ir.py:") for n in g.nodes)
    # dropout nodes exactly when training with p > 0
    has_dropout = any(isinstance(m, nn.Dropout) for m in model.modules())
    assert any(n.op == "dropout" for n in g.nodes) == (model.training and has_dropout)
    if not model.training:  # the interpreter agrees with eager execution
        params = dict(model.named_parameters())
        got = interpret(g, {**dict(zip([i.name for i in g.inputs], examples)), **params})[0]
        np.testing.assert_allclose(got, model(*examples), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ verify


GOOD = """graph g {
  input %x: f32[4,3]
  param %w: f32[2,3]
  %0: f32[4,2] = linear(%x, %w)  # net.py:5
  %1: f32[4,2] = relu(%0)  # net.py:6
  %2: f32[2] = sum(%1) {dims=[0]}  # net.py:7
  return %2
}"""


def _bad(old: str, new: str) -> Graph:
    assert old in GOOD
    return parse(GOOD.replace(old, new), verify=False)


def _verify_error(g: Graph) -> str:
    with pytest.raises(VerifyError) as e:
        g.verify()
    with pytest.raises(VerifyError):  # parsing with verify on says the same
        parse(str(g))
    return str(e.value)


def test_good_graph_verifies():
    assert parse(GOOD).verify() is not None


def test_verify_use_before_definition():
    g = parse(GOOD, verify=False)
    swapped = g.replace(nodes=(g.nodes[0], g.nodes[2].replace(inputs=("0",), types=(TensorType((2,)),)), g.nodes[1]))
    swapped = swapped.replace(nodes=(g.nodes[1], g.nodes[0], g.nodes[2]))
    msg = _verify_error(swapped)
    assert "node 0 (relu, defining %1)" in msg
    assert "operand %0 is used before it is defined (it is defined by a later node)" in msg
    assert ">> %1: f32[4,2] = relu(%0)  # net.py:6" in msg
    assert "   %0: f32[4,2] = linear(%x, %w)  # net.py:5" in msg  # context around it


def test_verify_undefined_operand():
    msg = _verify_error(_bad("relu(%0)", "relu(%y)"))
    assert "operand %y is not defined anywhere" in msg and ">> %1: f32[4,2] = relu(%y)" in msg


def test_verify_cycle_through_a_later_node():
    msg = _verify_error(_bad("relu(%0)", "relu(%2)"))
    assert "node 1 (relu, defining %1): cycle: operand %2 depends on this node's own output (%1 <- %2 <- %1)" in msg
    assert ">> %1: f32[4,2] = relu(%2)  # net.py:6" in msg


def test_verify_cycle():
    g = _bad("linear(%x, %w)", "linear(%x, %w)").replace(nodes=(
        Node("relu", ("1",), ("0",), (TensorType((4, 2)),), loc="net.py:5"),
        Node("relu", ("0",), ("1",), (TensorType((4, 2)),), loc="net.py:6"),
    ), outputs=(Output("1"),))
    msg = _verify_error(g)
    assert "cycle" in msg and "%0 <- %1 <- %0" in msg
    assert ">> %0: f32[4,2] = relu(%1)  # net.py:5" in msg


def test_verify_type_disagrees_with_rule():
    msg = _verify_error(_bad("%1: f32[4,2] = relu", "%1: f32[4,5] = relu"))
    assert "%1 has type f32[4,5], but the relu rule gives f32[4,2]" in msg
    assert ">> %1: f32[4,5] = relu(%0)" in msg


def test_verify_dtype_disagrees_with_rule():
    msg = _verify_error(_bad("%1: f32[4,2] = relu", "%1: f64[4,2] = relu"))
    assert "%1 has type f64[4,2], but the relu rule gives f32[4,2]" in msg


def test_verify_operands_rejected_by_rule():
    msg = _verify_error(_bad("param %w: f32[2,3]", "param %w: f32[2,5]"))
    assert "node 0 (linear, defining %0)" in msg
    assert "%x: f32[4,3], %w: f32[2,5]" in msg and "expected input with 5 features" in msg
    assert ">> %0: f32[4,2] = linear(%x, %w)" in msg


@pytest.mark.parametrize("old, new, expect", [
    ("{dims=[0]}", "{dims=[0], colour=1}", "unknown attribute(s) ['colour']"),
    ("{dims=[0]}", '{dims="zero"}', 'attribute dims=\'zero\' should be ints'),
    ("{dims=[0]}", "{dims=[0], keepdim=2}", "attribute keepdim=2 should be bool"),
    ("{dims=[0]}", "", "missing attribute 'dims'"),
    ("{dims=[0]}", "{dims=[0,0]}", "must be sorted and distinct"),
    ("{dims=[0]}", "{dims=[5]}", "dim 5 is out of range"),
])
def test_verify_invalid_attributes(old, new, expect):
    msg = _verify_error(_bad(old, new))
    assert "node 2 (sum, defining %2)" in msg and expect in msg
    assert ">> %2: " in msg


def test_verify_attribute_choices():
    g = parse("graph g {\n input %a: f32[3]\n %0: f32[] = mse_loss(%a, %a) {reduction=\"max\"}\n return %0\n}", verify=False)
    msg = _verify_error(g)
    assert "reduction='max' should be one of ('mean', 'sum')" in msg and ">> %0: f32[] = mse_loss(%a, %a)" in msg


def test_verify_output_not_defined():
    msg = _verify_error(_bad("return %2", "return %9"))
    assert "output %9 is not defined" in msg
    assert ">> return %9" in msg and "%2: f32[2] = sum(%1)" in msg


def test_verify_defined_twice():
    msg = _verify_error(_bad("%2: f32[2] = sum", "%0: f32[2] = sum").replace(outputs=(Output("0"),)))
    assert "%0 is defined twice" in msg and "node 2 (sum, defining %0)" in msg
    msg = _verify_error(_bad("%0: f32[4,2] = linear", "%x: f32[4,2] = linear").replace(outputs=(Output("x"),)))
    assert "%x is defined twice" in msg


def test_verify_wrong_number_of_outputs():
    msg = _verify_error(_bad("%1: f32[4,2] = relu", "%1: f32[4,2], %5: f32[4,2] = relu"))
    assert "expected 1 output(s), found 2" in msg


def test_verify_unknown_op_and_bad_names():
    g = parse(GOOD)
    bad = g.replace(nodes=g.nodes[:1] + (g.nodes[1].replace(op="gelu"),) + g.nodes[2:])
    with pytest.raises(VerifyError, match="node 1 .*unknown op 'gelu'"):
        bad.verify()
    bad = g.replace(inputs=(Input("x y", TensorType((4, 3))),) + g.inputs[1:])
    with pytest.raises(VerifyError, match="'x y' is not a valid value name"):
        bad.verify()
    with pytest.raises(VerifyError, match="graph name 'my graph' is not printable"):
        g.replace(name="my graph").verify()
    with pytest.raises(VerifyError, match="label 'a b'"):
        g.replace(outputs=(Output("2", "a b"),)).verify()


def test_builder_rejects_bad_operands_with_shape_error():
    b = GraphBuilder("g")
    x = b.add_input("x", TensorType((4, 3)))
    y = b.add_input("y", TensorType((5,)))
    with pytest.raises(ShapeError, match=r"add: shapes \[4,3\] and \[5\] do not broadcast"):
        b.emit("add", [x, y])
    with pytest.raises(ShapeError, match="relu takes 1 inputs, got 2"):
        b.emit("relu", [x, x])
    with pytest.raises(ValueError, match="defined twice"):
        b.add_input("x", TensorType((1,)))


# ------------------------------------------------------------------ networkx view and helpers


def test_to_networkx_topological_order_and_reachability():
    g = parse(HAND_WRITTEN)
    d = g.to_networkx()
    assert isinstance(d, nx.DiGraph) and nx.is_directed_acyclic_graph(d)
    assert set(d.nodes) == {i.name for i in g.inputs} | {n.outputs[0] for n in g.nodes}
    order = [n.outputs[0] for n in g.nodes]
    pos = {v: k for k, v in enumerate(order)}
    # the graph's node order is a topological order of the DiGraph
    for u, v in d.edges:
        if u in pos:
            assert pos[u] < pos[v]
    topo = [v for v in nx.topological_sort(d) if v in pos]
    assert sorted(topo, key=pos.get) == order
    assert d.edges["0", "3"]["value"] == "0" and d.edges["0", "3"]["type"] == TensorType((8, 3))
    # multi-output node: %10 is reached through the vertex of its first output, %9
    assert nx.has_path(d, "x", "9") and d.nodes["9"]["op"] == "linear_backward"
    assert nx.ancestors(d, "6") == {"x", "w", "labels", "seed", "0", "1", "3", "4"}
    assert not nx.has_path(d, "2", "6")  # %2 (-inf) is dead
    assert nx.descendants(d, "11") == set()
    assert d.nodes["seed"]["kind"] == "rng" and d.nodes["w"]["kind"] == "param"


def test_graph_lookups_and_renumbering():
    g = parse(HAND_WRITTEN)
    assert g.uses("4") == 3 and g.uses("x") == 2 and g.uses("6") == 1 and g.uses("11") == 0
    assert [i.name for i in g.inputs_of_kind("param", "rng")] == ["w", "seed"]
    assert g.type_of("10") == TensorType((3, 10))
    gappy = parse(GOOD.replace("%0", "%5").replace("%1", "%7").replace("%2", "%9"))
    r = gappy.renumbered()
    assert r == parse(GOOD)
    assert parse(GOOD).renumbered() is parse(GOOD).renumbered() or parse(GOOD).renumbered() == parse(GOOD)


# ------------------------------------------------------------------ reference interpreter: the oracle


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_interpreter_matches_torch_simple_net(dtype, rtol):
    m, g = simple_graph(train=False, batch=16, dtype=dtype)
    tm = copy_to_torch(m, torch_simple_net()).eval()
    x = np.random.randn(16, 10).astype(dtype)
    want = tm(torch.from_numpy(x)).detach().numpy()
    (got,) = interpret(g, [x, *m.parameters()])
    assert got.dtype == dtype and got.shape == (16, 1)
    # Summation order differs from torch's GEMM: values that cancel to near 0 get an absolute
    # tolerance on the output's scale.
    atol = rtol * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(m(x), want, rtol=rtol, atol=atol)
    # named inputs work too, and all intermediate values come back when asked
    outs, env = interpret(g, {"x": x, **dict(m.named_parameters())}, return_env=True)
    np.testing.assert_array_equal(outs[0], got)
    np.testing.assert_array_equal(env["1"], np.maximum(env["0"], 0))


def test_interpreter_rejects_wrong_inputs():
    m, g = simple_graph()
    ps = list(m.parameters())
    with pytest.raises(ShapeError, match=r"input %x expected f32\[8,10\], got f32\[8,11\]"):
        interpret(g, [np.zeros((8, 11), np.float32), *ps])
    with pytest.raises(ShapeError, match=r"input %x expected f32\[8,10\], got f64\[8,10\]"):
        interpret(g, [np.zeros((8, 10)), *ps])
    with pytest.raises(ShapeError, match="takes 5 inputs"):
        interpret(g, [np.zeros((8, 10), np.float32)])
    with pytest.raises(ShapeError, match=r"missing inputs \['linear2.bias'\]"):
        interpret(g, {"x": np.zeros((8, 10), np.float32), **{k: v for k, v in m.named_parameters() if k != "linear2.bias"}})


def test_interpreter_dropout_is_a_function_of_the_seed():
    m, g = simple_graph(train=True)
    x = np.random.randn(8, 10).astype(np.float32)
    args = lambda s: [x, *m.parameters(), np.int64(s)]  # noqa: E731
    a, b, c = (interpret(g, args(s), return_env=True)[1]["2"] for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    env = interpret(g, args(1), return_env=True)[1]
    kept = a != 0
    np.testing.assert_allclose(a[kept], env["1"][kept] * 2, rtol=1e-6)


def test_every_op_has_a_rule_and_a_reference_kernel():
    for name, op in OPS.items():
        assert op.name == name and callable(op.infer) and callable(op.reference), name
        assert op.doc, f"{name} has no doc"


def test_import_graphc_does_not_import_numba():
    code = "import sys, graphc, graphc.nn, graphc.ir, graphc.optim, graphc.data; graphc.trace; assert 'numba' not in sys.modules, 'numba loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hash_inside_a_string_attribute_is_not_a_comment():
    g = parse(GOOD)
    odd = g.replace(nodes=(g.nodes[0], g.nodes[1].replace(attrs=(("note", 'a # "b"'),)), g.nodes[2]))
    text = str(odd)
    assert '{note="a # \\"b\\""}  # net.py:6' in text
    assert parse(text, verify=False) == odd
    with pytest.raises(VerifyError, match=r"unknown attribute\(s\) \['note'\]"):
        odd.verify()


@settings(max_examples=15, deadline=None)
@given(generated_models())
def test_parse_of_print_is_identity_for_every_pipeline_stage(case):
    """Not only traces: every graph the pass pipeline makes (joint, backward, plans, train steps)."""
    passes = pytest.importorskip("graphc.passes")
    from graphc.passes.train_step import OptimizerSpec

    model, examples = case
    g = graphc.trace(model, *examples)
    runs = [dict(mode="inference")]
    if len(examples) == 2:  # the model returns a loss
        runs += [dict(mode="training"), dict(mode="train_step", optimizer=OptimizerSpec("adam", {"lr": 0.01})),
                 dict(mode="train_step", optimizer=OptimizerSpec("sgd", {"lr": 0.1, "momentum": 0.9}))]
    for run in runs:
        for stage in passes.compile_pipeline(g, **run).stages:
            assert parse(str(stage.graph)) == stage.graph, f"{run['mode']}: {stage.name}"
