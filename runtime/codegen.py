"""Code generation: a plan graph and its memory plan become the source of one Python module.

The module holds `plan`, one numba function that calls the kernels in graph order on views of
preallocated buffers (so a whole forward, backward or train step is a single call into native
code), and `make_runner`, a plain-Python entry that checks the call's arrays cheaply and calls
`plan` with the bound arrays (params, optimizer state, saved values, arenas) as closure
variables. The text is deterministic (graph order, no set/hash order) and readable: each call
is preceded by its IR line, and the module's docstring holds the plan and its memory plan.
"""
from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass

from graphc.ir import Graph, TensorType
from graphc.ir.text import format_node

from .kernels import KERNELS, Code, Operand, Site
from .memory import MemoryPlan

# njit options of the generated plan (kernels carry their own)
PLAN_JIT = 'cache=True, nogil=True, error_model="numpy"'
RESERVED = {"np", "njit", "plan", "make_runner", "run", "ndarray", "fix"}


@dataclass
class PlanSource:
    text: str
    call_inputs: list[str]  # graph inputs passed on every call, in order
    bound_inputs: list[str]  # graph inputs bound once (closure of the runner), in order
    scalar_inputs: list[str]  # call inputs passed as Python ints (rng seeds)
    arenas: list[str]  # dtypes of the arena arrays, in parameter order
    returns_scalar: str | None  # the value whose first element `plan` returns


def is_scalar_input(inp) -> bool:
    """rng seeds travel as Python ints: cheaper to pass than a 0-d array."""
    return inp.kind == "rng" and inp.type.shape == () and inp.type.dtype == "i64"


class _Names:
    """Python identifiers for IR values: %0 -> v0, %linear1.weight -> linear1_weight (unique, stable)."""

    def __init__(self):
        self.taken = set(RESERVED)
        self.of: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        if value not in self.of:
            base = re.sub(r"\W", "_", value)
            base = f"v{base}" if base[:1].isdigit() else base
            if keyword.iskeyword(base) or base in self.taken or base.startswith(("k_", "arena_", "dt_")):
                base = "v_" + base
            name, k = base, 2
            while name in self.taken:
                name, k = f"{base}_{k}", k + 1
            self.taken.add(name)
            self.of[value] = name
        return self.of[value]


def _render(x) -> str:
    if isinstance(x, Code):
        return str(x)
    if isinstance(x, bool) or x is None:
        return repr(x)
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else f"float({str(x)!r})"
    if isinstance(x, (int, tuple)):
        return repr(x)
    raise TypeError(f"cannot render kernel argument {x!r}")


class _Views:
    """Source expressions of each value's storage; emits a view line the first time one is needed."""

    def __init__(self, g: Graph, mp: MemoryPlan, names: _Names, scalars: set[str]):
        self.g, self.mp, self.names, self.scalars = g, mp, names, scalars
        self.lines: list[str] = []
        self.done: set[str] = set()

    def _emit(self, name: str, line: str) -> Code:
        if name not in self.done:
            self.done.add(name)
            self.lines.append(line)
        return Code(name)

    def buffer_flat(self, bid: int, size: int, tag: str) -> Code:
        b = self.mp.buffers[bid]
        item = TensorType((), b.dtype).np_dtype.itemsize
        lo = b.offset // item
        return self._emit(f"{tag}_f", f"{tag}_f = arena_{b.dtype}[{lo}:{lo + size}]")

    def flat(self, value: str) -> Code:
        s = self.mp.slots[value]
        n = self.names(value)
        if s.kind == "input":
            if value in self.scalars:
                return self._emit(f"{n}_f", f"{n}_f = np.full(1, {n}, dtype=np.int64)")
            if s.type.rank == 1:
                return Code(n)
            return self._emit(f"{n}_f", f"{n}_f = {n}.reshape({max(s.type.size, 1)})")
        if s.kind in ("alias", "inplace"):
            return self.flat(s.target)
        return self.buffer_flat(s.buffer, s.type.size, n)

    def shaped(self, value: str) -> Code:
        s = self.mp.slots[value]
        n = self.names(value)
        if s.kind == "input" and value not in self.scalars:
            return Code(n)
        if s.kind == "inplace":
            return self.shaped(s.target)
        if s.type.rank <= 1:
            return self.flat(value)
        f = self.flat(value)
        return self._emit(n, f"{n} = {f}.reshape({s.type.shape!r})")

    def scalar(self, value: str) -> Code:
        if value in self.scalars:
            return Code(self.names(value))
        return Code(f"{self.flat(value)}[0]")

    def operand(self, value: str) -> Operand:
        return _Lazy(self.mp.slots[value].type, lambda: self.shaped(value), lambda: self.flat(value),
                     lambda: self.scalar(value))

    def scratch_operand(self, slot) -> Operand:
        name, t = self.names(slot.value), slot.type

        def flat():
            return self.buffer_flat(slot.buffer, t.size, name)

        def shaped():
            f = flat()
            return f if t.rank <= 1 else self._emit(name, f"{name} = {f}.reshape({t.shape!r})")

        return _Lazy(t, shaped, flat, lambda: Code(f"{flat()}[0]"))


class _Lazy(Operand):
    """An operand whose views are emitted only when a kernel asks for them."""

    def __init__(self, type, a, f, s):  # noqa: A002  (a, f, s: callables giving Code)
        self.type, self._a, self._f, self._s = type, a, f, s

    a = property(lambda self: self._a())
    f = property(lambda self: self._f())
    s = property(lambda self: self._s())


def generate(g: Graph, mp: MemoryPlan, bound: set[str], header: str = "") -> PlanSource:
    names = _Names()
    scalars = {i.name for i in g.inputs if i.name not in bound and is_scalar_input(i)}
    call_inputs = [i.name for i in g.inputs if i.name not in bound]
    bound_inputs = [i.name for i in g.inputs if i.name in bound]
    for v in call_inputs + bound_inputs:
        names(v)
    arenas = sorted(mp.arena_bytes)
    views = _Views(g, mp, names, scalars)

    body: list[str] = []
    used: dict[str, None] = {}
    for k, n in enumerate(g.nodes):
        if n.op == "full" and mp.slots[n.out].kind == "const":
            continue  # filled once when the buffers are allocated
        site = Site(n, [views.operand(i) for i in n.inputs], [views.operand(o) for o in n.outputs],
                    [views.scratch_operand(s) for s in mp.scratch.get(k, ())])
        fn, args = KERNELS[n.op].call(site)
        kname = "k_" + fn.__name__
        used[fn.__name__] = None
        body.append(f"    # {format_node(n)}")
        body.append(f"    {kname}({', '.join(_render(a) for a in args)})")
    if mp.output_copies or mp.update_copies:
        used["copy"] = None
        body.append("    # outputs that are inputs, then updates that could not be written in place")
    for v, bid in mp.output_copies:
        t = g.types[v]
        body.append(f"    k_copy({views.flat(v)}, {views.buffer_flat(bid, t.size, f'out_{names(v)}')})")
    for v, x in mp.update_copies:
        body.append(f"    k_copy({views.flat(v)}, {views.flat(x)})")

    returns = next((o.value for o in g.outputs if g.types[o.value].shape == () and g.types[o.value].is_float), None)
    if returns is not None:
        body.append(f"    return {views.scalar(returns)}")

    params = [names(v) for v in call_inputs + bound_inputs] + [f"arena_{dt}" for dt in arenas]
    lines = ['"""graphc plan ' + g.name + ": generated by graphc.runtime.codegen; the cache key covers this text.",
             "", *_quote(header), '"""',
             "import numpy as np",
             "from numba import njit", ""]
    lines += [f"from graphc.runtime.kernels import {f} as k_{f}" for f in sorted(used)]
    lines += ["", "", f"@njit({PLAN_JIT})", f"def plan({', '.join(params)}):"]
    if views.lines:
        lines.append("    # storage: views of the arenas and inputs (no allocation)")
        lines += [f"    {ln}" for ln in views.lines]
    lines += body or ["    pass"]
    lines += ["", ""] + _runner(g, call_inputs, bound_inputs, scalars, arenas, names)
    return PlanSource("\n".join(lines) + "\n", call_inputs, bound_inputs, sorted(scalars), arenas, returns)


def _quote(text: str) -> list[str]:
    return [ln.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for ln in text.splitlines()]


def _runner(g: Graph, call_inputs, bound_inputs, scalars, arenas, names) -> list[str]:
    """`make_runner(plan, ndarray, fix, dtypes..., bound..., arenas...) -> run(*call_inputs)`."""
    dtypes = sorted({g.types[v].dtype for v in call_inputs if v not in scalars})
    head = ["plan", "ndarray", "fix"] + [f"dt_{d}" for d in dtypes] + [names(v) for v in bound_inputs] + \
           [f"arena_{dt}" for dt in arenas]
    args = [names(v) for v in call_inputs]
    out = [f"def make_runner({', '.join(head)}):",
           '    """Check the call\'s arrays (cheaply: exact ndarray, dtype, shape, C order), then one native call."""',
           f"    def run({', '.join(args)}):"]
    for k, v in enumerate(call_inputs):
        if v in scalars:
            continue
        t, n = g.types[v], names(v)
        out.append(f"        if {n}.__class__ is not ndarray or {n}.dtype is not dt_{t.dtype} or {n}.shape != {t.shape!r} "
                   f"or not {n}.flags.c_contiguous:")
        out.append(f"            {n} = fix({k}, {n})")
    params = [names(v) for v in call_inputs + bound_inputs] + [f"arena_{dt}" for dt in arenas]
    out.append(f"        return plan({', '.join(params)})")
    out.append("    return run")
    return out
