"""The samples run end to end (digits with fewer epochs than the README's full run).

They compile into the run's cache (GRAPHC_CACHE_DIR, fresh in .ci/run), not a private one: they
check what the samples do, and kernels or plans compiled before load from disk (the cold and miss
paths are tested with the cache_dir fixture, tests/test_runtime_cache.py)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sample(name, *args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "samples", name), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_simple_net_sample_trains_and_dumps(tmp_path):
    out = run_sample("simple_net.py", "--epochs", "8", "--out", str(tmp_path / "dumps"), cwd=tmp_path)
    assert "linear_relu" in out and "= relu(" in out  # IR before fusion has relu, after has linear_relu
    first, last = map(float, re.search(r"train loss: first epoch (\S+) -> last epoch (\S+)", out).groups())
    assert last < first
    eval_mse, baseline = map(float, re.search(r"eval MSE on \d+ held-out samples: (\S+) \(predicting the mean gives (\S+)\)", out).groups())
    assert eval_mse < baseline
    assert (tmp_path / "dumps" / "index.md").exists()
    assert (tmp_path / "dumps" / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_digits_sample_learns_and_reloads(tmp_path):
    pytest.importorskip("sklearn")
    out = run_sample("digits.py", "--epochs", "12", "--out", str(tmp_path), cwd=tmp_path)
    acc = float(out.split("test accuracy ")[1].split("%")[0])
    assert acc >= 93.0, out
    assert "reloaded model scores" in out
    assert (tmp_path / "digits_mlp.npz").exists()
    if "no figure written" not in out:
        assert (tmp_path / "digits_curves.png").stat().st_size > 1000


def test_char_gpt_sample_learns(tmp_path):
    """Batches of 8 (the sample's default is 32): the compiles are the same, but checked mode's
    reference runs of each pass and the 40 steps cost a quarter (the run took ~20% less CPU);
    the loss still falls from ~4.3 to ~3.05."""
    out = run_sample("char_gpt.py", "--steps", "40", "--batch-size", "8", "--sample-chars", "40", "--out", str(tmp_path),
                     cwd=tmp_path)
    first, last = map(float, re.search(r"train loss: first (\S+) -> last (\S+)", out).groups())
    uniform = float(re.search(r"uniform guess log\(96\) = (\S+)\)", out).group(1))
    assert last < uniform - 1.0 and last < first, out  # clearly below guessing uniformly
    assert "---- sample" in out
    if "no figure written" not in out:
        assert (tmp_path / "char_gpt_loss.png").stat().st_size > 1000


def test_digits_cnn_sample_trains_and_reloads(tmp_path):
    """2 epochs (98.3% after epochs 2 and 3 in the seeded run README quotes, whose default 14 epochs
    reach 98.9%, over the issue's 98.5%): the bar leaves room for the ~1% epoch-to-epoch swing at
    Adam's constant rate. Each epoch is ~1/3 of the run's steps after the compiles."""
    pytest.importorskip("sklearn")
    out = run_sample("digits_cnn.py", "--epochs", "2", "--out", str(tmp_path), cwd=tmp_path)
    acc = float(out.split("test accuracy ")[2].split("%")[0])
    assert acc >= 97.0, out
    assert "reloaded model scores" in out
    assert (tmp_path / "digits_cnn.npz").exists()
    if "no figure written" not in out:
        assert (tmp_path / "digits_cnn_curves.png").stat().st_size > 1000
