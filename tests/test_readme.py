"""Every Python code block in README.md runs, so the front door cannot rot."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("k", range(len(BLOCKS)))
def test_readme_block_runs(k, tmp_path):
    """In the run's compile cache (GRAPHC_CACHE_DIR, fresh in .ci/run), not a private one: a block
    checks what the code does, and a plan or kernel an earlier block compiled loads from disk
    (the cold and miss paths are tested with the cache_dir fixture, test_runtime_cache.py)."""
    r = subprocess.run([sys.executable, "-c", BLOCKS[k]], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MPLBACKEND="Agg"))
    assert r.returncode == 0, f"README block {k} failed:\n{BLOCKS[k]}\n--- stderr ---\n{r.stderr[-3000:]}"


def test_readme_names_the_two_commands():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    for cmd in ("python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[samples]' && graphc demo",
                "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[test,samples]' && python -m pytest -q"):
        assert cmd in README and cmd in ci
