"""A plan run with its glue instrumented: the cycle counter read after every kernel call.

graphc.profile builds, beside an executable's own native plan, the instrumented variant of its
LLVM glue (runtime/glue_llvm.py, profile=True): the same calls on the same buffers, plus one
`llvm.readcyclecounter` and one store after each call into a profile buffer. The executable's
plan is untouched (instrumentation never runs in the plan that trains); the variant is compiled
in memory, never cached. Ticks become seconds by a calibration against time.perf_counter over
the whole profiling run (`cycles()` reads the same counter from Python).
"""
from __future__ import annotations

import ctypes

import numpy as np

from graphc.ir import GraphcError

from . import glue_llvm, kernel_lib
from .codegen import GLUE_FAILED, generate

_CYCLES = None  # ctypes function reading the cycle counter, compiled on first use


def cycles() -> int:
    """The cycle counter the instrumented glue reads (`llvm.readcyclecounter`)."""
    global _CYCLES
    if _CYCLES is None:
        import llvmlite.binding as ll

        ir = ("declare i64 @llvm.readcyclecounter()\n\ndefine i64 @graphc_cycles() {\n"
              "  %c = call i64 @llvm.readcyclecounter()\n  ret i64 %c\n}\n")
        if "graphc_cycles" not in kernel_lib._in_engine:
            tm, _ = kernel_lib._engine()
            kernel_lib._load_object("graphc_cycles", tm.emit_object(ll.parse_assembly(ir)))
        _CYCLES = ctypes.CFUNCTYPE(ctypes.c_int64)(kernel_lib._in_engine["graphc_cycles"])
    return _CYCLES()


class Instrumented:
    """An executable's instrumented glue: `run(*call_inputs)` is one call of the plan (returns
    what the executable's run returns) that appends its counter readings to `samples`.
    `calls[k]` is (index of the graph node of call k or None for an output/update copy, the
    function the plan text calls)."""

    def __init__(self, exe):
        if exe.mode != "jit" or exe.native is None:
            raise GraphcError(f"profile: plan {exe.name} does not run as native code (mode={exe.mode!r})")
        src = generate(exe.graph, exe.memory_plan, set(exe.bound), profile=True)
        if src.glue is None or exe.source.glue is None:
            why = src.glue_fallback or exe.source.glue_fallback or "?"
            raise GraphcError(f"profile: plan {exe.name} has no LLVM glue to instrument ({why})")
        glue_llvm.load(src.glue, exe.module, None)
        n = 2 + len(exe.call_inputs)
        self.fn = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_int64] * n)(kernel_lib._in_engine[src.glue.symbol])
        self.exe, self.calls = exe, src.call_nodes
        self.buf = np.zeros(len(self.calls) + 1, np.int64)
        self.samples: list[np.ndarray] = []  # per run: ticks of each call
        self._scalars = set(exe.source.scalar_inputs)
        self._table, self._buf = exe.table.ctypes.data, self.buf.ctypes.data
        v = exe._scalar_out
        self._out = None if v is None else exe._storage(v).reshape(-1)

    def run(self, *args):
        exe = self.exe
        if not all(type(a) is np.ndarray and a.dtype == i.type.np_dtype and a.shape == i.type.shape
                   and a.flags.c_contiguous for i, a in zip(exe.call_inputs, args) if i.name not in self._scalars):
            args = exe._checked(args)
        addrs = [int(a) if i.name in self._scalars else a.ctypes.data for i, a in zip(exe.call_inputs, args)]
        if self.fn(self._table, self._buf, *addrs) != 0:
            return exe.recover(ValueError(GLUE_FAILED), *args)  # raises the kernel's own error
        self.samples.append(self.buf.copy())
        return None if self._out is None else float(self._out[0])

    def ticks(self) -> np.ndarray:
        """[runs, calls]: each call's ticks in each run since samples were last cleared."""
        return np.diff(np.array(self.samples).reshape(len(self.samples), -1), axis=1)
