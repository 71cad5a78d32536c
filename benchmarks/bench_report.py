"""How big and how fast the HTML compile report is: SimpleNet's train step and deep MLPs.

    python benchmarks/bench_report.py [--layers 300 800]

For each model: nodes in the final plan, seconds to build the page, its size, and, when
Chromium is installed, the milliseconds from navigation start until the page's own script has
run at the end of the body (parsing of the whole page included; `data-init-ms`), median of 3
loads. Deep models compile with mode="interpret": the report is the same and numba is not timed.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples"))

import graphc  # noqa: E402
import graphc.nn as nn  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--dump-dom"]


def simple_net():
    from simple_net import SimpleNet

    graphc.manual_seed(0)
    m = SimpleNet()
    x, y = np.zeros((64, 10), np.float32), np.zeros((64, 1), np.float32)
    return "SimpleNet train step", graphc.compile_train_step(m, nn.MSELoss(), graphc.optim.SGD(m.parameters(), lr=0.1), x, y)


def deep_mlp(layers: int):
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(8, 8), nn.ReLU()]
    m = nn.Sequential(*mods, nn.Linear(8, 1))
    x, y = np.zeros((4, 8), np.float32), np.zeros((4, 1), np.float32)
    step = graphc.compile_train_step(m, nn.MSELoss(), graphc.optim.SGD(m.parameters(), lr=0.1), x, y, mode="interpret")
    return f"MLP {layers} layers train step", step


def load_ms(path: str, runs: int = 3) -> float | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", "file://" + path], capture_output=True,
                                 text=True, timeout=600).stdout
        m = re.search(r'data-init-ms="(\d+)"', out)
        if m:
            times.append(float(m.group(1)))
    return statistics.median(times) if times else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="*", default=[300, 800])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, step in [simple_net()] + [deep_mlp(n) for n in args.layers]:
            path = os.path.join(d, "r.html")
            t0 = time.perf_counter()
            graphc.report(step, path)
            build = time.perf_counter() - t0
            ms = load_ms(path)
            rows.append([name, len(step.graph(-1).nodes), f"{build:.2f}", f"{os.path.getsize(path) / 1024:,.0f}",
                         "-" if ms is None else f"{ms:,.0f}"])
    head = ["model", "plan nodes", "build s", "page KiB", "browser: script done ms"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


if __name__ == "__main__":
    main()
