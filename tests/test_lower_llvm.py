"""The LLVM lowering of the kernel stage (runtime/lower_llvm.py) against numba's lowering of the same
kernel (runtime/lower.py) and the reference interpreter: every scalar op on random inputs with the
edge values (NaN, inf, -0.0, exp's range ends), float32 and float64, broadcasting; dropout masks
bit-equal; GEMM kernels (gemm, gemv, dot as numba's np.dot picks them) with prologue transposes,
epilogues and a trailing reduction; rows kernels (softmax, log_softmax, LayerNorm, attention, the
loss, their backward, dropout) bit-equal; the sample GPT's kernels all LLVM; the IR text; fallback
to numba; the kernel library entry."""
import ctypes
import re

import numpy as np
import pytest

import graphc
from graphc.ir import GraphBuilder, TensorType, interpret
from graphc.ir.graph import kernel_node
from graphc.runtime import cache, kernel_lib, lower_llvm
from graphc.runtime.codegen import is_scalar_input
from graphc.runtime.kernel_lib import LlvmKernel
from graphc.passes.kernels import kernels
from graphc.passes.parallel import vector_width
from graphc.runtime.lower import HELPERS, kernel_function, kernel_scratch

R = np.random.default_rng(7)
DT = {"f32": np.float32, "f64": np.float64}


def _kernel(build, inputs: dict, kind="elementwise"):
    """(kernel node, the graph of its members): build(b, *input names) emits the members; every
    member's output is an output of the kernel."""
    b = GraphBuilder("k")
    names = [b.add_input(n, TensorType(a.shape, graphc.ir.types.dtype_name(a.dtype)),
                         "rng" if n == "seed" else "input") for n, a in inputs.items()]
    build(b, *names)
    outs = [o for n in b.nodes for o in n.outputs if not (kind == "gemm" and n.op == "transpose")]
    g = b.build(outs)
    return kernel_node(list(g.nodes), names, outs, g.types, kind), g


def run_llvm(node, arrays: dict, scalars=()):
    ir, ins, outs, args = lower_llvm.kernel_ir(node, set(scalars))
    k = LlvmKernel(ir, args)
    obj, _ = kernel_lib.compile_ir(k.text)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_int64 if a == "i64 scalar" else ctypes.c_void_p for a in args])(
        kernel_lib._load_object(k.symbol, obj))
    res = _outputs(node, outs)
    fn(*[int(arrays[v]) if v in scalars else arrays[v].ctypes.data for v in ins], *[a.ctypes.data for a in res])
    return res


def run_numba(node, arrays: dict, scalars=()):
    src, ins, outs = kernel_function("k", node, set(scalars), None)
    ns = {}
    exec("import math\nimport numpy as np\nfrom numba import njit\nfrom graphc.runtime.lower import "
         + ", ".join(HELPERS) + "\n" + src, ns)
    res = _outputs(node, outs)
    ns["k"](*[int(arrays[v]) if v in scalars else arrays[v].reshape(-1) for v in ins], *[a.reshape(-1) for a in res])
    return res


def _outputs(node, outs):
    got, scratch = [], kernel_scratch(node)  # a gemm's product, a rows kernel's rows
    for v in outs:
        t = node.body.types[v] if not v.startswith("#") else scratch[int(v.removeprefix("#scratch"))]
        got.append(np.full(t.shape, 123, t.np_dtype))  # garbage first: every element must be written
    return got


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        a, b = np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0)
    np.testing.assert_array_equal(a, b)


def _data(dt):
    t = DT[dt]
    x = R.uniform(-3, 3, (4, 6)).astype(t)
    x.flat[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 90.0, -90.0, 1e-30]  # the edges: exp32's range ends
    return {"x": x, "y": R.uniform(-3, 3, 6).astype(t), "z": R.uniform(-3, 3, (4, 1)).astype(t),
            "pos": R.uniform(0.1, 4, (4, 6)).astype(t), "c": R.uniform(size=(4, 6)) > 0.5,
            "g": np.array(0.75, t), "seed": np.array(987654321, np.int64)}


def _every_op(b, x, y, z, pos, c, g, seed):
    for op in ("add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"):
        b.emit(op, [x, y])
    b.emit("sub", [z, x])
    b.emit("maximum", [y, x])
    b.emit("minimum", [z, x])
    b.emit("where", [c, x, z])
    for op in ("neg", "exp", "erf", "tanh", "relu", "sigmoid"):
        b.emit(op, [x])
    for op in ("log", "sqrt", "rsqrt"):
        b.emit(op, [pos])
    for e in (2.0, 3.0, 0.5, -1.5):
        b.emit("pow", [pos], {"exponent": e})
    for dt in ("f32", "f64", "i64", "bool"):
        b.emit("cast", [x if dt != "i64" else pos], {"dtype": dt})
    b.emit("cast", [c], {"dtype": "f32"})
    b.emit("relu_backward", [pos, x])
    b.emit("sigmoid_backward", [x, pos])
    b.emit("tanh_backward", [x, pos])
    b.emit("mse_loss_backward", [g, x, pos], {"reduction": "mean"})
    b.emit("dropout", [x, seed], {"p": 0.3, "stream": 5})
    b.emit("uniform", [seed], {"shape": (4, 6), "stream": 2, "dtype": "f32"})
    b.emit("uniform", [seed], {"shape": (4, 6), "stream": 9, "dtype": "f64"})


def test_every_scalar_op_has_an_llvm_form():
    assert set(lower_llvm.EXPR) == set(__import__("graphc.runtime.lower", fromlist=["EXPR"]).EXPR)


@pytest.mark.parametrize("dt", ["f32", "f64"])
def test_every_op_llvm_equals_numba_bit_for_bit_and_the_interpreter(dt):
    data = _data(dt)
    node, g = _kernel(_every_op, data)
    want = interpret(g, data)
    with np.errstate(all="ignore"):
        llvm = run_llvm(node, data, {"seed"})
        numba_ = run_numba(node, data, {"seed"})
    for m, a, b, w in zip(g.nodes, llvm, numba_, want):
        _same(a, b)  # the same operations in the same order: the same bits
        w = np.asarray(w)
        if m.op == "cast" and m.attr["dtype"] == "i64":
            w = np.asarray(w)
        tol = {"exp": 4e-7, "erf": 4e-7}.get(m.op, 1e-6) if dt == "f32" else 1e-13
        np.testing.assert_allclose(a.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol,
                                   err_msg=f"{m.op} {dt}", equal_nan=True)


def test_dropout_masks_are_bit_equal_to_the_interpreter():
    data = {"x": R.standard_normal((33, 65)).astype(np.float32), "seed": np.array(-5, np.int64)}
    node, g = _kernel(lambda b, x, seed: b.emit("dropout", [x, seed], {"p": 0.5, "stream": 3}), data)
    got = run_llvm(node, data, {"seed"})[0]
    _same(got, interpret(g, data)[0])
    node, g = _kernel(lambda b, x, seed: b.emit("dropout", [x, seed], {"p": 0.1, "stream": 0}), data)
    _same(run_llvm(node, data)[0], interpret(g, data)[0])  # the seed read from an array, not an argument


@pytest.mark.parametrize("p", [0.0, 1 / 3, 0.7, 1 - 2 ** -53])
def test_dropout_keeps_by_an_integer_bound_equal_to_the_float_compare(p):
    """lower_llvm._dropout keeps an element when splitmix64's z >= ceil(p * 2^53) << 11, which is
    u = (z >> 11) * 2^-53 >= p exactly (u is exact): at the bound and either side of it, and
    masks equal to the interpreter's for p that are not multiples of 2^-53."""
    import math

    t = math.ceil(p * 2.0 ** 53)
    for k in (t - 1, t, t + 1):
        if 0 <= k < 2 ** 53:
            for low in (0, 2 ** 11 - 1):  # z's bits below the 53 that u keeps
                z = (k << 11) | low
                assert (z >= t << 11) == ((z >> 11) * 2.0 ** -53 >= p)
    data = {"x": R.standard_normal((17, 40)).astype(np.float32), "seed": np.array(7, np.int64)}
    node, g = _kernel(lambda b, x, seed: b.emit("dropout", [x, seed], {"p": p, "stream": 2}), data)
    _same(run_llvm(node, data, {"seed"})[0], interpret(g, data)[0])


def test_arange_and_integer_ops():
    def build(b, i, j):
        b.emit("arange", [], {"start": 3.0, "step": -2.0, "size": 12, "dtype": "i64"})
        b.emit("add", [i, j]), b.emit("mul", [i, j]), b.emit("maximum", [i, j])
        b.emit("lt", [i, j]), b.emit("cast", [i], {"dtype": "f32"})

    data = {"i": R.integers(-9, 9, 12), "j": R.integers(-9, 9, 12)}
    node, g = _kernel(build, data)
    for a, b, w in zip(run_llvm(node, data), run_numba(node, data), interpret(g, data)):
        _same(a, b)
        _same(a, np.asarray(w))
    node, g = _kernel(lambda b: b.emit("arange", [], {"start": 0.5, "step": 0.1, "size": 10, "dtype": "f32"}), {})
    _same(run_llvm(node, {})[0], interpret(g, {})[0])


@pytest.mark.parametrize("m,k,n,dt", [(5, 3, 4, "f32"), (5, 3, 1, "f32"), (1, 3, 4, "f32"), (1, 3, 1, "f32"),
                                      (5, 3, 4, "f64")])  # gemm, gemv M*V, gemv V*M, dot
def test_gemm_kernels_call_blas_as_numba_does(m, k, n, dt):
    t = DT[dt]
    data = {"x": R.standard_normal((m, k)).astype(t), "w": R.standard_normal((n, k)).astype(t),
            "b": R.standard_normal(n).astype(t), "d": R.standard_normal((k, m)).astype(t),
            "v": R.standard_normal((k, n)).astype(t)}

    def linear(b_, x, w, bias, d, v):  # linear_relu + epilogue + bias-grad reduction
        y = b_.emit("linear_relu", [x, w, bias])
        b_.emit("sum", [b_.emit("mul", [y, y])], {"dims": (0,)})

    def prologue(b_, x, w, bias, d, v):  # d.T @ v, then tanh
        b_.emit("tanh", [b_.emit("matmul", [b_.emit("transpose", [d], {"perm": (1, 0)}), v])])

    for build in (linear, prologue):
        node, g = _kernel(build, data, kind="gemm")
        got, ref = run_llvm(node, data), run_numba(node, data)
        for a, b in zip(got, ref):
            _same(a, b)  # the same BLAS routine with the same arguments
        for a, w in zip(got, interpret(g, data)):
            np.testing.assert_allclose(a, w, rtol=1e-5 if dt == "f32" else 1e-12, atol=1e-5)


def test_a_gemm_product_that_stays_inside_goes_to_scratch():
    data = {"x": R.standard_normal((6, 4)).astype(np.float32), "w": R.standard_normal((3, 4)).astype(np.float32)}

    def build(b, x, w):
        b.emit("sum", [b.emit("linear", [x, w])], {"dims": (0, 1)})

    b = GraphBuilder("k")
    ins = [b.add_input(n, TensorType(a.shape)) for n, a in data.items()]
    build(b, *ins)
    g = b.build([b.nodes[-1].out])
    node = kernel_node(list(g.nodes), ins, [g.nodes[-1].out], g.types, "gemm")
    ir, _, outs, args = lower_llvm.kernel_ir(node, set())
    assert outs[-1] == "#scratch0" and args == ["f32"] * 4 and "ptr %s0" in ir
    got = run_llvm(node, data)
    _same(got[0], run_numba(node, data)[0])
    np.testing.assert_allclose(got[0], [(data["x"] @ data["w"].T).astype(np.float64).sum()], rtol=1e-5)


@pytest.mark.parametrize("op,dims", [("sum", (0,)), ("sum", (1,)), ("sum", (0, 1)), ("mean", (0,)), ("mean", (0, 1)),
                                     ("max", (1,)), ("max", (0, 1))])
def test_reduce_kernels(op, dims):
    data = {"x": R.standard_normal((7, 9)).astype(np.float32), "y": R.standard_normal(9).astype(np.float32)}
    data["x"][3, 4] = np.nan if op == "max" else data["x"][3, 4]
    node, g = _kernel(lambda b, x, y: b.emit(op, [b.emit("mul", [x, y])], {"dims": dims}), data, kind="reduce")
    got, ref, want = run_llvm(node, data), run_numba(node, data), interpret(g, data)
    for a, b, w in zip(got, ref, want):
        _same(a, b)
        np.testing.assert_allclose(a, w, rtol=1e-5, equal_nan=True)


def test_ir_text_is_canonical_and_reads_as_the_kernel():
    data = {"x": np.zeros((64, 10), np.float32), "w": np.zeros((20, 10), np.float32),
            "b": np.zeros(20, np.float32), "seed": np.array(0, np.int64)}

    def build(b, x, w, bias, seed):
        b.emit("dropout", [b.emit("linear_relu", [x, w, bias]), seed], {"p": 0.5})

    node, _ = _kernel(build, data, kind="gemm")
    ir, ins, outs, args = lower_llvm.kernel_ir(node, {"seed"})
    assert ins == ["x", "w", "b", "seed"] and args == ["f32", "f32", "f32", "i64 scalar", "f32", "f32"]
    lines = ir.splitlines()
    assert lines[0] == "; graphc kernel {kind=gemm}: linear_relu, dropout; iteration space [64, 20]"
    assert lines[1] == "define void @kernel(ptr %a0, ptr %a1, ptr %a2, i64 %a3, ptr %o0, ptr %o1) #0 {"
    # x @ w.T as BLAS sees it: C^T = (w.T)^T-flagged times x, M=20, N=64, K=10
    assert re.search(r"call void @graphc_blas_sgemm\(ptr %b\d+, ptr %b\d+, ptr %b\d+, ptr %b\d+, ptr %b\d+, ptr %b0, "
                     r"ptr %a1, ptr %b\d+, ptr %a0, ptr %b\d+, ptr %b1, ptr %o0, ptr %b\d+\)", ir)
    assert "store i8 116" in ir and "store i8 110" in ir  # 't' for the weight, 'n' for x
    assert "%i0 = phi i64 [ 0, %start ], [ %i0.next, %latch1 ]" in ir
    assert "icmp uge i64" in ir and "%i1.end = icmp eq i64 %i1.next, 20" in ir
    assert not re.search(r"linear1|%x\b|seed", ir)  # names nothing of the plan
    again, *_ = lower_llvm.kernel_ir(_kernel(build, {**data, "x": np.ones((64, 10), np.float32)}, kind="gemm")[0],
                                     {"seed"})
    assert again == ir


def test_float32_exp_and_erf_loops_vectorize():
    data = {"x": np.zeros((64, 48), np.float32)}
    node, _ = _kernel(lambda b, x: b.emit("erf", [b.emit("exp", [x])]), data)
    _, opt = kernel_lib.compile_ir(LlvmKernel(*lower_llvm.kernel_ir(node, set())[::3]).text)
    assert re.search(r"fmul <\d+ x float>", opt) and "call float @expf" not in opt


def test_a_kernel_the_llvm_lowering_lacks_falls_back_to_numba(cache_dir, monkeypatch):
    monkeypatch.delitem(lower_llvm.EXPR, "tanh")
    cache._loaded.clear()
    graphc.manual_seed(0)
    model = graphc.nn.Sequential(graphc.nn.Linear(3, 4), graphc.nn.Tanh(), graphc.nn.Linear(4, 2), graphc.nn.Sigmoid())
    model.eval()
    x = np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)
    cm = graphc.compile(model, x)
    y = cm(x)
    exe = next(iter(cm.executables.values()))
    info = exe.compile_info
    assert (info.kernels["llvm"], info.kernels["numba"]) == (1, 1) and info.fallbacks == ["op tanh"]
    assert "1 LLVM, 1 numba: op tanh" in str(info)
    assert "kernel0 = llvm_kernel(" in exe.source.text or "kernel1 = llvm_kernel(" in exe.source.text
    w1, b1, w2, b2 = (np.asarray(p) for p in model.parameters())
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-(np.tanh(x @ w1.T + b1) @ w2.T + b2))), rtol=1e-5, atol=1e-6)


def test_library_entry_round_trip_and_damage(tmp_path, caplog):
    node, _ = _kernel(lambda b, x: b.emit("sqrt", [b.emit("exp", [x])]), {"x": np.zeros(37, np.float64)})
    ir, _, _, args = lower_llvm.kernel_ir(node, set())
    k = LlvmKernel(ir, args)
    kernel_lib._ready.pop(k.key, None)
    assert kernel_lib._prepare_llvm(tmp_path, k) == "compiled"
    d = tmp_path / k.key
    assert sorted(p.name for p in d.iterdir()) == ["kernel.ll", "kernel.o", "manifest.json"]
    assert (d / "kernel.ll").read_text().startswith("; graphc kernel") and f"@{k.symbol}(" in (d / "kernel.ll").read_text()
    assert kernel_lib._prepare_llvm(tmp_path, k) == "reused"
    kernel_lib._ready.pop(k.key)
    assert kernel_lib._prepare_llvm(tmp_path, k) == "cached"
    (d / "kernel.ll").write_text((d / "kernel.ll").read_text() + "\n")
    kernel_lib._ready.pop(k.key)
    assert kernel_lib._prepare_llvm(tmp_path, k) == "compiled" and "checksum mismatch in kernel.ll" in caplog.text
    m = d / "manifest.json"
    m.write_text(m.read_text().replace('"llvmlite"', '"llvmlite_"'))
    kernel_lib._ready.pop(k.key)
    assert kernel_lib._prepare_llvm(tmp_path, k) == "compiled" and "other versions" in caplog.text
    x = R.standard_normal(37)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3)(kernel_lib._ready[k.key])
    e, out = np.empty(37), np.empty(37)
    fn(x.ctypes.data, e.ctypes.data, out.ctypes.data)
    np.testing.assert_allclose(out, np.sqrt(np.exp(x)), rtol=1e-15)  # (numpy's exp is not libm's)


def test_the_report_links_an_llvm_kernel_to_its_calls():
    from graphc.inspect.html_code import plan_calls, source_html

    source = '''"""doc"""
# LLVM IR (runtime/lower_llvm.py), compiled by llvmlite into the kernel library
kernel3 = llvm_kernel('graphc_k_0', ('f32', 'f32'))
#   define void @kernel(ptr %a0, ptr %o0) #0 {


def plan(x, table):
    # kernel3: kernel {kind=elementwise} over 2 nodes:
    #   %1: f32[4] = relu(%x)
    #   %2: f32[4] = mul(%1, %1)
    kernel3(x.ctypes.data, table[0])
'''
    calls = plan_calls(source)
    assert [c.kernels for c in calls] == [["kernel3"]] and calls[0].values == ["1", "2"]
    html = source_html(source, calls, 5, lambda v: f"s5-v-{v}")
    assert 'id="code-5-fn-kernel3"' in html and 'href="#code-5-fn-kernel3">code of kernel3</a>' in html


# ------------------------------------------------------------------ rows kernels (softmax, LayerNorm, attention, loss)


def _softmax_rows(b, t):  # softmax, its backward; a NaN row and a -inf in another (NaN wins, exp(-inf) = 0)
    x, gy = b.add_input("x", t((6, 40))), b.add_input("gy", t((6, 40)))
    return [b.emit("softmax_backward", [gy, b.emit("softmax", [x], {"dim": 1})], {"dim": 1})]


def _log_softmax_rows(b, t):  # rows of 7: one accumulator, not LANES
    x, gy = b.add_input("x", t((5, 7))), b.add_input("gy", t((5, 7)))
    return [b.emit("log_softmax_backward", [gy, b.emit("log_softmax", [x], {"dim": 1})], {"dim": 1})]


def _layer_norm_rows(b, t):  # LayerNorm with affine from primitives (as graphc.nn.LayerNorm decomposes)
    x, w, bias = b.add_input("x", t((6, 32))), b.add_input("w", t((32,)), "param"), b.add_input("b", t((32,)), "param")
    mu = b.emit("mean", [x], {"dims": (1,), "keepdim": True})
    d = b.emit("sub", [x, mu])
    var = b.emit("mean", [b.emit("mul", [d, d])], {"dims": (1,), "keepdim": True})
    r = b.emit("rsqrt", [b.emit("add", [var, b.emit("full", [], {"shape": (), "value": 1e-5, "dtype": t(()).dtype})])])
    return [b.emit("add", [b.emit("mul", [b.emit("mul", [d, r]), w]), bias])]


def _attention_rows(b, t):  # scores * scale, causal mask (where), softmax, and its backward
    s, gy = b.add_input("s", t((2, 3, 5, 16))), b.add_input("gy", t((2, 3, 5, 16)))
    mask = b.emit("le", [b.emit("arange", [], {"size": 16, "dtype": "i64"}),
                         b.emit("reshape", [b.emit("arange", [], {"size": 5, "dtype": "i64"})], {"shape": (5, 1)})])
    dt = t(()).dtype
    z = b.emit("where", [mask, b.emit("mul", [s, b.emit("full", [], {"shape": (), "value": 0.25, "dtype": dt})]),
                         b.emit("full", [], {"shape": (), "value": float("-inf"), "dtype": dt})])
    return [b.emit("softmax_backward", [gy, b.emit("softmax", [z], {"dim": 3})], {"dim": 3})]


def _cross_entropy_rows(dt):
    """The loss as the sample GPT has it (ignore_index given: log_softmax, gather, where, sums):
    its log_softmax rows, in the forward plan of a compiled (interpreted) model."""
    import graphc.nn.functional as F

    class M(graphc.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = graphc.nn.Linear(8, 24)

        def forward(self, x, t):
            return F.cross_entropy(self.lin(x), t, ignore_index=-1)

    graphc.manual_seed(0)
    x, t = np.zeros((6, 8), DT[dt]), np.zeros(6, np.int64)
    cm = graphc.compile(M().to(DT[dt]), x, t, mode="interpret")
    cm(x, t)
    return cm._spec.plans.forward


def _dropout_rows(b, t):  # attention-style dropout of softmax rows, a row-shaped draw (flat index = the row)
    x, seed = b.add_input("x", t((4, 24))), b.add_input("seed", TensorType((), "i64"), "rng")
    y = b.emit("dropout", [b.emit("softmax", [x], {"dim": 1}), seed], {"p": 0.3, "stream": 4})
    return [b.emit("add", [y, b.emit("uniform", [seed], {"shape": (4, 1), "stream": 2, "dtype": t(()).dtype})])]


ROWS = {"dropout": (_dropout_rows, 1), "softmax": (_softmax_rows, 1), "log_softmax": (_log_softmax_rows, 2), "layer_norm": (_layer_norm_rows, 1),
        "attention": (_attention_rows, 1), "cross_entropy": (_cross_entropy_rows, 1)}  # (graph, rows kernels)


def _kernel_stage(case, dt):
    build, _ = ROWS[case]
    if case == "cross_entropy":
        return build(dt)
    from graphc.passes.kernels import kernels

    b = GraphBuilder(case)
    outs = build(b, lambda shape: TensorType(shape, dt))
    return kernels(b.build(outs).verify())[0]


def _with_vector(n, w: int, r: int | None = None):
    """The rows kernel n with vector=w and interleave=r (passes/parallel.py's choices; w = 1:
    rows_ir's scalar loops; r None: vector loops over the row)."""
    attrs = {k: v for k, v in n.attr.items() if k not in ("vector", "interleave")}
    new = {**({"vector": w} if w > 1 else {}), **({"interleave": r} if r else {})}
    return n.replace(attrs=tuple(sorted({**attrs, **new}.items())))


@pytest.mark.parametrize("vector", [False, "loops", "interleave"])
@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("case", sorted(ROWS))
def test_rows_kernels_llvm_equal_numba_bit_for_bit_and_the_interpreter(case, dt, vector):
    """Each rows kernel of softmax, log_softmax, LayerNorm, attention (forward and backward), the
    loss and a dropout of softmax rows: the LLVM lowering's outputs equal numba's bit for bit (rows of 40/32/16/24: LANES
    accumulators; of 7: one), as scalar loops and in vectors of one AVX-512 register (vector=16
    in f32, 8 in f64: runtime/lower_rows.py), as loops over the row or whole rows in registers
    (interleave=r, the pass's r), and the interpreter's within rounding."""
    new = _kernel_stage(case, dt)
    args = {}
    for i in new.inputs:
        t = i.type
        args[i.name] = (R.integers(0, 24, t.shape) if t.dtype == "i64" else  # labels in [0, 24)
                        R.standard_normal(t.shape).astype(t.np_dtype))
    if case == "softmax":
        args["x"][1, 7], args["x"][4, 3] = np.nan, -np.inf
    with np.errstate(all="ignore"):
        _, env = interpret(new, args, return_env=True)
    rows = [n for n in new.nodes if n.op == "kernel" and n.attr["kind"] == "rows"]
    assert len(rows) == ROWS[case][1]
    scalars = {i.name for i in new.inputs if is_scalar_input(i)}  # rng seeds: i64 arguments
    w = {"f32": 16, "f64": 8}[dt] if vector else 1
    for n in rows:
        r = vector_width(n)[1] if vector == "interleave" else None
        n = _with_vector(n, w, r)
        head = "{kind=rows}" if not vector else f"{{kind=rows, vector={w}}}" if r is None else f"{{interleave={r}, kind=rows, vector={w}}}"
        assert lower_llvm.kernel_ir(n, scalars)[0].startswith("; graphc kernel " + head)
        data = {v: env[v] for v in n.inputs}
        with np.errstate(all="ignore"):
            got, ref = run_llvm(n, data, scalars), run_numba(n, data, scalars)
        for v, a, r in zip(n.outputs, got, ref):
            _same(a, r)  # the same accumulators in the same order: the same bits
            tol = 2e-6 if dt == "f32" else 1e-14
            np.testing.assert_allclose(a, env[v], rtol=tol, atol=tol, err_msg=f"{case} %{v}")


@pytest.mark.parametrize("dt", ["f32", "f64"])
def test_vector_rows_equal_the_scalar_rows_for_every_row_length(dt):
    """Rows of 1 (no rows kernel), 3, 17 (one accumulator; a partial vector), 32, 33, 96 and 1000 (LANES
    accumulators over whole vectors and a masked last one): a masked, scaled softmax with its
    backward and a LayerNorm-style mean/variance, in vectors (vector=16 / 8) bit-equal to the
    scalar loops (rows_ir, bit-equal to numba's above), as loops over the row and (rows of at
    most 16 vectors) whole rows in registers, 4 at a time; and to the interpreter within
    rounding."""
    w = {"f32": 16, "f64": 8}[dt]
    for n in (1, 3, 17, 32, 33, 96, 1000):
        b = GraphBuilder("sweep")
        t = lambda shape, d=dt: TensorType(shape, d)  # noqa: E731
        x, gy, c, s = b.add_input("x", t((4, n))), b.add_input("gy", t((4, n))), b.add_input("c", t((4, n), "bool")), \
            b.add_input("s", t((n,)), "param")
        z = b.emit("where", [c, b.emit("mul", [x, s]), b.emit("full", [], {"shape": (), "value": -1e4, "dtype": dt})])
        sm = b.emit("softmax_backward", [gy, b.emit("softmax", [z], {"dim": 1})], {"dim": 1})
        d = b.emit("sub", [x, b.emit("mean", [x], {"dims": (1,), "keepdim": True})])
        var = b.emit("mean", [b.emit("mul", [d, d])], {"dims": (1,), "keepdim": True})
        g = kernels(b.build([sm, b.emit("add", [sm, b.emit("mul", [d, b.emit("rsqrt", [var])])])]).verify())[0]
        data = {"x": R.standard_normal((4, n)).astype(DT[dt]), "gy": R.standard_normal((4, n)).astype(DT[dt]),
                "c": R.uniform(size=(4, n)) > 0.2, "s": R.uniform(0.5, 2, n).astype(DT[dt])}
        _, env = interpret(g, data, return_env=True)
        rows = [k for k in g.nodes if k.op == "kernel" and k.attr["kind"] == "rows"]
        assert rows or n == 1  # (rows of one element: no reduction left, the kernel pass makes no rows kernel)
        for k in rows:
            arrays = {v: env[v] for v in k.inputs}
            ref = run_llvm(_with_vector(k, 1), arrays)
            for r in (None, 4):
                head = lower_llvm.kernel_ir(_with_vector(k, w, r), set())[0].split("\n")[0]
                assert f"vector={w}" in head and (f"interleave={r}" in head) == (r is not None and -(-n // w) <= 16)
                for a, b_, v in zip(run_llvm(_with_vector(k, w, r), arrays), ref, k.outputs):
                    _same(a, b_)
                    tol = 1e-5 if dt == "f32" else 1e-12
                    np.testing.assert_allclose(a, env[v], rtol=tol, atol=tol, err_msg=f"rows of {n}, %{v}")


def test_bad_vector_or_interleave_on_a_kernel_is_an_error():
    """vector=w only on a rows kernel, interleave=r only beside it: the verifier says which."""
    text = """graph g {
  input %x: f32[4,8]
  %m: f32[4,1] = kernel(%x) {interleave=2, kind="rows"} {
    %m: f32[4,1] = max(%x) {dims=[1], keepdim=true}
  }
  return %m
}"""
    with pytest.raises(graphc.VerifyError, match="interleave=2 needs an int >= 1 on a rows kernel with vector=w"):
        graphc.ir.parse(text).verify()
    with pytest.raises(graphc.VerifyError, match="vector=16 needs an int >= 1, above 1 only on a rows kernel"):
        graphc.ir.parse(text.replace('{interleave=2, kind="rows"}', '{kind="elementwise", vector=16}')).verify()


def test_rows_reductions_of_mixed_dtypes_stay_with_numba():
    """numba types `acc` once for the whole function: a f32 and a f64 row sum in one kernel would
    accumulate both in f64 there, so that kernel keeps numba's lowering (the reason says why)."""
    b = GraphBuilder("k")
    x, y = b.add_input("x", TensorType((4, 16))), b.add_input("y", TensorType((4, 16), "f64"))
    sx = b.emit("sum", [x], {"dims": (1,), "keepdim": True})
    sy = b.emit("sum", [y], {"dims": (1,), "keepdim": True})
    o = b.emit("mul", [y, b.emit("cast", [sx], {"dtype": "f64"})])
    o2 = b.emit("div", [o, sy])
    g = b.build([o2])
    node = kernel_node(list(g.nodes), ["x", "y"], [o2], g.types, "rows")
    with pytest.raises(lower_llvm.Unsupported, match="row reductions of"):
        lower_llvm.kernel_ir(node, set())


def test_the_gpt_blocks_rows_kernels_are_llvm():
    """Every kernel of the sample GPT's train step, rows kernels (LayerNorm, attention softmax,
    cross-entropy, their backward) included, is lowered to LLVM IR: no numba-lowered kernel left
    (codegen only: the plans are interpreted, nothing is compiled)."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "samples"))
    from char_gpt import GPTConfig, gpt_classes, init_weights

    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)
    model = gpt_classes(graphc)(cfg)
    init_weights(model, seed=0)
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    cm = graphc.compile(model, idx, idx, mode="interpret")
    cm(idx, idx)
    cm.backward()
    rows = llvm = 0
    for exe in (cm._spec.fwd, cm._spec.bwd):
        text = exe.source.text
        calls = re.findall(r"# (kernel\d+): kernel \{kind=(\w+)\}", text)
        llvm_defs = set(re.findall(r"^(kernel\d+) = llvm_kernel\(", text, re.M))
        assert "@library_kernel(" not in text and {k for k, _ in calls} <= llvm_defs, text
        rows += sum(kind == "rows" for _, kind in calls)
        llvm += len(calls)
    assert rows >= 9 and llvm > rows  # 2 LayerNorms + attention per layer, ln_f, the loss; and backward
