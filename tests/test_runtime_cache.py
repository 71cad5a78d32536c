"""The on-disk plan cache: a second process loads instead of compiling; corrupt or stale entries are rebuilt."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from graphc.ir import parse
from graphc.runtime import Executable, cache

PLAN = """graph cached {
  input %x: f32[4,3]
  param %w: f32[2,3]
  param %b: f32[2]
  %0: f32[4,2] = linear_relu(%x, %w, %b)
  %1: f32[] = mean(%0) {dims=[0,1]}
  return %1 as loss, %0
}"""
W = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
B = np.array([0.5, -0.5], np.float32)
X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
WANT = np.maximum(X @ W.T + B, 0)


def build(text=PLAN, want=WANT):
    cache._loaded.clear()  # forget plans loaded in this process: go to the disk
    exe = Executable(parse(text), bound={"w": W.copy(), "b": B.copy()})
    loss = exe(X)
    np.testing.assert_allclose(exe.outputs[1], want, rtol=1e-6)
    assert loss == pytest.approx(want.mean(), rel=1e-6)
    return exe


def entry_files(exe):
    d = exe.compile_info.path
    return {os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs}


def test_compile_then_load(cache_dir):
    first = build()
    assert first.compile_info.status == "compiled" and not first.compile_info.from_cache
    assert first.compile_info.path.startswith(str(cache_dir))
    files = entry_files(first)
    assert {"plan.py", "manifest.json"} <= files and any(f.endswith(".nbi") for f in files), files
    assert not any(f.endswith(".pyc") for f in files)
    manifest = json.loads(open(os.path.join(first.compile_info.path, "manifest.json")).read())
    assert manifest["key"] == first.compile_info.key and "plan.py" in manifest["files"]

    again = build()
    assert again.compile_info.status == "cached", again.compile_info
    assert again.compile_info.path == first.compile_info.path
    # within a process a loaded plan is reused outright
    assert Executable(parse(PLAN), bound={"w": W, "b": B}).compile_info.status == "reused"


def test_second_process_loads_from_cache(cache_dir):
    first = build()
    code = textwrap.dedent(f"""
        import numpy as np
        from graphc.ir import parse
        from graphc.runtime import Executable
        exe = Executable(parse({PLAN!r}), bound={{"w": np.ones((2, 3), np.float32), "b": np.zeros(2, np.float32)}})
        exe(np.ones((4, 3), np.float32))
        assert abs(float(exe.outputs[1][0, 0]) - 3.0) < 1e-6
        print(exe.compile_info.status, sum(exe.module.plan.stats.cache_misses.values()))
        print(exe.compile_info.key, exe.compile_info.reason)
    """)
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    status, key_why = r.stdout.split("\n", 1)
    assert status.split() == ["cached", "0"], f"this process's key {first.compile_info.key}; the second's: {key_why}"


@pytest.mark.parametrize("damage", ["numba data", "numba index", "manifest", "plan source", "missing file"])
def test_damaged_entry_is_rebuilt(cache_dir, damage):
    first = build()
    d = first.compile_info.path
    files = sorted(entry_files(first))
    if damage == "numba data":
        path = os.path.join(d, next(f for f in files if f.endswith(".nbc")))
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif damage == "numba index":
        path = os.path.join(d, next(f for f in files if f.endswith(".nbi")))
        open(path, "wb").write(b"garbage")
    elif damage == "manifest":
        open(os.path.join(d, "manifest.json"), "w").write("{not json")
    elif damage == "plan source":  # someone edited the generated code: never run it
        path = os.path.join(d, "plan.py")
        open(path, "w").write(open(path).read().replace("True, True)", "True, False)"))
    else:
        os.remove(os.path.join(d, next(f for f in files if f.endswith(".nbc"))))
    again = build()  # results checked inside: the old (damaged) code did not run
    info = again.compile_info
    assert info.status == "compiled" and info.reason.startswith("rebuilt"), info
    assert build().compile_info.status == "cached"  # and the rebuilt entry is good


def test_changed_plan_gets_another_entry(cache_dir):
    a = build()
    b = build(PLAN.replace("linear_relu", "linear"), X @ W.T + B)  # different code, same shapes
    assert b.compile_info.status == "compiled" and a.compile_info.key != b.compile_info.key
    assert a.compile_info.path != b.compile_info.path


def test_key_covers_runtime_sources_and_versions():
    src = "some plan source"
    assert cache.plan_key(src) == cache.plan_key(src)
    assert cache.plan_key(src) != cache.plan_key(src + " ")
    v = cache._versions()
    assert {"numba", "numpy", "python", "format"} <= set(v)


def test_cache_dir_follows_the_environment(cache_dir, monkeypatch):
    assert cache.cache_root() == cache_dir
    monkeypatch.delenv("GRAPHC_CACHE_DIR")
    assert str(cache.cache_root()).endswith(os.path.join(".cache", "graphc"))
