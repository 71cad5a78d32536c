"""The environment a compile-time measurement runs in: graphc as a user has it after install.

pip byte-compiles an installed package, so a user's process imports graphc, numba and numpy
from .pyc files. A shell with PYTHONDONTWRITEBYTECODE=1 (this project's CI image sets it)
would instead recompile every module from source in every measured process and charge that
to graphc's compile time, so the measured processes run without it, after one byte-compiling
pass that is not timed. The caches (graphc's plans and kernels, numba's library kernels) go
where the caller says: that is what "cold", "new plan", "after warmup" and "cached" vary.
"""
from __future__ import annotations

import compileall
import importlib.util
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_env(graphc_cache: str, numba_cache: str) -> dict:
    """os.environ for a measured subprocess: the given caches, bytecode written and used."""
    byte_compile()
    env = dict(os.environ, GRAPHC_CACHE_DIR=graphc_cache, NUMBA_CACHE_DIR=numba_cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


_done = False


def byte_compile() -> None:
    """Write the .pyc files of graphc and its dependencies once (as pip install does)."""
    global _done
    if _done:
        return
    dirs = [os.path.join(ROOT, d) for d in ("graphc", "passes", "runtime")]
    for name in ("numpy", "numba", "llvmlite", "scipy", "networkx"):  # what `import graphc` loads
        spec = importlib.util.find_spec(name)
        dirs += list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        compileall.compile_dir(d, quiet=2, workers=0)
    _done = True


def warmed_numba_cache() -> str:
    """A numba cache folder after `graphc warmup` (run once per benchmark process, untimed; a
    second run finds everything cached and takes seconds): the state of a user's install."""
    global _warm
    d = os.path.join(tempfile.gettempdir(), f"graphc-bench-warm-numba-{os.getuid()}")
    if _warm is None:
        env = compile_env(tempfile.mkdtemp(prefix="graphc-bench-warm-plans-"), d)
        subprocess.run([sys.executable, "-m", "graphc", "warmup"], env=env, check=True, capture_output=True)
        _warm = d
    return d


_warm = None
