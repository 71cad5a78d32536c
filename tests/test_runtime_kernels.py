"""Each native kernel against its op's numpy reference kernel, on random inputs; coverage of the op table."""
import numpy as np
import pytest

import conv_cases
from graphc.ir import OPS, rng
from graphc.runtime.kernels import KERNELS, collapse, run_kernel, uniform

R = np.random.default_rng(1)


def f(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, size=shape).astype(dtype)


def labels(n, c):
    return R.integers(0, c, size=n).astype(np.int64)


def seed():
    return np.array(123456789, np.int64)


def step(k):
    return np.array(k, np.int64)


def world():
    from graphc.runtime.collectives import comm_words

    return comm_words()


def h(*values):
    """Optimizer hyperparameters: f64[] operands."""
    return [np.array(v, np.float64) for v in values]


# op -> list of (inputs, attrs); every op of the table must appear (test_cases_cover_the_op_table)
def cases(dt):
    x = f(5, 7, dtype=dt)
    return {
        "add": [([x, f(5, 7, dtype=dt)], {}), ([x, f(7, dtype=dt)], {}), ([f(5, 1, dtype=dt), f(1, 7, dtype=dt)], {}),
                ([np.array(1.5, dt), x], {}), ([f(2, 3, 1, 4, dtype=dt), f(3, 5, 1, dtype=dt)], {})],
        "sub": [([x, f(5, 1, dtype=dt)], {}), ([np.array(2.0, dt), x], {})],
        "mul": [([x, x], {}), ([x, np.array(3.0, dt)], {}), ([f(4, 1, 6, dtype=dt), f(3, 1, dtype=dt)], {})],
        "div": [([x, f(5, 7, dtype=dt, lo=0.5)], {}), ([x, np.array(0.0, dt)], {}), ([f(7, dtype=dt), f(5, 1, dtype=dt, lo=1)], {})],
        "neg": [([x], {})],
        "exp": [([x], {})],
        "log": [([f(5, 7, dtype=dt, lo=0.1)], {})],
        "relu": [([x], {})],
        "sigmoid": [([f(5, 7, dtype=dt, lo=-50, hi=50)], {})],
        "tanh": [([x], {})],
        "full": [([], {"shape": (3, 4), "value": 2.5, "dtype": "f32" if dt == np.float32 else "f64"}),
                 ([], {"shape": (), "value": 7.0, "dtype": "i64"})],
        "transpose": [([x], {"perm": (1, 0)}), ([f(2, 3, 4, dtype=dt)], {"perm": (2, 0, 1)})],
        "reshape": [([x], {"shape": (7, 5)}), ([x], {"shape": (35,)})],
        "sum": [([x], {"dims": (0,)}), ([x], {"dims": (1,), "keepdim": True}), ([x], {"dims": (0, 1)}),
                ([f(2, 3, 4, dtype=dt)], {"dims": (0, 2)}), ([x], {"dims": ()})],
        "mean": [([x], {"dims": (0, 1)}), ([f(2, 3, 4, dtype=dt)], {"dims": (1,), "keepdim": True})],
        "sum_to": [([x], {"shape": (7,)}), ([x], {"shape": (5, 1)}), ([f(2, 5, 7, dtype=dt)], {"shape": (1, 7)}), ([x], {"shape": ()})],
        "broadcast_to": [([f(7, dtype=dt)], {"shape": (5, 7)}), ([f(5, 1, dtype=dt)], {"shape": (2, 5, 3)}),
                         ([np.array(2.0, dt)], {"shape": (3,)})],
        "matmul": [([f(6, 5, dtype=dt), f(5, 3, dtype=dt)], {}), ([f(2, 6, 5, dtype=dt), f(5, 3, dtype=dt)], {}),
                   ([f(3, 1, 6, 5, dtype=dt), f(2, 5, 3, dtype=dt)], {}), ([f(6, 5, dtype=dt), f(4, 5, 3, dtype=dt)], {})],
        # one output feature: the linear_gemv / linear_backward_gemv variants, not BLAS
        "linear": [([f(6, 5, dtype=dt), f(4, 5, dtype=dt), f(4, dtype=dt)], {}), ([f(6, 5, dtype=dt), f(4, 5, dtype=dt)], {}),
                   ([f(6, 5, dtype=dt), f(1, 5, dtype=dt), f(1, dtype=dt)], {}), ([f(6, 5, dtype=dt), f(1, 5, dtype=dt)], {})],
        "linear_relu": [([f(6, 5, dtype=dt), f(4, 5, dtype=dt), f(4, dtype=dt)], {}), ([f(6, 5, dtype=dt), f(4, 5, dtype=dt)], {}),
                        ([f(6, 5, dtype=dt), f(1, 5, dtype=dt), f(1, dtype=dt)], {})],
        "softmax": [([x], {"dim": 1}), ([f(3, 4, 5, dtype=dt)], {"dim": 1})],
        "log_softmax": [([x], {"dim": 1}), ([x], {"dim": 0})],
        "mse_loss": [([x, f(5, 7, dtype=dt)], {}), ([x, f(5, 7, dtype=dt)], {"reduction": "sum"})],
        "nll_loss": [([f(6, 4, dtype=dt), labels(6, 4)], {}), ([f(6, 4, dtype=dt), labels(6, 4)], {"reduction": "sum"})],
        "cross_entropy": [([f(6, 4, dtype=dt, lo=-10, hi=10), labels(6, 4)], {}),
                          ([f(6, 4, dtype=dt), labels(6, 4)], {"reduction": "sum"})],
        "dropout": [([x, seed()], {"p": 0.5}), ([x, seed()], {"p": 0.1, "stream": 3}), ([x, seed()], {"p": 0.0})],
        "relu_backward": [([x, f(5, 7, dtype=dt)], {})],
        "sigmoid_backward": [([x, f(5, 7, dtype=dt, lo=0, hi=1)], {})],
        "tanh_backward": [([x, f(5, 7, dtype=dt, lo=-1, hi=1)], {})],
        "softmax_backward": [([x, f(5, 7, dtype=dt, lo=0, hi=1)], {"dim": 1}), ([x, f(5, 7, dtype=dt, lo=0, hi=1)], {"dim": 0})],
        "log_softmax_backward": [([x, f(5, 7, dtype=dt, lo=-3, hi=0)], {"dim": 1})],
        "mse_loss_backward": [([np.array(1.0, dt), x, f(5, 7, dtype=dt)], {}),
                              ([np.array(0.5, dt), x, f(5, 7, dtype=dt)], {"reduction": "sum"})],
        "cross_entropy_backward": [([np.array(1.0, dt), f(6, 4, dtype=dt), labels(6, 4)], {}),
                                   ([np.array(2.0, dt), f(6, 4, dtype=dt), labels(6, 4)], {"reduction": "sum"})],
        "nll_loss_backward": [([np.array(1.0, dt), labels(6, 4)], {"classes": 4}),
                              ([np.array(1.0, dt), labels(6, 4)], {"classes": 5, "reduction": "sum"})],
        "linear_backward": [([f(6, 4, dtype=dt), f(6, 5, dtype=dt), f(4, 5, dtype=dt)], {}),
                            ([f(6, 4, dtype=dt), f(6, 5, dtype=dt), f(4, 5, dtype=dt), f(6, 4, dtype=dt)], {"relu": True}),
                            ([f(6, 4, dtype=dt), f(6, 5, dtype=dt), f(4, 5, dtype=dt), f(6, 4, dtype=dt)],
                             {"relu": True, "input_grad": False, "bias_grad": False}),
                            ([f(6, 1, dtype=dt), f(6, 5, dtype=dt), f(1, 5, dtype=dt)], {}),
                            ([f(6, 1, dtype=dt), f(6, 5, dtype=dt), f(1, 5, dtype=dt), f(6, 1, dtype=dt)], {"relu": True}),
                            ([f(6, 1, dtype=dt), f(6, 5, dtype=dt), f(1, 5, dtype=dt), f(6, 1, dtype=dt)],
                             {"relu": True, "input_grad": False, "bias_grad": False})],
        "sqrt": [([f(5, 7, dtype=dt, lo=0.0)], {})],
        "rsqrt": [([f(5, 7, dtype=dt, lo=0.1)], {})],
        "erf": [([x], {})],
        "pow": [([f(5, 7, dtype=dt, lo=0.1)], {"exponent": 2.5}), ([x], {"exponent": 2.0}), ([x], {"exponent": -1.0})],
        "maximum": [([x, f(7, dtype=dt)], {}), ([x, np.array(np.nan, dt)], {})],
        "minimum": [([x, f(5, 1, dtype=dt)], {})],
        **{c: [([x, f(7, dtype=dt)], {}), ([np.round(x), np.round(f(5, 7, dtype=dt))], {})]
           for c in ("eq", "ne", "lt", "le", "gt", "ge")},
        "where": [([f(5, 7) > 0, x, f(7, dtype=dt)], {}), ([f(5, 1) > 0, np.array(0.0, dt), f(1, 7, dtype=dt)], {})],
        "cast": [([x], {"dtype": "f64"}), ([x], {"dtype": "f32"}), ([x * 3], {"dtype": "i64"}), ([x], {"dtype": "bool"}),
                 ([labels(6, 4)], {"dtype": "f32"}), ([f(5, 7) > 0], {"dtype": "f64"})],
        "max": [([x], {"dims": (1,)}), ([x], {"dims": (0,), "keepdim": True}), ([f(2, 3, 4, dtype=dt)], {"dims": (0, 2)}),
                ([x], {"dims": (0, 1)}), ([labels(6, 4).reshape(2, 3)], {"dims": (1,)})],
        "slice": [([x], {"dim": 0, "start": 1, "end": 4}), ([x], {"dim": 1, "start": 1, "end": 7, "step": 2}),
                  ([f(2, 6, 3, dtype=dt)], {"dim": 1, "start": 0, "end": 100, "step": 3}),
                  ([x], {"dim": 1, "start": 3, "end": 3})],
        "concat": [([x, f(2, 7, dtype=dt)], {"dim": 0}), ([x, f(5, 1, dtype=dt), f(5, 3, dtype=dt)], {"dim": 1}), ([x], {"dim": 1})],
        "pad": [([x], {"widths": (1, 2, 0, 3)}), ([x], {"widths": (0, 0, 1, 1), "value": -1.5}),
                ([f(2, 3, 4, dtype=dt)], {"widths": (1, 0, 0, 0, 2, 1), "interior": (0, 2, 1)})],
        "argmax": [([x], {"dim": 1}), ([f(2, 3, 4, dtype=dt)], {"dim": 1, "keepdim": True})],
        "argmin": [([x], {"dim": 0}), ([np.array([[1, 3, 3], [2, 2, 0]], dt)], {"dim": 1})],
        "gather": [([x, R.integers(0, 5, (3, 7))], {"dim": 0}), ([x, R.integers(0, 7, (5, 1))], {"dim": 1}),
                   ([f(2, 3, 4, dtype=dt), R.integers(0, 3, (2, 5, 4))], {"dim": 1})],
        "index_select": [([x, R.integers(0, 5, 9)], {"dim": 0}), ([f(2, 3, 4, dtype=dt), R.integers(0, 3, 5)], {"dim": 1}),
                         ([x, R.integers(0, 7, 1)], {"dim": 1})],
        "index_add": [([x, R.integers(0, 5, 9), f(9, 7, dtype=dt)], {"dim": 0}),
                      ([f(2, 3, 4, dtype=dt), R.integers(0, 3, 5), f(2, 5, 4, dtype=dt)], {"dim": 1})],
        "scatter_add": [([x, R.integers(0, 5, (3, 7)), f(3, 7, dtype=dt)], {"dim": 0}),
                        ([f(2, 3, 4, dtype=dt), R.integers(0, 3, (2, 5, 4)), f(2, 5, 4, dtype=dt)], {"dim": 1})],
        "uniform": [([seed()], {"shape": (3, 5), "dtype": "f32" if dt == np.float32 else "f64"}),
                    ([seed()], {"shape": (4,), "stream": 7, "dtype": "f64"})],
        "arange": [([], {"size": 7, "start": 3, "step": -2}),
                   ([], {"size": 5, "start": 0.5, "step": 0.25, "dtype": "f32" if dt == np.float32 else "f64"})],
        # hyperparameters are f64[] operands (lr, momentum, dampening, weight_decay / lr, beta1, beta2, eps,
        # weight_decay); the attributes say which terms exist
        "sgd_update": [([x, f(5, 7, dtype=dt), *h(0.1, 0, 0, 0)], {}),
                       ([x, f(5, 7, dtype=dt), *h(0.1, 0, 0, 0.01)], {"weight_decay": True}),
                       ([x, f(5, 7, dtype=dt), *h(0.1, 0.9, 0, 0), f(5, 7, dtype=dt), step(0)], {"momentum": True}),
                       ([x, f(5, 7, dtype=dt), *h(0.1, 0.9, 0.1, 0.01), f(5, 7, dtype=dt), step(3)],
                        {"momentum": True, "weight_decay": True}),
                       ([x, f(5, 7, dtype=dt), *h(0.1, 0.9, 0, 0), f(5, 7, dtype=dt), step(3)],
                        {"momentum": True, "nesterov": True})],
        # beta * c + alpha * s * op(a) @ op(b): the SGD update a weight-gradient GEMM writes itself
        "addmm": [([f(5, 7, dtype=dt), f(3, 5, dtype=dt), f(3, 7, dtype=dt), *h(0.1)],
                   {"trans_a": True, "alpha": -1.0}),
                  ([f(5, 7, dtype=dt), f(5, 4, dtype=dt), f(7, 4, dtype=dt)], {"trans_b": True, "beta": 0.5}),
                  ([f(5, 7, dtype=dt), f(4, 5, dtype=dt), f(4, 7, dtype=dt)], {"trans_a": True, "alpha": 2.0, "beta": 0.0}),
                  ([f(1, 7, dtype=dt), f(1, 3, dtype=dt), f(3, 7, dtype=dt), *h(0.3)], {"alpha": -1.0})],
        "adam_update": [([x, f(5, 7, dtype=dt), f(5, 7, dtype=dt), f(5, 7, dtype=dt, lo=0, hi=1), step(0),
                          *h(0.01, 0.9, 0.999, 1e-8, 0)], {}),
                        ([x, f(5, 7, dtype=dt), f(5, 7, dtype=dt), f(5, 7, dtype=dt, lo=0, hi=1), step(7),
                          *h(0.01, 0.3, 0.999, 1e-8, 0.1)], {"weight_decay": True}),
                        ([x, f(5, 7, dtype=dt), f(5, 7, dtype=dt), f(5, 7, dtype=dt, lo=0, hi=1), step(2),
                          *h(0.01, 0.9, 0.99, 1e-6, 0.1)], {"weight_decay": True, "decoupled": True}),
                        ([x, f(5, 7, dtype=dt), f(5, 7, dtype=dt), f(5, 7, dtype=dt, lo=0, hi=1), step(2),  # clipped
                          *h(0.01, 0.9, 0.99, 1e-6, 0.1), np.array(0.37, dt)], {"weight_decay": True, "decoupled": True})],
        # a world of one here; tests/test_distributed.py runs it across two ranks
        "all_reduce": [([world(), x, f(3, dtype=dt), f(2, 1, 4, dtype=dt)], {"ranks": 1}),
                       ([world(), x], {"ranks": 1, "op": "sum"})],
    }


_cases = cases


def cases(dt):  # noqa: F811  (conv2d and pooling cases: tests/conv_cases.py)
    return {**_cases(dt), **conv_cases.kernel_cases(dt, f)}


def test_every_op_has_a_kernel():
    missing = sorted(n for n in set(OPS) - set(KERNELS) if "composite" not in OPS[n].tags)
    assert not missing, f"ops without a native kernel in runtime/kernels.py: {missing}"
    extra = sorted(set(KERNELS) - set(OPS))
    assert not extra, f"kernels for ops the table does not have: {extra}"


def test_cases_cover_the_op_table():
    missing = sorted(n for n in set(OPS) - set(cases(np.float32)) if "composite" not in OPS[n].tags)
    assert not missing, f"ops without a kernel-vs-reference case in this file: {missing}"


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", sorted(n for n in OPS if "composite" not in OPS[n].tags))
def test_kernel_matches_reference(op, dt):
    table = cases(dt)
    if op not in table:
        pytest.fail(f"no test case for op {op!r}")
    tol = dict(rtol=2e-5, atol=2e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for inputs, attrs in table[op]:
        from graphc.ir import get_op

        full = get_op(op).normalize_attrs(attrs)
        want = get_op(op).reference(*[np.array(x) for x in inputs], **full)
        want = want if isinstance(want, tuple) else (want,)
        got = run_kernel(op, inputs, attrs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            w = np.asarray(w)
            assert g.shape == w.shape and g.dtype == w.dtype, (op, attrs, g.shape, w.shape, g.dtype, w.dtype)
            if w.dtype.kind in "bi":
                np.testing.assert_array_equal(g, w, err_msg=f"{op} {attrs}")
            else:
                np.testing.assert_allclose(g, w, **tol, err_msg=f"{op} {attrs}")


def test_dropout_bits_equal_reference_rng():
    out = np.empty(1000)
    for s, stream in ((0, 0), (123, 5), (2**63 - 2, 1)):
        uniform(s, stream, out)
        assert np.array_equal(out, rng.uniform(s, stream, 1000))


def test_nan_flows_through():
    x = np.array([[np.nan, 1.0, -1.0]], np.float32)
    assert np.isnan(run_kernel("relu", [x])[0][0, 0])
    assert np.isnan(run_kernel("linear_relu", [x, np.ones((2, 3), np.float32)])[0]).all()
    assert np.isnan(run_kernel("cross_entropy", [x, np.array([1])])[0])
    assert np.isnan(run_kernel("dropout", [x, seed()], {"p": 0.5})[0][0, 0])


def test_one_element_binary_ops_and_cross_entropy_rows():
    # one-element operands take binary_one (the step counter); cross_entropy's exps run as one flat loop
    assert run_kernel("add", [np.array([41]), np.array([1])])[0].tolist() == [42]
    assert np.isnan(run_kernel("maximum", [np.array([np.nan], np.float32), np.array([1.0], np.float32)])[0][0])
    rng_ = np.random.default_rng(0)
    for n, c in ((5, 1), (3, 9), (4, 1000), (9, 1500)):  # the last: the forward's exps in blocks of two rows
        x, labels = (rng_.standard_normal((n, c)) * 20).astype(np.float32), rng_.integers(0, c, n)
        gy = np.array(0.5, np.float32)
        for op, args in (("cross_entropy", [x, labels]), ("cross_entropy_backward", [gy, x, labels])):
            np.testing.assert_allclose(run_kernel(op, args)[0], _ref(op, args, {}), rtol=2e-5, atol=1e-6)


def test_label_out_of_range_raises():
    with pytest.raises(ValueError, match="out of range"):
        run_kernel("cross_entropy", [f(3, 4), np.array([0, 4, 1])])


def test_collapse_merges_contiguous_dims():
    shape, sa, so = collapse((4, 5, 6), (30, 6, 1), (30, 6, 1))
    assert shape[-1] == 120 and shape[:-1] == (1,) * 5 and sa[-1] == 1
    shape, sa, sb = collapse((4, 5), (5, 1), (0, 1))  # a bias row: two loops
    assert shape[-2:] == (4, 5) and sb[-2:] == (0, 1)


# ---- the strided loop nest on generated shapes (broadcasting, reductions, permutations)
from hypothesis import given, settings, strategies as st  # noqa: E402

from graphc.ir import get_op  # noqa: E402

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=5).map(tuple)


def _ref(op, inputs, attrs):
    return get_op(op).reference(*inputs, **get_op(op).normalize_attrs(attrs))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data())
def test_broadcasting_binary_ops(shape, data):
    # the second operand drops leading dims and sets some dims to 1
    keep = data.draw(st.integers(0, len(shape)))
    other = tuple(1 if data.draw(st.booleans()) else n for n in shape[len(shape) - keep:])
    op = data.draw(st.sampled_from(["add", "sub", "mul", "div"]))
    a, b = f(*shape, lo=0.5), f(*other, lo=0.5)
    if data.draw(st.booleans()):
        a, b = b, a
    got = run_kernel(op, [a, b])[0]
    np.testing.assert_allclose(got, _ref(op, [a, b], {}), rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data())
def test_reductions_and_permutations(shape, data):
    x = f(*shape)
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, max(len(shape) - 1, 0)), max_size=len(shape)))))
    keepdim = data.draw(st.booleans())
    for op in ("sum", "mean"):
        attrs = {"dims": dims, "keepdim": keepdim}
        np.testing.assert_allclose(run_kernel(op, [x], attrs)[0], _ref(op, [x], attrs), rtol=1e-5, atol=1e-6)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    np.testing.assert_array_equal(run_kernel("transpose", [x], {"perm": perm})[0], _ref("transpose", [x], {"perm": perm}))
    small = tuple(1 if data.draw(st.booleans()) else n for n in shape)
    np.testing.assert_allclose(run_kernel("sum_to", [x], {"shape": small})[0], _ref("sum_to", [x], {"shape": small}),
                               rtol=1e-5, atol=1e-6)
    y = f(*small)
    np.testing.assert_array_equal(run_kernel("broadcast_to", [y], {"shape": shape})[0],
                                  _ref("broadcast_to", [y], {"shape": shape}))


def _simple_net_steps(x, t, mode, out_features=1):
    import os
    import sys

    import graphc
    import graphc.nn as nn

    sys.path.insert(0, os.path.dirname(__file__))
    from models import SimpleNet

    graphc.manual_seed(3)
    m = SimpleNet()
    if out_features != 1:
        m.linear2 = nn.Linear(20, out_features)
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    step = graphc.compile_train_step(m, nn.MSELoss(), opt, x, t, mode=mode)
    text = step.executables[next(iter(step.executables))].source.text if mode == "jit" else ""
    return [step(x, t) for _ in range(3)], [p.copy() for p in m.parameters()], text


@pytest.mark.parametrize("out_features, kernels", [
    (1, ("kernel {kind=gemm} over 3 nodes:", "= addmm(", "= linear_relu(", "= dropout(%1, %seed)")),
    (2, ("kernel {kind=gemm} over 3 nodes:", "= addmm(", "= mse_loss_backward(")),
])
def test_fused_train_step_matches_interpreter(out_features, kernels):
    """SimpleNet's train step runs the kernel stage's generated kernels (the GEMM with its relu +
    dropout epilogue, named above the call); the reference interpreter runs the plan op by op:
    same losses and weights."""
    x, t = f(16, 10), f(16, out_features)
    l1, p1, text = _simple_net_steps(x, t, "jit", out_features)
    for k in kernels:
        assert k in text, k
    l2, p2, _ = _simple_net_steps(x, t, "interpret", out_features)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
