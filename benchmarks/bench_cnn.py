"""CNN train-step benchmark: graphc vs PyTorch eager vs torch.compile, same model code for all.

One step = forward + cross-entropy + backward + SGD(momentum 0.9) update, float32, batch 64.
  C: LeNet-5 (issue 10's workload C) on 1x28x28 inputs
  B: a small CNN with BatchNorm on 3x32x32 inputs: [conv3x3(no bias)-BN-ReLU-maxpool2] x 2,
     then conv3x3-BN-ReLU, global average pool, Linear(32, 10)
Each implementation runs in its own worker process; they take turns round-robin so they share
the machine's noise, and we report medians and ratios from one run. Also printed: graphc's
kernel count and peak bytes (the train-step plan), torch.compile's compile time (its first
step), graphc's cold compile (fresh process, empty plan and kernel caches) and cached start.
`--im2col-vs-direct` times conv2d's three lowerings (im2col+BLAS, direct loops, wide im2col+BLAS) on every conv layer of C and B.

    python benchmarks/bench_cnn.py [--workloads C,B] [--rounds 11] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compile_env import compile_env, warmed_numba_cache  # noqa: E402  (graphc as installed: .pyc written)
BATCH = 64


def lenet(nn):
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def bn_cnn(nn):
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


WORKLOADS = {"C": (lenet, (1, 28, 28)), "B": (bn_cnn, (3, 32, 32))}


def make_data(workload, seed=0):
    rng = np.random.default_rng(seed)
    shape = WORKLOADS[workload][1]
    return rng.standard_normal((BATCH, *shape)).astype(np.float32), rng.integers(0, 10, BATCH).astype(np.int64)


# ------------------------------------------------------------------ implementations (run inside workers)


def graphc_step(workload):
    import graphc
    import graphc.nn as nn
    from graphc.inspect.html_code import plan_calls

    graphc.manual_seed(0)
    model = WORKLOADS[workload][0](nn)
    opt = graphc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = make_data(workload)
    step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y)
    exe = next(iter(step.executables.values()))
    calls = sum(len(c.kernels) for c in plan_calls(exe.source.text))  # every kernel call of the plan
    split = [n for n in exe.graph.nodes if n.attr.get("threads", 1) > 1]
    info = {"kernels": calls, "nodes": len(exe.graph.nodes), "peak_bytes": exe.memory_plan.peak_bytes,
            "threads": graphc.get_num_threads(), "split": len(split)}
    return (lambda: step(x, y)), info


def torch_step(workload, compiled=False):
    import torch

    torch.manual_seed(0)
    model = WORKLOADS[workload][0](torch.nn)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = (torch.from_numpy(a) for a in make_data(workload))
    fwd = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    info = {}
    if compiled:
        t0 = time.perf_counter()
        step()
        info["compile_s"] = time.perf_counter() - t0
    return step, info


IMPLS = {"graphc": graphc_step, "graphc 1 thread": graphc_step, "torch eager": torch_step,
         "torch.compile": lambda w: torch_step(w, True)}
# each worker's environment: "graphc 1 thread" splits no kernel (passes/parallel.py), the gain is the difference
WORKER_ENV = {"graphc 1 thread": {"GRAPHC_THREADS": "1"}}


def worker(impl: str, workload: str):
    """Build the step, say ready (with info), then answer `run N` with the median seconds per step."""
    step, info = IMPLS[impl](workload)
    for _ in range(3):
        step()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
        print(json.dumps(statistics.median(ts)), flush=True)


# ------------------------------------------------------------------ the driver


def run_workload(workload, rounds, steps):
    procs, infos = {}, {}
    for impl in IMPLS:
        p = subprocess.Popen([sys.executable, __file__, "--worker", impl, workload], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=HERE, env={**os.environ, **WORKER_ENV.get(impl, {})})
        infos[impl] = json.loads(p.stdout.readline())
        procs[impl] = p
    times = {impl: [] for impl in IMPLS}
    for _ in range(rounds):
        for impl, p in procs.items():
            p.stdin.write(f"run {steps}\n")
            p.stdin.flush()
            line = p.stdout.readline()
            if not line:  # the worker died: say which, and how
                raise RuntimeError(f"bench_cnn: the {impl!r} worker ended (exit status {p.wait()})")
            times[impl].append(json.loads(line))
            time.sleep(0.05)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    for impl, ts in times.items():
        infos[impl]["best"] = min(ts)
    return {impl: statistics.median(ts) for impl, ts in times.items()}, infos


def compile_times(workload) -> dict:
    code = textwrap.dedent(f"""
        import time, json, sys
        t0 = time.perf_counter()
        sys.path.insert(0, {HERE!r})
        from bench_cnn import graphc_step
        fn, info = graphc_step({workload!r})
        fn()
        import resource
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({{"first_step_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime}}))
    """)
    out = {}
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as d2, tempfile.TemporaryDirectory() as kernels:
        env = compile_env(d, kernels)
        # cold: no caches at all; new plan: library kernels cached (any earlier use), plan new; cached: plan on disk
        # after warmup: numba's cache as `graphc warmup` left it (a user's install), this plan new
        for label, e in (("cold", env), ("new plan", dict(env, GRAPHC_CACHE_DIR=d2)),
                         ("after warmup", compile_env(tempfile.mkdtemp(), warmed_numba_cache())), ("cached", env)):
            r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)
            got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
            out[label] = got.get("first_step_s", float("nan"))
            out[label + " CPU"] = got.get("cpu_s", float("nan"))
    return out


# every conv layer of the two workloads: (name, input shape, weight shape, padding, input_grad)
CONV_SHAPES = (("C conv1 1->6 5x5 pad 2, 28x28", (BATCH, 1, 28, 28), (6, 1, 5, 5), 2, False),
               ("C conv2 6->16 5x5, 14x14", (BATCH, 6, 14, 14), (16, 6, 5, 5), 0, True),
               ("B conv1 3->16 3x3 pad 1, 32x32", (BATCH, 3, 32, 32), (16, 3, 3, 3), 1, False),
               ("B conv2 16->32 3x3 pad 1, 16x16", (BATCH, 16, 16, 16), (32, 16, 3, 3), 1, True),
               ("B conv3 32->32 3x3 pad 1, 8x8", (BATCH, 32, 8, 8), (32, 32, 3, 3), 1, True))


def bound_kernel(op, inputs, attrs):
    """op's native kernel bound to preallocated outputs and scratch: a no-argument callable (as
    runtime.kernels.run_kernel, minus its per-call allocation)."""
    from graphc.ir import GraphBuilder, TensorType, get_op
    from graphc.runtime.kernels import KERNELS, Operand, Site, calls

    b = GraphBuilder(op)
    names = [b.add_input(f"in{k}", TensorType.of(x), "input") for k, x in enumerate(inputs)]
    b.emit(op, names, get_op(op).normalize_attrs(attrs))
    node = b.nodes[-1]
    outs = [np.zeros(t.shape, t.np_dtype) for t in node.types]
    scratch_of = KERNELS[op].scratch
    scratch = [np.zeros(t.shape, t.np_dtype) for t in (scratch_of(node, b.types) if scratch_of else [])]

    def operand(x):
        return Operand(TensorType.of(x), x, x.reshape(-1), None)

    site = Site(node, [operand(x) for x in inputs], [operand(x) for x in outs], [operand(x) for x in scratch])
    fns = calls(KERNELS[op].call(site))

    def run():
        for fn, args in fns:
            fn(*args)
    return run, outs


def im2col_vs_direct(reps=40):
    """conv2d forward and backward kernels on every conv layer of C and B: im2col + BLAS, the
    direct wide-row loop nests (runtime/conv_direct.py) and wide im2col + BLAS
    (runtime/conv_wide.py); min and median us of process CPU time per call (load distorts it less
    than wall time; run with OPENBLAS_NUM_THREADS=1), interleaved so all see the same machine
    noise. passes/conv.py's rule comes from this table."""
    from graphc.passes.conv import CHUNK_BYTES, WIDE_CHUNK_BYTES

    rng = np.random.default_rng(0)
    rows = []
    for name, xs, ws, pad, input_grad in CONV_SHAPES:
        x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (xs, ws, ws[:1]))
        gy = None
        fns, res = {}, {}
        oh = xs[2] + 2 * pad - ws[2] + 1
        chunk = max(1, CHUNK_BYTES // (xs[1] * ws[2] * ws[3] * oh * oh * 4))  # as passes/conv.py chooses
        wp = oh + ws[3] - 1
        wide = max(1, WIDE_CHUNK_BYTES // (xs[1] * ws[2] * ws[3] * ((oh - 1) * wp + oh) * 4))
        chunks = {"im2col": chunk if chunk < BATCH else 0, "direct": 0, "wide": wide if wide < BATCH else 0}
        for algo in ("im2col", "direct", "wide"):
            attrs = {"padding": (pad,) * 4, "algo": algo, "chunk": chunks[algo]}
            fwd, (y,) = bound_kernel("conv2d", [x, w, b], attrs)
            gy = rng.standard_normal(y.shape).astype(np.float32) if gy is None else gy
            bwd, _ = bound_kernel("conv2d_backward", [gy, x, w], {**attrs, "input_grad": input_grad})
            fns[algo] = (fwd, bwd)
            fwd(), bwd()
        for part in (0, 1):
            ts = {a: [] for a in fns}
            for _ in range(reps):
                for a, f in fns.items():
                    t0 = time.process_time()
                    f[part]()
                    ts[a].append(time.process_time() - t0)
            for a in fns:
                res[("forward", "backward")[part] + " " + a] = (min(ts[a]), statistics.median(ts[a]))
        rows.append((name, res))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="C,B")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-only", action="store_true", help="only graphc's cold / new plan / cached times")
    ap.add_argument("--im2col-vs-direct", action="store_true")
    ap.add_argument("--worker", nargs=2)
    ap.add_argument("--impls", default=None, help="comma-separated subset of: " + ", ".join(IMPLS))
    a = ap.parse_args(argv)
    if a.impls:
        for k in [k for k in IMPLS if k not in a.impls.split(",")]:
            del IMPLS[k]
    if a.worker:
        return worker(*a.worker)
    if a.im2col_vs_direct:
        print("conv2d kernels, batch 64, float32: min / median us of CPU time per call")
        cols = [f"{p} {a}" for p in ("forward", "backward") for a in ("im2col", "direct", "wide")]
        print("| layer | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for name, res in im2col_vs_direct():
            cells = [f"{res[k][0] * 1e6:,.0f} / {res[k][1] * 1e6:,.0f}" for k in cols]
            print(f"| {name} | " + " | ".join(cells) + " |")
        return
    for w in a.workloads.split(","):
        if a.compile_only:
            ct = compile_times(w)
            print(f"{w}: graphc process start to first step: {ct['cold']:.2f} s cold (no caches), "
                  f"{ct['new plan']:.2f} s new plan (library kernels cached), {ct['after warmup']:.2f} s after "
                  f"`graphc warmup`, {ct['cached']:.2f} s cached")
            print(f"{w}: the same, CPU seconds of each process: " + ", ".join(
                f"{label} {ct[label + ' CPU']:.2f} s" for label in ("cold", "new plan", "after warmup", "cached")))
            continue
        med, infos = run_workload(w, a.rounds, a.steps)
        eager = med.get("torch eager", next(iter(med.values())))
        print(f"\n**{w}**: {WORKLOADS[w][0].__name__}, batch {BATCH}, float32, SGD momentum; median of {a.rounds} rounds x {a.steps} steps\n")
        best = infos.get("torch eager", {}).get("best")
        print("| implementation | median ms/step | this / torch eager | best round ms/step | best / torch's best |")
        print("|---|---:|---:|---:|---:|")
        for impl, t in med.items():
            b = infos[impl]["best"]
            print(f"| {impl} | {t * 1e3:,.2f} | {t / eager:.2f}x | {b * 1e3:,.2f} | "
                  + (f"{b / best:.2f}x |" if best else "- |"))
        for impl in ("graphc", "graphc 1 thread"):
            if impl in infos:
                g = infos[impl]
                print(f"\n- {impl} train-step plan: {g['nodes']} nodes, {g['kernels']} kernel calls, peak {g['peak_bytes']:,} B, "
                      f"{g['split']} kernels split over up to {g['threads']} threads")
        if "torch.compile" in infos:
            print(f"- torch.compile: first step (compile) {infos['torch.compile']['compile_s']:.1f} s")
        if not a.no_compile:
            ct = compile_times(w)
            print(f"- graphc: process start to first step {ct['cold']:.2f} s cold (no caches), {ct['new plan']:.2f} s new "
                  f"plan (library kernels cached), {ct['after warmup']:.2f} s after `graphc warmup`, "
                  f"{ct['cached']:.2f} s cached (plan loaded from disk)")


if __name__ == "__main__":
    main()
