"""Plain nodes lowered to LLVM functions of their own (runtime/lower_nodes.py) compute what their
library kernels (runtime/kernels.py, primitive_kernels.py) compute, bit for bit: binaries with
broadcasting and one-element operands, comparisons, where, reductions (full in double, partial,
mean, max, sum_to), movement (transpose, slice, concat, pad, reshape), GEMMs, arange, cast, gather and
scatter_add, cross_entropy and its backward, the SGD and Adam updates; and
what it leaves to the library (sigmoid, erf, integer division) raises Unsupported."""
import ctypes

import numpy as np
import pytest

import graphc
from graphc.ir import GraphBuilder, TensorType, get_op
from graphc.runtime import kernel_lib, lower_llvm, lower_nodes
from graphc.runtime.kernel_lib import LlvmKernel
from graphc.runtime.kernels import KERNELS, run_kernel

R = np.random.default_rng(11)


def _f(shape, dt=np.float32, edges=True):
    x = R.uniform(-3, 3, shape).astype(dt)
    if edges and x.size >= 6:
        x.flat[:6] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-30]
    return x


def _node(op, inputs, attrs):
    b = GraphBuilder(op)
    names = [b.add_input(f"in{k}", TensorType.of(x), "input") for k, x in enumerate(inputs)]
    b.emit(op, names, get_op(op).normalize_attrs(attrs or {}))
    return b.nodes[-1], b.types, names


def run_llvm(op, inputs, attrs=None):
    n, types, names = _node(op, inputs, attrs)
    scratch = KERNELS[op].scratch(n, types) if KERNELS[op].scratch else []
    ir, ins, outs, args = lower_nodes.node_ir(n, types, set(), scratch)
    k = LlvmKernel(ir, args)
    obj, _ = kernel_lib.compile_ir(k.text)
    arrays = dict(zip(names, [np.ascontiguousarray(x) for x in inputs]))
    res = [np.full(t.shape, 123, t.np_dtype) for t in n.types]  # garbage first: every element must be written
    used = [v for v in outs if isinstance(v, str) and v.startswith("#scratch")]  # (addmm's are stack slots)
    tmp = [np.full(t.shape, 7, t.np_dtype) for t in (scratch[int(v.removeprefix("#scratch"))] for v in used)]
    consts = [v for v in outs if isinstance(v, int)]  # the updates' element count
    assert outs == list(n.outputs) + used + consts
    fn = ctypes.CFUNCTYPE(ctypes.c_int32 if k.status else None, *[ctypes.c_void_p] * (len(args) - len(consts)),
                          *[ctypes.c_int64] * len(consts))(kernel_lib._load_object(k.symbol, obj))
    status = fn(*[arrays[v].ctypes.data for v in ins], *[r.ctypes.data for r in res + tmp], *consts)
    if status:
        raise ValueError(lower_nodes.ERRORS[op])
    return tuple(res)


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
        a, b = np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0)
    np.testing.assert_array_equal(a, b)


CASES = [
    ("add", lambda: [_f((4, 6)), _f((4, 6))], None),
    ("mul", lambda: [_f((3, 4, 6)), _f((3, 4, 1))], None),  # broadcast: the library's `strided`
    ("sub", lambda: [_f((5, 6)), _f((6,))], None),
    ("div", lambda: [_f((4, 6)), _f(())], None),  # one-element operand: `binary_scalar`
    ("div", lambda: [_f(()), _f(())], None),  # `binary_one`
    ("maximum", lambda: [_f((4, 6), np.float64), _f((4, 6), np.float64)[::-1].copy()], None),
    ("add", lambda: [np.arange(12).reshape(3, 4), np.arange(4)], None),
    ("le", lambda: [np.arange(8).reshape(1, 8), np.arange(8).reshape(8, 1)], None),
    ("lt", lambda: [_f((4, 6)), _f((4, 1))], None),
    ("where", lambda: [R.uniform(size=(4, 6)) > 0.5, _f((4, 6)), _f((1, 6))], None),
    ("exp", lambda: [_f((7, 9))], None),
    ("rsqrt", lambda: [np.abs(_f((7, 9), np.float64))], None),
    ("pow", lambda: [np.abs(_f((5, 5)))], {"exponent": 3.0}),
    ("cast", lambda: [_f((4, 6))], {"dtype": "bool"}),
    ("sum", lambda: [_f((30, 40), edges=False)], {"dims": (0, 1)}),  # full: accumulated in double
    ("sum", lambda: [_f((8, 9, 10), edges=False)], {"dims": (0, 1)}),
    ("sum", lambda: [_f((8, 9, 10), edges=False)], {"dims": (1,), "keepdim": True}),
    ("mean", lambda: [_f((8, 9, 10), np.float64, edges=False)], {"dims": (0, 2)}),
    ("max", lambda: [_f((8, 9, 10))], {"dims": (2,)}),
    ("sum_to", lambda: [_f((8, 9, 10), edges=False)], {"shape": (1, 10)}),
    ("sum", lambda: [np.arange(24).reshape(4, 6)], {"dims": (0,)}),
    ("transpose", lambda: [_f((3, 4, 5, 6))], {"perm": (0, 2, 1, 3)}),
    ("slice", lambda: [_f((6, 8))], {"dim": 1, "start": 1, "end": 7, "step": 2}),
    ("concat", lambda: [_f((2, 3, 4)), _f((2, 3, 4)), _f((2, 3, 1))], {"dim": 2}),
    ("pad", lambda: [_f((3, 4))], {"widths": (1, 2, 0, 1), "value": -1.5}),
    ("broadcast_to", lambda: [np.arange(5).reshape(5, 1)], {"shape": (5, 7)}),
    ("arange", lambda: [], {"size": 9, "start": 2.0, "step": 3.0, "dtype": "i64"}),
    ("arange", lambda: [], {"size": 9, "start": 0.5, "step": 0.1, "dtype": "f32"}),
    ("linear", lambda: [_f((16, 8), edges=False), _f((5, 8), edges=False), _f((5,), edges=False)], None),
    ("linear_relu", lambda: [_f((16, 8), np.float64, edges=False), _f((5, 8), np.float64, edges=False)], None),
    ("matmul", lambda: [_f((16, 8), edges=False), _f((8, 5), edges=False)], None),
    ("matmul", lambda: [_f((1, 8), edges=False), _f((8, 5), edges=False)], None),  # gemv, as np.dot picks
    ("gather", lambda: [_f((6, 5)), R.integers(0, 6, (9, 5))], {"dim": 0}),  # an Embedding's rows
    ("gather", lambda: [_f((4, 7, 3)), R.integers(0, 7, (4, 2, 3))], {"dim": 1}),
    ("scatter_add", lambda: [_f((6, 5), edges=False), R.integers(0, 6, (9, 5)), _f((9, 5), edges=False)], {"dim": 0}),
    ("scatter_add", lambda: [_f((4, 7, 3), np.float64), R.integers(0, 7, (4, 2, 3)), _f((4, 2, 3), np.float64)],
     {"dim": 1}),
    ("index_select", lambda: [_f((6, 5)), R.integers(0, 6, 9)], {"dim": 0}),  # an Embedding's rows
    ("index_select", lambda: [_f((4, 7, 3), np.float64), R.integers(0, 7, 5)], {"dim": 1}),
    ("index_add", lambda: [_f((6, 5), edges=False), R.integers(0, 6, 9), _f((9, 5), edges=False)], {"dim": 0}),
    ("index_add", lambda: [_f((4, 7, 3), np.float64), R.integers(0, 7, 5), _f((4, 5, 3), np.float64)], {"dim": 1}),
    ("cross_entropy", lambda: [_f((64, 10), edges=False), R.integers(0, 10, 64)], None),
    ("cross_entropy", lambda: [_f((9, 1000), np.float64, edges=False), R.integers(0, 1000, 9)], {"reduction": "sum"}),
    ("cross_entropy", lambda: [_f((1000, 9), edges=False) * 30, R.integers(0, 9, 1000)], None),  # blocks + a tail
    ("cross_entropy_backward", lambda: [_f(()), _f((64, 10), edges=False), R.integers(0, 10, 64)], None),
    ("cross_entropy_backward", lambda: [_f((), np.float64), _f((9, 7), np.float64), R.integers(0, 7, 9)],
     {"reduction": "sum"}),
    ("sgd_update", lambda: [_f((40,), edges=False), _f((40,), edges=False), *_h(0.1, 0, 0, 0)], None),
    ("sgd_update", lambda: [_f((40,), np.float64, edges=False), _f((40,), np.float64, edges=False),
                            *_h(0.1, 0, 0, 0.01)], {"weight_decay": True}),
    *[("sgd_update", (lambda step=step, nes=nes: [_f((37,), edges=False), _f((37,), edges=False), *_h(0.05, 0.9, 0.1, 0.01),
                                                   _f((37,), edges=False), np.array(step, np.int64)]),
       {"momentum": True, "nesterov": nes, "weight_decay": True}) for step in (0, 3) for nes in (False, True)],
    *[("addmm", (lambda ta=ta, tb=tb, dt=dt, s=s: [_f((6, 5), dt, edges=False),
                                                   _f((7, 6) if ta else (6, 7), dt, edges=False),
                                                   _f((5, 7) if tb else (7, 5), dt, edges=False)] + (_h(0.3) if s else [])),
       {"trans_a": ta, "trans_b": tb, "alpha": -0.5, "beta": 1.0})
      for ta, tb, dt, s in ((False, False, np.float32, False), (True, False, np.float32, True),
                            (False, True, np.float64, True), (True, True, np.float64, False))],
    *[("adam_update", (lambda dt=dt, step=step, b1=b1: [_f((45,), dt, edges=False), _f((45,), dt, edges=False),
                                                        _f((45,), dt, edges=False), np.abs(_f((45,), dt, edges=False)),
                                                        np.array(step, np.int64), *_h(1e-3, b1, 0.999, 1e-8, 0.1)]
                                                       + ([np.array(0.37, dt)] if clip else [])),
       {"weight_decay": wd, "decoupled": dec})
      for dt, step, b1, wd, dec, clip in ((np.float32, 0, 0.9, True, True, False), (np.float32, 4, 0.3, True, False, False),
                                          (np.float64, 2, 0.9, False, False, False), (np.float32, 7, 0.9, False, False, False),
                                          (np.float32, 3, 0.9, True, True, True), (np.float64, 1, 0.9, False, False, True))],
]


def _h(*values):
    return [np.array(v, np.float64) for v in values]


@pytest.mark.parametrize("op, make, attrs", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_plain_node_llvm_equals_its_library_kernel(op, make, attrs):
    inputs = make()
    want = run_kernel(op, inputs, attrs)
    got = run_llvm(op, inputs, attrs)
    for w, g in zip(want, got):
        _same(g, w)


@pytest.mark.parametrize("op, inputs, attrs", [
    ("sigmoid", [np.ones((2, 3), np.float32)], None),  # the library computes in float32, lower_llvm in double
    ("erf", [np.ones((2, 3), np.float32)], None),
    ("div", [np.ones((2, 3), np.int64), np.ones((2, 3), np.int64)], None),
    ("gather", [np.ones((4, 3), bool), np.zeros((2, 3), np.int64)], {"dim": 0}),
])
def test_what_stays_a_library_kernel(op, inputs, attrs):
    n, types, _ = _node(op, inputs, attrs)
    with pytest.raises(lower_llvm.Unsupported):
        lower_nodes.node_ir(n, types, set())


@pytest.mark.parametrize("bad", [-1, 6])
def test_an_index_out_of_range_returns_a_status_where_the_library_raises(bad):
    index = np.zeros((3, 2), np.int64)
    index[1, 1] = bad
    ids = index[:, 1].copy()
    for op, inputs in (("gather", [_f((6, 2)), index]), ("scatter_add", [_f((6, 2)), index, _f((3, 2))]),
                       ("index_select", [_f((6, 2)), ids]), ("index_add", [_f((6, 2)), ids, _f((3, 2))])):
        with pytest.raises(ValueError, match="index out of range"):
            run_kernel(op, inputs, {"dim": 0})
        with pytest.raises(ValueError, match="index out of range"):
            run_llvm(op, inputs, {"dim": 0})
    labels = np.array([0, bad, 1])
    for op, inputs in (("cross_entropy", [_f((3, 6)), labels]), ("cross_entropy_backward", [_f(()), _f((3, 6)), labels])):
        with pytest.raises(ValueError, match="class label out of range"):
            run_kernel(op, inputs)
        with pytest.raises(ValueError, match="class label out of range"):
            run_llvm(op, inputs)


def test_every_param_of_a_dtype_shares_one_update_function():
    texts = set()
    for size in (3, 40, 4096):
        n, types, _ = _node("adam_update", [np.zeros(size, np.float32)] * 4 + [np.array(0)] + _h(1e-3, 0.9, 0.999, 1e-8, 0.1),
                            {"weight_decay": True, "decoupled": True})
        ir, ins, outs, args = lower_nodes.node_ir(n, types, set())
        assert outs[-1] == size and args[-1] == "i64 scalar"
        texts.add(ir)
    assert len(texts) == 1


def test_the_gpt_plans_call_no_generic_library_kernel(cache_dir):
    """The GPT's plain nodes (bias gradients, the loss's sums, head split copies, GEMMs, the causal
    mask, the embedding's index_select and index_add) are LLVM functions: the plans import no library kernel."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "samples"))
    from char_gpt import GPTConfig, gpt_classes

    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    graphc.manual_seed(0)
    model = gpt_classes(graphc)(cfg)
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    cm = graphc.compile(model, x, x)
    cm(x, x)
    cm.backward()
    for exe in cm.executables.values():
        imported = {ln.split(" import ")[1].split(" as ")[0] for ln in exe.source.text.splitlines()
                    if ln.startswith("from graphc.runtime.") and " as k_" in ln}
        assert not imported, imported
