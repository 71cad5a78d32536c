"""The ten tutorial-style scripts of samples/tutorials/, each next to its PyTorch version in
samples/tutorials/torch/ (only the imports differ), run both ways and compared."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples", "tutorials")
SCRIPTS = sorted(f for f in os.listdir(ROOT) if f.startswith("t") and f.endswith(".py"))


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def body(path):
    """The script without its import lines."""
    return [line for line in open(path, encoding="utf-8").read().splitlines()
            if not line.startswith(("import ", "from "))]


def test_there_are_ten_and_only_the_imports_differ():
    assert len(SCRIPTS) == 10
    for s in SCRIPTS:
        assert body(os.path.join(ROOT, s)) == body(os.path.join(ROOT, "torch", s)), s


def close(a, b, rtol=1e-4, atol=1e-6, what=""):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_matches_torch(script, capsys):
    ours = load(os.path.join(ROOT, script), "graphc_" + script[:-3]).main()
    theirs = load(os.path.join(ROOT, "torch", script), "torch_" + script[:-3]).main()
    assert ours.keys() == theirs.keys()
    if script.startswith("t09"):  # Dropout masks come from each framework's own generator
        close(ours["before"], theirs["before"], what="eval MSE before training")
        assert ours["after"] < ours["before"] / 5 and theirs["after"] < theirs["before"] / 5
        assert 0.33 < ours["after"] / theirs["after"] < 3
        return
    for key in ours:
        a, b = ours[key], theirs[key]
        if hasattr(b, "detach"):
            b = b.detach().numpy()
        if isinstance(b, (bool, int, list)) and not isinstance(b, float):
            assert a == b, (script, key)
        else:
            close(a, b, rtol=1e-3 if key == "accuracy" else 2e-4, atol=1e-5, what=f"{script}: {key}")
