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


def test_demo_runs_from_a_built_wheel_in_a_fresh_venv(tmp_path, cache_dir):
    """`graphc demo` after a normal install: build the wheel, install it (no deps) into a new venv
    that borrows this environment's numpy/numba/... through a .pth file, and run the console
    script from a folder that is not the checkout."""
    import importlib

    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                        ROOT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = dist.glob("graphc-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRAPHC_CHECK")}
    env.update(GRAPHC_CACHE_DIR=str(cache_dir), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # then the dependencies, borrowed (after the install, so pip never sees another graphc there)
    deps = sorted({os.path.dirname(os.path.dirname(importlib.import_module(m).__file__))
                   for m in ("numpy", "numba", "llvmlite", "networkx", "scipy")})
    with open(os.path.join(site, "zz_graphc_test_deps.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    graphc_cmd = venv / ("Scripts" if os.name == "nt" else "bin") / "graphc"
    r = subprocess.run([str(graphc_cmd), "demo", "--epochs", "2", "--out", "dumps"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "train loss" in r.stdout and (work / "dumps" / "index.md").is_file()
    assert (work / "dumps" / "metrics.csv").read_text().startswith("epoch,step,train_loss,lr")
    where = subprocess.run([str(py), "-c", "import graphc.samples.simple_net as m; print(m.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True).stdout.strip()
    assert where.startswith(site), where  # the installed copy, not the checkout's
