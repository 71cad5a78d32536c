"""graphc warmup: compiles library kernels through small models, leaving the user's plan cache alone."""
import os

import pytest

import graphc
from graphc.cli import main


def test_warmup_runs_a_family_and_leaves_the_plan_cache_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    took = graphc.warmup(["eager"], verbose=False)
    assert list(took) == ["eager"] and took["eager"] > 0
    assert os.environ["GRAPHC_CACHE_DIR"] == str(tmp_path)
    assert not (tmp_path / "plans").exists() or not any((tmp_path / "plans").iterdir())


def test_warmup_names_unknown_families():
    with pytest.raises(ValueError, match=r"unknown families \['resnet'\].*mlp"):
        graphc.warmup(["resnet"])


def test_cli_warmup_rejects_unknown_family(capsys):
    assert main(["warmup", "resnet"]) == 2
    assert "unknown families ['resnet']" in capsys.readouterr().err
