"""The runtime on hand-written plans: jit vs the reference interpreter, memory planning, in-place
updates, bad inputs, steady-state allocations, NUMBA_DISABLE_JIT."""
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from graphc.ir import GraphcError, ShapeError, interpret, parse
from graphc.runtime import Executable, InputError, plan_memory

R = np.random.default_rng(0)

# One plan touching broadcasting, reductions, shapes, softmax, the fused linear ops and a reused value.
MIXED = """graph mixed {
  input %x: f32[6,5]
  input %labels: i64[6]
  param %w: f32[4,5]
  param %b: f32[4]
  rng %seed: i64[]
  %0: f32[6,4] = linear_relu(%x, %w, %b)
  %1: f32[6,4] = dropout(%0, %seed) {p=0.25, stream=2}
  %2: f32[] = full() {shape=[], value=2.0}
  %3: f32[6,4] = mul(%1, %2)
  %4: f32[6,4] = add(%3, %3)
  %5: f32[4,6] = transpose(%4) {perm=[1,0]}
  %6: f32[24] = reshape(%5) {shape=[24]}
  %7: f32[2,12] = reshape(%6) {shape=[2,12]}
  %8: f32[12] = sum(%7) {dims=[0]}
  %9: f32[6,4] = log_softmax(%4) {dim=1}
  %10: f32[] = nll_loss(%9, %labels)
  %11: f32[4] = mean(%4) {dims=[0]}
  %12: f32[6,4] = sub(%4, %11)
  %13: f32[6,4] = tanh(%12)
  %14: f32[1,4] = sum_to(%13) {shape=[1,4]}
  %15: f32[3,4] = broadcast_to(%14) {shape=[3,4]}
  %16: f32[6,6] = matmul(%4, %5)
  return %10 as loss, %8, %15, %7, %16
}"""


def mixed_graph():
    return parse(MIXED).verify()


def mixed_inputs():
    return dict(x=R.standard_normal((6, 5)).astype(np.float32), labels=R.integers(0, 4, 6).astype(np.int64),
                w=R.standard_normal((4, 5)).astype(np.float32), b=R.standard_normal(4).astype(np.float32),
                seed=np.array(77, np.int64))


@pytest.mark.parametrize("mode", ["jit", "interpret"])
def test_mixed_plan_matches_interpreter(mode):
    g = mixed_graph()
    ins = mixed_inputs()
    exe = Executable(g, bound={"w": ins["w"], "b": ins["b"]}, mode=mode)
    loss = exe(ins["x"], ins["labels"], 77)
    want = interpret(g, ins)
    assert loss == pytest.approx(float(want[0]), rel=1e-5)
    for got, w in zip(exe.outputs, want):
        np.testing.assert_allclose(got, w, rtol=2e-5, atol=1e-5)


def test_memory_plan_shares_and_prints():
    g = mixed_graph()
    mp = plan_memory(g)
    text = str(mp)
    assert "peak" in text and "b0" in text
    assert mp.peak_bytes < mp.naive_bytes
    assert any(len(b.values) > 1 for b in mp.buffers), text  # some buffer is shared
    # lifetimes of values sharing a buffer never overlap
    for b in mp.buffers:
        spans = sorted(b.lifetimes)
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert e0 < s1, (b, text)
    # reshape views take no buffer; outputs own theirs
    assert mp.slots["6"].kind == "alias"
    out_bufs = [mp.slots[o.value].buffer for o in g.outputs if mp.slots[o.value].kind == "buffer"]
    for bid in out_bufs:
        assert mp.buffers[bid].role == "output" and len(mp.buffers[bid].values) == 1


UPDATE = """graph upd {
  input %g: f32[3]
  param %p: f32[3]
  state %m: f32[3]
  state %state.group0.step: i64[]
  hyper %hyper.group0.lr: f64[]
  hyper %hyper.group0.momentum: f64[]
  hyper %hyper.group0.dampening: f64[]
  hyper %hyper.group0.weight_decay: f64[]
  %0, %1 = sgd_update(%p, %g, %hyper.group0.lr, %hyper.group0.momentum, %hyper.group0.dampening, %hyper.group0.weight_decay, %m, %state.group0.step) {momentum=true}
  %2: i64[] = full() {dtype="i64", shape=[], value=1.0}
  %3: i64[] = add(%state.group0.step, %2)
  return %0 as update:p, %1 as update:m, %3 as update:state.group0.step
}"""


@pytest.mark.parametrize("mode", ["jit", "interpret"])
def test_updates_write_into_the_bound_arrays(mode):
    g = parse(UPDATE.replace("%0, %1 =", "%0: f32[3], %1: f32[3] =")).verify()
    p, m, step = np.array([1.0, 2.0, 3.0], np.float32), np.zeros(3, np.float32), np.zeros((), np.int64)
    hyper = {f"hyper.group0.{k}": np.asarray(v, np.float64) for k, v in
             dict(lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.0).items()}
    exe = Executable(g, bound={"p": p, "m": m, "state.group0.step": step, **hyper}, mode=mode)
    if mode == "jit":
        assert [s.kind for s in (exe.memory_plan.slots[v] for v in "013")] == ["inplace"] * 3
    grad = np.array([1.0, -1.0, 0.5], np.float32)
    exe(grad)
    np.testing.assert_allclose(p, [0.5, 2.5, 2.75])
    np.testing.assert_allclose(m, grad)  # first step: buf = d_p
    assert int(step) == 1
    exe(grad)
    np.testing.assert_allclose(m, 0.9 * grad + grad, rtol=1e-6)
    assert int(step) == 2
    # the hyperparameters are read at each call: a new lr takes effect without a new plan
    hyper["hyper.group0.lr"][()] = 0.0
    before = p.copy()
    exe(grad)
    np.testing.assert_array_equal(p, before)


def test_unsafe_update_is_computed_aside():
    # %p is read after the node that computes its update: writing in place would corrupt %1
    g = parse("""graph late {
      input %g: f32[3]
      param %p: f32[3]
      %0: f32[3] = sub(%p, %g)
      %1: f32[3] = mul(%p, %g)
      return %0 as update:p, %1
    }""").verify()
    mp = plan_memory(g)
    assert mp.update_copies == [("0", "p")]
    p = np.array([1.0, 2.0, 3.0], np.float32)
    g_ = np.array([1.0, 1.0, 2.0], np.float32)
    exe = Executable(g, bound={"p": p})
    exe(g_)
    np.testing.assert_allclose(exe.outputs[1], [1.0, 2.0, 6.0])  # read the old p
    np.testing.assert_allclose(p, [0.0, 1.0, 1.0])


def test_output_that_is_an_input_is_copied():
    g = parse("""graph passthrough {
      input %x: f32[2,2]
      %0: f32[2,2] = neg(%x)
      return %x, %0
    }""").verify()
    exe = Executable(g)
    x = np.ones((2, 2), np.float32)
    exe(x)
    x[...] = 5
    np.testing.assert_array_equal(exe.outputs[0], np.ones((2, 2)))
    np.testing.assert_array_equal(exe.outputs[1], -np.ones((2, 2)))


SMALL = """graph small {
  input %x: f32[4,3]
  param %w: f32[2,3]
  %0: f32[4,2] = linear(%x, %w)
  %1: f32[4,2] = relu(%0)
  %2: f32[] = sum(%1) {dims=[0,1]}
  return %2, %1
}"""


@pytest.fixture(scope="module")
def small_exe():
    return Executable(parse(SMALL), bound={"w": np.ones((2, 3), np.float32)})


@pytest.mark.parametrize("bad, msg", [
    (np.ones((4, 4), np.float32), r"dim 1 is 4, expected 3"),
    (np.ones((4, 3, 1), np.float32), r"rank 3, expected rank 2"),
    (np.ones((4, 3), np.float64), r"dtype float64, expected float32"),
    (np.ones(12, np.float32), r"rank 1, expected rank 2"),
])
def test_bad_inputs_raise_before_running(small_exe, bad, msg):
    before = small_exe.outputs[1].copy()
    with pytest.raises(InputError, match=msg) as e:
        small_exe(bad)
    assert isinstance(e.value, ShapeError) and "%x" in str(e.value) and "f32[4,3]" in str(e.value)
    np.testing.assert_array_equal(small_exe.outputs[1], before)


def test_inputs_are_converted_when_they_can_be(small_exe):
    x = np.asfortranarray(R.standard_normal((4, 3)).astype(np.float32))
    small_exe(x)
    np.testing.assert_allclose(small_exe.outputs[1], np.maximum(x @ np.ones((3, 2)), 0), rtol=1e-6)
    with pytest.raises(InputError, match="dtype float64"):  # nested lists are float64: never silently cast
        small_exe(x.tolist())
    with pytest.raises(InputError, match="takes 1 inputs"):
        small_exe(x, x)


def test_nan_flows_through(small_exe):
    x = np.ones((4, 3), np.float32)
    x[1, 1] = np.nan
    total = small_exe(x)
    assert np.isnan(total) and np.isnan(small_exe.outputs[1][1]).all() and not np.isnan(small_exe.outputs[1][0]).any()


def test_steady_state_allocates_nothing(small_exe):
    x = R.standard_normal((4, 3)).astype(np.float32)
    out = small_exe.outputs[1]
    arena = small_exe.arenas["f32"]
    small_exe(x)
    tracemalloc.start()
    snap = tracemalloc.take_snapshot()
    for _ in range(200):
        small_exe.run(x)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap, "filename") if s.size_diff > 0)
    tracemalloc.stop()
    assert small_exe.outputs[1] is out and small_exe.arenas["f32"] is arena
    assert grown < 4096, grown  # no per-call arrays (200 calls of even one 8-float array would be ~10 KB)


def test_label_out_of_range_is_a_graphc_error():
    g = parse("""graph ce {
      input %x: f32[2,3]
      input %y: i64[2]
      %0: f32[] = cross_entropy(%x, %y)
      return %0
    }""")
    exe = Executable(g)
    assert exe.source.glue is not None  # the LLVM glue: the kernel's status, then plan_full's message
    with pytest.raises(GraphcError, match="out of range"):
        exe(np.zeros((2, 3), np.float32), np.array([0, 3]))
    assert exe(np.zeros((2, 3), np.float32), np.array([0, 2])) == pytest.approx(np.log(3), rel=1e-6)


def test_bound_array_checks():
    g = parse(SMALL)
    with pytest.raises(InputError, match="bound input %w expected f32\\[2,3\\]"):
        Executable(g, bound={"w": np.ones((3, 2), np.float32)})
    with pytest.raises(GraphcError, match="unknown inputs"):
        Executable(g, bound={"nope": np.ones(1)})


def test_source_is_readable_and_one_function():
    exe = Executable(parse(SMALL), bound={"w": np.ones((2, 3), np.float32)})
    src = exe.source.text
    # the glue (plan_full, lowered to LLVM IR as `glue`) and the entry numba compiles (plan)
    assert src.count("@njit") == 2 and "def plan(" in src and "# %0: f32[4,2] = linear(%x, %w)" in src
    assert "def plan_full(" in src and exe.source.glue is not None and exe.source.glue.symbol in src
    assert "memory plan small" in src  # the module's docstring carries the plan and its memory plan
    assert os.path.isfile(os.path.join(exe.compile_info.path, "plan.py"))


def test_disable_jit_runs_the_same_plan_as_python(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np
        from graphc.ir import parse, interpret
        from graphc.runtime import Executable
        g = parse({SMALL!r})
        w = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
        x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
        exe = Executable(g, bound={{"w": w}})
        total = exe(x)
        want = interpret(g, {{"x": x, "w": w}})
        assert exe.compile_info.status == "python", exe.compile_info
        assert type(exe.module.plan).__name__ == "function"
        np.testing.assert_allclose(exe.outputs[1], want[1], rtol=1e-6)
        assert abs(total - float(want[0])) < 1e-4
        print("ok")
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", GRAPHC_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


