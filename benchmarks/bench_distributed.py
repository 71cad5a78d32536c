"""Data-parallel train steps over MPI: throughput at 1 and 2 ranks, and all-reduce cost against bytes.

    python benchmarks/bench_distributed.py [--workloads M,L] [--rounds 7] [--ranks 2]

Throughput (samples/s, float32, SGD, the same global batch in every configuration):
  1 process, 2 BLAS threads     the plain train step on the whole batch (both cores through BLAS)
  1 process, 1 BLAS thread      the same with one thread (the per-core baseline)
  2 ranks, 1 BLAS thread each   compile_train_step(distributed=True), half the batch per rank
Scaling efficiency = 2-rank samples/s / (2 x 1-thread samples/s); speed-up = 2-rank / 2-thread.

All-reduce (2 ranks, float32 buffers): the plan's all_reduce kernel (pack the bucket, one
MPI_Allreduce in place, unpack the mean) against a bare mpi4py `Allreduce(IN_PLACE, buf)` of the
same bytes; algorithm bandwidth = bytes / time, bus bandwidth = 2(N-1)/N x bytes / time (the ring
model's bytes on the wire per rank).

Each configuration runs in fresh processes (mpiexec for the ranks); medians of `rounds` timed
rounds. Workers print JSON lines; this driver formats the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = {
    "M": dict(sizes=(784, 512, 512, 10), batch=128, steps=40),
    "L": dict(sizes=(784, 2048, 2048, 10), batch=512, steps=6),
}
SWEEP = [2**k for k in (12, 15, 18, 20, 22, 24)]  # float32 elements: 16 KiB .. 64 MiB


def _model(sizes):
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from models import mlp

    return mlp(sizes)


def train_worker(workload: str, distributed: bool, rounds: int) -> None:
    import graphc
    import graphc.distributed as dist
    import graphc.nn as nn

    w = WORKLOADS[workload]
    dist.init()
    ranks, rank = dist.world_size(), dist.rank()
    b = w["batch"] // ranks
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((b, w["sizes"][0])).astype(np.float32)
    y = rng.integers(0, w["sizes"][-1], size=b).astype(np.int64)
    graphc.manual_seed(0)
    model = _model(w["sizes"])
    opt = graphc.optim.SGD(model.parameters(), lr=0.01)
    step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y, distributed=distributed)
    for _ in range(3):
        step(x, y)
    rates = []
    for _ in range(rounds):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(w["steps"]):
            step(x, y)
        dist.barrier()
        rates.append(w["batch"] * w["steps"] / (time.perf_counter() - t0))
    grad_bytes = sum(p.nbytes for p in model.parameters())
    if dist.is_main():
        print(json.dumps({"samples_per_s": statistics.median(rates), "grad_bytes": grad_bytes}), flush=True)


def allreduce_worker(rounds: int, extra: list[int]) -> None:
    import graphc.distributed as dist
    from graphc.runtime.collectives import FLOAT32, all_reduce_bucket

    dist.init()  # first: it finds the MPI library for mpi4py where needed
    from mpi4py import MPI

    comm = dist._state["comm"]
    words = dist.comm_words()
    n_ranks = dist.world_size()
    for n in sorted(set(SWEEP + extra)):
        x = np.random.default_rng(dist.rank()).standard_normal(n).astype(np.float32)
        packed, out, buf = np.empty_like(x), np.empty_like(x), x.copy()
        reps = max(3, min(200, int(2e8 // (4 * n))))

        def kernel():
            all_reduce_bucket(words, packed, (x,), (out,), n_ranks, True, FLOAT32)

        def bare():
            comm.Allreduce(MPI.IN_PLACE, buf)

        res = {}
        for name, fn in (("kernel", kernel), ("mpi4py", bare)):
            fn()
            times = []
            for _ in range(rounds):
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times.append((time.perf_counter() - t0) / reps)
            res[name] = statistics.median(times)
        if dist.is_main():
            print(json.dumps({"bytes": 4 * n, **res}), flush=True)


# ------------------------------------------------------------------ driver


def _run(cmd, threads: int) -> list[dict]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="M,L")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--worker", choices=["train", "allreduce"])
    ap.add_argument("--workload")
    ap.add_argument("--distributed", action="store_true")
    ap.add_argument("--extra", default="")
    args = ap.parse_args(argv)
    extra = [int(v) for v in args.extra.split(",") if v]
    if args.worker == "train":
        return train_worker(args.workload, args.distributed, args.rounds)
    if args.worker == "allreduce":
        return allreduce_worker(args.rounds, extra)

    import graphc.distributed as dist

    mpiexec = dist.mpiexec()
    if mpiexec is None:
        raise SystemExit("no mpiexec: pip install 'graphc[mpi]'")
    me = [sys.executable, os.path.abspath(__file__), "--rounds", str(args.rounds)]
    n = args.ranks
    print(f"graphc data-parallel benchmark: {os.cpu_count()} CPUs, {n} ranks via {mpiexec}; float32, SGD, "
          f"medians of {args.rounds} rounds\n")
    print(f"| workload | global batch | grad bytes | 1 proc x 2 threads | 1 proc x 1 thread | {n} ranks x 1 thread "
          f"| {n} ranks / 2 threads | scaling efficiency |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    grad_sizes = []
    for wl in args.workloads.split(","):
        one2 = _run(me + ["--worker", "train", "--workload", wl], threads=2)[0]
        one1 = _run(me + ["--worker", "train", "--workload", wl], threads=1)[0]
        many = _run([mpiexec, "-n", str(n)] + me + ["--worker", "train", "--workload", wl, "--distributed"], threads=1)[0]
        grad_sizes.append(one2["grad_bytes"] // 4)
        eff = many["samples_per_s"] / (n * one1["samples_per_s"])
        print(f"| {wl} | {WORKLOADS[wl]['batch']} | {one2['grad_bytes']:,} | {one2['samples_per_s']:,.0f} | "
              f"{one1['samples_per_s']:,.0f} | {many['samples_per_s']:,.0f} | "
              f"{many['samples_per_s'] / one2['samples_per_s']:.2f}x | {eff:.0%} |", flush=True)

    rows = _run([mpiexec, "-n", str(n)] + me + ["--worker", "allreduce", "--extra", ",".join(map(str, grad_sizes))],
                threads=1)
    bus = 2 * (n - 1) / n
    print(f"\nall-reduce of float32 buffers across {n} ranks (time per call; bandwidth in GB/s)\n")
    print("| bytes | graphc all_reduce kernel | bare mpi4py Allreduce | kernel / bare | algbw kernel | busbw bare |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b = r["bytes"]
        print(f"| {b:,} | {r['kernel'] * 1e6:,.1f} us | {r['mpi4py'] * 1e6:,.1f} us | {r['kernel'] / r['mpi4py']:.2f}x | "
              f"{b / r['kernel'] / 1e9:.2f} | {bus * b / r['mpi4py'] / 1e9:.2f} |")


if __name__ == "__main__":
    main()
