"""Tracing: what graphc.trace records, and the TraceErrors it raises (naming op, shapes and user line)."""
import inspect
import re

import numpy as np
import pytest

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc import TraceError
from graphc.ir import TensorType, interpret
from models import SimpleNet, mlp


def line_of(fn, needle: str) -> str:
    """`test_trace.py:N` for the line of fn's source containing needle."""
    src, start = inspect.getsourcelines(fn)
    return f"test_trace.py:{start + next(k for k, s in enumerate(src) if needle in s)}"


X = np.zeros((4, 10), np.float32)


# ------------------------------------------------------------------ what a trace records


def test_params_are_param_inputs_named_as_in_state_dict():
    m = SimpleNet().eval()
    g = graphc.trace(m, X)
    assert [(i.name, i.kind) for i in g.inputs] == [("x", "input")] + [(k, "param") for k in m.state_dict()]
    for k, v in m.state_dict().items():
        assert g.input_by_name[k].type == TensorType.of(v)
    seq = mlp((10, 6, 3))
    g = graphc.trace(seq, X)
    assert [i.name for i in g.inputs_of_kind("param")] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [i.name for i in g.inputs_of_kind("input")] == ["input"]


def test_every_value_is_typed_and_verified():
    g = graphc.trace(SimpleNet(), np.zeros((7, 10), np.float64).astype(np.float32))
    names = [i.name for i in g.inputs] + [o for n in g.nodes for o in n.outputs]
    assert set(g.types) == set(names)
    assert all(isinstance(g.types[v], TensorType) for v in names)
    assert g.type_of(g.outputs[0].value) == TensorType((7, 1), "f32")
    g.verify()


def test_train_and_eval_are_captured():
    m = SimpleNet()
    train = graphc.trace(m.train(), X)
    ev = graphc.trace(m.eval(), X)
    assert [n.op for n in train.nodes] == ["linear", "relu", "dropout", "linear"]
    assert [n.op for n in ev.nodes] == ["linear", "relu", "linear"]
    assert train.meta["training"] is True and ev.meta["training"] is False
    assert [i.kind for i in train.inputs][-1] == "rng" and "seed" not in ev.input_by_name
    assert train.producer("2").attr == {"p": 0.5, "stream": 0}


def test_two_dropouts_draw_from_distinct_streams():
    m = mlp((10, 8, 8, 2), dropout=0.25).train()
    g = graphc.trace(m, X)
    drops = [n for n in g.nodes if n.op == "dropout"]
    assert [n.attr["stream"] for n in drops] == [0, 1]
    assert all(n.inputs[1] == "seed" for n in drops)
    assert len(g.inputs_of_kind("rng")) == 1


class Fancy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 5)
        self.scale = nn.Parameter(np.ones(5, np.float32))

    def forward(self, x, seed):
        h = F.dropout(self.lin(x), 0.1, self.training)
        h = h * self.scale + seed.sum()  # a user input named `seed`
        return h @ self.lin.weight, h.T


def test_locations_point_at_the_users_forward_and_names_do_not_clash():
    m = Fancy()
    g = graphc.trace(m, X, np.ones((3,), np.float32))
    # own parameters before the children's, as torch orders named_parameters()
    assert [i.name for i in g.inputs] == ["x", "seed", "scale", "lin.weight", "lin.bias", "seed1"]
    assert g.input_by_name["seed1"].kind == "rng"
    locs = [n.loc for n in g.nodes]
    assert locs[0] == locs[1] == line_of(Fancy.forward, "F.dropout")
    assert locs[2:5] == [line_of(Fancy.forward, "self.scale")] * 3
    assert locs[5:] == [line_of(Fancy.forward, "return")] * 2
    assert [n.op for n in g.nodes] == ["linear", "dropout", "mul", "sum", "add", "matmul", "transpose"]
    assert [g.type_of(o.value) for o in g.outputs] == [TensorType((4, 10)), TensorType((5, 4))]
    assert graphc.ir.parse(str(g)) == g


class InputNamedLikeParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.x = nn.Parameter(np.ones((2,), np.float32))

    def forward(self, x):
        return x + self.x


def test_parameter_names_win_over_argument_names():
    g = graphc.trace(InputNamedLikeParam(), np.zeros(2, np.float32))
    assert [(i.name, i.kind) for i in g.inputs] == [("x_", "input"), ("x", "param")]


def test_shared_parameters_become_one_input():
    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.Tanh(), lin)
    g = graphc.trace(m, np.zeros((2, 4), np.float32))
    assert [i.name for i in g.inputs_of_kind("param")] == ["0.weight", "0.bias"]
    assert g.nodes[0].inputs[1:] == g.nodes[2].inputs[1:]


def test_loss_module_traces_cross_entropy_as_log_softmax_and_nll():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp((10, 4))
            self.loss = nn.CrossEntropyLoss()

        def forward(self, x, y):
            return self.loss(self.net(x), y)

    g = graphc.trace(Net(), X, np.array([0, 1, 3, 2]))
    assert [n.op for n in g.nodes] == ["linear", "log_softmax", "nll_loss"]
    assert g.input_by_name["y"].type == TensorType((4,), "i64")
    assert g.type_of(g.outputs[0].value) == TensorType((), "f32")


def test_type_examples_and_traced_value_helpers():
    class Shapes(nn.Module):
        def forward(self, x):
            assert x.shape == (3, 4) and x.ndim == 2 and x.dim() == 2 and x.size(1) == 4 and len(x) == 3
            assert x.dtype == np.float64
            return x.view(12).reshape(2, 6).mean()

    g = graphc.trace(Shapes(), TensorType((3, 4), "f64"))
    assert [n.op for n in g.nodes] == ["reshape", "reshape", "mean"]
    assert g.nodes[2].attr == {"dims": (0, 1), "keepdim": False}


def test_numpy_ufuncs_that_are_ops_trace():
    class Ufuncs(nn.Module):
        def forward(self, x):
            return np.exp(np.add(x, 1.0)) * np.tanh(x)

    g = graphc.trace(Ufuncs(), X)
    assert [n.op for n in g.nodes] == ["full", "add", "exp", "tanh", "mul"]


# ------------------------------------------------------------------ trace errors


class DataDependent(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        s = x.sum()
        if self.how == "if":
            if s > 0:
                return x
        elif self.how == "float":
            return x * float(s)
        elif self.how == "int":
            return x * int(s)
        elif self.how == "item":
            return x * s.item()
        elif self.how == "bool":
            return x if s else -x
        elif self.how == "iter":
            return [r for r in x]
        elif self.how == "index":
            return x[[0, 1]]  # ints and slices trace (slice ops); lists do not
        elif self.how == "eq":
            return x if s == 0 else -x
        return x


@pytest.mark.parametrize("how, needle, what", [
    ("if", "if s > 0", "comparison >"),
    ("float", "float(s)", "float()"),
    ("int", "int(s)", "int()"),
    ("item", "s.item()", ".item()"),
    ("bool", "if s else", "the truth value (bool)"),
    ("iter", "for r in x", "iteration"),
    ("index", "x[[0, 1]]", "indexing a traced value"),
    ("eq", "if s == 0", "comparison =="),
])
def test_data_dependent_python_is_a_trace_error(how, needle, what):
    with pytest.raises(TraceError) as e:
        graphc.trace(DataDependent(how), X)
    msg = str(e.value)
    assert what in msg
    assert "f32[]" in msg or "f32[4,10]" in msg  # the shape of the value involved
    assert line_of(DataDependent.forward, needle) in msg
    assert needle in msg  # the source line itself is quoted


class NumpyCall(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        h = x * 2
        return self.fn(h)


@pytest.mark.parametrize("fn, name", [
    (np.sort, "np.sort"),
    (lambda h: np.maximum(h, 0), "np.maximum"),
    (lambda h: np.clip(h, 0, 1), "np.clip"),
    (np.asarray, "converted to a numpy array"),
])
def test_unsupported_numpy_function_is_a_trace_error(fn, name):
    with pytest.raises(TraceError) as e:
        graphc.trace(NumpyCall(fn), X)
    msg = str(e.value)
    assert name in msg and "%1 (f32[4,10])" in msg
    # the user's line: the lambda in this file, or NumpyCall.forward's call of np.sort
    assert re.search(r"test_trace\.py:\d+", msg)
    if fn is np.sort:
        assert line_of(NumpyCall.forward, "self.fn(h)") in msg


class Wrong(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(10, 20)

    def forward(self, x):
        return self.linear1(x)


def test_shape_mismatch_names_op_shapes_and_line():
    with pytest.raises(TraceError) as e:
        graphc.trace(Wrong(), np.zeros((4, 12), np.float32))
    msg = str(e.value)
    assert "linear: expected input with 10 features (last dim), got f32[4,12] for weight f32[20,10]" in msg
    assert line_of(Wrong.forward, "self.linear1(x)") in msg
    # eager mode raises the same error
    with pytest.raises(TraceError, match=re.escape("got f32[4,12] for weight f32[20,10]")):
        Wrong()(np.zeros((4, 12), np.float32))


def test_dtype_mismatch_names_op_dtypes_and_line():
    with pytest.raises(TraceError) as e:
        graphc.trace(Wrong(), np.zeros((4, 10), np.float64))
    msg = str(e.value)
    assert "linear: dtype mismatch: f64[4,10] vs f32[20,10] vs f32[20]" in msg
    assert line_of(Wrong.forward, "self.linear1(x)") in msg
    with pytest.raises(TraceError, match="dtype mismatch: f64"):
        Wrong()(np.zeros((4, 10), np.float64))
    assert Wrong().double()(np.zeros((4, 10), np.float64)).dtype == np.float64


def test_broadcast_mismatch_inside_forward():
    class Bad(nn.Module):
        def forward(self, x):
            return x + x.sum(dim=1)

    with pytest.raises(TraceError) as e:
        graphc.trace(Bad(), X)
    assert "add: shapes [4,10] and [4] do not broadcast" in str(e.value)
    assert line_of(Bad.forward, "return") in str(e.value)


def test_other_trace_errors():
    class Unregistered(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = np.ones((10,), np.float32)  # a plain array, not a Parameter

        def forward(self, x):
            return x * self.w

    with pytest.raises(TraceError, match=r"numpy array float32\[10\] that is not a registered Parameter"):
        graphc.trace(Unregistered(), X)

    class ReturnsConstant(nn.Module):
        def forward(self, x):
            return 3.0

    with pytest.raises(TraceError, match="output 0 is float"):
        graphc.trace(ReturnsConstant(), X)
    with pytest.raises(TraceError, match="unsupported dtype int32"):
        graphc.trace(SimpleNet(), np.zeros((4, 10), np.int32))
    with pytest.raises(TraceError, match="graph name"):
        graphc.trace(SimpleNet(), X, name="my net")
    with pytest.raises(TraceError, match="dim 2 is out of range"):
        graphc.trace(nn.Softmax(dim=2), X)
    with pytest.raises(TraceError, match="only one dimension can be -1"):
        graphc.trace(nn.Flatten(), X) and None or graphc.trace(_Reshape((-1, -1)), X)


class _Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(*self.shape)


def test_traced_graph_runs_like_eager():
    m = Fancy().eval()
    x, s = np.random.randn(4, 10).astype(np.float32), np.random.randn(3).astype(np.float32)
    g = graphc.trace(m, x, s)
    got = interpret(g, {"x": x, "seed": s, **dict(m.named_parameters())})
    for a, b in zip(got, m(x, s)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
