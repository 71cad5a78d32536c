"""graphc.profile (this module is graphc.profiler): where a compiled plan's time goes, kernel call by kernel call.

    prof = graphc.profile(step, x, y, steps=20)      # a TrainStep, or a CompiledModule
    print(prof)                                       # the table below; prof.rows for the numbers

A plan is one native call (runtime/glue_llvm.py), so a Python profiler sees one line. This runs
the object as you would call it (`step(x, y)`, or `cm(x, y)` then `cm.backward()` when its
forward returns a scalar loss), `warmup + steps` times, with each plan's glue swapped for its
instrumented variant (runtime/profiling.py: the cycle counter after every kernel call; the
compiled plan itself is not changed, and runs again as before once this returns). So profiling
trains: a train step takes its optimizer steps, a compiled module accumulates `.grad`.

The table has one row per kernel call of the plan, in order: the called function, its kind
(GEMM: a BLAS or loop GEMM node or kernel; fused loop: a kernel of the kernel stage; movement:
gather/scatter/concat and copies; library: any other node's own kernel), its phase (the node's
phase: forward, backward, optimizer), the median microseconds over the steps, its share of the
step, and its IR members (output and op of each node the kernel computes, as the plan's text
lists them above the call). Totals follow by phase and by kind, and the step's median wall time
beside the sum of the kernels' medians; "outside kernels" is the step's median wall time less the
median of each step's summed kernel time (the call's own overhead: Python and the argument
check; through ctypes, the instrumented call costs a few microseconds more than the plan's own;
the sum of per-call medians runs below a typical step's total on a busy machine, so it is not
what is subtracted). A kernel's time includes the few glue instructions before it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .ir import GraphcError

GEMM_OPS = {"linear", "matmul", "addmm", "bmm", "mm", "conv2d"}  # and their fused forms (linear_relu, conv2d_...)
MOVEMENT_OPS = {"gather", "scatter_add", "concat", "broadcast_to", "copy", "transpose", "permute", "slice", "pad", "index_add",
                "index_select", "stack", "expand", "embedding"}
KINDS = ("GEMM", "fused loop", "movement", "library")


@dataclass
class Row:
    plan: str  # the executable's name
    call: str  # the function the plan calls (kernelN, k_<library kernel>)
    kind: str  # one of KINDS
    phase: str  # forward, backward, optimizer ("-" for the copies after the last node)
    members: list[str]  # "%out op" of each IR node the call computes
    us: float  # median microseconds over the profiled steps
    share: float = 0.0  # of the step's median wall time


@dataclass
class Profile:
    rows: list[Row]
    step_us: float  # median wall time of one step (the Python call included)
    steps: int
    # median over the steps of each step's kernel time (its calls summed): what "outside kernels"
    # subtracts, since the sum of per-call medians runs below a typical step's sum on a noisy machine
    kernels_per_step_us: float | None = None

    @property
    def kernel_us(self) -> float:
        return sum(r.us for r in self.rows)

    @property
    def outside_us(self) -> float:
        """The step's median wall time less its median kernel time: the call's own overhead."""
        return self.step_us - (self.kernel_us if self.kernels_per_step_us is None else self.kernels_per_step_us)

    def total(self, by: str) -> dict[str, float]:
        """Median microseconds summed by "phase" or "kind" (in a stable order)."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[getattr(r, by)] = out.get(getattr(r, by), 0.0) + r.us
        order = KINDS if by == "kind" else ("forward", "backward", "optimizer", "-")
        return {k: out[k] for k in sorted(out, key=lambda k: (order.index(k) if k in order else 99, k))}

    def top(self, n: int = 10) -> list[Row]:
        return sorted(self.rows, key=lambda r: -r.us)[:n]

    def __str__(self) -> str:
        plans = sorted({r.plan for r in self.rows})
        lines = [f"graphc profile of {', '.join(plans)}: {self.steps} steps, median step {_t(self.step_us)}; "
                 f"kernels {_t(self.kernel_us)} ({len(self.rows)} calls), "
                 f"outside kernels {_t(self.outside_us)}",
                 f"{'#':>4}  {'call':<14}{'kind':<12}{'phase':<10}{'us':>9}{'%':>7}  members"]
        for k, r in enumerate(self.rows):
            lines.append(f"{k:>4}  {r.call:<14}{r.kind:<12}{r.phase:<10}{r.us:>9.1f}{100 * r.share:>6.1f}%  "
                         + _short(r.members))
        for by in ("phase", "kind"):
            lines.append(f"by {by}: " + ", ".join(f"{k} {_t(v)} ({100 * v / self.step_us:.0f}%)"
                                                  for k, v in self.total(by).items()))
        return "\n".join(lines)


def _t(us: float) -> str:
    return f"{us / 1e3:.3f} ms" if abs(us) >= 1000 else f"{us:.1f} us"


def _short(members: list[str], width: int = 90) -> str:
    text = ", ".join(members)
    if len(text) <= width:
        return text
    cut = text[:width].rsplit(", ", 1)[0]
    return f"{cut}, ... ({len(members)} nodes)"


def _kind(node) -> str:
    if node is None:
        return "movement"
    if node.body is not None:
        return "GEMM" if node.attr.get("kind") in ("gemm", "strided_gemm") else "fused loop"
    if node.op in GEMM_OPS or node.op.split("_")[0] in GEMM_OPS:
        return "GEMM"
    return "movement" if node.op in MOVEMENT_OPS else "library"


def _members(node) -> list[str]:
    if node is None:
        return ["output/update copy"]
    return [f"%{m.outputs[0]} {m.op}" for m in (node.body.nodes if node.body is not None else [node])]


def profile(compiled, *inputs, steps: int = 20, warmup: int = 3) -> Profile:
    """Profile `steps` calls of a TrainStep (`compiled(*inputs)`) or of a CompiledModule
    (`compiled(*inputs)`, then `compiled.backward()` when it has a backward and returns a scalar
    loss) after `warmup` calls; returns a Profile (print it for the table). See the module doc."""
    from .compiler import CompiledModule, TrainStep
    from .runtime.profiling import Instrumented, cycles

    if steps < 1:
        raise GraphcError(f"profile: steps={steps}: expected at least 1")
    if isinstance(compiled, TrainStep):
        compiled(*inputs)  # specialise for these inputs
        spec = compiled._spec
        inst = [Instrumented(spec.exe)]
        saved = [(spec, "native", spec.native)]
        spec.native = lambda *a: inst[0].run(*a[:-1])  # the same arguments, less the table

        def step():
            compiled(*inputs)
    elif isinstance(compiled, CompiledModule):
        out = compiled(*inputs)
        spec = compiled._spec
        backward = spec.bwd is not None and np.ndim(out) == 0
        exes = [spec.fwd] + ([spec.bwd] if backward else [])
        inst = [Instrumented(e) for e in exes]
        saved = [(e, "run", e.run) for e in exes]
        for e, i in zip(exes, inst):
            e.run = i.run
        if backward:
            compiled.backward()

        def step():
            compiled(*inputs)
            if backward:
                compiled.backward()
    else:
        raise GraphcError(f"profile: expected a TrainStep (compile_train_step) or a CompiledModule (compile), "
                          f"got {type(compiled).__name__}")
    try:
        for _ in range(warmup):
            step()
        for i in inst:
            i.samples.clear()
        walls = []
        c0, t0 = cycles(), time.perf_counter()
        for _ in range(steps):
            s = time.perf_counter()
            step()
            walls.append(time.perf_counter() - s)
        c1, t1 = cycles(), time.perf_counter()
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
    us_per_tick = (t1 - t0) * 1e6 / max(c1 - c0, 1)
    step_us = float(np.median(walls)) * 1e6
    rows = []
    per_step = sum(i.ticks().sum(axis=1) for i in inst if i.samples)
    for i in inst:
        ticks = np.median(i.ticks(), axis=0) if i.samples else np.zeros(len(i.calls))
        nodes = i.exe.graph.nodes
        for (k, call), t in zip(i.calls, ticks):
            node = nodes[k] if k is not None and k >= 0 else None
            rows.append(Row(i.exe.name, call, _kind(node), node.phase if node is not None else "-",
                            _members(node), float(t) * us_per_tick))
    for r in rows:
        r.share = r.us / step_us
    kernels_step = float(np.median(per_step)) * us_per_tick if np.ndim(per_step) else None
    return Profile(rows, step_us, steps, kernels_step)
