"""Steady-state train-step benchmark: graphc vs numpy eager vs PyTorch eager (and JAX jit if installed).

One step = forward + loss + backward + SGD update, float32. Workloads (issue 4):
  S: SimpleNet 10->20->ReLU->Dropout(0.5)->1, MSE, batch 64
  M: 784->512->ReLU->512->ReLU->10, cross-entropy, batch 128
  L: 784->2048->ReLU->2048->ReLU->10, cross-entropy, batch 512
  A-F (issue 9): other small MLPs (several hidden layers, several outputs, both losses, dropout
  after each hidden layer or none, batch 32-128), so the fast path is not tuned to S alone;
  E and F were added after the small-GEMM cost rule was fitted, as shapes it was not tuned for
Also: "GEMMs alone" (the step's GEMMs through the same BLAS graphc uses; for M and L also
through numpy's OpenBLAS and torch's MKL), "GEMM FLOPs at FMA peak" (the step's GEMM FLOPs as
independent FMAs: the floor no implementation can beat; benchmarks/roofline.py), the roofline
lines (GEMM FLOPs, each implementation's rate, the time issue 9's M/L targets ask against those
floors), graphc's cold and cached compile times (fresh processes), and the plan's peak bytes.

The machine is noisy in bursts, so implementations are interleaved round-robin and we report
medians and ratios from the same run.

    python benchmarks/bench_train_step.py [--workloads S,M,L] [--rounds 15] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
WORKLOADS = {
    "S": dict(sizes=(10, 20, 1), batch=64, loss="mse", dropout=0.5),
    "M": dict(sizes=(784, 512, 512, 10), batch=128, loss="cross_entropy", dropout=0.0),
    "L": dict(sizes=(784, 2048, 2048, 10), batch=512, loss="cross_entropy", dropout=0.0),
    "A": dict(sizes=(32, 64, 64, 4), batch=32, loss="cross_entropy", dropout=0.2),
    "B": dict(sizes=(16, 32, 32, 32, 1), batch=128, loss="mse", dropout=0.0),
    "C": dict(sizes=(20, 48, 10), batch=64, loss="cross_entropy", dropout=0.5),
    "D": dict(sizes=(8, 64, 2), batch=96, loss="mse", dropout=0.1),
    # added after the small-GEMM cost rule (passes/gemm_impl.py) was fitted, not tuned for: widths
    # that are no multiple of 16 (masked vector tails), an odd batch, a wider hidden layer
    "E": dict(sizes=(24, 40, 40, 40, 6), batch=48, loss="cross_entropy", dropout=0.3),
    "F": dict(sizes=(64, 128, 3), batch=100, loss="mse", dropout=0.0),
}
DEFAULT = "S,A,B,C,D,E,F,M,L"
LR = 0.01


def make_data(w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((w["batch"], w["sizes"][0])).astype(np.float32)
    if w["loss"] == "mse":
        y = rng.standard_normal((w["batch"], w["sizes"][-1])).astype(np.float32)
    else:
        y = rng.integers(0, w["sizes"][-1], size=w["batch"]).astype(np.int64)
    return x, y


# ------------------------------------------------------------------ implementations


def graphc_step(w):
    import graphc
    import graphc.nn as nn

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from models import SimpleNet, mlp

    graphc.manual_seed(0)
    model = SimpleNet() if w["sizes"] == (10, 20, 1) else mlp(w["sizes"], w["dropout"])
    loss_fn = nn.MSELoss() if w["loss"] == "mse" else nn.CrossEntropyLoss()
    opt = graphc.optim.SGD(model.parameters(), lr=LR)
    x, y = make_data(w)
    step = graphc.compile_train_step(model, loss_fn, opt, x, y)
    return (lambda: step(x, y)), step


def torch_step(w):
    import torch

    torch.manual_seed(0)
    layers = []
    sizes = w["sizes"]
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
            if w["dropout"]:
                layers.append(torch.nn.Dropout(w["dropout"]))
    model = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.MSELoss() if w["loss"] == "mse" else torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = (torch.from_numpy(a) for a in make_data(w))

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def numpy_step(w):
    """A hand-written numpy train step: what a careful user writes without a compiler."""
    rng = np.random.default_rng(0)
    sizes = w["sizes"]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        bound = 1 / np.sqrt(a)
        params.append([rng.uniform(-bound, bound, (b, a)).astype(np.float32), rng.uniform(-bound, bound, b).astype(np.float32)])
    x, y = make_data(w)
    p = w["dropout"]

    def step():
        acts, masks = [x], []
        h = x
        for k, (W, b) in enumerate(params):
            h = h @ W.T + b
            if k < len(params) - 1:
                h = np.maximum(h, 0)
                if p:
                    m = (rng.random(h.shape) >= p).astype(np.float32) / (1 - p)
                    masks.append(m)
                    h = h * m
                acts.append(h)
        if w["loss"] == "mse":
            d = h - y
            loss = float((d * d).mean())
            g = (2.0 / d.size) * d
        else:
            z = h - h.max(axis=1, keepdims=True)
            e = np.exp(z)
            s = e.sum(axis=1, keepdims=True)
            loss = float(-(z[np.arange(len(y)), y] - np.log(s[:, 0])).mean())
            g = e / s
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
        for k in range(len(params) - 1, -1, -1):
            W, b = params[k]
            a = acts[k]
            gW, gb = g.T @ a, g.sum(axis=0)
            if k:
                g = g @ W
                if p:
                    g = g * masks[k - 1]
                g = g * (acts[k] > 0)
            W -= LR * gW
            b -= LR * gb
        return loss

    return step


def gemm_only(w):
    """The step's GEMMs alone, through numba's np.dot (the BLAS graphc's kernels call)."""
    import numba

    @numba.njit(cache=False)
    def gemms(x, Ws, acts, gs, gWs, gxs):
        n = len(Ws)
        for k in range(n):
            np.dot(acts[k], Ws[k].T, gs[k])  # forward: h = a @ W.T  (gs used as output scratch)
        for k in range(n - 1, -1, -1):
            np.dot(gs[k].T, acts[k], gWs[k])  # dW = g.T @ a
            if k:
                np.dot(gs[k], Ws[k], gxs[k])  # dx = g @ W

    sizes, batch = w["sizes"], w["batch"]
    rng = np.random.default_rng(0)
    Ws = numba.typed.List([rng.standard_normal((b, a)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])])
    acts = numba.typed.List([rng.standard_normal((batch, a)).astype(np.float32) for a in sizes[:-1]])
    gs = numba.typed.List([np.zeros((batch, b), np.float32) for b in sizes[1:]])
    gWs = numba.typed.List([np.zeros_like(W) for W in Ws])
    gxs = numba.typed.List([np.zeros((batch, a), np.float32) for a in sizes[:-1]])
    x = acts[0]
    gemms(x, Ws, acts, gs, gWs, gxs)
    return lambda: gemms(x, Ws, acts, gs, gWs, gxs)


def _gemm_operands(w):
    sizes, batch = w["sizes"], w["batch"]
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((b, a)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    acts = [rng.standard_normal((batch, a)).astype(np.float32) for a in sizes[:-1]]
    gs = [np.zeros((batch, b), np.float32) for b in sizes[1:]]
    return Ws, acts, gs, [np.zeros_like(W) for W in Ws], [np.zeros((batch, a), np.float32) for a in sizes[:-1]]


def gemm_only_numpy(w):
    """The same GEMMs through numpy's matmul (numpy's own OpenBLAS build, often newer than scipy's)."""
    Ws, acts, gs, gWs, gxs = _gemm_operands(w)

    def gemms():
        for k in range(len(Ws)):
            np.matmul(acts[k], Ws[k].T, out=gs[k])
        for k in range(len(Ws) - 1, -1, -1):
            np.matmul(gs[k].T, acts[k], out=gWs[k])
            if k:
                np.matmul(gs[k], Ws[k], out=gxs[k])

    return gemms


def gemm_only_torch(w):
    """The same GEMMs through torch.mm (MKL here): the BLAS torch eager's step runs on."""
    import torch

    Ws, acts, gs, gWs, gxs = ([torch.from_numpy(a) for a in group] for group in _gemm_operands(w))

    def gemms():
        for k in range(len(Ws)):
            torch.mm(acts[k], Ws[k].t(), out=gs[k])
        for k in range(len(Ws) - 1, -1, -1):
            torch.mm(gs[k].t(), acts[k], out=gWs[k])
            if k:
                torch.mm(gs[k], Ws[k], out=gxs[k])

    return gemms


def fma_peak(w):
    """The step's GEMM FLOPs as independent FMAs at the cores' peak (benchmarks/roofline.py): on
    both cores for M and L (BLAS runs 2 threads), on one for the small MLPs (their loops run on one)."""
    from roofline import FmaPeak, gemm_flops

    peak = FmaPeak(2 if w["sizes"][1] >= 256 else 1)
    flops = gemm_flops(w["sizes"], w["batch"])["total"]
    return lambda: peak.run(flops)


def jax_step(w):
    import jax
    import jax.numpy as jnp

    sizes = w["sizes"]
    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k1, k2 = jax.random.split(key, 3)
        bound = 1 / np.sqrt(a)
        params.append((jax.random.uniform(k1, (b, a), minval=-bound, maxval=bound), jax.random.uniform(k2, (b,), minval=-bound, maxval=bound)))
    x, y = (jnp.asarray(a) for a in make_data(w))
    p = w["dropout"]

    def loss_fn(params, key):
        h = x
        for k, (W, b) in enumerate(params):
            h = h @ W.T + b
            if k < len(params) - 1:
                h = jax.nn.relu(h)
                if p:
                    key, sub = jax.random.split(key)
                    h = h * jax.random.bernoulli(sub, 1 - p, h.shape) / (1 - p)
        if w["loss"] == "mse":
            return jnp.mean((h - y) ** 2)
        return -jnp.mean(jax.nn.log_softmax(h)[jnp.arange(len(y)), y])

    @jax.jit
    def update(params, key):
        loss, g = jax.value_and_grad(loss_fn)(params, key)
        return loss, jax.tree_util.tree_map(lambda a, b: a - LR * b, params, g)

    state = {"params": params, "key": key}

    def step():
        state["key"], sub = jax.random.split(state["key"])
        loss, state["params"] = update(state["params"], sub)
        return float(loss)

    return step


# ------------------------------------------------------------------ measurement
# Each implementation lives in its own worker process: torch, numpy and scipy each bring their
# own BLAS thread pool, and in one process those pools fight over the 2 cores (torch eager
# measured 5-10x slower that way). Workers take turns, round-robin, so all of them see the
# same bursts of machine noise, and only one runs at a time.

# BLAS and OpenMP worker threads spin for a while after a call before they sleep; a pause
# between turns keeps the previous worker's spinning threads off the cores of the next one.
PAUSE = 0.3
IMPLS = {"graphc": lambda w: graphc_step(w)[0], "numpy eager": numpy_step, "torch eager": torch_step,
         "GEMMs alone": gemm_only, "jax jit": jax_step,
         "GEMMs alone, numpy's OpenBLAS": gemm_only_numpy, "GEMMs alone, torch (MKL)": gemm_only_torch,
         "GEMM FLOPs at FMA peak": fma_peak}
BIG = ("M", "L")  # the GEMM-bound workloads: every BLAS's GEMMs alone, for the roofline
ROOFLINE_ROWS = ("GEMMs alone", "GEMMs alone, numpy's OpenBLAS", "GEMMs alone, torch (MKL)")


def impls_for(name: str) -> list[str]:
    return [k for k in IMPLS if k not in ROOFLINE_ROWS[1:] or name in BIG]


def worker(impl: str, workload: str) -> None:
    """Build one implementation, then answer `n` (time n steps) and `info` lines on stdin."""
    w = WORKLOADS[workload]
    try:
        if impl == "graphc":
            fn, step = graphc_step(w)
        else:
            fn, step = IMPLS[impl](w), None
    except ImportError as e:
        print(json.dumps({"unavailable": str(e)}), flush=True)
        return
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    print(json.dumps({"ready": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "info":
            info = {}
            if step is not None:
                g = step.graph("kernels") if "kernels" in step.stages else None
                info["kernels"] = sum(1 for n in g.nodes if n.op != "full") if g is not None else None
                info["fused"] = sum(1 for n in g.nodes if n.body is not None) if g is not None else None
                plan = step.memory_plan()
                info["memory"] = next((ln.strip() for ln in plan.splitlines() if "peak" in ln), plan.splitlines()[0])
                info["blas"] = _blas_threads()
            print(json.dumps(info), flush=True)
        elif cmd:
            n = int(cmd)
            for _ in range(max(2, n // 10)):  # untimed: wake thread pools and caches after the pause
                fn()
            if impl == "GEMM FLOPs at FMA peak":  # a floor: its fastest run (others' load only slows it)
                each = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn()
                    each.append(time.perf_counter() - t0)
                print(json.dumps({"seconds": min(each)}), flush=True)
                continue
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            print(json.dumps({"seconds": (time.perf_counter() - t0) / n}), flush=True)


def _blas_threads() -> str:
    """The BLAS libraries this process loaded (numba's np.dot calls scipy's OpenBLAS) and their threads."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (what numba's np.dot binds to)
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    return ", ".join(f"{d['prefix']} {d.get('version')} {d['num_threads']} threads" for d in threadpool_info()
                     if d["user_api"] == "blas")


# issue 9's targets: (torch eager / graphc at least, graphc / torch eager at most, graphc / GEMMs alone at most)
TARGETS = {"S": (40.0, None, None), "A": (25.0, None, None), "B": (25.0, None, None), "C": (25.0, None, None),
           "D": (25.0, None, None), "M": (None, 0.80, 1.05), "L": (None, 0.90, 1.03)}
CHECKS = ("E", "F")  # shapes the small-GEMM rule was not tuned for: no target of their own, issue 9's bar printed


def check_line(name: str, med: dict, best: dict) -> str | None:
    """E and F against the small MLPs' 25x bar, and the most the FMA floor allows this run."""
    if name not in CHECKS or "graphc" not in med or "torch eager" not in med:
        return None
    line = (f"check shape (not one of issue 9's targets): graphc {med['torch eager'] / med['graphc']:.1f}x faster "
            f"than torch eager (the small MLPs' bar: 25x)")
    if "GEMM FLOPs at FMA peak" in best:
        line += (f"; at the one-core FMA floor ({fmt_us(best['GEMM FLOPs at FMA peak'])} us) a step would be "
                 f"{med['torch eager'] / best['GEMM FLOPs at FMA peak']:.1f}x")
    return line


def target_line(name: str, med: dict) -> str | None:
    """One line per workload: graphc against issue 9's targets, from this run's medians."""
    if name not in TARGETS or "graphc" not in med or "torch eager" not in med:
        return None
    speedup_min, time_max, gemm_max = TARGETS[name]
    speedup, time_ratio = med["torch eager"] / med["graphc"], med["graphc"] / med["torch eager"]
    gemm = med["graphc"] / med["GEMMs alone"] if "GEMMs alone" in med else float("nan")
    parts = []
    if speedup_min is not None:
        parts.append(f"{speedup:.1f}x faster than torch eager (target >= {speedup_min:g}x: "
                     f"{'met' if speedup >= speedup_min else 'NOT met'})")
    if time_max is not None:
        parts.append(f"{time_ratio:.2f}x torch eager's time (target <= {time_max:.2f}x: "
                     f"{'met' if time_ratio <= time_max else 'NOT met'})")
    if gemm_max is not None:
        parts.append(f"{gemm:.2f}x its GEMMs alone (target <= {gemm_max:.2f}x: {'met' if gemm <= gemm_max else 'NOT met'})")
    return f"issue 9 target, this run: graphc {'; '.join(parts)}"


def roofline_lines(name: str, med: dict, best: dict) -> list[str]:
    """The step's GEMM FLOPs against the fastest the machine ran them in this run: the FMA peak
    (a hard floor) and each BLAS's GEMMs alone (min over rounds: the best each managed); for M
    and L, the time issue 9's target asks of graphc next to those floors."""
    from roofline import gemm_flops

    w = WORKLOADS[name]
    f = gemm_flops(w["sizes"], w["batch"])
    out = [f"roofline: the step's GEMMs are {f['total'] / 1e6:,.2f} MFLOP (forward {f['forward'] / 1e6:,.2f}, "
           f"weight grads {f['weight grads'] / 1e6:,.2f}, input grads {f['input grads'] / 1e6:,.2f})"]

    def rate(k):
        return f["total"] / best[k] / 1e9

    peak = "GEMM FLOPs at FMA peak"
    if peak in best:
        cores = "both cores" if name in BIG else "one core"
        out.append(f"  FMA peak ({cores}): {rate(peak):,.1f} GFLOP/s, so the GEMMs take at least {fmt_us(best[peak])} us")
    for k in ROOFLINE_ROWS:
        if k in best:
            out.append(f"  {k}: best {fmt_us(best[k])} us ({rate(k):,.1f} GFLOP/s"
                       + (f", {rate(k) / rate(peak):.0%} of the FMA peak" if peak in best else "") + ")")
    for k in ("graphc", "torch eager"):
        if k in med:
            out.append(f"  {k}: median {fmt_us(med[k])} us, best {fmt_us(best[k])} us: its whole step at "
                       f"{f['total'] / best[k] / 1e9:,.1f} GFLOP/s of GEMM work")
    _, time_max, _ = TARGETS.get(name, (None, None, None))
    gemms = [best[k] for k in ROOFLINE_ROWS if k in best]
    if time_max is not None and "torch eager" in med and gemms:
        want = time_max * med["torch eager"]
        fastest = min(gemms)
        where = (f"BELOW the fastest BLAS's GEMMs alone ({fmt_us(fastest)} us at best): not reachable with these "
                 f"libraries" if want < fastest else
                 f"above the fastest BLAS's GEMMs alone ({fmt_us(fastest)} us at best) by {want / fastest - 1:.0%}, "
                 f"the room left for the rest of the step")
        floor = f"; the FMA-peak floor is {best[peak] / want:.0%} of it" if peak in best else ""
        out.append(f"  target <= {time_max:.2f}x torch eager's median = {fmt_us(want)} us, which asks "
                   f"{f['total'] / want / 1e9:,.1f} GFLOP/s of GEMM work: {where}{floor}")
    return out


class Worker:
    def __init__(self, impl: str, workload: str):
        self.impl = impl
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", impl, workload], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self._read()
        self.available = "ready" in first
        self.probe = first.get("ready", 0.0)
        if not self.available:
            self.close()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.impl} died (see its stderr above)")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.p.stdin.write(cmd + "\n")
        return self._read()

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=60)


def measure(workload: str, impls: list[str], rounds: int) -> tuple[dict, dict, str | None]:
    workers = [Worker(k, workload) for k in impls]
    workers = [wk for wk in workers if wk.available]
    try:
        # ~20 ms of work per implementation per round
        n = {wk.impl: max(1, min(5000, int(0.02 / max(wk.probe, 1e-7)))) for wk in workers}
        times = {wk.impl: [] for wk in workers}
        for _ in range(rounds):
            for wk in workers:
                time.sleep(PAUSE)
                times[wk.impl].append(wk.ask(str(n[wk.impl]))["seconds"])
        memory = next((wk.ask("info") for wk in workers if wk.impl == "graphc"), {})
    finally:
        for wk in workers:
            wk.close()
    return times, n, memory


def compile_times(workload: str) -> dict:
    """Cold compile in a fresh process with an empty cache, then a second process on that cache."""
    code = textwrap.dedent(f"""
        import time, json, sys
        t0 = time.perf_counter()
        sys.path.insert(0, {HERE!r})
        from bench_train_step import graphc_step, WORKLOADS
        fn, step = graphc_step(WORKLOADS[{workload!r}])
        fn()
        t1 = time.perf_counter()
        info = getattr(step, "compile_info", None)
        import resource
        ru = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: what load on a shared machine distorts least
        print(json.dumps({{"first_step_s": t1 - t0, "cpu_s": ru.ru_utime + ru.ru_stime, "info": str(info)}}))
    """)
    out = {}
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as d2, tempfile.TemporaryDirectory() as kernels:
        env = compile_env(d, kernels)
        # "cold": nothing cached, not even the library kernels (NUMBA_CACHE_DIR moves numba's cache);
        # "new plan": library kernels cached (as after any earlier use of graphc), this plan new;
        # "cached": the plan from the disk cache.
        # "after warmup": numba's cache as `graphc warmup` left it (a user's install), this plan new.
        runs = [("cold", env), ("new plan", dict(env, GRAPHC_CACHE_DIR=d2)),
                ("after warmup", compile_env(tempfile.mkdtemp(), warmed_numba_cache())), ("cached", env)]
        for label, env in runs:
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                out[label] = {"error": r.stderr.strip().splitlines()[-1:]}
            else:
                out[label] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def import_time() -> float:
    """Process start to `import graphc, numba` done: subtracted to isolate compile/load time."""
    r = subprocess.run([sys.executable, "-c", "import time;t=time.perf_counter();import graphc, graphc.nn, graphc.runtime, numba, numpy;print(time.perf_counter()-t)"],
                       capture_output=True, text=True, env=compile_env(tempfile.gettempdir(), tempfile.gettempdir()))
    return float(r.stdout.strip() or "nan")


def fmt_us(s: float) -> str:
    return f"{s * 1e6:,.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="few rounds, for a smoke test")
    ap.add_argument("--no-compile", action="store_true", help="skip the cold/cached compile measurement")
    ap.add_argument("--compile-only", action="store_true", help="only S's cold / new plan / cached compile times")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    rounds = 3 if args.quick else args.rounds
    import torch

    print(f"# graphc train-step benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {_cpu_name()}, "
          f"{os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"BLAS {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}), numpy {np.__version__}; "
          f"each implementation in its own process, interleaved round-robin")
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        if args.compile_only:
            print_compile_times(name)
            continue
        times, n, info = measure(name, impls_for(name), rounds)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        print(f"\n## {name}: {'->'.join(map(str, w['sizes']))}, {w['loss']}, batch {w['batch']}"
              f"{', dropout ' + str(w['dropout']) if w['dropout'] else ''}, SGD; median of {rounds} rounds")
        print("| implementation | kernels | median us/step | best us/step | spread (IQR) us | torch eager / this | "
              "this / GEMMs alone |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for k, v in times.items():
            q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
            kern = f"{info.get('kernels')} ({info.get('fused')} fused)" if k == "graphc" and info.get("kernels") else ""
            print(f"| {k} | {kern} | {fmt_us(med[k])} | {fmt_us(best[k])} | {fmt_us(q[2] - q[0])} | "
                  f"{med['torch eager'] / med[k]:.2f}x | {med[k] / med['GEMMs alone']:.2f}x |")
        if info.get("memory"):
            print(f"\ngraphc {info['memory']}")
        if info.get("blas"):
            print(f"graphc's BLAS (numba's np.dot): {info['blas']}")
        line = target_line(name, med) or check_line(name, med, best)
        if line:
            print(line)
        for line in roofline_lines(name, med, best):
            print(line)
        if not args.no_compile and name == "S":
            print_compile_times(name)


def print_compile_times(name: str) -> None:
    """cold: no caches at all; new plan: library kernels in numba's cache (as after any earlier use
    of graphc), this plan new; cached: the plan loaded from graphc's disk cache."""
    base = import_time()
    c = compile_times(name)
    for label in ("cold", "new plan", "after warmup", "cached"):
        r = c[label]
        if "error" in r:
            print(f"graphc {label} compile: failed: {r['error']}")
        else:
            print(f"graphc {label}: process start to first step {r['first_step_s']:.2f} s, CPU {r['cpu_s']:.2f} s "
                  f"(imports ~{base:.2f} s); {r['info']}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    main()
