"""The standard PyTorch loop, unchanged, on graphc's eager Tensors vs PyTorch eager vs compile_train_step.

    opt.zero_grad(); loss = crit(model(x), y); loss.backward(); opt.step()

Workloads S and M of bench_train_step.py (S: SimpleNet 10->20->1 with Dropout, MSE, batch 64;
M: 784->512->512->10, cross-entropy, batch 128; SGD). torch runs in a process of its own (its
BLAS thread pool would fight graphc's); graphc's eager loop and compile_train_step share one
process and alternate round by round, so their ratio sees the same machine noise. The data are
graphc Tensors (`graphc.from_numpy`, as the torch loop's `torch.from_numpy`); the same loop on
plain numpy arrays (which each call copies) is timed alongside, on the same model and plan.
Reported: median us/step over rounds, the first and second iterations of the
eager loop (the first records and interprets; the second replays the recorded module calls
and compiles the joined forward + backward + update plan), how much of an eager step is the
native plan and how much is Python (one extra round with the plan's native call timed), and
graphc.autograd's and graphc.replay's counters after the steady loop, where exactly one
compile, no recompile, and every steady step replayed (no per-op recording) are asserted.

    python benchmarks/bench_eager_loop.py [--workloads S,M] [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = {"S": 2000, "M": 15}
IMPLS = ("graphc eager loop", "graphc eager loop, numpy data", "graphc compile_train_step", "torch eager loop")
WORKERS = {"graphc": IMPLS[:3], "torch": ("torch eager loop",)}

WORKER = r"""
import json, os, sys, time
t_start = time.perf_counter()
sys.path.insert(0, {here!r}); sys.path.insert(0, os.path.join({here!r}, "..", "tests"))
from bench_train_step import WORKLOADS, make_data, torch_step, graphc_step, LR
impl, wname, steps, rounds = {impl!r}, {wname!r}, {steps}, {rounds}
w = WORKLOADS[wname]
out = {{}}
steps_of = {{}}
if impl == "graphc":
    import graphc, graphc.nn as nn
    from models import SimpleNet, mlp
    graphc.manual_seed(0)
    model = SimpleNet() if w["dropout"] else mlp(w["sizes"])
    crit = nn.MSELoss() if w["loss"] == "mse" else nn.CrossEntropyLoss()
    opt = graphc.optim.SGD(model.parameters(), lr=LR)
    def loop_on(x, y):
        def step():
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step
    data = make_data(w)
    step = loop_on(*(graphc.from_numpy(a) for a in data))  # the torch loop's torch.from_numpy, ported
    t0 = time.perf_counter(); step().item(); t1 = time.perf_counter(); step().item(); t2 = time.perf_counter()
    out["first_s"], out["second_s"], out["imports_s"] = t1 - t0, t2 - t1, t0 - t_start
    steps_of["graphc eager loop"] = step
    steps_of["graphc eager loop, numpy data"] = loop_on(*data)  # plain arrays: copied at each call
    steps_of["graphc compile_train_step"] = graphc_step(w)[0]
else:
    steps_of["torch eager loop"] = torch_step(w)
for step in steps_of.values():
    for _ in range(3):
        step()
times = {{name: [] for name in steps_of}}
if impl == "graphc":
    before = dict(graphc.autograd.stats)
for r in range(rounds):
    for name, step in steps_of.items():
        time.sleep(0.05)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        times[name].append((time.perf_counter() - t) / steps * 1e6)
out["us"] = times
if impl == "graphc":
    step = steps_of["graphc eager loop"]
    st = dict(graphc.autograd.stats)
    out["stats"] = st
    out["replay"] = dict(graphc.replay.stats)
    assert st["compiles"] == 1 and st["recompiles"] == 0, st   # one plan, no recompiles in the steady loop
    timed = st["joined_steps"] - before["joined_steps"]
    assert timed == 2 * rounds * steps and st["replayed_steps"] - before["replayed_steps"] == timed, (before, st)  # all replayed
    # the share of a step that is the native plan: one more round with its native call timed
    (exe,) = {{id(p.entry.exe): p.entry.exe for p in graphc.autograd._replays.values()}}.values()  # one plan, both data kinds
    native, spent = exe.native, [0.0]
    def timed(*a):
        t = time.perf_counter(); r = native(*a); spent[0] += time.perf_counter() - t; return r
    exe.native = timed
    t = time.perf_counter()
    for _ in range(steps):
        step()
    total = time.perf_counter() - t
    exe.native = native
    out["native_share"] = spent[0] / total
print("RESULT " + json.dumps(out))
"""


def run(impl, wname, rounds):
    """One worker process (impl: "graphc" or "torch"); {implementation: result} back."""
    code = WORKER.format(here=HERE, impl=impl, wname=wname, steps=STEPS[wname], rounds=rounds)
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{impl} on {wname} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def results_of(wname, rounds):
    out = {}
    for worker in WORKERS:
        r = run(worker, wname, rounds)
        for impl in WORKERS[worker]:
            out[impl] = {**r, "us": r["us"][impl]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="S,M")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    for wname in args.workloads.split(","):
        results = results_of(wname, args.rounds)
        med = {impl: statistics.median(r["us"]) for impl, r in results.items()}
        eager, step, torch_ = med["graphc eager loop"], med["graphc compile_train_step"], med["torch eager loop"]
        print(f"\n**{wname}**: median of {args.rounds} rounds of {STEPS[wname]} steps (graphc's two alternating in one "
              "process, torch in another)\n")
        print("| implementation | median us/step | torch eager / this | this / compile_train_step |")
        print("|---|---:|---:|---:|")
        for impl in IMPLS:
            print(f"| {impl} | {med[impl]:,.1f} | {torch_ / med[impl]:.2f}x | {med[impl] / step:.2f}x |")
        r = results["graphc eager loop"]
        print(f"\n- eager loop: first iteration (record + interpret) {r['first_s'] * 1e3:.1f} ms, second (replay, compile the "
              f"joined plan or load it from the disk cache) {r['second_s'] * 1e3:.1f} ms, imports {r['imports_s']:.2f} s")
        share = r["native_share"]
        print(f"- eager step: native plan {share * 100:.0f}% ({eager * share:,.1f} us), Python {(1 - share) * 100:.0f}% "
              f"({eager * (1 - share):,.1f} us: zero_grad, two replayed module calls, backward, step)")
        print(f"- with numpy arrays as data (copied at each call, as the recording must read them as they are then): "
              f"{med['graphc eager loop, numpy data']:,.1f} us, {med['graphc eager loop, numpy data'] / step:.2f}x compile_train_step")
        print(f"- graphc.autograd counters after the steady loop: {r['stats']}; graphc.replay: {r['replay']} "
              "(asserted: 1 compile, 0 recompiles, every timed step joined and replayed)")
        if wname == "S":
            print(f"- targets: >= 20x torch eager (here {torch_ / eager:.1f}x), <= 2x compile_train_step "
                  f"(here {eager / step:.2f}x)")
        else:
            print(f"- target: <= 1.1x compile_train_step (here {eager / step:.2f}x)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
