"""Does passes/gemm_impl.py's cost rule pick the faster of loops and BLAS? Timed per GEMM.

Why: the rule's constants were fitted to GEMMs of the workloads it was written for; this times
both lowerings of single GEMM kernels (runtime/lower_llvm.kernel_ir of the same kernel node with
and without impl="loops": exactly what a plan runs) on shapes it was not fitted to (the
small-MLP workloads E and F of bench_train_step.py and random shapes), and prints per shape the
rule's choice and estimates next to the measured times, and how much time the rule's choice
loses against the faster one (its regret), in total and at worst.

    python benchmarks/gemm_choice.py [--random 24] [--seed 0]

Times are wall time per call (BLAS may run on two threads, the loop nest on one: set
OPENBLAS_NUM_THREADS=1 to compare one thread each, as a split plan runs them), the fastest of
several batches, less an empty call's (ctypes' own cost); a machine shared with other jobs makes
them noisy, so near-ties can read either way.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

LAYOUTS = {"nt": "x @ w.T (linear's forward)", "nn": "g @ w (an input gradient)",
           "tn": "g.T @ a (a weight gradient)"}
# the GEMMs of the small-MLP workloads: (m, n, k, layout); forward nt, input gradient nn, weight gradient tn
WORKLOAD_GEMMS = {
    "B": [(128, 32, 16, "nt"), (128, 32, 32, "nt"), (128, 32, 32, "nn"), (32, 32, 128, "tn"), (32, 16, 128, "tn")],
    "A": [(32, 64, 32, "nt"), (32, 64, 64, "nt"), (32, 64, 64, "nn"), (64, 64, 32, "tn"), (64, 32, 32, "tn")],
    "E (untuned)": [(48, 40, 24, "nt"), (48, 40, 40, "nt"), (48, 40, 40, "nn"), (40, 40, 48, "tn"), (40, 24, 48, "tn"),
                    (48, 6, 40, "nt")],
    "F (untuned)": [(100, 128, 64, "nt"), (128, 64, 100, "tn"), (100, 128, 3, "nn"), (3, 128, 100, "tn")],
    # issue 11's workload T (GPT, width 64, batch x context 1024): its forward layers, input and weight
    # gradients (the long-k ones: k = 1024), the head's forward and weight gradient
    "T": [(1024, 192, 64, "nt"), (1024, 256, 64, "nt"), (1024, 64, 256, "nt"), (1024, 64, 256, "nn"),
          (1024, 96, 64, "nt"), (256, 64, 1024, "tn"), (64, 256, 1024, "tn"), (192, 64, 1024, "tn"),
          (64, 64, 1024, "tn"), (96, 64, 1024, "tn")],
}


def kernel(m: int, n: int, k: int, layout: str, impl: str | None):
    """The gemm kernel node C[m, n] = op(A) @ op(B) in `layout`, as the kernel pass builds it."""
    from graphc.ir import GraphBuilder, TensorType
    from graphc.ir.graph import kernel_node

    b = GraphBuilder("k")
    shapes = {"nt": ((m, k), (n, k)), "nn": ((m, k), (k, n)), "tn": ((k, m), (k, n))}[layout]
    x = b.add_input("a", TensorType(shapes[0], "f32"), "input")
    y = b.add_input("b", TensorType(shapes[1], "f32"), "input")
    if layout == "nt":
        b.emit("linear", [x, y])
    elif layout == "nn":
        b.emit("matmul", [x, y])
    else:
        b.emit("matmul", [b.emit("transpose", [x], {"perm": (1, 0)}), y])
    outs = [o for nd in b.nodes for o in nd.outputs]
    g = b.build(outs[-1:])
    node = kernel_node(list(g.nodes), ["a", "b"], outs[-1:], g.types, "gemm", impl)
    data = {v: np.random.default_rng(0).standard_normal(s).astype(np.float32) for v, s in zip("ab", shapes)}
    return node, data, g


def compiled(node, data):
    from graphc.runtime import kernel_lib, lower_llvm
    from graphc.runtime.kernel_lib import LlvmKernel
    from test_lower_llvm import _outputs

    ir, ins, outs, args = lower_llvm.kernel_ir(node, set())
    lk = LlvmKernel(ir, args)
    obj, _ = kernel_lib.compile_ir(lk.text)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(args))(kernel_lib._load_object(lk.symbol, obj))
    res = _outputs(node, outs)
    fn.keep = res  # the outputs live as long as the function
    return fn, [data[v].ctypes.data for v in ins] + [r.ctypes.data for r in res]


def best_ns(fn, ptrs, budget_s: float = 0.01) -> float:
    t0 = time.perf_counter()
    fn(*ptrs)
    reps = max(10, int(budget_s / max(time.perf_counter() - t0, 1e-7)))
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(*ptrs)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", type=int, default=24, help="random shapes besides the workloads' GEMMs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", default="", help="only these: m,n,k,layout;... (layout nt, nn or tn)")
    args = ap.parse_args(argv)
    from graphc.passes import gemm_impl
    from graphc.runtime.kernel_lib import LlvmKernel, compile_ir, _load_object

    rng = np.random.default_rng(args.seed)
    cases = [(w, *s) for w, shapes in WORKLOAD_GEMMS.items() for s in shapes]
    if args.shapes:
        cases = [("given", *map(int, c.split(",")[:3]), c.split(",")[3]) for c in args.shapes.split(";")]
    while not args.shapes and len(cases) < sum(map(len, WORKLOAD_GEMMS.values())) + args.random:
        m, n, k = (int(v) for v in np.exp(rng.uniform(np.log(2), np.log(256), 3)).round())
        if m * n * k <= gemm_impl.LOOPS_MAX_MACS:
            cases.append(("random", m, n, k, ("nt", "nn", "tn")[rng.integers(3)]))
    lk = LlvmKernel("define void @kernel() {\nentry:\n  ret void\n}\n", [])
    empty = ctypes.CFUNCTYPE(None)(_load_object(lk.symbol, compile_ir(lk.text)[0]))
    print("| from | GEMM m x n x k | layout | rule's choice | rule: loops / BLAS ns | measured: loops / BLAS ns | "
          "faster | regret ns |")
    print("|---|---|---|---|---:|---:|---|---:|")
    total_regret = total_best = 0.0
    wrong = []
    for src, m, n, k, layout in cases:
        node, data, g = kernel(m, n, k, layout, "loops")
        impl, why = gemm_impl.choose(g.types, list(g.nodes))
        est = [float(x.split("~")[1].split(" ")[0]) for x in why.split(" ns")[:2]] if "~" in why else None
        t = {}
        for which in ("loops", "blas"):
            nd = node if which == "loops" else kernel(m, n, k, layout, None)[0]
            fn, ptrs = compiled(nd, data)
            t[which] = best_ns(fn, ptrs)
        for which in ("loops", "blas"):  # again, interleaved: the better of the two readings
            nd = node if which == "loops" else kernel(m, n, k, layout, None)[0]
            fn, ptrs = compiled(nd, data)
            t[which] = min(t[which], best_ns(fn, ptrs))
        call = best_ns(empty, [])  # ctypes' own cost, taken off both
        t = {w: v - call for w, v in t.items()}
        faster = min(t, key=t.get)
        regret = t[impl] - t[faster]
        total_regret += regret
        total_best += t[faster]
        if regret > 0:
            wrong.append((regret, f"{m}x{n}x{k} {layout}"))
        rule = f"{est[0]:.0f} / {est[1]:.0f}" if est else why.split(": ", 1)[-1]
        print(f"| {src} | {m}x{n}x{k} | {layout} | {impl} | {rule} | {t['loops']:.0f} / {t['blas']:.0f} | {faster} | "
              f"{regret:.0f} |", flush=True)
    wrong.sort(reverse=True)
    print(f"\nrule's choice: {len(cases) - len(wrong)} of {len(cases)} the faster; the time its choices lose: "
          f"{total_regret:.0f} ns of {total_best:.0f} ns at best ({total_regret / total_best:.1%}); worst: "
          + (", ".join(f"{s} {r:.0f} ns" for r, s in wrong[:3]) or "none"))


if __name__ == "__main__":
    main()
