"""The roofline of a train step: its GEMM FLOPs and the machine's FMA peak, measured here.

Why: a target such as "L at most 0.90x PyTorch eager's time" can ask for more than the machine
does. A train step of an MLP cannot take less time than its GEMMs' multiply-adds at the
fastest rate the cores retire them, so bench_train_step.py prints, next to graphc's and
torch's times, that floor measured in the same run:

- gemm_flops(sizes, batch): the step's GEMM FLOPs (2 per multiply-add): the forward
  (batch x in x out per layer), the weight gradients (the same) and the input gradients of
  every layer but the first (the model's input needs none);
- FmaPeak: a loop of independent <16 x float> fused multiply-adds (12 accumulators, two FMA
  ports' latency hidden; LLVM through llvmlite, for this CPU) on 1 or 2 threads; timing
  `flops` of it is the time those FLOPs take at the cores' peak. No GEMM reaches it (loads,
  packing, edges), so it is a hard lower bound; the best BLAS (the "GEMMs alone" rows) is the
  practical one.
"""
from __future__ import annotations

import ctypes
import threading

ACC, W = 12, 16  # accumulators, f32 lanes (one AVX-512 register; LLVM splits it on narrower CPUs)
FLOPS_PER_ITER = ACC * W * 2


def gemm_flops(sizes, batch: int) -> dict:
    """The train step's GEMM FLOPs by part: forward, weight gradients, input gradients."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    fwd = sum(2 * batch * a * b for a, b in pairs)
    dx = sum(2 * batch * a * b for a, b in pairs[1:])
    return {"forward": fwd, "weight grads": fwd, "input grads": dx, "total": 2 * fwd + dx}


def _ir() -> str:
    vt = f"<{W} x float>"
    c1 = "<" + ", ".join(["float 0x3FEFFFFFE0000000"] * W) + ">"  # 0.99999994: stays finite
    c2 = "<" + ", ".join(["float 0x3F50624DE0000000"] * W) + ">"
    lines = ["define void @fma_peak(i64 %n, ptr %out) {", "entry:", "  br label %loop", "loop:",
             "  %i = phi i64 [0, %entry], [%i1, %loop]"]
    lines += [f"  %a{a} = phi {vt} [zeroinitializer, %entry], [%b{a}, %loop]" for a in range(ACC)]
    lines += [f"  %b{a} = call {vt} @llvm.fma.v{W}f32({vt} %a{a}, {vt} {c1}, {vt} {c2})" for a in range(ACC)]
    lines += ["  %i1 = add i64 %i, 1", "  %c = icmp ult i64 %i1, %n", "  br i1 %c, label %loop, label %done", "done:"]
    s = "%b0"
    for a in range(1, ACC):
        lines.append(f"  %s{a} = fadd {vt} {s}, %b{a}")
        s = f"%s{a}"
    lines += [f"  %e = extractelement {vt} {s}, i32 0", "  store float %e, ptr %out", "  ret void", "}",
              f"declare {vt} @llvm.fma.v{W}f32({vt}, {vt}, {vt})"]
    return "\n".join(lines)


class FmaPeak:
    """`run(flops)`: execute `flops` FLOPs of independent FMAs split over `threads` threads
    (ctypes releases the GIL, so they run on separate cores)."""

    def __init__(self, threads: int):
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                          features=llvm.get_host_cpu_features().flatten(), opt=2)
        mod = llvm.parse_assembly(_ir())
        mod.verify()
        self._ee = llvm.create_mcjit_compiler(mod, tm)  # kept alive: owns the code
        self._ee.finalize_object()
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(self._ee.get_function_address("fma_peak"))
        self._out = (ctypes.c_float * threads)()
        self.threads = threads

    def run(self, flops: float) -> None:
        iters = max(1, int(flops / FLOPS_PER_ITER / self.threads))
        if self.threads == 1:
            self._fn(iters, ctypes.addressof(self._out))
            return
        ts = [threading.Thread(target=self._fn, args=(iters, ctypes.addressof(self._out) + 4 * t))
              for t in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


# ------------------------------------------------------------------ one core, thread CPU time
# On a machine others share, wall times of 2-thread BLAS move 3-4x with their load; one core's
# thread CPU time moves far less. `python benchmarks/roofline.py [L|M]` times, on one thread, the
# FMA peak and the step's GEMMs (as bench_train_step.gemm_only calls them: x @ W.T, g.T @ a, g @ W)
# through each BLAS, each in its own process, and prints each one's rate on one core and the step's
# GEMM time on two cores if they scaled perfectly: a floor for a 2-thread step through that BLAS.

def _gemm_calls(sizes, batch):
    """(name, m, n, k, transposed A, transposed B) of the step's GEMMs, C[m, n] = op(A) @ op(B)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    calls = [(f"forward {a}->{b}", batch, b, a, False, True) for a, b in pairs]
    calls += [(f"weight grad {b}x{a}", b, a, batch, True, False) for a, b in pairs]
    calls += [(f"input grad {b}->{a}", batch, a, b, False, False) for a, b in pairs[1:]]
    return calls


def _one_core(lib: str, sizes, batch, reps: int) -> dict:
    import os
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    if lib == "FMA peak":
        peak = FmaPeak(1)
        flops = 2e9
        peak.run(flops / 20)
        best = min(_timed(lambda: peak.run(flops), time.thread_time) for _ in range(reps))
        return {"FMA peak": (flops, best)}
    if lib == "torch (MKL)":
        import torch

        torch.set_num_threads(1)
        mm = lambda a, b, c: torch.mm(a, b, out=c)  # noqa: E731
        wrap = torch.from_numpy
    elif lib == "numpy's OpenBLAS":
        mm = lambda a, b, c: np.matmul(a, b, out=c)  # noqa: E731
        wrap = lambda x: x  # noqa: E731
    else:  # graphc's: numba's np.dot on scipy's OpenBLAS
        import numba

        @numba.njit
        def dot(a, b, c):
            np.dot(a, b, c)

        mm, wrap = dot, (lambda x: x)
    assert os.environ.get("OPENBLAS_NUM_THREADS") == "1"
    for name, m, n, k, ta, tb in _gemm_calls(sizes, batch):
        a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        a, b, c = wrap(a), wrap(b), wrap(c)
        a, b = (a.T if ta else a), (b.T if tb else b)
        mm(a, b, c)
        best = min(_timed(lambda: mm(a, b, c), time.thread_time) for _ in range(reps))
        out[name] = (2.0 * m * n * k, best)
    return out


def _timed(fn, clock) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def main(argv=None):
    import json
    import os
    import subprocess
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--worker":
        sizes, batch, reps = json.loads(args[2])
        print(json.dumps(_one_core(args[1], sizes, batch, reps)))
        return
    shapes = {"M": ((784, 512, 512, 10), 128), "L": ((784, 2048, 2048, 10), 512)}
    name = args[0] if args else "L"
    sizes, batch = shapes[name]
    reps = 7
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    libs = ["FMA peak", "graphc's BLAS (scipy's OpenBLAS)", "numpy's OpenBLAS", "torch (MKL)"]
    res = {}
    for lib in libs:
        r = subprocess.run([sys.executable, __file__, "--worker", lib, json.dumps([sizes, batch, reps])],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            print(f"{lib}: failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        res[lib] = json.loads(r.stdout)
    f = gemm_flops(sizes, batch)["total"]
    print(f"# {name}: the step's GEMMs, {f / 1e9:.2f} GFLOP, one thread each, thread CPU time, best of {reps}")
    flops, t = res["FMA peak"]["FMA peak"]
    core = flops / t / 1e9
    print(f"FMA peak, one core: {core:.1f} GFLOP/s; both cores: {2 * core:.1f} GFLOP/s -> the step's GEMMs take "
          f">= {f / (2 * core) / 1e6:.1f} ms")
    for lib in libs[1:]:
        if lib not in res:
            continue
        total = sum(t for _, t in res[lib].values())
        per = ", ".join(f"{k} {fl / t / 1e9:.0f}" for k, (fl, t) in res[lib].items())
        print(f"{lib}: {f / total / 1e9:.1f} GFLOP/s on one core ({f / total / 1e9 / core:.0%} of its FMA peak; "
              f"per GEMM: {per}); on two cores at that rate {total / 2 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
