"""Small GEMMs as loop nests (passes/gemm_impl.py decides, runtime/lower_small_gemm.py lowers):
the loop nest against numpy over layouts, tails and dtypes; the size rule as the IR shows it;
the IR round trip and the verifier; a train step with loop GEMMs against torch."""
import ctypes
import itertools

import numpy as np
import pytest

import graphc
import graphc.nn as nn
from graphc.ir import VerifyError, parse
from graphc.passes import gemm_impl
from graphc.runtime import kernel_lib
from graphc.runtime.lower_small_gemm import WIDTH, Lines, gemm_loops
from models import assert_same_weights, copy_to_torch, mlp, train_like_torch

_count = itertools.count()


def _run_loops(dt, a, b, c0=None, scale=None, beta=0.0):
    """C = a @ b (or beta * c0 + scale * a @ b) through the generated loop nest; a, b any-strided views."""
    m, k = a.shape
    n = b.shape[1]
    item = a.itemsize
    st = lambda x: (x.strides[0] // item, x.strides[1] // item)  # noqa: E731
    out = Lines("g")
    c = np.zeros((m, n), a.dtype)
    gemm_loops(out, dt, m, n, k, ("%A", *st(a)), ("%B", *st(b)), ("%C", n, 1),
               scale="%s" if scale is not None else None, c0=("%C0", n, 1) if c0 is not None else None, beta=beta)
    name = f"small_gemm_test{next(_count)}"
    text = "\n".join([f"define void @{name}(ptr %A, ptr %B, ptr %C, ptr %C0, double %s) {{", "entry:", *out.allocas,
                      *out.body, "  ret void", "}", *out.decls.values()]) + "\n"
    obj, _ = kernel_lib.compile_ir(text)
    addr = kernel_lib._load_object(name, obj)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, ctypes.c_double)(addr)
    base = lambda x: x.base if x.base is not None else x  # noqa: E731  (the array a view was taken of)
    c0_ = c0 if c0 is not None else c
    fn(base(a).ctypes.data, base(b).ctypes.data, c.ctypes.data, c0_.ctypes.data, 0.0 if scale is None else scale)
    return c


@pytest.mark.parametrize("m,n,k", [(128, 32, 16), (7, 5, 3), (33, 17, 9), (1, 32, 64), (64, 1, 20), (6, 48, 1), (5, 37, 35)])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loop_nest_equals_numpy_over_layouts_tails_and_dtypes(m, n, k, ta, tb, dtype):
    rng = np.random.default_rng(m * 131 + n * 7 + k)
    a0 = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b0 = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a0.T if ta else a0), (b0.T if tb else b0)
    got = _run_loops("f32" if dtype == np.float32 else "f64", a, b)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.parametrize("m,k", [(64, 20), (128, 32), (7, 35), (3, 16), (1, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_output_as_dot_products_equals_numpy(m, k, dtype):
    """x @ w.T with w of one row (an MSE model's last layer) is a dot product per row of x
    (lower_small_gemm.gemm_dots): against numpy in float64, k whole vectors or a masked tail."""
    from graphc.runtime.lower_small_gemm import dots_form, gemm_dots

    rng = np.random.default_rng(m * 7 + k)
    x, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((1, k)).astype(dtype)
    dt = "f32" if dtype == np.float32 else "f64"
    a, b = ("%A", k, 1), ("%B", 1, k)  # B = w.T: k x 1, unit-stride along k
    assert dots_form(dt, 1, a, b) and gemm_impl.dots_form(dt, 1, a[1:], b[1:])
    assert not dots_form(dt, 2, a, b) and not gemm_impl.dots_form(dt, 2, a[1:], b[1:])
    assert not dots_form(dt, 1, ("%A", 1, m + 1), b) and not gemm_impl.dots_form(dt, 1, (1, m + 1), b[1:])
    out = Lines("g")
    gemm_dots(out, dt, m, 1, k, a, b, ("%C", 1, 1))
    name = f"small_gemm_dots{next(_count)}"
    text = "\n".join([f"define void @{name}(ptr %A, ptr %B, ptr %C) {{", "entry:", *out.allocas, *out.body,
                      "  ret void", "}", *out.decls.values()]) + "\n"
    obj, _ = kernel_lib.compile_ir(text)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3)(kernel_lib._load_object(name, obj))
    c = np.full((m, 1), 123, dtype)
    fn(x.ctypes.data, w.ctypes.data, c.ctypes.data)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, x.astype(np.float64) @ w.T.astype(np.float64), rtol=tol, atol=tol * np.sqrt(k))


def test_loop_nest_with_addmm_contract():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 20)).astype(np.float32).T, rng.standard_normal((64, 10)).astype(np.float32)
    c0 = np.ascontiguousarray(rng.standard_normal((20, 10)).astype(np.float32))
    got = _run_loops("f32", a, b, c0=c0, scale=-0.05, beta=1.0)
    np.testing.assert_allclose(got, c0 - np.float32(0.05) * (a.astype(np.float64) @ b), rtol=1e-5, atol=1e-5)


def test_the_rule_and_the_lowering_agree_on_the_vector_width():
    assert gemm_impl.VECTOR == WIDTH


SMALL = """graph g {{
  input %x: f32[{b},{i}]
  param %w: f32[{o},{i}]
  %y: f32[{b},{o}] = linear(%x, %w)
  return %y as y
}}"""


@pytest.mark.parametrize("b,i,o,impl", [
    (128, 32, 32, "loops"),  # 131072 multiply-adds, 32 of 32 lanes
    (64, 10, 20, "loops"),  # SimpleNet's first layer: 20 of 32 lanes
    (128, 512, 512, "blas"),  # M's hidden layer: B packed would take 1 MB of stack
    (128, 32, 1, "loops"),  # one output: a dot product per row of x (gemm_dots), against BLAS's gemv
    (32, 64, 4, "blas"),  # 4 of 16 lanes
    (100, 64, 128, "loops"),  # 819200 multiply-adds: beyond LOOPS_MAX_MACS, but x @ w.T is BLAS's slow "nt" path
    (256, 64, 128, "loops"),  # 2M multiply-adds: beyond the "nt" cap, BLAS at its large-GEMM rate (~26 us loops, 34 BLAS)
])
def test_the_size_rule_as_the_ir_shows_it(b, i, o, impl):
    from graphc.passes.kernels import kernels
    from graphc.passes.manager import PassContext

    g = parse(SMALL.format(b=b, i=i, o=o)).verify()
    ctx = PassContext("kernels")
    out, _ = kernels(g, ctx)
    text = str(out)
    if impl == "loops":
        assert 'kernel(%x, %w) {impl="loops", kind="gemm"}' in text  # a lone GEMM: a kernel of one member
        assert parse(text) == out and out.verify() is not None
        assert any("GEMM as loops" in str(r) for r in ctx.fusion_records)
    else:
        assert "impl=" not in text and "linear(%x, %w)" in text
    assert any(f"impl={impl}" in n for n in ctx.notes)


def test_verify_rejects_impl_on_other_kernels_and_unknown_impls():
    text = """graph g {
  input %x: f32[4]
  %y: f32[4] = kernel(%x) {impl="loops", kind="elementwise"} {
    %t: f32[4] = neg(%x)
    %y: f32[4] = neg(%t)
  }
  return %y as y
}"""
    with pytest.raises(VerifyError, match="impl"):
        parse(text).verify()
    with pytest.raises(VerifyError, match="impl"):
        parse(text.replace('"elementwise"', '"gemm"').replace('"loops"', '"fast"')).verify()


@pytest.mark.parametrize("llvm", ["1", "0"])
def test_an_mlp_with_loop_gemms_trains_like_torch(llvm, monkeypatch, tmp_path):
    """Loop GEMMs forward, in the backward (dx with its relu mask and bias sum) and the weight
    gradients with their SGD updates (addmm, written in place): torch agrees, through the LLVM
    lowering and through numba's (GRAPHC_LLVM=0)."""
    import torch

    monkeypatch.setenv("GRAPHC_LLVM", llvm)
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((48, 16)).astype(np.float32), rng.standard_normal((48, 3)).astype(np.float32)
    graphc.manual_seed(0)
    model = mlp((16, 32, 32, 3))
    t = copy_to_torch(model, torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                                 torch.nn.ReLU(), torch.nn.Linear(32, 3)))
    step = graphc.compile_train_step(model, nn.MSELoss(), graphc.optim.SGD(model.parameters(), lr=0.05), x, y)
    text = step.ir("kernels")
    assert text.count('impl="loops"') >= 5 and "= addmm(" in text.split('impl="loops"', 3)[-1]
    assert "written in place into %0.weight" in step.memory_plan()
    train_like_torch(step, t, torch.optim.SGD(t.parameters(), lr=0.05), torch.nn.functional.mse_loss, x, y)
    assert_same_weights(model, t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("llvm", ["1", "0"])
def test_a_wider_layer_and_one_output_as_loops_train_like_torch(llvm, monkeypatch, tmp_path):
    """x @ W.T beyond LOOPS_MAX_MACS (100x128x64: the "nt" cap), its ReLU and bias on the tiles,
    and a one-output layer as dot products (gemm_dots): torch agrees over three steps."""
    import torch

    monkeypatch.setenv("GRAPHC_LLVM", llvm)
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((100, 64)).astype(np.float32), rng.standard_normal((100, 1)).astype(np.float32)
    graphc.manual_seed(0)
    model = mlp((64, 128, 1))
    t = copy_to_torch(model, torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)))
    step = graphc.compile_train_step(model, nn.MSELoss(), graphc.optim.SGD(model.parameters(), lr=0.05), x, y)
    kernels = [ln for ln in step.ir("kernels").splitlines() if "= kernel(" in ln]
    assert 'impl="loops"' in kernels[0] and "f32[100,128]" in kernels[0]  # the 100x128x64 forward
    assert 'impl="loops"' in kernels[1] and "f32[100,1]" in kernels[1]  # the one output, with the loss
    train_like_torch(step, t, torch.optim.SGD(t.parameters(), lr=0.05), torch.nn.functional.mse_loss, x, y)
    assert_same_weights(model, t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("m,n,k", [(7, 20, 5), (33, 32, 9), (6, 2, 4)])  # (one output: dot products, gemm_dots)
@pytest.mark.parametrize("dt", ["f32", "f64"])
def test_the_epilogue_on_register_tiles_is_bit_equal_to_the_two_pass_form(m, n, k, dt, monkeypatch):
    """A loop GEMM's elementwise epilogue (bias, ReLU, masks, dropout, row/column/one-element
    broadcasts, a bool output) runs on each register tile in one pass: bit-equal to the epilogue loop after the
    GEMM (the same members in the same order per element); a trailing column sum adds each tile's rows in
    row order into its output, as the loop's reduction does: bit-equal too."""
    from graphc.ir import GraphBuilder, TensorType
    from graphc.ir.graph import kernel_node
    from graphc.runtime import lower_llvm, lower_small_gemm
    from test_lower_llvm import _same, run_llvm

    t = np.float32 if dt == "f32" else np.float64
    rng = np.random.default_rng(m + n + k)
    data = {"x": rng.standard_normal((m, k)).astype(t), "w": rng.standard_normal((n, k)).astype(t),
            "bias": rng.standard_normal(n).astype(t), "row": rng.standard_normal(n).astype(t),
            "col": rng.standard_normal((m, 1)).astype(t), "one": rng.standard_normal((1, 1)).astype(t),
            "c": rng.uniform(size=(m, n)) > 0.5, "pos": rng.standard_normal((m, n)).astype(t),
            "seed": np.array(-5, np.int64)}

    def node_of(reduce):
        b = GraphBuilder("k")
        names = [b.add_input(v, TensorType(a.shape, graphc.ir.types.dtype_name(a.dtype)),
                             "rng" if v == "seed" else "input") for v, a in data.items()]
        x, w, bias, row, col, one, c, pos, seed = names
        y = b.emit("dropout", [b.emit("linear_relu", [x, w, bias]), seed], {"p": 0.3, "stream": 5})
        s = b.emit("sub", [b.emit("mul", [y, row]), col])
        z = b.emit("relu_backward", [b.emit("where", [c, s, b.emit("div", [s, one])]), pos])
        b.emit("gt", [z, y])
        if reduce:
            b.emit("sum", [z], {"dims": (0,)})
        outs = [o for nd in b.nodes for o in nd.outputs]
        g = b.build(outs)
        return kernel_node(list(g.nodes), names, outs, g.types, "gemm", impl="loops")

    for reduce in (False, True):  # with a trailing column sum (the bias gradient's form): summed per tile too
        node = node_of(reduce)
        text = lower_llvm.kernel_ir(node, {"seed"})[0]
        assert "epilogue per tile" in text
        one_pass = run_llvm(node, data, {"seed"})
        monkeypatch.setattr(lower_small_gemm, "tile_epilogue_ir", lambda node, scalars: None)
        assert "epilogue per tile" not in lower_llvm.kernel_ir(node, {"seed"})[0]
        two_pass = run_llvm(node, data, {"seed"})
        monkeypatch.undo()
        assert 0 < np.count_nonzero(two_pass[1]) < two_pass[1].size  # dropout dropped some, kept some
        assert len(one_pass) == len(two_pass) == 8 + reduce
        for a, b in zip(one_pass, two_pass):
            _same(a, b)
