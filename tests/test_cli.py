"""The `graphc` command line, run as a subprocess (`python -m graphc ...`) on tests/fixtures/simple_net.py."""
import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from graphc import cli

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "fixtures" / "simple_net.py"
SIMPLE = f"{MODELS}:SimpleNet"


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main() configures the "graphc" logger; leave it as other tests expect it."""
    import logging

    logger = logging.getLogger("graphc")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_compiler = pytest.mark.skipif(not (has("graphc.compiler") and has("graphc.optim")),
                                    reason="graphc.compiler / graphc.optim not written yet")


def graphc_cmd(*args, env=None, cwd=None, timeout=300):
    e = dict(os.environ)
    e.pop("GRAPHC_LOG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=True,
                          env=e, cwd=cwd or REPO, timeout=timeout)


def assert_one_line_error(p, *words, code=None):
    assert p.returncode != 0 if code is None else p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("graphc: error:")]
    assert len(errors) == 1, p.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


# ------------------------------------------------------------------ help


@pytest.mark.parametrize("args", [["--help"], ["inspect", "--help"], ["dump", "--help"], ["demo", "--help"]])
def test_help(args):
    p = graphc_cmd(*args)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: graphc")
    if args[0] == "inspect":
        for opt in ("--input", "--dtype", "--train", "--loss", "--optim", "--stage", "--all-stages", "--diff", "--report"):
            assert opt in p.stdout


def test_no_command_prints_help_and_fails():
    p = graphc_cmd()
    assert p.returncode == 2 and "usage: graphc" in p.stderr


@pytest.mark.skipif(shutil.which("graphc", path=os.path.dirname(sys.executable)) is None,
                    reason="the graphc console script is not installed in this environment")
def test_console_script():
    exe = shutil.which("graphc", path=os.path.dirname(sys.executable))
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "inspect" in p.stdout


# ------------------------------------------------------------------ inspect


def test_inspect_prints_the_stages_and_the_final_plan(cache_dir):
    p = graphc_cmd("inspect", SIMPLE, "--input", "8x10")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    out = p.stdout
    assert "traced" in out.splitlines()[0]
    assert "input %x: f32[8,10]" in out
    assert "= linear_relu(%x, %linear1.weight, %linear1.bias)" in out


def test_inspect_all_stages_diff_and_reports(cache_dir):
    p = graphc_cmd("inspect", SIMPLE, "--input", "8x10", "--all-stages", "--diff", "traced", "-1",
                   "--report", "passes", "--report", "fusion", "--report", "saved")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    headers = [ln for ln in out.splitlines() if ln.startswith("== ") and ln[3:5].isdigit()]
    assert headers[0] == "== 00 traced ==" and len(headers) >= 3
    assert out.count("graph SimpleNet {") == len(headers)
    assert "--- traced" in out  # (the fused layer: a loops kernel whose member is linear_relu, passes/gemm_impl.py)
    assert any(ln.startswith("+") and "%1: f32[8,20] = linear_relu(" in ln for ln in out.splitlines())
    assert "== passes report ==" in out and "fuse_linear_relu" in out
    assert "== fusion report ==" in out and "[linear+relu]" in out
    assert "no saved values" in out  # inference keeps nothing for a backward


def test_inspect_stage_by_name_and_dtype(cache_dir):
    p = graphc_cmd("inspect", SIMPLE, "--input", "4x10", "--dtype", "f64", "--stage", "traced")
    assert p.returncode == 0, p.stderr
    assert "input %x: f64[4,10]" in p.stdout and "= relu(" in p.stdout and "linear_relu" not in p.stdout


def test_debug_logging_shows_each_pass(cache_dir):
    p = graphc_cmd("inspect", SIMPLE, "--input", "8x10", env={"GRAPHC_LOG": "debug"})
    assert p.returncode == 0, p.stderr
    assert "[graphc.passes] DEBUG: fuse_linear_relu:" in p.stderr and " nodes" in p.stderr
    assert "[graphc.cli] DEBUG: built SimpleNet" in p.stderr
    quiet = graphc_cmd("inspect", SIMPLE, "--input", "8x10")
    assert quiet.stderr == ""


@needs_compiler
def test_debug_logging_shows_compile_cache_miss_then_hit_and_the_train_step_reports(cache_dir):
    """The same `inspect --train` twice in a fresh cache: compiled, then loaded from the cache; the
    second run's output still shows the MSE + SGD train step and its saved/memory reports. (One
    compile serves both checks: they used to be two tests compiling the same plan.)"""
    args = ("inspect", SIMPLE, "--input", "16x10", "--train", "--loss", "mse", "--optim", "sgd",
            "--report", "saved", "--report", "memory", "--stage", "kernels")
    first = graphc_cmd(*args, env={"GRAPHC_LOG": "debug"})
    second = graphc_cmd(*args, env={"GRAPHC_LOG": "debug"})
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "compiled in" in first.stderr and "loaded from cache" not in first.stderr
    assert "loaded from cache" in second.stderr
    for p in (first, second):
        assert "linear_relu" in p.stdout and "relu_backward" in p.stdout  # (linear_backward, decomposed by the kernel pass)
        assert "saved values" in p.stdout and "peak" in p.stdout
        # `--stage kernels`: the kernel stage, each kernel with its members (issue 9)
        assert '= kernel(' in p.stdout and 'kind="gemm"} {' in p.stdout and "addmm(" in p.stdout


# ------------------------------------------------------------------ errors: one line, non-zero exit


def test_wrong_file():
    p = graphc_cmd("inspect", "no/such/model.py:SimpleNet", "--input", "8x10")
    assert_one_line_error(p, "no such file", "no/such/model.py")


def test_missing_class():
    p = graphc_cmd("inspect", f"{MODELS}:Nope", "--input", "8x10")
    assert_one_line_error(p, "no class 'Nope'", "SimpleNet")


@pytest.mark.parametrize("shape", ["8xa", "8x0", "x10", "8x10:f16", ""])
def test_bad_shape_string(shape):
    p = graphc_cmd("inspect", SIMPLE, "--input", shape)
    assert_one_line_error(p, repr(shape), code=2)


def test_model_that_fails_to_trace():
    p = graphc_cmd("inspect", f"{MODELS}:DataDependent", "--input", "8x10")
    line = assert_one_line_error(p, "tracing DataDependent failed", "data-dependent")
    assert "simple_net.py:" in line  # says where in the user's code


def test_shapes_that_do_not_fit_the_model():
    p = graphc_cmd("inspect", SIMPLE, "--input", "8x11")
    assert_one_line_error(p, "tracing SimpleNet failed", "f32[8,11]")


def test_model_that_needs_arguments_and_unknown_stage():
    assert_one_line_error(graphc_cmd("inspect", f"{MODELS}:NeedsArguments", "--input", "8x10"), "no arguments")
    assert_one_line_error(graphc_cmd("inspect", SIMPLE, "--input", "8x10", "--stage", "nope"), "'nope'", "traced")


def test_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import graphc.nn as nn\nraise RuntimeError('boom')\n")
    assert_one_line_error(graphc_cmd("inspect", f"{bad}:Net", "--input", "8x10"), "cannot import", "boom")


# ------------------------------------------------------------------ dump


def test_dump_writes_stages_and_index(tmp_path, cache_dir):
    out = tmp_path / "dumps"
    p = graphc_cmd("dump", SIMPLE, "--input", "8x10", "-o", out)
    assert p.returncode == 0, p.stderr
    assert "index.md" in p.stdout
    names = sorted(os.listdir(out))
    assert "index.md" in names and "00_traced.txt" in names and "00_traced.dot" in names
    txt = [n for n in names if n.endswith(".txt")]
    assert len(txt) >= 3 and txt == sorted(txt)
    if shutil.which("dot"):
        svgs = [n for n in names if n.endswith(".svg")]
        assert len(svgs) == len(txt)
        ET.parse(out / svgs[-1])
        assert "linear_relu" in (out / svgs[-1]).read_text()
    else:
        assert "apt-get install graphviz" in p.stderr


# ------------------------------------------------------------------ training (once the compiler exists)


@needs_compiler
def test_inspect_train_step_cross_entropy_adam(cache_dir):
    p = graphc_cmd("inspect", f"{MODELS}:Classifier", "--input", "16x10", "--train", "--loss", "cross_entropy",
                   "--optim", "adam")
    assert p.returncode == 0, p.stderr
    assert "i64[16]" in p.stdout and "cross_entropy" in p.stdout and "adam" in p.stdout


# ------------------------------------------------------------------ demo


def test_demo_says_clearly_when_the_sample_is_missing(monkeypatch, capsys):
    def missing():
        raise ModuleNotFoundError("No module named 'graphc.samples'")

    monkeypatch.setattr(cli, "demo_module", missing)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphc: error: the demo sample is missing") and "graphc.samples.simple_net" in err


def test_demo_passes_arguments_to_the_sample(monkeypatch, capsys):
    import types

    sample = types.SimpleNamespace(main=lambda argv=None: print("sample got", argv))
    monkeypatch.setattr(cli, "demo_module", lambda: sample)
    assert cli.main(["demo", "--epochs", "2", "--out", "x"]) == 0
    assert capsys.readouterr().out == "sample got ['--epochs', '2', '--out', 'x']\n"


def test_the_demo_is_the_checkout_sample_inside_the_package():
    assert cli.samples_dir() == REPO / "samples"
    assert os.path.samefile(cli.demo_module().__file__, REPO / "samples" / "simple_net.py")


@needs_compiler
@pytest.mark.skipif(not has("graphc.data") or not (REPO / "samples" / "simple_net.py").is_file(),
                    reason="the demo needs samples/simple_net.py and graphc.data")
def test_demo_runs(tmp_path):
    # the suite's compile cache (GRAPHC_CACHE_DIR): README's commands run `graphc demo` first, so this
    # run of the same plans loads them; that the demo trains and writes its dumps is what is tested here
    p = graphc_cmd("demo", "--epochs", "2", "--out", tmp_path / "dumps", cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "train loss" in p.stdout and (tmp_path / "dumps" / "index.md").is_file()


# ------------------------------------------------------------------ pieces


@pytest.mark.parametrize("text,want", [("64x10", ((64, 10), "f32")), ("64", ((64,), "f32")),
                                       ("64,10", ((64, 10), "f32")), ("32:i64", ((32,), "i64")),
                                       ("2X3X4", ((2, 3, 4), "f32"))])
def test_parse_shape(text, want):
    assert cli.parse_shape(text) == want


def test_one_line_keeps_the_location():
    msg = "data-dependent Python control flow: bool()\n  at /x/model.py:12\n    if y.sum() > 0:"
    assert cli.one_line(msg) == "data-dependent Python control flow: bool() (at /x/model.py:12: if y.sum() > 0:)"
