"""Kernels split over threads: passes/parallel.py's choice on the IR, runtime/threads.py's pool,
runtime/conv_llvm.py's split lowerings (wide conv2d forward/backward, max pooling).

Forward convs and pools split bit-equal to one thread (the same chunks and planes, each on
one thread); the backward's dW and db are summed per task and added after (float rounding:
checked against one thread and torch with a tolerance, dx bit-equal)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import graphc
import graphc.nn as nn
from graphc.ir import parse
from graphc.passes.manager import PassContext
from graphc.passes.parallel import decide, parallel, set_num_threads
from graphc.runtime.kernels import run_kernel

LENET_STEP = """graph g {
  input %x: f32[64,6,14,14]
  param %w: f32[16,6,5,5]
  param %b: f32[16]
  input %gy: f32[64,16,5,5]
  %y: f32[64,16,10,10] = conv2d(%x, %w, %b) {algo="wide", chunk=2, relu=true}
  %p: f32[64,16,5,5], %i: i64[64,16,5,5] = max_pool2d(%y) {kernel_size=[2,2], stride=[2,2]}
  %gp: f32[64,16,10,10] = max_pool2d_backward(%gy, %i) {input_size=[10,10]}
  %dx: f32[64,6,14,14], %dw: f32[16,6,5,5], %db: f32[16] = conv2d_backward(%gp, %x, %w, %y) {algo="wide", chunk=2, relu=true}
  %s: f32[2,3,4,4] = conv2d(%x2, %w2) {algo="wide", chunk=1}
  return %p, %dx, %dw, %db, %s
}"""


def _graph():
    text = LENET_STEP.replace("  input %gy", "  input %x2: f32[2,3,6,6]\n  param %w2: f32[3,3,3,3]\n  input %gy")
    return parse(text)


def test_pass_splits_the_big_kernels_and_says_why_not_the_small(threads):
    threads(2)
    ctx = PassContext("parallel")
    g, changed = parallel(_graph(), ctx)
    assert changed
    text = str(g)
    assert 'conv2d(%x, %w, %b) {algo="wide", chunk=2, relu=true, threads=2}' in text
    assert "max_pool2d(%y) {kernel_size=[2,2], stride=[2,2], threads=2}" in text
    assert "max_pool2d_backward(%gy, %i) {input_size=[10,10], threads=2}" in text
    assert 'conv2d_backward(%gp, %x, %w, %y) {algo="wide", chunk=2, relu=true, threads=2}' in text
    assert 'conv2d(%x2, %w2) {algo="wide", chunk=1}' in text  # tiny: one thread
    assert parse(text) == g  # printed and parsed back
    notes = "\n".join(ctx.notes)
    assert "%s = conv2d: threads=1: too small" in notes
    assert "%dw = conv2d_backward" not in notes and "%dx = conv2d_backward: threads=2" in notes
    assert "partial sums per thread" in notes and "split over 2 threads by batch chunks" in notes
    threads(1)
    ctx = PassContext("parallel")
    g1, changed = parallel(_graph(), ctx)
    assert not changed and "threads=" not in str(g1)
    assert all("one thread available" in n for n in ctx.notes if "threads=1" in n)


def test_bad_threads_attribute_and_setting_are_errors():
    with pytest.raises(graphc.GraphcError, match="threads must be >= 1, got 0"):
        parse(LENET_STEP.replace('chunk=2, relu=true}\n  %p', 'chunk=2, relu=true, threads=0}\n  %p')).verify()
    with pytest.raises(ValueError, match="int >= 1"):
        set_num_threads(0)


@st.composite
def wide_cases(draw):
    n = draw(st.integers(1, 7))
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 1))
    h, w = draw(st.integers(k, 7)), draw(st.integers(k, 7))
    attrs = {"padding": (pad,) * 4, "groups": groups, "algo": draw(st.sampled_from(["wide", "im2col"])),
             "chunk": draw(st.integers(0, 3)), "relu": draw(st.booleans()), "dilation": (1, draw(st.integers(1, 2)))}
    if (w + 2 * pad - attrs["dilation"][1] * (k - 1)) < 1:
        attrs["dilation"] = (1, 1)
    if attrs["algo"] == "im2col":
        attrs["stride"] = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    return (n, cin, h, w), (cout, cin // groups, k, k), attrs, draw(st.sampled_from([2, 3, 4]))


@settings(max_examples=20, deadline=None)
@given(wide_cases(), st.sampled_from([np.float32, np.float64]))
def test_split_kernels_equal_one_thread(case, dt):
    """Forward conv, max pool and its scatter: bit-equal to one thread for any thread count (more
    threads than chunks or planes included); the backward: dx bit-equal, dW and db within
    rounding of one thread's sums."""
    xs, ws, attrs, t = case
    r = np.random.default_rng(3)
    x, w, b = r.standard_normal(xs).astype(dt), r.standard_normal(ws).astype(dt), r.standard_normal(ws[0]).astype(dt)
    (y1,) = run_kernel("conv2d", [x, w, b], attrs)
    (yt,) = run_kernel("conv2d", [x, w, b], {**attrs, "threads": t})
    np.testing.assert_array_equal(yt, y1)
    gy = r.standard_normal(y1.shape).astype(dt)
    ins = [gy, x, w] + ([y1] if attrs["relu"] else [])
    for input_grad in (True, False):
        a = {**attrs, "input_grad": input_grad}
        one, split = run_kernel("conv2d_backward", ins, a), run_kernel("conv2d_backward", ins, {**a, "threads": t})
        if input_grad:
            np.testing.assert_array_equal(split[0], one[0])
        tol = dict(rtol=1e-5, atol=1e-5) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)
        for s, o in zip(split[input_grad:], one[input_grad:]):
            np.testing.assert_allclose(s, o, **tol)
    if y1.shape[2] >= 2 and y1.shape[3] >= 2:
        pool = {"kernel_size": (2, 2), "stride": (2, 2)}
        p1, i1 = run_kernel("max_pool2d", [y1], pool)
        pt, it = run_kernel("max_pool2d", [y1], {**pool, "threads": t})
        np.testing.assert_array_equal(pt, p1)
        np.testing.assert_array_equal(it, i1)
        g = r.standard_normal(p1.shape).astype(dt)
        size = {"input_size": y1.shape[2:]}
        np.testing.assert_array_equal(run_kernel("max_pool2d_backward", [g, i1], {**size, "threads": t})[0],
                                      run_kernel("max_pool2d_backward", [g, i1], size)[0])


def _lenet(nn_):
    return nn_.Sequential(nn_.Conv2d(1, 6, 5, padding=2), nn_.ReLU(), nn_.MaxPool2d(2), nn_.Conv2d(6, 16, 5), nn_.ReLU(),
                          nn_.MaxPool2d(2), nn_.Flatten(), nn_.Linear(400, 10))


def test_lenet_train_steps_split_over_three_threads_match_torch(threads):
    """Three SGD-momentum steps of a LeNet split over 3 threads (more than this machine may
    have: the pool runs the extra tasks on the calling thread) against torch."""
    threads(3)
    graphc.manual_seed(0)
    m = _lenet(nn)
    t = _lenet(torch.nn)
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 16)
    step = graphc.compile_train_step(m, nn.CrossEntropyLoss(), graphc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                                     x, y)
    ir = step.ir("train_step_plan") if hasattr(step, "ir") else ""
    opt = torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = float(step(x, y))
        opt.zero_grad()
        tl = torch.nn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
        tl.backward()
        opt.step()
        assert abs(loss - tl.item()) < 1e-4 * max(1.0, abs(tl.item()))
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(np.array(v), t.state_dict()[k].numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
    exe = next(iter(step.executables.values()))
    assert "threads=3" in exe.source.text, ir


def test_graphc_threads_1_splits_nothing_and_runs():
    """GRAPHC_THREADS=1 (a fresh process): no kernel is split, no pool thread starts."""
    code = ("import numpy as np, threading, graphc, graphc.nn as nn\n"
            "m = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))\n"
            "x = np.ones((32, 1, 28, 28), np.float32)\n"
            "cm = graphc.compile(m, x)\n"
            "y = cm(x)\n"
            "exe = next(iter(cm.executables.values()))\n"
            "print('threads=' in exe.source.text, [t.name for t in threading.enumerate() if 'graphc' in t.name], graphc.get_num_threads())\n")
    env = dict(os.environ, GRAPHC_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "False [] 1", out.stdout


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 6, 28, 28), (3, 2, 10, 10), (2, 3, 8, 12), (2, 2, 6, 6), (1, 1, 2, 2)])
def test_2x2_pools_vectorized_equal_the_reference(shape, dt):
    """2x2 stride-2 max pools run 8 or 4 windows a vector (conv_llvm._pool2x2_row), and the
    backward of one that tiles its input writes dx once (tiled=true, _unpool2x2_row): values and
    indices equal the reference with NaN, -inf and ties; dx equal to the scatter's bit for bit
    (-0.0 gradients too); split or not."""
    from graphc.ir import OPS

    r = np.random.default_rng(7)
    x = np.round(r.standard_normal(shape) * 2).astype(dt)
    x.flat[::7], x.flat[3::11] = np.nan, -np.inf
    a = {"kernel_size": (2, 2), "stride": (2, 2)}
    ref = OPS["max_pool2d"].reference(x, **OPS["max_pool2d"].normalize_attrs(a))
    for t in (1, 2):
        y, i = run_kernel("max_pool2d", [x], {**a, "threads": t})
        np.testing.assert_array_equal(y, ref[0])
        np.testing.assert_array_equal(i, ref[1])
        g = r.standard_normal(y.shape).astype(dt)
        g.flat[::5] = -0.0
        size = {"input_size": shape[2:], "threads": t}
        want = run_kernel("max_pool2d_backward", [g, i], size)[0]
        got = run_kernel("max_pool2d_backward", [g, i], {**size, "tiled": True})[0]
        assert got.tobytes() == want.tobytes()


def test_pool_vjp_marks_tiling_windows():
    g = graphc.trace(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), np.zeros((2, 3, 8, 8), np.float32))
    from graphc.passes.autodiff import grad_graph

    text = str(grad_graph(g, wrt=["input"], seeds="inputs"))
    assert "max_pool2d_backward" in text and "tiled=true" in text
    g = graphc.trace(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), np.zeros((2, 3, 9, 8), np.float32))
    assert "tiled" not in str(grad_graph(g, wrt=["input"], seeds="inputs"))  # row 8 is in no window


def test_concurrent_launches_and_a_forked_child_run_correctly():
    """Two Python threads running split kernels at once (one gets the pool, the other runs its
    tasks in order), and a forked child (no workers there: its launches run inline)."""
    import threading

    r = np.random.default_rng(2)
    x, w = r.standard_normal((16, 3, 12, 12)).astype(np.float32), r.standard_normal((8, 3, 3, 3)).astype(np.float32)
    a = {"algo": "wide", "chunk": 1, "threads": 2}
    (want,) = run_kernel("conv2d", [x, w], {**a, "threads": 1})
    bad = []

    def go():
        for _ in range(20):
            (y,) = run_kernel("conv2d", [x, w], a)
            if not np.array_equal(y, want):
                bad.append(1)

    ts = [threading.Thread(target=go) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when the split kernel is right
        ok = np.array_equal(run_kernel("conv2d", [x, w], a)[0], want)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_pool_object_is_stored_checked_and_rebuilt(tmp_path, monkeypatch):
    from graphc.runtime import threads as pool

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    text = pool.pool_ir()
    obj = pool._pool_object(text)
    (stored,) = (tmp_path / "kernels").glob("pool-*.o")
    assert pool._pool_object(text) == obj
    stored.write_bytes(b"damaged" * 10)  # the digest no longer matches: compiled again and stored
    assert pool._pool_object(text) == obj and stored.read_bytes()[:-32] == obj


def test_back_to_back_launches_of_different_tasks_never_mix():
    """Two task kinds launched alternately, each with its own context, 100,000 times: every task
    runs exactly once with its own launch's context (a worker that claimed on a new ticket with
    the previous task's context ran the wrong function on a dead stack frame)."""
    import ctypes

    from graphc.runtime import kernel_lib
    from graphc.runtime.threads import ensure_pool

    ensure_pool()
    ir = """
declare void @graphc_parallel_for(void (i8*, i64, i64)*, i8*, i64, i64)
define internal void @task_a(i8* %ctx, i64 %t, i64 %th) {
  %p = bitcast i8* %ctx to i64**
  %a = load i64*, i64** %p
  %q = getelementptr i64, i64* %a, i64 %t
  %v = atomicrmw add i64* %q, i64 1 seq_cst
  ret void
}
define internal void @task_b(i8* %ctx, i64 %t, i64 %th) {
  %p = bitcast i8* %ctx to i64*
  %k = load i64, i64* %p
  %p1 = getelementptr i64, i64* %p, i64 1
  %bp = bitcast i64* %p1 to i64**
  %b = load i64*, i64** %bp
  %i = add i64 %t, %k
  %q = getelementptr i64, i64* %b, i64 %i
  %v = atomicrmw add i64* %q, i64 1 seq_cst
  ret void
}
define void @mix_launches(i64* %a, i64* %b, i64 %reps) {
entry:
  %ca = alloca i64*
  %cb = alloca [2 x i64]
  store i64* %a, i64** %ca
  %k0 = getelementptr [2 x i64], [2 x i64]* %cb, i64 0, i64 0
  store i64 4, i64* %k0
  %k1 = getelementptr [2 x i64], [2 x i64]* %cb, i64 0, i64 1
  %bi = ptrtoint i64* %b to i64
  store i64 %bi, i64* %k1
  %xa = bitcast i64** %ca to i8*
  %xb = bitcast [2 x i64]* %cb to i8*
  br label %loop
loop:
  %r = phi i64 [0, %entry], [%r1, %loop]
  call void @graphc_parallel_for(void (i8*, i64, i64)* @task_a, i8* %xa, i64 3, i64 2)
  call void @graphc_parallel_for(void (i8*, i64, i64)* @task_b, i8* %xb, i64 2, i64 2)
  %r1 = add i64 %r, 1
  %c = icmp ult i64 %r1, %reps
  br i1 %c, label %loop, label %out
out:
  ret void
}
"""
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        kernel_lib._load_object("mix_launches", kernel_lib.compile_ir(ir)[0]))
    a, b = np.zeros(8, np.int64), np.zeros(8, np.int64)
    fn(a.ctypes.data, b.ctypes.data, 100_000)
    assert list(a) == [100_000] * 3 + [0] * 5
    assert list(b) == [0] * 4 + [100_000] * 2 + [0] * 2


def test_the_pool_starts_the_workers_the_plans_threads_ask_for():
    """Only the pass reads the environment: the runtime starts the workers a loaded plan's widest
    `threads=k` asks for (k - 1), none for a plan that splits nothing, and grows for a wider plan
    (a fresh process: the pool is per process)."""
    code = ("import numpy as np, graphc, graphc.nn as nn\n"
            "from graphc.runtime.threads import pool_workers\n"
            "x = np.ones((32, 1, 28, 28), np.float32)\n"
            "def load(k, c):\n"
            "    graphc.set_num_threads(k)\n"
            "    cm = graphc.compile(nn.Sequential(nn.Conv2d(1, c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)), x)\n"
            "    cm(x)\n"
            "    exe = next(iter(cm.executables.values()))\n"
            "    return max((n.attr.get('threads', 1) for n in exe.graph.nodes), default=1), pool_workers()\n"
            "print(load(1, 4), load(3, 5))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GRAPHC_THREADS", "NUMBA_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 0) (3, 2)", out.stdout
