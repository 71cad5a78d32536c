"""Large GEMMs as loop nests (a transformer's long-k weight gradients, its forward layers): k in
blocks (runtime/lower_small_gemm.KC, the sums kept in C between blocks), a range of register
blocks of rows (a task's share), and gemm kernels {impl="loops"} split over threads
(passes/parallel.py's `split`, runtime/split_llvm.tasks_ir) against numpy, in f32 and f64, with
tails in every dimension."""
import ctypes
import itertools

import numpy as np
import pytest

from graphc.ir import parse
from graphc.passes import gemm_impl
from graphc.runtime import kernel_lib, lower_llvm, lower_small_gemm
from graphc.runtime.lower_small_gemm import Lines, gemm_loops, tiles

_count = itertools.count()


def _run_span(dt, a, b, spans):
    """C = a @ b by gemm_loops called once per (lo, hi) of register blocks in `spans`."""
    m, k = a.shape
    n = b.shape[1]
    item = a.itemsize
    st = lambda x: (x.strides[0] // item, x.strides[1] // item)  # noqa: E731
    out = Lines("g")
    gemm_loops(out, dt, m, n, k, ("%A", *st(a)), ("%B", *st(b)), ("%C", n, 1), span=("%lo", "%hi"))
    name = f"large_gemm_test{next(_count)}"
    text = "\n".join([f"define void @{name}(ptr %A, ptr %B, ptr %C, i64 %lo, i64 %hi) {{", "entry:", *out.allocas,
                      *out.body, "  ret void", "}", *out.decls.values()]) + "\n"
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, ctypes.c_int64, ctypes.c_int64)(
        kernel_lib._load_object(name, kernel_lib.compile_ir(text)[0]))
    base = lambda x: x.base if x.base is not None else x  # noqa: E731
    c = np.full((m, n), 123, a.dtype)  # garbage first: every element must be written
    for lo, hi in spans:
        fn(base(a).ctypes.data, base(b).ctypes.data, c.ctypes.data, lo, hi)
    return c


@pytest.mark.parametrize("m,n,k", [(13, 37, 150), (20, 64, 97), (7, 40, 64), (9, 150, 50)])  # 3, 2, 1, 2 blocks of k (KC = 48)
@pytest.mark.parametrize("ta,tb", [(True, False), (False, True)])  # a weight gradient g.T @ x; linear's x @ w.T
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k_in_blocks_and_task_ranges_equal_numpy(m, n, k, ta, tb, dtype, monkeypatch):
    monkeypatch.setattr(lower_small_gemm, "KC", 48)
    rng = np.random.default_rng(m + n + k)
    a0 = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b0 = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a0.T if ta else a0), (b0.T if tb else b0)
    dt = "f32" if dtype == np.float32 else "f64"
    item = a.itemsize
    _, units = tiles(dt, m, n, ("", a.strides[0] // item, a.strides[1] // item),
                     ("", b.strides[0] // item, b.strides[1] // item), ("", n, 1))
    cuts = sorted({0, units // 3, units - 1, units})  # uneven shares, the last (tail) block alone
    spans = [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if lo < hi]
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for parts in (spans, [(0, units)]):
        np.testing.assert_allclose(_run_span(dt, a, b, parts), want, rtol=tol, atol=tol * np.sqrt(k))


GRAPH = """graph g {{
  input %a: {dt}[{k},{m}]
  input %b: {dt}[{k},{n}]
  input %x: {dt}[{m},{k}]
  input %w: {dt}[{n},{k}]
  input %bias: {dt}[{n}]
  %s: {dt}[{m},{n}], %t: {dt}[] = kernel(%a, %b) {{impl="loops", kind="gemm"{split1}}} {{
    %at: {dt}[{m},{k}] = transpose(%a) {{perm=[1,0]}}
    %s: {dt}[{m},{n}] = matmul(%at, %b)
    %q: {dt}[{m},{n}] = mul(%s, %s)
    %t: {dt}[] = sum(%q) {{dims=[0,1]}}
  }}
  %y: {dt}[{m},{n}] = kernel(%x, %w, %bias) {{impl="loops", kind="gemm"{split2}}} {{
    %y: {dt}[{m},{n}] = linear_relu(%x, %w, %bias)
  }}
  return %s, %t, %y
}}"""


@pytest.mark.parametrize("m,n,k", [(203, 37, 150), (64, 96, 64)])
@pytest.mark.parametrize("dt", ["f32", "f64"])
def test_split_loop_gemm_kernels_equal_one_thread_and_numpy(m, n, k, dt, monkeypatch):
    """split="gemm_rows" (an epilogue that reduces: the GEMM's register blocks of rows in tasks, the
    sum after the join) and split="rows" (each task its rows' GEMM and their bias and ReLU on the
    tiles): each element of C the same dot in the same order, so bit-equal to one thread."""
    from graphc.runtime.executor import Executable

    monkeypatch.setattr(lower_small_gemm, "KC", 64)
    t = np.float32 if dt == "f32" else np.float64
    rng = np.random.default_rng(m)
    args = [rng.standard_normal(s).astype(t) for s in ((k, m), (k, n), (m, k), (n, k), (n,))]
    outs = {}
    for split1, split2 in (("", ""), (', split="gemm_rows", threads=2', ', split="rows", threads=2'),
                           (', split="rows", threads=2', ', split="rows", threads=2')):
        g = parse(GRAPH.format(dt=dt, m=m, n=n, k=k, split1=split1, split2=split2))
        irs = [lower_llvm.kernel_ir(nd, set())[0] for nd in g.nodes]
        if "gemm_rows" in split1:
            assert "call void @gemm_launch(" in irs[0] and "define internal void @gemm_body" in irs[0]
        else:  # the sum of the squares on the register tiles (per task: partials added after the join)
            assert "epilogue per tile" in irs[0] and ("ptr %slots" in irs[0]) == bool(split1)
        if split2:
            assert "define internal void @kernel_body" in irs[1] and "epilogue per tile" in irs[1]
        exe = Executable(g)
        exe(*args)
        outs[split1] = [o.copy() for o in exe.outputs]
    a, b, x, w, bias = (v.astype(np.float64) for v in args)
    want = a.T @ b
    tol = 1e-4 if dt == "f32" else 1e-11
    for got in outs.values():
        np.testing.assert_allclose(got[0], want, rtol=tol, atol=tol)
        np.testing.assert_allclose(got[1], (want ** 2).sum(), rtol=tol)
        np.testing.assert_allclose(got[2], np.maximum(x @ w.T + bias, 0), rtol=tol, atol=tol)
    for got in outs.values():  # each element of C the same dot in the same order (the sums: other orders)
        np.testing.assert_array_equal(got[0], outs[""][0])
        np.testing.assert_array_equal(got[2], outs[""][2])


def test_the_split_rule_and_the_tile_lowering_agree_on_the_ops():
    assert gemm_impl.TILE_OPS == lower_small_gemm.TILE_OPS


@pytest.mark.parametrize("m,n,k,layout,impl", [
    (256, 64, 1024, "tn", "loops"),  # a weight gradient of T's MLP: OpenBLAS's tn path ~53 multiply-adds/ns
    (1024, 256, 64, "nt", "loops"),  # T's MLP forward: B packed (64 KB)
    (1024, 512, 128, "nt", "blas"),  # B packed would take 256 KB of stack
    (1024, 10, 256, "nn", "blas"),  # 10 of 16 lanes busy: the loop nest's rate falls below BLAS's
    (512, 128, 1024, "tn", "loops"),  # T2's largest weight gradient: 2^26 multiply-adds
    (512, 2048, 2048, "nn", "blas"),  # L's input gradient: BLAS's packing pays
])
def test_the_rule_beyond_the_small_sizes(m, n, k, layout, impl):
    import sys
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from gemm_choice import kernel

    _, _, g = kernel(m, n, k, layout, None)
    got, why = gemm_impl.choose(g.types, list(g.nodes))
    assert got == impl, why


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("bt,h,d", [((2, 7), 3, 5), ((3, 16), 2, 16), ((2, 33), 2, 24)])
def test_strided_gemms_as_loop_nests_equal_blas_and_the_interpreter(dt, bt, h, d):
    """Attention's batched products as loop nests (impl="loops" on a strided_gemm kernel), on one
    thread and split over the batch (threads=2): the reference's values, and BLAS's within rounding."""
    from graphc.ir import interpret
    from graphc.passes.kernels import kernels
    from graphc.passes.manager import PassContext
    from graphc.runtime.executor import Executable
    from test_strided_gemm import _attention, _graph

    g = _graph(_attention, dt=dt, bt=bt, h=h, d=d)
    new, _ = kernels(g, PassContext("kernels"))
    args = [np.random.default_rng(1).standard_normal(i.type.shape).astype(i.type.np_dtype) for i in g.inputs]
    want = interpret(g, args)[0]
    tol = 1e-5 if dt == "f32" else 1e-12
    for attrs in ({"impl": "loops"}, {"impl": "loops", "threads": 2}, {}):
        nodes = tuple(n.replace(attrs=tuple(sorted({"kind": "strided_gemm", **attrs}.items())))
                      if n.op == "kernel" and n.attr["kind"] == "strided_gemm" else n for n in new.nodes)
        v = new.replace(nodes=nodes).verify()
        if attrs:
            irs = [lower_llvm.kernel_ir(n, set())[0] for n in v.nodes if n.op == "kernel"]
            assert all("impl=loops, kind=strided_gemm" in ir for ir in irs)
            assert all(("define internal void @kernel_body" in ir) == ("threads" in attrs) for ir in irs)
        exe = Executable(v, mode="jit")
        exe.run(*args)
        np.testing.assert_allclose(np.array(exe.outputs[0]), want, rtol=tol, atol=tol)


def test_a_large_loop_gemm_goes_back_to_blas_in_a_plan_without_the_pool(threads):
    """Beyond the small sizes the loop nest was priced against BLAS on one thread; in a plan
    where nothing else splits, OpenBLAS keeps its own threads, so the parallel pass gives the
    GEMM back to BLAS (a note says so); with a split kernel beside it, it stays a split loop nest."""
    from graphc.passes.kernels import kernels
    from graphc.passes.manager import PassContext
    from graphc.passes.parallel import parallel

    threads(2)
    lone = """graph g {
  input %a: f32[1024,256]
  input %b: f32[1024,64]
  %at: f32[256,1024] = transpose(%a) {perm=[1,0]}
  %c: f32[256,64] = matmul(%at, %b)
  return %c
}"""
    busy = lone.replace("  return %c", "  %x: f32[1024,256] = erf(%a)\n  %y: f32[1024,256] = exp(%x)\n  return %c, %y")
    for text, loops in ((lone, False), (busy, True)):
        g, _ = kernels(parse(text).verify(), PassContext("kernels"))
        assert 'impl="loops"' in str(g)
        ctx = PassContext("parallel")
        out, _ = parallel(g, ctx)
        gemm = next(n for n in out.nodes if n.op == "kernel" and n.attr["kind"] == "gemm")
        assert (gemm.attr.get("impl") == "loops") == loops and (gemm.attr.get("threads", 1) > 1) == loops
        assert loops or any("impl=blas, threads=1" in note for note in ctx.notes)
        assert parse(str(out)).verify() == out
