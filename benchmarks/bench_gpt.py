"""Workload T (issue 11): one full train step of the sample's GPT, side by side.

    python benchmarks/bench_gpt.py [--steps 20] [--skip-torch-compile] [--shapes T,T2]

GPT of samples/char_gpt.py (same model code for both: gpt_classes(torch) / gpt_classes(graphc)):
T: vocabulary 96, context 32, width 64, 4 heads, 2 layers, batch 32, float32 (issue 11's
workload); T2: the same model at context 64, width 128, 4 layers, batch 16 (a shape nothing was
tuned for, to check that what helps T holds elsewhere). One step = forward,
loss, backward, clip_grad_norm_(1.0), AdamW.step(), zero_grad. Prints median step times of
PyTorch eager, torch.compile (and its compile time) and graphc (with its kernel count and the
plans' peak bytes), and graphc's compile times in fresh processes: cold (no caches), new plan
(library kernels cached) and cached (plans loaded from disk). Each implementation runs in its own
process, one after the other. `--compile-only` prints only graphc's compile times.

graphc's step is `compile_train_step(model, None, AdamW, x, y, clip_grad_norm=1.0)`: the model's
own loss, backward, clipping and AdamW in one plan (issue 11 allows that form). The row
"graphc compile()" is the other port, `graphc.compile` + `cm.backward()` with the eager
clip_grad_norm_ and AdamW, for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compile_env import compile_env, warmed_numba_cache  # noqa: E402  (graphc as installed: .pyc written)
SAMPLES = os.path.join(os.path.dirname(HERE), "samples")

WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    sys.path.insert(0, {samples!r})
    from char_gpt import GPTConfig, gpt_classes, init_weights
    impl, steps, (ctx, width, layers, batch) = {impl!r}, {steps}, {shape!r}
    t_start = time.perf_counter()
    cfg = GPTConfig(block_size=ctx, vocab_size=96, n_layer=layers, n_head=4, n_embd=width)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 96, (batch, ctx)).astype(np.int64)
    y = rng.integers(0, 96, (batch, ctx)).astype(np.int64)
    info = {{}}
    if impl.startswith("graphc"):
        import graphc
        from graphc.passes.kernels import kernel_count
        model = gpt_classes(graphc)(cfg)
        init_weights(model)
        opt = graphc.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        t0 = time.perf_counter()
        if impl == "graphc":  # one plan: forward, loss, backward, clipping, AdamW
            ts = graphc.compile_train_step(model, None, opt, x, y, clip_grad_norm=1.0)
            def step():
                return ts(x, y)
        else:
            cm = graphc.compile(model, x, y)
            def step():
                loss = cm(x, y)
                cm.backward()
                graphc.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
                return loss
        step()
        info["compile_s"] = time.perf_counter() - t0
        info["first_step_s"] = time.perf_counter() - t_start
        import resource
        ru = resource.getrusage(resource.RUSAGE_SELF)
        info["cpu_s"] = ru.ru_utime + ru.ru_stime  # CPU seconds of the process to its first step
        if impl == "graphc":
            info["kernels"] = {{"train step": kernel_count(ts._spec.plans.train_step)}}
            info["peak_bytes"] = {{"train step": ts._spec.exe.memory_plan.peak_bytes}}
        else:
            spec = cm._spec
            info["kernels"] = {{k: kernel_count(g) for k, g in (("forward", spec.plans.forward), ("backward", spec.plans.backward))}}
            info["peak_bytes"] = {{k: e.memory_plan.peak_bytes for k, e in (("forward", spec.fwd), ("backward", spec.bwd))}}
    else:
        import torch
        torch.manual_seed(0)
        model = gpt_classes(torch)(cfg)
        init_weights(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        tx, ty = torch.tensor(x), torch.tensor(y)
        fwd = model
        t0 = time.perf_counter()
        if impl == "torch.compile":
            fwd = torch.compile(model)
        def step():
            loss = fwd(tx, ty)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            return loss
        step()
        info["compile_s"] = time.perf_counter() - t0
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    info["median_s"] = float(np.median(times))
    info["min_s"] = float(np.min(times))
    print(json.dumps(info))
""")


SHAPES = {"T": (32, 64, 2, 32), "T2": (64, 128, 4, 16)}  # context, width, layers, batch


def run(impl: str, steps: int, env=None, shape: str = "T") -> dict:
    r = subprocess.run([sys.executable, "-c", WORKER.format(samples=SAMPLES, impl=impl, steps=steps, shape=SHAPES[shape])],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-torch-compile", action="store_true")
    ap.add_argument("--compile-only", action="store_true", help="only graphc's cold / new plan / cached compile times")
    ap.add_argument("--shapes", default="T,T2", help="GPT shapes to time, of " + ", ".join(SHAPES) + " (default T,T2)")
    args = ap.parse_args(argv)
    shapes = [x for x in args.shapes.split(",") if x]
    impls = ["torch eager"] + ([] if args.skip_torch_compile else ["torch.compile"]) + ["graphc", "graphc compile()"]
    if args.compile_only:
        impls, shapes = ["graphc"], ["T"]
    starts = {}
    for shape in shapes:
        results = {}
        for impl in impls:
            if impl == "graphc" and shape == "T":  # each in a fresh process: cold (no caches), new plan, cached
                with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as d2, tempfile.TemporaryDirectory() as k:
                    env = compile_env(d, k)
                    results[impl] = starts["cold"] = run(impl, 1 if args.compile_only else args.steps, env)
                    starts["new plan"] = run(impl, 1, dict(env, GRAPHC_CACHE_DIR=d2))
                    starts["after warmup"] = run(impl, 1, compile_env(tempfile.mkdtemp(), warmed_numba_cache()))
                    starts["cached"] = run(impl, 1, env)
            else:
                results[impl] = run(impl, args.steps, shape=shape)
        if args.compile_only:
            return print_starts(starts)
        print_results(shape, results, args.steps)
    if starts:
        print_starts(starts)
    print("targets (T): graphc <= 0.6x torch eager, faster than torch.compile, cold compile <= 4 s")


def print_results(shape: str, results: dict, steps: int) -> None:
    ctx, width, layers, batch = SHAPES[shape]
    eager = results["torch eager"].get("median_s")
    print(f"workload {shape}: GPT vocab 96, ctx {ctx}, width {width}, 4 heads, {layers} layers, batch {batch}, f32, "
          f"AdamW + clip, {steps} timed steps; {os.cpu_count()} CPUs")
    print(f"{'implementation':<16}{'median step':>14}{'x torch eager':>15}{'compile':>11}")
    for impl, r in results.items():
        if "error" in r:
            print(f"{impl:<16} failed: {r['error']}")
            continue
        ratio = r["median_s"] / eager if eager else float("nan")
        comp = f"{r['compile_s']:.1f} s" if impl != "torch eager" else "-"
        print(f"{impl:<16}{1e3 * r['median_s']:>11.2f} ms{ratio:>14.2f}x{comp:>11}")
    for impl in ("graphc", "graphc compile()"):
        r = results.get(impl, {})
        if "kernels" in r:
            print(f"{impl} kernel calls (plan nodes but constants and view reshapes): "
                  + ", ".join(f"{k} {v}" for k, v in r["kernels"].items())
                  + "; peak bytes: " + ", ".join(f"{k} {v}" for k, v in r["peak_bytes"].items()))


def print_starts(starts: dict) -> None:
    print("graphc, process start to first step (fresh processes): " + "; ".join(
        f"{label} {r['first_step_s']:.2f} s, CPU {r.get('cpu_s', float('nan')):.2f} s (compile or load {r['compile_s']:.2f} s)"
        if "compile_s" in r
        else f"{label} failed: {r.get('error')}" for label, r in starts.items()))
    print("  cold: no caches at all; new plan: graphc's library kernels in numba's cache (any earlier use), "
          "this model's plans new; after warmup: numba's cache as `graphc warmup` left it (an install), "
          "this model's plans new; cached: the plans loaded from the disk cache")


if __name__ == "__main__":
    main()
