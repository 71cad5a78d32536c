"""`pip install .` (not only -e) ships graphc.passes and graphc.runtime inside the graphc package,
and no generic top-level `passes` or `runtime` module."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_install_maps_passes_and_runtime_into_graphc(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), ROOT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p for p in os.listdir(target) if not p.endswith((".dist-info", ".egg-info")) and p != "bin") == ["graphc"]
    code = ("import graphc, graphc.passes, graphc.runtime, graphc.inspect, graphc.nn, graphc.interop.torch_ops; "
            "print(graphc.passes.__file__); print(graphc.runtime.__file__)")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in out.stdout.split():
        assert line.startswith(str(target / "graphc")), line
