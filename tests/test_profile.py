"""graphc.profile: one row per kernel call of the plan, times that add up to the step, the
compiled plan untouched (tests/models.SimpleNet and the sample's GPT at tiny size)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import graphc
from graphc.inspect.html_code import plan_calls
from models import SimpleNet, WithLoss

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples"))
from char_gpt import GPTConfig, gpt_classes, init_weights  # noqa: E402


def _calls(exe) -> list[str]:
    return [k for c in plan_calls(exe.source.text) for k in c.kernels]


def _row_calls(prof, plan) -> list[str]:
    return [r.call.removeprefix("k_") for r in prof.rows if r.plan == plan]


def test_train_step_rows_are_the_plans_calls_and_the_plan_is_unchanged():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 10)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
    model = SimpleNet()
    step = graphc.compile_train_step(model, graphc.nn.MSELoss(), graphc.optim.SGD(model.parameters(), lr=0.1), x, y)
    step(x, y)
    exe = step._spec.exe
    text, native = exe.source.text, step._spec.native
    prof = graphc.profile(step, x, y, steps=3, warmup=1)
    assert _row_calls(prof, exe.name) == _calls(exe)
    assert exe.source.text == text and step._spec.native is native  # the plan that trains is the same
    assert "readcyclecounter" not in exe.source.glue.ir
    assert {r.phase for r in prof.rows} >= {"forward", "backward", "optimizer"}
    assert all(r.us >= 0 for r in prof.rows) and 0 < prof.kernel_us <= prof.step_us * 1.5
    assert str(prof).count("\n") >= len(prof.rows) + 2
    assert np.isfinite(step(x, y))  # still runs as before


def test_compiled_module_profiles_forward_and_backward():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 10)).astype(np.float32), rng.standard_normal((4, 1)).astype(np.float32)
    cm = graphc.compile(WithLoss(SimpleNet(), "mse"), x, y)
    prof = graphc.profile(cm, x, y, steps=2, warmup=1)
    spec = cm._spec
    assert _row_calls(prof, spec.fwd.name) == _calls(spec.fwd)
    assert _row_calls(prof, spec.bwd.name) == _calls(spec.bwd)
    assert spec.fwd.run is not None and cm(x, y).shape == ()


def test_gpt_profile_adds_up_to_the_step():
    cfg = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 16, (4, 8)), rng.integers(0, 16, (4, 8))
    model = gpt_classes(graphc)(cfg)
    init_weights(model)
    step = graphc.compile_train_step(model, None, graphc.optim.AdamW(model.parameters(), lr=1e-3), x, y,
                                     clip_grad_norm=1.0)
    prof = graphc.profile(step, x, y, steps=5, warmup=1)
    exe = step._spec.exe
    assert _row_calls(prof, exe.name) == _calls(exe)
    assert {"GEMM", "fused loop"} <= set(prof.total("kind"))
    assert set(prof.total("phase")) >= {"forward", "backward", "optimizer"}
    assert sum(prof.total("kind").values()) == pytest.approx(prof.kernel_us)
    assert prof.kernel_us <= prof.step_us * 1.5
    assert any(m.endswith("adam_update") for r in prof.rows for m in r.members)


def test_profile_rejects_other_objects():
    with pytest.raises(graphc.GraphcError, match="TrainStep"):
        graphc.profile(object())
