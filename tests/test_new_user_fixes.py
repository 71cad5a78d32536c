"""What trying graphc as a new user found (issue 12): each case works, or fails with a graphc
error that names the problem."""
import os
import stat

import numpy as np
import pytest
import torch

import graphc
import graphc.nn as nn
from graphc.ir import ParseError, VerifyError, parse
from graphc.runtime import cache


def test_a_parameter_free_module_compiles_in_training_mode():
    x = np.ones((4, 6), np.float32)
    cm = graphc.compile(nn.Dropout(0.5).train(), x)
    y = cm(x)
    assert set(np.unique(y)) <= {0.0, 2.0} and (y == 0).any()  # Dropout on
    with pytest.raises(graphc.GraphcError, match="nothing in Dropout requires grad .* input_grads=True"):
        cm.backward(np.ones_like(y))
    cm = graphc.compile(nn.Dropout(0.5).train(), x, input_grads=True)
    y = cm(x)
    gx = cm.backward(np.ones_like(y))
    np.testing.assert_array_equal(gx, y)  # the mask, scaled: d(dropout(x))/dx applied to ones
    assert graphc.compile(nn.ReLU().train(), x)(x).shape == (4, 6)


def test_fully_frozen_modules_compile_and_never_get_grad():
    m = nn.Sequential(nn.Linear(6, 3), nn.Tanh())
    for p in m.parameters():
        p.requires_grad = False
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    cm = graphc.compile(m.train(), x)
    cm(x)
    with pytest.raises(graphc.GraphcError, match="requires grad"):
        cm.backward(np.ones((4, 3), np.float32))
    assert all(p.grad is None for p in m.parameters())
    cm = graphc.compile(m, x, input_grads=True)
    cm(x)
    gx = cm.backward(np.ones((4, 3), np.float32))
    assert gx.shape == x.shape and all(p.grad is None for p in m.parameters())
    tm = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh())
    with torch.no_grad():
        tm[0].weight.copy_(torch.from_numpy(np.array(m[0].weight)))
        tm[0].bias.copy_(torch.from_numpy(np.array(m[0].bias)))
    tx = torch.from_numpy(x).requires_grad_(True)
    tm(tx).backward(torch.ones(4, 3))
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(graphc.GraphcError, match="nothing to train"):
        graphc.compile_train_step(m, nn.MSELoss(), opt, x, np.zeros((4, 3), np.float32))


def test_a_partly_frozen_module_differentiates_only_the_rest():
    m = nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 2))
    m[0].weight.requires_grad = False
    x = np.ones((4, 6), np.float32)
    cm = graphc.compile(m.train(), x)
    cm(x)
    cm.backward(np.ones((4, 2), np.float32))
    assert m[0].weight.grad is None and m[0].bias.grad is not None and m[2].weight.grad is not None


@pytest.mark.parametrize("make", [lambda a: _readonly(a), lambda a: np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)],
                         ids=["writeable=False", "frombuffer"])
def test_read_only_inputs_work(make):
    graphc.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = np.zeros((5, 3), np.float32)
    want = graphc.compile(m.eval(), x)(x)
    np.testing.assert_array_equal(graphc.compile(m.eval(), x)(make(x)), want)
    opt = graphc.optim.SGD(m.parameters(), lr=0.1)
    step = graphc.compile_train_step(m.train(), nn.MSELoss(), opt, x, y)
    assert np.isfinite(step(make(x), make(y)))


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def test_zero_size_arrays_get_a_clear_error():
    with pytest.raises(graphc.GraphcError, match="has a zero-size dimension"):
        graphc.compile(nn.Linear(0, 5), np.ones((2, 0), np.float32))


def test_unclear_errors_are_graphc_errors():
    with pytest.raises(ParseError, match="expects the IR text"):
        parse(None)
    with pytest.raises(VerifyError, match="elements"):
        parse("graph g {\n  input %x: f32[99999999,99999999]\n  %0: f32[99999999,99999999] = relu(%x)\n  return %0\n}")
    with pytest.raises(graphc.GraphcError, match="must be a number"):
        graphc.optim.SGD(nn.Linear(2, 2).parameters(), lr="0.1")

    class Bad(nn.Module):
        def __init__(self, what):
            super().__init__()
            self.what = what

        def forward(self, x):
            if self.what == "setitem":
                x[0] = 0
            return x.cumsum()

    for what, match in [("setitem", "in-place assignment"), ("method", "no method or attribute 'cumsum'")]:
        with pytest.raises(graphc.TraceError, match=match) as e:
            graphc.trace(Bad(what), np.ones((2, 3), np.float32))
        assert "test_new_user_fixes.py" in str(e.value)


def test_pow_and_max_trace_like_torch():
    class M(nn.Module):
        def forward(self, x):
            return (x ** 2).max() + x.amax(1).sum()

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    got = graphc.compile(M(), x)(x)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(got, ((t ** 2).max() + t.amax(1).sum()).numpy(), rtol=1e-6)


# ------------------------------------------------------------------ the compile cache is private


def test_the_cache_folder_is_created_private(cache_dir):
    graphc.compile(nn.Linear(2, 2).eval(), np.ones((1, 2), np.float32))
    for d in (cache_dir, cache_dir / "plans"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_a_cache_folder_others_can_write_is_refused(cache_dir):
    cache_dir.mkdir()
    os.chmod(cache_dir, 0o777)
    with pytest.raises(cache.CacheError, match=r"can be written by group and others \(mode 777\).*chmod go-w"):
        graphc.compile(nn.Linear(2, 3).eval(), np.ones((1, 2), np.float32))
    os.chmod(cache_dir, 0o700)
    (cache_dir / "plans").mkdir(mode=0o700)
    os.chmod(cache_dir / "plans", 0o770)
    with pytest.raises(cache.CacheError, match="can be written by group"):
        graphc.compile(nn.Linear(2, 3).eval(), np.ones((1, 2), np.float32))


def test_a_cache_folder_of_another_user_is_refused(cache_dir, monkeypatch):
    cache_dir.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache_dir).st_uid + 1)
    with pytest.raises(cache.CacheError, match="belongs to another user"):
        graphc.compile(nn.Linear(2, 4).eval(), np.ones((1, 2), np.float32))


def test_a_cache_dir_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(f))
    with pytest.raises(cache.CacheError, match="is a file, not a folder"):
        graphc.compile(nn.Linear(2, 5).eval(), np.ones((1, 2), np.float32))


def test_compiled_plans_name_files_that_exist(cache_dir):
    cm = graphc.compile(nn.Linear(2, 6).eval(), np.ones((1, 2), np.float32))
    (exe,) = cm.executables.values()
    assert exe.compile_info.status == "compiled"
    for fn in (exe.module.make_runner, exe.module.plan.py_func):
        assert os.path.isfile(fn.__code__.co_filename) and ".tmp-" not in fn.__code__.co_filename
