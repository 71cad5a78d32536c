"""Executable: one plan graph, its buffers and its native function, ready to be called.

    exe = Executable(graph, bound={"linear1.weight": w, ...})   # plan memory, generate, compile/load
    loss = exe(x, y, seed)         # the call inputs in graph order; returns the first scalar output
    exe.outputs                    # the output arrays (views of the executable's own buffers)

Bound inputs (params, optimizer state, saved values) are arrays fixed for the executable's
life: read in place, and written in place by "update:" outputs. Every other input is passed
per call. Outputs live in buffers owned by the executable and are overwritten by the next
call; copy them to keep them. mode="interpret" runs the same plan op by op with the numpy
reference kernels (graphc.ir.interpret) and fills the same output arrays.

The fast path checks nothing in Python: the native function's frozen numba signature rejects
other dtypes, ranks and memory layouts (TypeError) and the plan itself rejects other shapes;
the runner then takes the slow path (`_slow`), which converts what it can (non-contiguous
arrays, ndarray subclasses) or raises InputError naming the input, expected vs actual.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from graphc.ir import Graph, GraphcError, ShapeError, TensorType, interpret

from . import cache, glue_llvm, threads
from .codegen import GLUE_FAILED, PlanSource, generate, is_scalar_input
from .memory import ALIGN, MemoryPlan, plan_memory, update_targets

MODES = ("jit", "interpret")


class InputError(ShapeError):
    """An array given to a compiled plan does not have the type the plan was compiled for."""


class Executable:
    def __init__(self, graph: Graph, bound: Mapping[str, np.ndarray] | None = None, mode: str = "jit",
                 name: str | None = None, on_mismatch=None):
        if mode not in MODES:
            raise GraphcError(f"mode={mode!r}: expected one of {MODES}")
        graph.verify()
        self.graph, self.mode, self.name = graph, mode, name or graph.name
        # called as on_mismatch(k, input, array) before InputError when a call array has another
        # shape or dtype: a compiled object may re-specialise instead (by raising its own exception)
        self.on_mismatch = on_mismatch
        bound = dict(bound or {})
        unknown = sorted(set(bound) - set(graph.input_by_name))
        if unknown:
            raise GraphcError(f"plan {self.name}: bound arrays for unknown inputs {unknown}")
        self.bound = {k: _bound_array(self.name, graph.input_by_name[k].type, k, v) for k, v in bound.items()}
        self.memory_plan: MemoryPlan = plan_memory(graph)

        t0 = time.perf_counter()
        header = f"{graph}\n\n{self.memory_plan}"
        self.source: PlanSource = generate(graph, self.memory_plan, set(self.bound), header)
        codegen_s = time.perf_counter() - t0
        self.call_inputs = [graph.input_by_name[v] for v in self.source.call_inputs]
        self.arenas = {dt: _aligned_empty(n, TensorType((), dt).np_dtype) for dt, n in self.memory_plan.arena_bytes.items()}
        self._fill_constants()
        self.outputs = [self._storage(o.value) for o in graph.outputs]

        # the address table: bound arrays, then arenas (this object keeps them all alive)
        held = [self.bound[v] for v in self.source.bound_inputs] + [self.arenas[dt] for dt in self.source.arenas]
        self.table = np.array([a.ctypes.data for a in held], dtype=np.int64)
        self._scalar_out = self.source.returns_scalar
        # the native plan, when a caller may call it straight, as native(*call_inputs, table), and
        # send what it raises (TypeError, ValueError) to recover(error, *call_inputs): one Python
        # frame less than run() (TrainStep does, for small steps); None in the other modes
        self.native = None
        if mode == "interpret":
            self.compile_info = cache.CompileInfo("interpreted", codegen_seconds=codegen_s)
            self.run = self._interpret
        else:
            try:
                self.module, self.compile_info = cache.load_or_build(self.source.text, self.name, self._signature(),
                                                                        self.source.kernels, self.source.glue)
            except glue_llvm.Unsupported as e:  # found only when binding a callee: numba compiles the glue
                self.source = generate(graph, self.memory_plan, set(self.bound), header, no_glue=str(e))
                self.module, self.compile_info = cache.load_or_build(self.source.text, self.name, self._signature(),
                                                                        self.source.kernels)
            self.compile_info.codegen_seconds = codegen_s
            width = max((n.attr.get("threads", 1) for n in graph.nodes), default=1)
            if width > 1:  # the workers its widest split kernel asks for (the IR's `threads`)
                threads.ensure_pool(width)
            if self.source.glue is None:
                self.compile_info.glue = f"numba ({self.source.glue_fallback})"
            elif not self.compile_info.glue:  # loaded earlier in this process
                self.compile_info.glue = "llvm (reused)"
            self.plan = self.module.plan
            if cache.jit_disabled():  # plain Python accepts anything: check every call up front
                runner = self.module.make_runner(self.plan, self._slow, self.table)

                def run(*args):
                    with np.errstate(over="ignore"):  # the rng's uint64 arithmetic wraps on purpose
                        return runner(*self._checked(args))

                self.run = run
            else:
                self.plan.disable_compile()  # one frozen signature: other dtypes/layouts raise TypeError
                self.run = self.module.make_runner(self.plan, self._slow, self.table)
                self.native = self.plan

    def __call__(self, *args):
        """Run the plan on the call inputs (in graph order); returns the first scalar output, if any.
        (`exe.run(*args)` is the same without the argument count check.)"""
        if len(args) != len(self.call_inputs):
            self._checked(args)
        return self.run(*args)

    def _checked(self, args) -> list:
        """The call's arguments converted to what the plan was compiled for, or InputError."""
        if len(args) != len(self.call_inputs):
            raise InputError(f"plan {self.name} takes {len(self.call_inputs)} inputs "
                             f"({', '.join('%' + i.name for i in self.call_inputs)}), got {len(args)}")
        return [int(a) if i.name in self.source.scalar_inputs else self._fix(k, a)
                for k, (i, a) in enumerate(zip(self.call_inputs, args))]

    def recover(self, error: Exception, *args):
        """What run() does when the native call raised `error` on these call inputs."""
        return self._slow(error, *args)

    def _slow(self, error: Exception, *args):
        """The runner's fallback: the native call rejected its arguments, or a kernel raised."""
        fixed = self._checked(args)
        if all(f is a for f, a in zip(fixed, args)):  # the arguments were fine: the error is the plan's
            if str(error) == GLUE_FAILED:  # a kernel of the LLVM glue failed: numba's glue says why
                try:
                    self.module.plan_full(*args, self.table)
                except (TypeError, ValueError) as e:
                    error = e
            if isinstance(error, GraphcError) or not isinstance(error, ValueError):
                raise error
            raise GraphcError(f"plan {self.name}: {error}") from None
        return self.run(*fixed)

    # ---- setup
    def _signature(self):
        import numba

        sig = []
        for i in self.call_inputs:
            if i.name in self.source.scalar_inputs:
                sig.append(numba.types.int64)
            else:
                sig.append(numba.typeof(np.empty(i.type.shape, i.type.np_dtype)))
        sig.append(numba.typeof(self.table))
        return tuple(sig)

    def _fill_constants(self):
        for n in self.graph.nodes:
            s = self.memory_plan.slots.get(n.outputs[0])
            if n.op == "full" and s is not None and s.kind == "const":
                self._buffer_view(s.buffer, s.type)[...] = n.attr["value"]

    def _buffer_view(self, bid: int, t: TensorType) -> np.ndarray:
        b = self.memory_plan.buffers[bid]
        arena = self.arenas[b.dtype]
        lo = b.offset // arena.itemsize
        return arena[lo:lo + t.size].reshape(t.shape)

    def _storage(self, value: str) -> np.ndarray:
        """The array that holds `value` after a call (a view; never a copy)."""
        mp = self.memory_plan
        s = mp.slots[value]
        if s.kind == "input":
            for v, bid in mp.output_copies:
                if v == value:
                    return self._buffer_view(bid, s.type)
            return self.bound[value] if value in self.bound else None
        if s.kind == "inplace":
            return self.bound.get(s.target)
        if s.kind == "alias":
            src = self._storage(s.target)
            return None if src is None else src.reshape(s.type.shape)
        return self._buffer_view(s.buffer, s.type)

    def _fix(self, k: int, x):
        """Slow path of the runner's check: convert what can be converted, else raise naming the input."""
        inp = self.call_inputs[k]
        a = np.asarray(x)
        want = inp.type
        if a.dtype != want.np_dtype or a.shape != want.shape:
            if self.on_mismatch is not None:
                self.on_mismatch(k, inp, a)
            got = f"{a.dtype}{list(a.shape)}"
            if a.ndim != want.rank:
                why = f"rank {a.ndim}, expected rank {want.rank}"
            elif a.dtype != want.np_dtype:
                why = f"dtype {a.dtype}, expected {want.np_dtype}"
            else:
                bad = [d for d in range(a.ndim) if a.shape[d] != want.shape[d]]
                why = f"dim {bad[0]} is {a.shape[bad[0]]}, expected {want.shape[bad[0]]}"
            raise InputError(f"plan {self.name}: input %{inp.name} expected {want} "
                             f"({want.np_dtype}{list(want.shape)}), got {got}: {why}")
        if a is x and type(a) is np.ndarray and a.flags.c_contiguous and a.flags.writeable:
            return x
        if not a.flags.writeable:  # read-only (np.frombuffer, flags.writeable=False): the plan takes a copy
            return np.array(a, order="C").view(np.ndarray)
        return np.ascontiguousarray(a).view(np.ndarray)

    # ---- the reference path
    def _interpret(self, *args):
        full = {i.name: np.asarray(a, dtype=np.int64) if i.name in self.source.scalar_inputs else a
                for i, a in zip(self.call_inputs, self._checked(args))}
        full.update(self.bound)
        results = interpret(self.graph, full)
        targets = update_targets(self.graph)
        writes = []
        for o, r, dst in zip(self.graph.outputs, results, self.outputs):
            if dst is not None:
                writes.append((dst, r))
            if o.value in targets:
                writes.append((full[targets[o.value]], r))
        for dst, r in writes:  # after computing everything, as the native plan's updates land last
            dst[...] = r
        if self._scalar_out is not None:
            return float(results[[o.value for o in self.graph.outputs].index(self._scalar_out)])
        return None

    def __repr__(self):
        return f"<Executable {self.name} ({self.mode}, {self.compile_info.status})>"


def _bound_array(plan: str, t: TensorType, name: str, v) -> np.ndarray:
    a = v if isinstance(v, np.ndarray) else np.asarray(v)
    if a.dtype != t.np_dtype or a.shape != t.shape:
        raise InputError(f"plan {plan}: bound input %{name} expected {t}, got {a.dtype}{list(a.shape)}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise InputError(f"plan {plan}: bound input %{name} must be a writeable C-contiguous array (updated in place)")
    return a.view(np.ndarray)


def _aligned_empty(nbytes: int, dtype: np.dtype) -> np.ndarray:
    """A zeroed 1-D array of `nbytes` whose data starts on an ALIGN-byte boundary."""
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + nbytes].view(dtype)


__all__ = ["Executable", "InputError", "MODES", "is_scalar_input"]
