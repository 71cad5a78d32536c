"""Code generation: a plan graph and its memory plan become the source of one Python module.

The module holds `plan`, one numba function that calls the kernels in graph order on views of
preallocated buffers (so a whole forward, backward or train step is a single call into native
code), and `make_runner`, the plain-Python entry. `plan` takes the call's arrays and one int64
`table` of addresses: the bound arrays (params, optimizer state, saved values) and the arenas,
so a call crosses into native code with few arguments; every value's storage is a `view` of one
of them at an offset the memory plan fixed (runtime/plan_jit.py). `plan` checks
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
from dataclasses import dataclass, field

from graphc.ir import Graph, TensorType
from graphc.ir.text import format_node

from .kernels import KERNELS, Code, Operand, Site, calls
from . import glue_llvm, lower_llvm, lower_nodes
from .kernel_lib import KernelSource, LlvmKernel
from .llvm_ops import LlvmCall
from .lower import HELPERS, kernel_function
from .memory import MemoryPlan

# njit options of the generated plan (kernels carry their own)
PLAN_JIT = 'cache=True, nogil=True, error_model="numpy", pipeline_class=PlanCompiler'
RESERVED = {"np", "njit", "view", "math", "library_kernel", "llvm_kernel", "plan", "make_runner", "run", "slow", "table",
            "glue", "glue_function", "plan_full", "i64",
            "e"}
SHAPE_MISMATCH = "graphc: call input shapes differ from the plan's"
GLUE_FAILED = "graphc: a kernel of the LLVM glue failed"  # the runner then runs plan_full for its error
_KERNEL = "KERNEL"  # placeholder name of a generated kernel function while its source is compared


@dataclass
class PlanSource:
    text: str
    call_inputs: list[str]  # graph inputs passed on every call, in order
    bound_inputs: list[str]  # graph inputs bound once (closure of the runner), in order
    scalar_inputs: list[str]  # call inputs passed as Python ints (rng seeds)
    arenas: list[str]  # dtypes of the arena arrays, in table order after the bound inputs
    returns_scalar: str | None  # the value whose first element `plan` returns
    kernels: list = field(default_factory=list)  # its generated kernels (KernelSource, LlvmKernel), for the library
    glue: "glue_llvm.Glue | None" = None  # the glue lowered to LLVM IR (None: numba compiles `plan`)
    glue_fallback: str = ""  # why not, when not
    call_nodes: list = field(default_factory=list)  # per glue call: (its node's index in the graph or None for a copy, callee)

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
    if isinstance(x, bool):
        # np.bool_(b), not b: a constant True/False is typed Literal[bool] and compiled the kernel
        # twice (conv2d_wide_backward with and without its input gradient: 2 s each, cold)
        return f"np.bool_({x!r})"
    if x is None:
        return repr(x)
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else f"float({str(x)!r})"
    if isinstance(x, int):
        # i64(n) (numpy's int64), not n: numba types a constant argument, and each int of a constant
        # tuple, as Literal[int](n) and compiles the library kernel once per value, so every new
        # shape or stride tuple recompiled every kernel it calls (GPT: 13 copies of `strided`)
        return f"i64({x!r})"
    if isinstance(x, tuple):
        if x and all(isinstance(e, int) and not isinstance(e, bool) for e in x):
            return "(" + ", ".join(map(_render, x)) + ("," if len(x) == 1 else "") + ")"
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

    def _np(self, dtype: str) -> str:
        return f"np.{TensorType((), dtype).np_dtype.name}"

    def _where(self, value: str) -> tuple[str, int] | None:
        """(integer address expression, element offset) of a value's storage; None for a call input."""
        s = self.mp.slots[value]
        if s.kind == "input":
            return (f"table[{self.slot[value]}]", 0) if value in self.slot else None
        if s.kind in ("alias", "inplace"):
            return self._where(s.target)
        if s.kind == "piece":  # a strided slice of a concat's buffer
            base, off = self._buffer_where(s.buffer)
            return base, off + s.view[0]
        return self._buffer_where(s.buffer)

    def _buffer_where(self, bid: int) -> tuple[str, int]:
        b = self.mp.buffers[bid]
        entry = f"arena:{b.dtype}"
        base = self._emit(f"arena_{b.dtype}", f"arena_{b.dtype} = table[{self.slot[entry]}]", first=self.slot[entry])
        return str(base), b.offset // TensorType((), b.dtype).np_dtype.itemsize

    def address(self, value: str) -> str:
        """An integer expression of the address of a value's first element: what an LLVM kernel
        takes (no view to type and build, unlike `flat`)."""
        s = self.mp.slots[value]
        if s.kind in ("alias", "inplace"):
            return self.address(s.target)
        where = self._where(value)
        if where is None:  # a call input
            return f"{self.names(value)}.ctypes.data"
        return self._offset(where, s.type.dtype)

    def buffer_address(self, bid: int) -> str:
        return self._offset(self._buffer_where(bid), self.mp.buffers[bid].dtype)

    def _offset(self, where: tuple[str, int], dtype: str) -> str:
        base, off = where
        return f"{base} + {off * TensorType((), dtype).np_dtype.itemsize}" if off else base

    def _view(self, name: str, where: tuple[str, int], shape: tuple, dtype: str) -> Code:
        return self._emit(name, f"{name} = view({where[0]}, {where[1]}, {shape!r}, {self._np(dtype)})")

    def buffer_flat(self, bid: int, size: int, tag: str) -> Code:
        return self._view(f"{tag}_f", self._buffer_where(bid), (size,), self.mp.buffers[bid].dtype)

    def flat(self, value: str) -> Code:
        s = self.mp.slots[value]
        n = self.names(value)
        if s.kind == "input" and value in self.scalars:
            return self._emit(f"{n}_f", f"{n}_f = np.full(1, {n}, dtype=np.int64)")
        if s.kind in ("alias", "inplace"):
            return self.flat(s.target)
        where = self._where(value)
        if where is None:  # a call input
            if s.type.rank == 1:
                return Code(n)
            return self._emit(f"{n}_f", f"{n}_f = {n}.reshape({max(s.type.size, 1)})")
        name = n if s.kind == "input" and s.type.rank == 1 else f"{n}_f"
        if s.kind == "piece":  # its elements spread over this extent of the concat's buffer
            extent = 1 + sum((d - 1) * st for d, st in zip(s.type.shape, s.view[1]))
            return self._view(name, where, (extent,), s.type.dtype)
        return self._view(name, where, (max(s.type.size, 1),), s.type.dtype)

    def shaped(self, value: str) -> Code:
        s = self.mp.slots[value]
        n = self.names(value)
        if s.kind == "input" and value not in self.scalars and value not in self.slot:
            return Code(n)
        if s.kind == "inplace":
            return self.shaped(s.target)
        if s.type.rank <= 1:
            return self.flat(value)
        where = self._where(value)
        if where is None:  # an alias of a call input
            return self._emit(n, f"{n} = {self.flat(value)}.reshape({s.type.shape!r})")
        return self._view(n, where, s.type.shape, s.type.dtype)

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
            return flat() if t.rank <= 1 else self._view(name, self._buffer_where(slot.buffer), t.shape, t.dtype)

        return _Lazy(t, shaped, flat, lambda: Code(f"{flat()}[0]"))


class _Lazy(Operand):
    """An operand whose views are emitted only when a kernel asks for them."""

    def __init__(self, type, a, f, s):  # noqa: A002  (a, f, s: callables giving Code)
        self.type, self._a, self._f, self._s = type, a, f, s

    a = property(lambda self: self._a())
    f = property(lambda self: self._f())
    s = property(lambda self: self._s())


def use_llvm_glue() -> bool:
    """The plan's glue lowers to LLVM IR (runtime/glue_llvm.py) unless GRAPHC_GLUE=numba."""
    import os

    return os.environ.get("GRAPHC_GLUE", "llvm").strip().lower() != "numba"


def use_llvm() -> bool:
    """Kernels lower to LLVM IR unless plans run as plain Python (NUMBA_DISABLE_JIT) or GRAPHC_LLVM=0
    asks for numba's lowering of every kernel (to compare the two)."""
    import os

    from numba.core import config

    return not config.DISABLE_JIT and os.environ.get("GRAPHC_LLVM", "1") != "0"


def generate(g: Graph, mp: MemoryPlan, bound: set[str], header: str = "", no_glue: str = "",
             profile: bool = False) -> PlanSource:
    """The plan module's source for `g` with memory plan `mp`. `no_glue`: if not empty, why the
    glue must not be lowered to LLVM IR (a reason found while loading an earlier attempt).
    profile: the glue is the instrumented variant of runtime/glue_llvm.py (graphc.profile)."""
    names = _Names()
    llvm = use_llvm()
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

    defs: list[str] = []  # the generated kernel functions: one per distinct source
    kernel_of: dict[tuple, str] = {}  # (source with a placeholder name, dtypes) -> its function's name
    kernels: list[KernelSource] = []  # the same, for the kernel library
    kernel_by_fn: dict = {}  # function name -> its KernelSource or LlvmKernel
    def llvm_function(ir: str, dtypes: list[str], by: str = "lower_llvm", stem: str = "") -> str:
        """The plan's name of the LLVM kernel with this IR, defined on first use: kernelN, or
        k_ir_<stem> for an op kernel of runtime/llvm_ops.py (named after the library kernel it
        replaces; k_: value names never start so, see _Names)."""
        fn = kernel_of.get((ir, tuple(dtypes)))
        if fn is None:
            fn = f"kernel{len(kernel_of)}"
            if stem:
                fn, j = f"k_ir_{stem}", 2
                while fn in kernel_by_fn:
                    fn, j = f"k_ir_{stem}_{j}", j + 1
            kernel_of[(ir, tuple(dtypes))] = fn
            lk = LlvmKernel(ir, dtypes)
            kernels.append(lk)
            kernel_by_fn[fn] = lk
            status = ", status=True" if lk.status else ""
            defs.append(f"# LLVM IR (runtime/{by}.py), compiled by llvmlite into the kernel library\n"
                        f"{fn} = llvm_kernel({lk.symbol!r}, {tuple(dtypes)!r}{status})\n"
                        + "".join(f"#   {ln}\n" if ln else "#\n" for ln in ir.rstrip("\n").split("\n")))
        return fn

    owner: list = []  # per body line: the index of the node it belongs to (None: the copies at the end)
    for k, n in enumerate(g.nodes):
        owner += [k - 1] * (len(body) - len(owner))
        if n.op == "full" and mp.slots[n.out].kind == "const":
            continue  # filled once when the buffers are allocated
        if n.op == "concat" and n.out in mp.concats_in_place:
            body.append(f"    # {format_node(n)}: nothing to move, its producers wrote the pieces (memory plan)")
            continue
        if n.body is not None:  # a kernel of the kernel stage: its generated loop nest
            node_scalars = {v for v in n.inputs if v in scalars}
            why = "GRAPHC_LLVM=0" if not llvm else ""
            lowered = None
            pieces = {o: mp.slots[o].view[1] for o in n.outputs if mp.slots[o].kind == "piece"}
            if llvm:
                try:
                    lowered = lower_llvm.kernel_ir(n, node_scalars, pieces)
                except lower_llvm.Unsupported as e:  # this kernel keeps numba's lowering
                    why = str(e)
            if lowered is not None:
                ir, ins, outs, dtypes = lowered
                fn = llvm_function(ir, dtypes)
            else:
                src, ins, outs = kernel_function(_KERNEL, n, node_scalars, names, pieces)
                dtypes = ["i64 scalar" if v in scalars else g.types[v].dtype for v in ins]
                dtypes += [g.types[v].dtype for v in outs if not v.startswith("#")]
                dtypes += [sl.type.dtype for sl in mp.scratch.get(k, ())]
                fn = kernel_of.get((src, tuple(dtypes)))
                if fn is None:  # the first kernel of this structure: define it (later ones call it too)
                    fn = kernel_of[(src, tuple(dtypes))] = f"kernel{len(kernel_of)}"
                    body_src = src[src.index(f"def {_KERNEL}("):]  # without lower's @njit line
                    ks = KernelSource(body_src.replace(f"def {_KERNEL}(", "def kernel(", 1), dtypes, why)
                    kernels.append(ks)
                    kernel_by_fn[fn] = ks
                    defs.append(f"@library_kernel({ks.key!r})\n" + body_src.replace(f"def {_KERNEL}(", f"def {fn}(", 1))
            members = n.body.nodes
            body.append(f"    # {fn}: kernel {{kind={n.attr['kind']}}} over {len(members)} nodes:")
            body += [f"    #   {format_node(m)}" for m in members]
            if lowered is not None:  # LLVM kernels take addresses: no views to build
                scratch = [views.buffer_address(sl.buffer) for sl in mp.scratch.get(k, ())]
                args = [str(views.scalar(v)) if v in scalars else views.address(v) for v in ins]
                args += [views.address(v) for v in outs if not v.startswith("#")] + scratch
            else:
                scratch = [str(views.scratch_operand(sl).f) for sl in mp.scratch.get(k, ())]
                args = [str(views.scalar(v)) if v in scalars else str(views.flat(v)) for v in ins]
                args += [str(views.flat(v)) for v in outs if not v.startswith("#")] + scratch
            body.append(f"    {fn}({', '.join(args)})")
            continue
        body.append(f"    # {format_node(n)}")
        library = calls(KERNELS[n.op].call(site(k, n)))
        if llvm and library and not any(isinstance(fn, LlvmCall) for fn, _ in library):  # the node's own LLVM function (runtime/lower_nodes.py)
            slots = mp.scratch.get(k, ())
            try:
                ir, ins, outs, dtypes = lower_nodes.node_ir(n, g.types, {v for v in n.inputs if v in scalars},
                                                            [sl.type for sl in slots])
            except lower_llvm.Unsupported:
                pass  # its library kernel
            else:
                args = [str(views.scalar(v)) if v in scalars else views.address(v) for v in ins]
                args += [str(v) if isinstance(v, int) else  # a constant argument (an element count)
                         views.buffer_address(slots[int(v.removeprefix("#scratch"))].buffer) if v.startswith("#")
                         else views.address(v) for v in outs]
                call = f"{llvm_function(ir, dtypes, 'lower_nodes')}({', '.join(args)})"
                error = lower_nodes.ERRORS.get(n.op)  # its status checked, its library kernel's error raised
                body.append(f"    if {call} != 0: raise ValueError({error!r})" if error else f"    {call}")
                continue
        for fn, args in library:
            if isinstance(fn, LlvmCall):  # an op kernel lowered to LLVM IR for this node (runtime/llvm_ops.py)
                name = llvm_function(fn.ir, list(fn.dtypes), "llvm_ops", stem=fn.name)
                body.append(f"    {name}({', '.join(f'{a}.ctypes.data' for a in args)})")
                continue
            used[fn.__name__] = fn.__module__
            body.append(f"    k_{fn.__name__}({', '.join(_render(a) for a in args)})")
    owner += [len(g.nodes) - 1] * (len(body) - len(owner))
    if mp.output_copies or mp.update_copies:
        body.append("    # outputs that are inputs, then updates that could not be written in place")

    def llvm_copy(v: str, src: str, dst: str) -> bool:
        """The copy as an LLVM function (runtime/lower_nodes.copy_ir), if it has one."""
        try:
            ir, dtypes = lower_nodes.copy_ir(g.types[v].dtype, g.types[v].size) if llvm else (None, None)
        except lower_llvm.Unsupported:
            ir = None
        if ir is not None:
            body.append(f"    {llvm_function(ir, dtypes, 'lower_nodes')}({src}, {dst})")
        return ir is not None

    for v, bid in mp.output_copies:
        t = g.types[v]
        if not llvm_copy(v, views.address(v), views.buffer_address(bid)):
            used["copy"] = None
            body.append(f"    k_copy({views.flat(v)}, {views.buffer_flat(bid, t.size, f'out_{names(v)}')})")
    for v, x in mp.update_copies:
        if not llvm_copy(v, views.address(v), views.address(x)):
            used["copy"] = None
            body.append(f"    k_copy({views.flat(v)}, {views.flat(x)})")

    returns = next((o.value for o in g.outputs if g.types[o.value].shape == () and g.types[o.value].is_float), None)
    ret = [f"    return float({views.scalar(returns)})"] if returns is not None else []

    params = [names(v) for v in call_inputs] + ["table"]
    checked = [v for v in call_inputs if v not in scalars]
    view_lines = [f"    {ln}" for _, ln in sorted(views.lines)]
    glue, glue_why = None, no_glue or ("GRAPHC_GLUE=numba" if not use_llvm_glue() else "")
    if llvm and not glue_why:
        llvm_symbols = {fn: k.symbol for fn, k in kernel_by_fn.items() if isinstance(k, LlvmKernel)}
        numba_keys = {fn: k.key for fn, k in kernel_by_fn.items() if isinstance(k, KernelSource)}

        def resolve(name):
            if name in llvm_symbols:
                return "llvm", llvm_symbols[name]
            if name.startswith("k_") and name[2:] in used:
                return "numba", f"{used[name[2:]] or 'graphc.runtime.kernels'}:{name[2:]}"
            if name in numba_keys:  # a generated kernel numba compiled (its library key names it)
                return "numba", f"plan:{name}:{numba_keys[name]}"
            raise glue_llvm.Unsupported(f"call of {name}")
        try:
            glue = glue_llvm.translate(view_lines + body, params[:-1], {names(v) for v in scalars}, resolve,
                                       {names(v): (g.types[v].np_dtype.name, g.types[v].shape)
                                        for v in call_inputs if v not in scalars}, profile)
        except glue_llvm.Unsupported as e:
            glue_why = str(e)
    call_nodes = []  # (node index or None, the called function's name in the text)
    for i in ([] if glue is None else glue.sites):
        j = i - len(view_lines)
        call_nodes.append((owner[j] if j < len(owner) else None, re.search(r"(\w+)\(", body[j].strip().removeprefix("if ")).group(1)))
    lines = ['"""graphc plan ' + g.name + ": generated by graphc.runtime.codegen; the cache key covers this text.",
             "", *_quote(header), '"""',
             "import numpy as np",
             "from numpy import int64 as i64",
             "from numba import njit", "",
             "from graphc.runtime.plan_jit import PlanCompiler, view"]
    lines += [f"from {used[f] or 'graphc.runtime.kernels'} import {f} as k_{f}" for f in sorted(used)]
    if any(isinstance(k, KernelSource) for k in kernels):
        lines[lines.index("import numpy as np")] = "import math\n\nimport numpy as np"
        lines += [f"from graphc.runtime.lower import {', '.join(HELPERS)}",
                  "from graphc.runtime.kernel_lib import library_kernel"]
    if any(isinstance(k, LlvmKernel) for k in kernels):
        lines += ["from graphc.runtime.kernel_lib import llvm_kernel"]
    if defs:
        lines += ["", "", *("\n\n".join(defs).rstrip("\n").split("\n"))]
    check = []
    if checked:
        cond = " or ".join(f"{names(v)}.shape != {g.types[v].shape!r}" for v in checked)
        check = [f"    if {cond}:", f"        raise ValueError({SHAPE_MISMATCH!r})"]
    full = check + (["    # storage: views of the bound arrays, arenas and inputs (no allocation)"] if views.lines else [])
    full += view_lines + (body + ret or ["    pass"])
    if glue is None:
        lines += ["", "", f"@njit({PLAN_JIT})", f"def plan({', '.join(params)}):", *full]
    else:
        lines += ["from graphc.runtime.kernel_lib import glue_function", "",
                  "# the glue below, lowered to LLVM IR by runtime/glue_llvm.py (its text is kept in the",
                  "# entry as glue.ll); numba compiles plan_full only to raise a failing kernel's own error",
                  f"glue = glue_function({glue.symbol!r}, {len(params)})", "", "",
                  f"@njit({PLAN_JIT.replace('cache=True, ', '')})", f"def plan_full({', '.join(params)}):", *full]
        scalar_names = {names(v) for v in scalars}
        glue_args = ["table.ctypes.data"] + [p if p in scalar_names else f"{p}.ctypes.data" for p in params[:-1]]
        needed = _lines_for(ret, view_lines)
        lines += ["", "", f"@njit({PLAN_JIT})", f"def plan({', '.join(params)}):", *check,
                  f"    if glue({', '.join(glue_args)}) != 0:",
                  f"        raise ValueError({GLUE_FAILED!r})", *needed, *ret]
    lines += ["", ""] + _runner([names(v) for v in call_inputs])
    return PlanSource("\n".join(lines) + "\n", call_inputs, bound_inputs, sorted(scalars), arenas, returns, kernels,
                      glue, glue_why, call_nodes)


def _lines_for(ret: list[str], view_lines: list[str]) -> list[str]:
    """The view lines the return statement needs (its view, and the arena that view reads)."""
    if not ret:
        return []
    defs = {ln.strip().split(" = ", 1)[0]: ln for ln in view_lines}
    want, out = re.findall(r"[A-Za-z_]\w*", ret[0]), []
    for name in want:
        ln = defs.get(name)
        if ln is not None and ln not in out:
            out.insert(0, ln)
            want += re.findall(r"[A-Za-z_]\w*", ln.split(" = ", 1)[1])
    return sorted(out, key=view_lines.index)


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
