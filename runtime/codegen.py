"""Code generation: a plan graph and its memory plan become the source of one Python module.

The module holds `plan`, one numba function that calls the kernels in graph order on views of
preallocated buffers (so a whole forward, backward or train step is a single call into native
code), and `make_runner`, the plain-Python entry. `plan` takes the call's arrays and one int64
`table` of addresses: the bound arrays (params, optimizer state, saved values) and the arenas,
viewed with numba.carray, so a call crosses into native code with few arguments. `plan` checks
the call's shapes itself (its numba signature, compiled once and frozen, checks dtypes, ranks
and C order); the runner sends any call that fails those checks to the executable's slow path,
which converts what it can and otherwise raises naming the input. The text is deterministic
(graph order, no set/hash order) and readable: each call is preceded by its IR line, and the
module's docstring holds the plan and its memory plan.
"""
from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass

from graphc.ir import Graph, TensorType
from graphc.ir.text import format_node

from .kernels import KERNELS, Code, Operand, Site, calls
from .lower import HELPERS, kernel_function
from .memory import MemoryPlan

# njit options of the generated plan (kernels carry their own)
PLAN_JIT = 'cache=True, nogil=True, error_model="numpy"'
RESERVED = {"np", "njit", "carray", "address", "plan", "make_runner", "run", "slow", "table", "e"}
SHAPE_MISMATCH = "graphc: call input shapes differ from the plan's"


@dataclass
class PlanSource:
    text: str
    call_inputs: list[str]  # graph inputs passed on every call, in order
    bound_inputs: list[str]  # graph inputs bound once (closure of the runner), in order
    scalar_inputs: list[str]  # call inputs passed as Python ints (rng seeds)
    arenas: list[str]  # dtypes of the arena arrays, in table order after the bound inputs
    returns_scalar: str | None  # the value whose first element `plan` returns

    @property
    def table(self) -> list[str]:
        """What the address table holds, in order: bound inputs, then "arena:<dtype>"."""
        return self.bound_inputs + [f"arena:{dt}" for dt in self.arenas]


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

    def __init__(self, g: Graph, mp: MemoryPlan, names: _Names, scalars: set[str], table: list[str]):
        self.g, self.mp, self.names, self.scalars = g, mp, names, scalars
        self.slot = {name: k for k, name in enumerate(table)}
        self.lines: list[str] = []
        self.done: set[str] = set()

    def _emit(self, name: str, line: str, first: int | None = None) -> Code:
        """Add a view line once; `first` places it among the table views at the top, else lines
        follow the order the kernels first need them."""
        if name not in self.done:
            self.done.add(name)
            self.lines.append(((0, first) if first is not None else (1, len(self.lines)), line))
        return Code(name)

    def _carray(self, name: str, entry: str, size: int, dtype: str) -> Code:
        np_name = TensorType((), dtype).np_dtype.name
        k = self.slot[entry]
        return self._emit(name, f"{name} = carray(address(table[{k}]), ({size},), np.{np_name})", first=k)

    def buffer_flat(self, bid: int, size: int, tag: str) -> Code:
        b = self.mp.buffers[bid]
        item = TensorType((), b.dtype).np_dtype.itemsize
        lo = b.offset // item
        arena = self._carray(f"arena_{b.dtype}", f"arena:{b.dtype}", self.mp.arena_bytes[b.dtype] // item, b.dtype)
        return self._emit(f"{tag}_f", f"{tag}_f = {arena}[{lo}:{lo + size}]")

    def flat(self, value: str) -> Code:
        s = self.mp.slots[value]
        n = self.names(value)
        if s.kind == "input":
            if value in self.scalars:
                return self._emit(f"{n}_f", f"{n}_f = np.full(1, {n}, dtype=np.int64)")
            if value in self.slot:  # bound: viewed through the address table
                return self._carray(n if s.type.rank == 1 else f"{n}_f", value, max(s.type.size, 1), s.type.dtype)
            if s.type.rank == 1:
                return Code(n)
            return self._emit(f"{n}_f", f"{n}_f = {n}.reshape({max(s.type.size, 1)})")
        if s.kind in ("alias", "inplace"):
            return self.flat(s.target)
        return self.buffer_flat(s.buffer, s.type.size, n)

    def shaped(self, value: str) -> Code:
        s = self.mp.slots[value]
        n = self.names(value)
        if s.kind == "input" and value not in self.scalars and value not in self.slot:
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
    views = _Views(g, mp, names, scalars, bound_inputs + [f"arena:{dt}" for dt in arenas])

    body: list[str] = []
    used: dict[str, None] = {}

    def site(k: int, n) -> Site:
        return Site(n, [views.operand(i) for i in n.inputs], [views.operand(o) for o in n.outputs],
                    [views.scratch_operand(s) for s in mp.scratch.get(k, ())])

    defs: list[str] = []  # the generated kernel functions (one per kernel node)
    for k, n in enumerate(g.nodes):
        if n.op == "full" and mp.slots[n.out].kind == "const":
            continue  # filled once when the buffers are allocated
        if n.body is not None:  # a kernel of the kernel stage: its generated loop nest
            fn = f"kernel{k}"
            src, ins, outs = kernel_function(fn, n, {v for v in n.inputs if v in scalars}, names)
            defs.append(src)
            members = n.body.nodes
            body.append(f"    # {fn}: kernel {{kind={n.attr['kind']}}} over {len(members)} nodes:")
            body += [f"    #   {format_node(m)}" for m in members]
            scratch = [views.scratch_operand(sl).f for sl in mp.scratch.get(k, ())]
            args = [views.scalar(v) if v in scalars else views.flat(v) for v in ins]
            args += [views.flat(v) for v in outs if not v.startswith("#")] + scratch
            body.append(f"    {fn}({', '.join(str(x) for x in args)})")
            continue
        body.append(f"    # {format_node(n)}")
        for fn, args in calls(KERNELS[n.op].call(site(k, n))):
            used[fn.__name__] = fn.__module__
            body.append(f"    k_{fn.__name__}({', '.join(_render(a) for a in args)})")
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
        body.append(f"    return float({views.scalar(returns)})")

    params = [names(v) for v in call_inputs] + ["table"]
    checked = [v for v in call_inputs if v not in scalars]
    lines = ['"""graphc plan ' + g.name + ": generated by graphc.runtime.codegen; the cache key covers this text.",
             "", *_quote(header), '"""',
             "import numpy as np",
             "from numba import carray, njit", "",
             "from graphc.runtime.kernels import address"]
    lines += [f"from {used[f] or 'graphc.runtime.kernels'} import {f} as k_{f}" for f in sorted(used)]
    if defs:
        lines[lines.index("import numpy as np")] = "import math\n\nimport numpy as np"
        lines += [f"from graphc.runtime.lower import {', '.join(HELPERS)}"]
        lines += ["", "", *("\n\n".join(defs).rstrip("\n").split("\n"))]
    lines += ["", "", f"@njit({PLAN_JIT})", f"def plan({', '.join(params)}):"]
    if checked:
        cond = " or ".join(f"{names(v)}.shape != {g.types[v].shape!r}" for v in checked)
        lines += [f"    if {cond}:", f"        raise ValueError({SHAPE_MISMATCH!r})"]
    if views.lines:
        lines.append("    # storage: views of the bound arrays, arenas and inputs (no allocation)")
        lines += [f"    {ln}" for _, ln in sorted(views.lines)]
    lines += body or ["    pass"]
    lines += ["", ""] + _runner([names(v) for v in call_inputs])
    return PlanSource("\n".join(lines) + "\n", call_inputs, bound_inputs, sorted(scalars), arenas, returns)


def _quote(text: str) -> list[str]:
    return [ln.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for ln in text.splitlines()]


def _runner(args: list[str]) -> list[str]:
    """`make_runner(plan, slow, table) -> run(*call_inputs)`: one native call; anything the plan's
    signature or shape check rejects (or a kernel raises) goes to `slow`, which converts or explains."""
    a = ", ".join(args)
    return ["def make_runner(plan, slow, table):",
            f"    def run({a}):",
            "        try:",
            f"            return plan({a + ', ' if a else ''}table)",
            "        except (TypeError, ValueError) as e:",
            f"            return slow(e{', ' + a if a else ''})",
            "    return run"]
