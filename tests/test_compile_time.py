"""What keeps compiling cheap: identical kernels generated once, plans that view their storage
directly, and a plan pipeline that optimises only its own glue (and leaves NUMBA_OPT as it was)."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba.core import config

import graphc
from graphc.ir import parse
from graphc.runtime import Executable, cache, kernel_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "samples"))
from char_gpt import GPTConfig, gpt_classes  # noqa: E402


def _kernel_counts(n_layer: int) -> dict[str, tuple[int, int]]:
    """plan -> (generated kernel functions defined, kernel calls), in interpret mode (no native compile)."""
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=n_layer, n_head=2, n_embd=8)
    graphc.manual_seed(0)
    model = gpt_classes(graphc)(cfg)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    cm = graphc.compile(model, x, y, mode="interpret")
    cm(x, y)
    out = {}
    for name, exe in cm.executables.items():
        src = exe.source.text
        defs = re.findall(r"^(?:def kernel\d+\(|kernel\d+ = llvm_kernel\()", src, re.M)
        out[name] = (len(defs), len(re.findall(r"^    kernel\d+\(", src, re.M)))
    return out


def test_repeated_transformer_layers_compile_one_function_per_kernel_structure():
    two, three = _kernel_counts(2), _kernel_counts(3)
    assert set(two) == set(three) == {"forward_plan", "backward_plan"}
    for plan in two:
        (defs2, calls2), (defs3, calls3) = two[plan], three[plan]
        assert calls3 > calls2 > defs2  # one more layer: more kernel calls ...
        assert defs3 == defs2  # ... of the same functions: a layer's kernels are defined (and compiled) once


PLAN = """graph glue {
  input %x: f32[4,3]
  param %w: f32[2,3]
  %0: f32[4,2] = linear(%x, %w)
  %1: f32[4,2] = relu(%0)
  %2: f32[2,4] = transpose(%1) {perm=[1,0]}
  return %2
}"""


def test_plan_views_its_storage_and_restores_numba_opt(cache_dir):
    cache._loaded.clear()
    before = config.OPT
    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    exe = Executable(parse(PLAN), bound={"w": w})
    assert exe.compile_info.status == "compiled"
    assert config.OPT == before and type(config.OPT) is type(before)  # the glue's lower level did not leak
    exe(x)
    np.testing.assert_allclose(exe.outputs[0], np.maximum(x @ w.T, 0).T, rtol=1e-6)
    body = exe.source.text.split("def plan_full(" if exe.source.glue is not None else "def plan(", 1)[1]
    assert "view(table[0], 0, (2, 3), np.float32)" in body and ".reshape(" not in body


def test_a_plan_with_generated_kernels_loads_from_the_disk_cache(cache_dir):
    """A cached plan holds its kernels' code: loading it compiles nothing."""
    def build():
        cache._loaded.clear()
        graphc.manual_seed(0)
        model = graphc.nn.Sequential(graphc.nn.Linear(3, 4), graphc.nn.Tanh(), graphc.nn.Linear(4, 2), graphc.nn.Sigmoid())
        model.eval()
        cm = graphc.compile(model, X)
        return cm, cm(X)

    X = np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)
    first, y1 = build()
    exe = next(iter(first.executables.values()))
    assert "kernel0 = llvm_kernel(" in exe.source.text and exe.compile_info.status == "compiled"
    again, y2 = build()
    assert next(iter(again.executables.values())).compile_info.status == "cached"
    np.testing.assert_array_equal(y1, y2)


def _mlp(out: int):
    graphc.manual_seed(0)
    model = graphc.nn.Sequential(graphc.nn.Linear(3, 4), graphc.nn.Tanh(), graphc.nn.Linear(4, out), graphc.nn.Sigmoid())
    model.eval()
    return model


def _compile(model, x):
    cm = graphc.compile(model, x)
    y = cm(x)
    return next(iter(cm.executables.values())), y


def _new_process():
    """Forget what this process loaded: plans and kernels come from the disk again."""
    cache._loaded.clear()
    kernel_lib._ready.clear()
    for m in [m for m in sys.modules if m.startswith(("graphc_kernel_", "graphc_plan_"))]:
        del sys.modules[m]


@pytest.mark.parametrize("lowering", ["llvm", "numba"])
def test_two_models_share_a_kernel_through_the_kernel_library(cache_dir, caplog, monkeypatch, lowering):
    if lowering == "numba":
        monkeypatch.setenv("GRAPHC_LLVM", "0")
    way = {"llvm": 2, "numba": 0} if lowering == "llvm" else {"llvm": 0, "numba": 2}
    x = np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)
    _new_process()
    a, _ = _compile(_mlp(2), x)
    assert a.compile_info.kernels == {"compiled": 2, "cached": 0, "reused": 0, **way}
    _new_process()
    b, yb = _compile(_mlp(5), x)  # its first layer's kernel (GEMM + tanh, same shapes) is a's
    assert b.compile_info.kernels == {"compiled": 1, "cached": 1, "reused": 0, **way}, b.compile_info
    if lowering == "numba":
        assert all(len(fn.signatures) == 1 for fn in kernel_lib._ready.values())  # the plan used them as prepared
    np.testing.assert_allclose(yb, 1 / (1 + np.exp(-(np.tanh(x @ _w(0).T + _b(0)) @ _w(2, 5).T + _b(2, 5)))), rtol=1e-5)

    # a damaged entry is rebuilt, as a plan's is
    shared = cache_dir / "kernels" / next(iter(k.key for k in b.source.kernels))
    idx = shared / "kernel.o" if lowering == "llvm" else next((shared / "__pycache__").glob("*.nbi"))
    idx.write_bytes(idx.read_bytes() + b"x")
    _new_process()
    c, _ = _compile(_mlp(6), x)
    assert c.compile_info.kernels == {"compiled": 2, "cached": 0, "reused": 0, **way}
    assert "checksum mismatch" in caplog.text


def _w(k, out=None):
    return np.array(_mlp(out or 2)[k].weight)


def _b(k, out=None):
    return np.array(_mlp(out or 2)[k].bias)


def test_a_second_process_loads_a_plan_whose_kernels_come_from_the_library(cache_dir):
    code = textwrap.dedent("""
        import numpy as np, graphc
        graphc.manual_seed(0)
        m = graphc.nn.Sequential(graphc.nn.Linear(3, 4), graphc.nn.Tanh(), graphc.nn.Linear(4, 2))
        m.eval()
        x = np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)
        cm = graphc.compile(m, x)
        y = cm(x)
        print(next(iter(cm.executables.values())).compile_info.status, float(y.sum()))
    """)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    (s1, y1), (s2, y2) = (r.stdout.split() for r in runs)
    assert (s1, s2) == ("compiled", "cached") and y1 == y2


def _strided_plan(n: int, m: int, bias: bool) -> str:
    b = f", %b" if bias else ""
    return f"""graph shapes {{
  input %x: f32[{n},{m}]
  param %w: f32[3,{m}]
{"  param %b: f32[3]" if bias else ""}
  %0: f32[{n},3] = linear(%x, %w{b})
  %1: f32[3,{n}] = transpose(%0) {{perm=[1,0]}}
  return %1
}}"""


def test_library_kernels_compile_once_per_dtype_not_once_per_shape(cache_dir, monkeypatch):
    """Shapes, strides and flags reach library kernels as int64 / bool values, not constants:
    numba types a constant argument (an int, a tuple of ints, True) as a Literal and compiles
    the kernel again for every value, so every new shape recompiled every kernel it called.
    (GRAPHC_LLVM=0: otherwise these nodes are LLVM functions of their own, runtime/lower_nodes.py.)"""
    from graphc.runtime import kernels

    monkeypatch.setenv("GRAPHC_LLVM", "0")

    def f32_sigs():
        return {fn.__name__: {s for s in fn.overloads if "Array(float32" in str(s)} for fn in (kernels.strided, kernels.linear)}

    rng = np.random.default_rng(0)
    after_first = None
    for n, m, bias in ((4, 5, True), (6, 7, False), (9, 2, True)):
        w, b = rng.standard_normal((3, m)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
        exe = Executable(parse(_strided_plan(n, m, bias)), bound={"w": w, "b": b} if bias else {"w": w})
        x = rng.standard_normal((n, m)).astype(np.float32)
        exe(x)
        np.testing.assert_allclose(exe.outputs[0], (x @ w.T + (b if bias else 0)).T, rtol=1e-5, atol=1e-6)
        assert "k_strided(i64(4), v0_f, (i64(0), " in exe.source.text and "np.bool_(" in exe.source.text
        sigs = f32_sigs()
        assert not any("Literal" in str(s) for group in sigs.values() for s in group), sigs
        if after_first is None:
            after_first = sigs
    assert f32_sigs() == after_first  # new shapes and another bias flag: nothing compiled again


def test_new_llvm_kernels_compile_in_two_processes_to_the_same_code(tmp_path, monkeypatch):
    """A plan's new LLVM kernels are compiled half in a forked child (kernel_lib._compile_beside),
    half here: each is counted compiled, stored with the object code a compile here gives, and
    runs (a kernel that stores its own constant)."""
    import ctypes
    import uuid

    from graphc.runtime.kernel_lib import LlvmKernel

    monkeypatch.setattr(kernel_lib, "PARALLEL_MIN", 2)
    monkeypatch.setattr(kernel_lib.os, "sched_getaffinity", lambda pid: {0, 1})  # as on two CPUs
    forks, fork = [], os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or fork())
    salt = uuid.uuid4().int % 1000  # kernels new to this process
    consts = [salt + j + 0.5 for j in range(6)]
    ks = [LlvmKernel(f"define void @kernel(ptr %p) {{\n  store float {c:.1f}, ptr %p\n  ret void\n}}\n", ["f32"])
          for c in consts]
    counts = kernel_lib.prepare(tmp_path, ks)
    assert counts["compiled"] == 6 and counts["llvm"] == 6 and counts["cached"] == counts["reused"] == 0, counts
    for k, c in zip(ks, consts):
        assert (tmp_path / "kernels" / k.key / "kernel.o").read_bytes() == kernel_lib.compile_ir(k.text)[0]
        out = np.zeros(1, np.float32)
        ctypes.CFUNCTYPE(None, ctypes.c_void_p)(kernel_lib._ready[k.key])(out.ctypes.data)
        assert out[0] == np.float32(c)
    assert forks == [1]
    assert kernel_lib.prepare(tmp_path, ks)["reused"] == 6
