"""The plan glue lowered to LLVM IR (runtime/glue_llvm.py): the same results as numba's glue, bit
for bit; kernels' errors keep their messages; what it cannot translate falls back, saying why."""
import json
import os
import sys

import numpy as np
import pytest

import graphc
import graphc.nn as nn
from graphc.ir import GraphcError, parse
from graphc.runtime import Executable, glue_llvm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "samples"))
from char_gpt import GPTConfig, gpt_classes  # noqa: E402

PLAN = """graph g {
  input %x: f32[4,5]
  param %w: f32[3,5]
  param %b: f32[3]
  %0: f32[4,3] = linear(%x, %w, %b)
  %1: f32[3,4] = transpose(%0) {perm=[1,0]}
  %2: f32[3,4] = sigmoid(%1)
  %3: f32[] = sum(%2) {dims=[0,1]}
  return %2, %3
}"""


def test_the_glue_is_one_llvm_function_calling_numba_kernels_by_their_abi(cache_dir):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    exe = Executable(parse(PLAN), bound={"w": w, "b": b})
    glue = exe.source.glue
    assert glue is not None and exe.compile_info.glue == "llvm (compiled)" and "glue: llvm" in str(exe.compile_info)
    assert glue.ir.count("define i32 @graphc_glue_") == 1
    assert "declare i32 @graphc_lib_" in glue.ir and "icmp eq i32" in glue.ir and "label %fail" in glue.ir
    # the Python glue is kept (plan_full, compiled only for a failing kernel's message); plan calls the LLVM glue
    src = exe.source.text
    entry = src.split("def plan(", 1)[1]
    assert "def plan_full(" in src and f"glue_function({glue.symbol!r}" in src and entry.split("def make_runner")[0].count("view(") == 1  # the returned scalar
    total = exe(x)
    want = 1 / (1 + np.exp(-(x @ w.T + b).T))  # sigmoid: a library kernel (lower_nodes leaves it to numba)
    np.testing.assert_allclose(exe.outputs[0], want, rtol=1e-6)
    assert total == pytest.approx(float(want.sum()), rel=1e-6)
    manifest = json.loads((cache_dir / "plans" / os.path.basename(exe.compile_info.path) / "manifest.json").read_text())
    assert {"glue.ll", "glue.o", "plan.py"} <= set(manifest["files"])


def _gpt_steps(monkeypatch, cache, glue: str, steps: int = 3):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(cache))
    monkeypatch.setenv("GRAPHC_GLUE", glue)
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    graphc.manual_seed(0)
    model = gpt_classes(graphc)(cfg)
    opt = graphc.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    cm = graphc.compile(model, x, y)
    losses = []
    for _ in range(steps):
        losses.append(cm(x, y))
        cm.backward()
        graphc.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return cm, losses, {k: v.copy() for k, v in model.state_dict().items()}


def test_llvm_glue_and_numba_glue_agree_bit_for_bit_on_a_gpt(monkeypatch, tmp_path):
    cm, losses, state = _gpt_steps(monkeypatch, tmp_path / "llvm", "llvm")
    assert all(exe.source.glue is not None for exe in cm.executables.values())
    cm2, losses2, state2 = _gpt_steps(monkeypatch, tmp_path / "numba", "numba")
    assert all(exe.source.glue is None and "GRAPHC_GLUE=numba" in exe.compile_info.glue for exe in cm2.executables.values())
    assert losses == losses2
    for k in state:
        assert np.array_equal(state[k], state2[k]), k


def test_a_second_process_loads_the_glue_object_from_the_entry(monkeypatch, tmp_path):
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(os.path.dirname(__file__), "..", "samples")!r})
        import numpy as np, graphc
        from char_gpt import GPTConfig, gpt_classes
        graphc.manual_seed(0)
        model = gpt_classes(graphc)(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8))
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
        cm = graphc.compile(model, x, y)
        print(repr(cm(x, y)), sorted(e.compile_info.status for e in cm.executables.values()),
              sorted(e.compile_info.glue for e in cm.executables.values()))
    """)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "compiled" in first and second.split(" ", 1)[0] == first.split(" ", 1)[0]
    assert "'cached', 'cached'" in second and "'llvm (cached)', 'llvm (cached)'" in second  # glue.o read back


def test_a_failing_kernel_keeps_its_own_message(cache_dir):
    """(tests/test_runtime_exec.py's out-of-range label runs through the LLVM glue too.)"""
    emb = nn.Embedding(5, 3)
    cm = graphc.compile(emb, np.array([[0, 1], [2, 3]]))
    with pytest.raises(GraphcError, match=r"token id 7 at position \[1, 0\] is out of range"):
        cm(np.array([[0, 1], [7, 2]]))


def test_what_the_translation_does_not_know_falls_back_to_numba_saying_why():
    with pytest.raises(glue_llvm.Unsupported, match="statement"):
        glue_llvm.translate(["    x = foo.bar"], [], set(), lambda n: ("numba", "m:f"), {})
    with pytest.raises(glue_llvm.Unsupported, match="numba would specialise"):
        glue_llvm.translate(["    k_f(3)"], [], set(), lambda n: ("numba", "graphc.runtime.kernels:fill"), {})
