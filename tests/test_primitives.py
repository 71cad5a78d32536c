"""The primitive ops (issue 9): every op says how it fuses; non-differentiable primitives
against torch; every op runs under jit, interpret and checked mode, in one graph per dtype.

Forward-vs-torch and VJP-vs-finite-differences of the differentiable ops are in
test_autodiff.py (SPECS); native kernels against the reference in test_runtime_kernels.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphc.ir import OPS, GraphBuilder, GraphcError, TensorType, interpret, rng
from graphc.ir.opdef import KINDS, _NoGradient
from graphc.passes.pipeline import compile_pipeline
from graphc.runtime import Executable
from test_autodiff import NONDIFF, SPECS, _inputs

R = np.random.default_rng(3)


def test_every_op_has_a_fusion_kind():
    missing = {name: op.kind for name, op in OPS.items() if op.kind not in KINDS}
    assert not missing, f"ops without a fusion kind (one of {KINDS}) in the op table: {missing}"


# ------------------------------------------------------------------ forward vs torch, non-differentiable primitives

TORCH_COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}


@pytest.mark.parametrize("op", sorted(TORCH_COMPARE))
def test_comparisons_match_torch(op):
    a = np.round(R.standard_normal((4, 5)))
    b = np.round(R.standard_normal((5,)))
    got = OPS[op].reference(a, b)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, TORCH_COMPARE[op](torch.tensor(a), torch.tensor(b)).numpy())


@pytest.mark.parametrize("dtype,torch_dtype", [("i64", torch.int64), ("bool", torch.bool), ("f32", torch.float32)])
def test_cast_matches_torch(dtype, torch_dtype):
    x = R.standard_normal((4, 5)) * 3
    got = OPS["cast"].reference(x, dtype=dtype)
    np.testing.assert_array_equal(got, torch.tensor(x).to(torch_dtype).numpy())


def test_uniform_is_the_dropout_stream():
    u = OPS["uniform"].reference(np.array(7, np.int64), shape=(3, 4), stream=2, dtype="f64")
    np.testing.assert_array_equal(u.reshape(-1), rng.uniform(7, 2, 12))
    assert ((u >= 0) & (u < 1)).all()


def test_arange_matches_torch():
    np.testing.assert_array_equal(OPS["arange"].reference(start=3.0, step=-2.0, size=4, dtype="i64"),
                                  torch.arange(3, -5, -2).numpy())
    np.testing.assert_allclose(OPS["arange"].reference(start=0.5, step=0.25, size=5, dtype="f32"),
                               torch.arange(0.5, 1.75, 0.25).numpy())


def test_every_op_is_specified_somewhere():
    nondiff_prims = set(TORCH_COMPARE) | {"uniform", "arange"}
    differentiable = {n for n, op in OPS.items() if not isinstance(op.vjp, _NoGradient)}
    assert differentiable <= set(SPECS)
    assert nondiff_prims <= set(OPS)


def test_bad_input_names_the_problem():
    b = GraphBuilder("f")
    x = b.add_input("x", TensorType((3, 4)))
    i = b.add_input("i", TensorType((3, 4), "f32"))
    with pytest.raises(GraphcError, match="gather: index must be i64, got f32"):
        b.emit("gather", [x, i], {"dim": 0})
    with pytest.raises(GraphcError, match="where: condition must be bool"):
        b.emit("where", [x, x, x])
    with pytest.raises(GraphcError, match="matmul: inner dims differ"):
        b.emit("matmul", [x, x])
    with pytest.raises(GraphcError, match="slice: need 0 <= start <= end"):
        b.emit("slice", [x], {"dim": 0, "start": 2, "end": 1})
    with pytest.raises(GraphcError, match="concat: input 1 f32\\[3,5\\] does not match"):
        b.emit("concat", [x, b.add_input("y", TensorType((3, 5)))], {"dim": 0})
    with pytest.raises(GraphcError, match="pad: widths must be 4"):
        b.emit("pad", [x], {"widths": (1, 1)})


def test_index_out_of_range_is_a_graphc_error_in_every_mode():
    b = GraphBuilder("f")
    x = b.add_input("x", TensorType((3, 4)))
    i = b.add_input("i", TensorType((2, 4), "i64"))
    g = b.build([b.emit("gather", [x, i], {"dim": 0})])
    bad = [np.zeros((3, 4), np.float32), np.full((2, 4), 3, np.int64)]
    for mode in ("interpret", "jit"):
        with pytest.raises(GraphcError, match="index out of range"):
            Executable(g, mode=mode)(*bad)


# ------------------------------------------------------------------ every primitive in one plan, in every mode


def _all_ops_graph(dtype):
    """One graph applying every spec'd op (first case) to inputs of its own: params for floats."""
    b = GraphBuilder("all_ops")
    vals, outs = {}, []
    for op in sorted(set(SPECS) - {"dropout"}):  # (inference removes dropout; it has its own tests)
        spec = SPECS[op][0]
        args = []
        for k, ((kind, *_), v) in enumerate(zip(spec.inputs, _inputs(spec, dtype, np.random.default_rng(0)))):
            name = f"{op}_{k}"
            kind_ = {"labels": "input", "index": "input", "cond": "input", "seed": "rng"}.get(kind, "param")
            args.append(b.add_input(name, TensorType.of(v), kind_))
            vals[name] = v
        out = b.emit(op, args, spec.attrs)
        outs.extend(out if isinstance(out, tuple) else [out])
    extra = b.add_input("seed", TensorType((), "i64"), "rng")
    vals["seed"] = np.array(5, np.int64)
    x = b.add_input("cmp_x", TensorType((3, 4), "f64" if dtype == np.float64 else "f32"))
    vals["cmp_x"] = np.asarray(R.standard_normal((3, 4)), dtype)
    for op in sorted(TORCH_COMPARE):
        outs.append(b.emit(op, [x, b.emit("full", [], {"shape": (), "value": 0.0, "dtype": b.types[x].dtype})]))
    outs.append(b.emit("uniform", [extra], {"shape": (2, 3), "stream": 1, "dtype": b.types[x].dtype}))
    outs.append(b.emit("cast", [x], {"dtype": "i64"}))
    return b.build(outs).verify(), vals


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_primitive_runs_in_jit_interpret_and_checked_mode(dt):
    """Every op in one plan through the checked pipeline (each pass run against the interpreter) in
    both dtypes, then run by the interpreter and natively. The native run (one numba compile of a
    ~60-op plan, the cost of this test) is float64's only: float32's native kernels are each checked
    against their references by tests/test_runtime_kernels.py::test_kernel_matches_reference[*-f32]."""
    g, vals = _all_ops_graph(dt)
    args = [vals[i.name] for i in g.inputs]
    want = interpret(g, args)
    plan = compile_pipeline(g, "inference", check=True).forward  # checked: every pass run against the interpreter
    tol = dict(rtol=3e-5, atol=3e-6) if dt == np.float32 else dict(rtol=1e-11, atol=1e-12)
    assert len(plan.outputs) == len(g.outputs)
    for mode in ("interpret", "jit") if dt == np.float64 else ("interpret",):
        exe = Executable(plan, mode=mode)
        exe.run(*[vals[i.name] for i in exe.call_inputs])
        for o, w, got in zip(g.outputs, want, exe.outputs):
            if w.dtype.kind in "bi":
                np.testing.assert_array_equal(got, w, err_msg=f"{mode}: %{o.value}")
            else:
                np.testing.assert_allclose(got, w, **tol, err_msg=f"{mode}: %{o.value}")


def test_every_differentiable_primitive_trains_in_checked_mode():
    """Autodiff and partition of every spec'd op in one graph (loss = sum of products with fixed
    weights), checked against the interpreter pass by pass, then run natively."""
    g, vals = _all_ops_graph(np.float64)
    b = GraphBuilder("all_ops_loss", like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    for n in g.nodes:
        b.add_node(n)
    terms = []
    for o in g.outputs:
        t = g.types[o.value]
        if t.is_float and OPS[g.producer(o.value).op].vjp is not None and \
                not isinstance(OPS[g.producer(o.value).op].vjp, _NoGradient):
            v = o.value if t.dtype == "f64" else b.emit("cast", [o.value], {"dtype": "f64"})
            terms.append(b.emit("sum", [b.emit("mul", [v, v])], {"dims": tuple(range(t.rank))}))
    loss = terms[0]
    for t in terms[1:]:
        loss = b.emit("add", [loss, t])
    lg = b.build([loss]).verify()
    plans = compile_pipeline(lg, "training", check=True)
    assert plans.backward is not None and len(plans.backward.nodes) > 0
    assert NONDIFF  # (the spec kinds that are not differentiated)


# ------------------------------------------------------------------ decompositions


def test_decompositions_agree_with_the_references():
    """Each op's decomposition, on the interpreter, against its own reference (float64)."""
    from graphc.ir.opdef import decomposed_graph

    x = R.standard_normal((4, 6))
    cases = {"softmax": ([x], {"dim": 1}), "log_softmax": ([x], {"dim": 0}), "mse_loss": ([x, x * 2], {}),
             "linear": ([x, R.standard_normal((3, 6)), R.standard_normal(3)], {}),
             "cross_entropy": ([x, np.array([1, 2, 0, 5])], {"reduction": "sum"}),
             "dropout": ([x, np.array(5, np.int64)], {"p": 0.3, "stream": 2}),
             "layer_norm": ([x, R.standard_normal(6), R.standard_normal(6)], {}),
             "softmax_backward": ([x, np.exp(x) / np.exp(x).sum(1, keepdims=True)], {"dim": 1}),
             "log_softmax_backward": ([x, x - np.log(np.exp(x).sum(0, keepdims=True))], {"dim": 0}),
             "linear_backward": ([R.standard_normal((4, 3)), x, R.standard_normal((3, 6)), R.standard_normal((4, 3))],
                                 {"relu": True})}
    with_decomposition = sorted(n for n, op in OPS.items() if op.decompose is not None)
    assert sorted(cases) == with_decomposition
    for op, (args, attrs) in cases.items():
        a = OPS[op].normalize_attrs(attrs)
        g = decomposed_graph(OPS[op], [TensorType.of(v) for v in args], a)
        want = OPS[op].reference(*args, **a)
        for got, w in zip(interpret(g, args), want if isinstance(want, tuple) else [want]):
            np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12, err_msg=op)


def test_composite_ops_are_decomposed_before_lowering():
    b = GraphBuilder("ln")
    x = b.add_input("x", TensorType((4, 8)))
    w = b.add_input("w", TensorType((8,)), "param")
    g = b.build([b.emit("layer_norm", [x, w])])
    plans = compile_pipeline(g, "inference", check=True)
    assert "decompose" in plans.stage_names
    assert all(n.op != "layer_norm" for n in plans.forward.nodes)
    args = [R.standard_normal((4, 8)).astype(np.float32), R.standard_normal(8).astype(np.float32)]
    want = torch.nn.functional.layer_norm(torch.tensor(args[0]), (8,), torch.tensor(args[1])).numpy()
    exe = Executable(plans.forward, mode="jit")
    exe.run(*args)
    np.testing.assert_allclose(exe.outputs[0], want, rtol=1e-5, atol=1e-5)
