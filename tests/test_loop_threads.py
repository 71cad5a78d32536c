"""Elementwise, rows, reduce and strided GEMM kernels split over threads (passes/parallel.py's
decision on the IR, runtime/split_llvm.py's lowering): bit-equal to one thread but the reduce
kernels' sums (partials per task: equal within rounding), printed and parsed back, small kernels
left on one thread with the reason; the GPT's train step the same, split or not."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import graphc
from graphc.ir import parse
from graphc.passes.manager import PassContext
from graphc.passes.parallel import parallel
from graphc.runtime import lower_llvm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples"))
from char_gpt import GPTConfig, gpt_classes, init_weights  # noqa: E402

KERNELS = """graph g {
  input %x: f32[40,24,64]
  input %y: f32[64]
  input %s: f32[2,8]
  input %a2: f32[256,1024]
  input %b2: f32[1024,64]
  %e: f32[40,24,64], %o: f32[40,24,64] = kernel(%x, %y) {kind="elementwise"} {
    %e: f32[40,24,64] = add(%x, %y)
    %o: f32[40,24,64] = erf(%e)
  }
  %m: f32[40,24,1], %p: f32[40,24,64] = kernel(%x) {kind="rows"} {
    %m: f32[40,24,1] = max(%x) {dims=[2], keepdim=true}
    %d: f32[40,24,64] = sub(%x, %m)
    %t: f32[40,24,64] = exp(%d)
    %u: f32[40,24,1] = sum(%t) {dims=[2], keepdim=true}
    %p: f32[40,24,64] = div(%t, %u)
  }
  %z: f32[2,8] = kernel(%s) {kind="elementwise"} {
    %z: f32[2,8] = neg(%s)
  }
  %q: f32[40,24,64], %b: f32[64] = kernel(%x, %y) {kind="reduce"} {
    %r: f32[40,24,64] = mul(%x, %y)
    %q: f32[40,24,64] = exp(%r)
    %b: f32[64] = sum(%q) {dims=[0,1]}
  }
  %g: f32[256,64], %h: f32[256,64] = kernel(%a2, %b2) {kind="gemm"} {
    %g: f32[256,64] = matmul(%a2, %b2)
    %h: f32[256,64] = exp(%g)
  }
  return %o, %e, %m, %p, %z, %g, %h, %q, %b
}"""


def test_loop_kernels_split_printed_and_parsed_back(threads):
    threads(2)
    ctx = PassContext("parallel")
    g, changed = parallel(parse(KERNELS), ctx)
    text = str(g)
    assert changed and text.count("threads=2") == 4 and parse(text) == g
    assert 'kernel(%s) {kind="elementwise"}' in text  # 16 elements: one thread
    # the rows kernel's vectors: 16 lanes of f32, rows of 64 (4 vectors) whole, 4 at a time (24 rows)
    assert 'kernel(%x) {interleave=4, kind="rows", threads=2, vector=16}' in text
    assert "%m = kernel: vector=16, interleave=4: rows of f32 in vectors of 16 lanes" in "\n".join(ctx.notes)
    notes = "\n".join(ctx.notes)
    assert "split over 2 threads by its outer loop" in notes and "%z = kernel: threads=1: too small" in notes
    for n in g.nodes:
        if n.attr.get("threads", 1) > 1:
            ir = lower_llvm.kernel_ir(n, set())[0]
            if n.attr["kind"] == "gemm":  # by rows of C: each task its gemm rows, then its epilogue on them
                assert "call void @gemm_rows(" in ir and "define internal void @kernel_body" in ir
            else:
                assert "@graphc_parallel_for(ptr @kernel_task" in ir and "define internal void @kernel_body" in ir


def test_a_gemm_whose_epilogue_reduces_splits_its_call_only(threads):
    threads(2)
    text = """graph g {
  input %a: f32[256,1024]
  input %b: f32[1024,64]
  %s: f32[256,64], %t: f32[] = kernel(%a, %b) {kind="gemm", split="gemm_rows", threads=2} {
    %s: f32[256,64] = matmul(%a, %b)
    %q: f32[256,64] = mul(%s, %s)
    %t: f32[] = sum(%q) {dims=[0,1]}
  }
  return %s, %t
}"""
    from graphc.runtime.executor import Executable

    g = parse(text)
    ir = lower_llvm.kernel_ir(g.nodes[0], set())[0]
    assert "call void @gemm_split(" in ir and "@gemm_rows" not in ir
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 1024)).astype(np.float32) / 32, rng.standard_normal((1024, 64)).astype(np.float32)
    exe = Executable(g)
    exe(a, b)
    want = a.astype(np.float64) @ b
    np.testing.assert_allclose(exe.outputs[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(exe.outputs[1], (want ** 2).sum(), rtol=1e-4)


def test_split_kernels_are_bit_equal_to_one_thread(threads):
    from graphc.runtime.executor import Executable

    rng = np.random.default_rng(0)
    args = [rng.standard_normal((40, 24, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32),
            rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((256, 1024)).astype(np.float32) / 32,
            rng.standard_normal((1024, 64)).astype(np.float32)]
    outs = {}
    for k in (1, 2):
        threads(k)
        g, _ = parallel(parse(KERNELS), PassContext("parallel"))
        exe = Executable(g)
        exe(*args)
        outs[k] = [o.copy() for o in exe.outputs]
    for a, b in zip(outs[1][:5], outs[2][:5]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(outs[1][5:7], outs[2][5:7]):  # the GEMM in blocks of C: each element the same dot
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # the reduce kernel's sum: partials per task added after the join (another order, same within rounding)
    np.testing.assert_allclose(outs[1][-1], outs[2][-1], rtol=1e-5)
    assert not np.array_equal(outs[1][-1], np.zeros(64))


def test_bad_threads_on_a_kernel_is_an_error():
    bad = KERNELS.replace('kernel(%s) {kind="elementwise"}', 'kernel(%s) {kind="elementwise", threads=0}')
    with pytest.raises(graphc.GraphcError, match="threads"):
        parse(bad).verify()
    bad = KERNELS.replace('kernel(%a2, %b2) {kind="gemm"}', 'kernel(%a2, %b2) {impl="loops", kind="gemm", threads=2}')
    with pytest.raises(graphc.GraphcError):
        parse(bad).verify()


def test_gpt_train_step_split_equals_one_thread(threads):
    cfg = GPTConfig(block_size=32, vocab_size=96, n_layer=1, n_head=4, n_embd=64)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 96, (16, 32)), rng.integers(0, 96, (16, 32))
    runs = {}
    for k in (1, 2):
        threads(k)
        graphc.manual_seed(0)
        model = gpt_classes(graphc)(cfg)
        init_weights(model)
        step = graphc.compile_train_step(model, None, graphc.optim.AdamW(model.parameters(), lr=1e-3), x, y,
                                         clip_grad_norm=1.0)
        split = [n for n in step.plans.train_step.nodes if n.attr.get("threads", 1) > 1]
        assert bool(split) == (k == 2)
        if k == 2:  # GELU, LayerNorm/softmax/cross-entropy rows, attention's batched GEMMs
            assert {n.attr["kind"] for n in split} == {"elementwise", "rows", "strided_gemm", "reduce", "gemm"}
        runs[k] = ([step(x, y) for _ in range(2)], {n: np.asarray(p).copy() for n, p in model.state_dict().items()})
    np.testing.assert_allclose(runs[1][0], runs[2][0], rtol=1e-6)  # (bias gradients: partial sums)
    for n in runs[1][1]:
        np.testing.assert_allclose(runs[1][1][n], runs[2][1][n], rtol=1e-5, atol=1e-6, err_msg=n)


def test_a_plain_gemm_becomes_a_split_gemm_kernel(threads):
    from graphc.runtime.executor import Executable

    text = """graph g {
  input %x: f32[1024,64]
  param %w: f32[256,64]
  param %b: f32[256]
  input %s: f32[4,64]
  %y: f32[1024,256] = linear(%x, %w, %b)
  %t: f32[4,256] = linear(%s, %w, %b)
  %o: f32[1024,256] = kernel(%y) {kind="elementwise"} {
    %o: f32[1024,256] = erf(%y)
  }
  return %y, %t, %o
}"""
    rng = np.random.default_rng(0)
    args = {"x": rng.standard_normal((1024, 64)).astype(np.float32), "w": rng.standard_normal((256, 64)).astype(np.float32),
            "b": rng.standard_normal(256).astype(np.float32), "s": rng.standard_normal((4, 64)).astype(np.float32)}
    outs = {}
    for k in (1, 2):
        threads(k)
        ctx = PassContext("parallel")
        g, changed = parallel(parse(text), ctx)
        assert changed == (k == 2)
        if k == 2:
            kinds = [(n.op, n.attr.get("kind"), n.attr.get("threads")) for n in g.nodes]
            assert kinds == [("kernel", "gemm", 2), ("linear", None, None), ("kernel", "elementwise", 2)]  # small: plain
            assert "%y = linear: as a gemm kernel, threads=2" in "\n".join(ctx.notes) and parse(str(g)) == g
        exe = Executable(g, bound={"w": args["w"], "b": args["b"]})
        exe(args["x"], args["s"])
        outs[k] = [o.copy() for o in exe.outputs]
    for a, b in zip(outs[1], outs[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gemms_keep_openblas_threads_in_a_plan_without_other_splits(threads):
    threads(2)
    text = """graph g {
  input %x: f32[1024,64]
  param %w: f32[256,64]
  %y: f32[1024,256] = linear(%x, %w)
  return %y
}"""
    g, changed = parallel(parse(text), PassContext("parallel"))
    assert not changed and g.nodes[0].op == "linear"


def test_a_kernel_with_no_loop_to_cut_runs_on_one_thread():
    """threads=2 written by hand on kernels whose loop has one iteration: lowered whole (the
    reduce kernel still takes its partials' scratch), the same values."""
    from graphc.runtime.executor import Executable

    text = """graph g {
  input %x: f32[1,64]
  %q: f32[1,64], %b: f32[64] = kernel(%x) {kind="reduce", threads=2} {
    %q: f32[1,64] = exp(%x)
    %b: f32[64] = sum(%q) {dims=[0]}
  }
  %e: f32[1,64] = kernel(%x) {kind="elementwise", threads=2} {
    %e: f32[1,64] = neg(%x)
  }
  return %q, %b, %e
}"""
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    exe = Executable(parse(text))
    exe(x)
    np.testing.assert_allclose(exe.outputs[1], np.exp(x)[0], rtol=1e-6)
    np.testing.assert_array_equal(exe.outputs[2], -x)
