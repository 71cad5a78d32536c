"""Lowering of the kernel stage: one kernel node -> one generated numba function.

Codegen decides nothing here: passes/kernels.py chose the members and the kind; this turns
the body into source, one to one.

- elementwise: one loop nest over the iteration space; every member becomes one local
  (`t_<value>`) computed from its operands' locals; outputs are stored at the end of the
  iteration; operands of the iteration shape are read at the flat index, broadcast ones
  through their strides, one-element ones once before the loop.
- gemm: the BLAS call (np.dot) of its GEMM member into an output buffer of its type (operands
  behind a prologue `transpose` go as transposed views), then the same loop as elementwise over
  the GEMM's output for the epilogue (bias, relu, ...), ending in a reduction if the kernel
  has one (a bias gradient summed while the epilogue writes).
- reduce: the loop nest over the reduction's operand space computes the producers and
  accumulates into the output (0 or -inf first; mean divides after).
- rows: a loop over the rows of the kernel's shape (all dims but the last); in each row, one
  pass over the row per row reduction (the members before it, then the accumulation into a
  local), the row-shaped members once between the passes, and a last pass for the members
  after the last reduction (`rows_function`).

`EXPR[op]` is the scalar expression of each op that may sit in a kernel body.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from graphc.ir import TensorType
from graphc.ir.graph import Node

from .kernels import JIT, broadcast_strides, c_strides, erf32, exp32, splitmix64, stream_key
from .lower_strided import gemm_view  # noqa: F401  (a helper of generated strided_gemm kernels)

# ------------------------------------------------------------------ scalar helpers the generated loops call


@njit(inline="always", **JIT)
def sigmoid1(v):
    e = np.exp(-np.abs(v))  # exp of a non-positive number only: no overflow
    return 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)


@njit(inline="always", **JIT)
def uniform1(key, i):
    return np.float64(splitmix64(key + np.uint64(i)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


HELPERS = ("sigmoid1", "uniform1", "stream_key", "exp32", "erf32", "gemm_view")  # exp32/erf32: float32, vectorizable; gemm_view: lower_strided
GEMMS = ("matmul", "linear", "linear_relu")  # the BLAS member of a gemm kernel (passes/kernels.py's)
REDUCTIONS = ("sum", "mean", "max")  # a kernel's last member may accumulate


def _np(dtype: str) -> str:
    return "np.bool_" if dtype == "bool" else f"np.{TensorType((), dtype).np_dtype.name}"


class _Ctx:
    """What the expression of one member may ask for: hoisted constants, the loop's flat index."""

    def __init__(self):
        self.pre: list[str] = []
        self.n = 0

    def const(self, dtype: str, value) -> str:
        self.n += 1
        name = f"c{self.n}"
        v = repr(float(value)) if math.isfinite(float(value)) else f"float({str(float(value))!r})"
        self.pre.append(f"{name} = {_np(dtype)}({v})")
        return name

    def hoist(self, expr: str) -> str:
        self.n += 1
        name = f"h{self.n}"
        self.pre.append(f"{name} = {expr}")
        return name


def _bin(sym):
    return lambda a, n, c: f"({a[0]} {sym} {a[1]})"


def _dropout(a, n: Node, c: _Ctx) -> str:
    dt = n.types[0].dtype
    key = c.hoist(f"stream_key({a[1]}, {int(n.attr['stream'])})")
    scale, zero = c.const(dt, 1.0 / (1.0 - n.attr["p"])), c.const(dt, 0.0)
    return f"({a[0]} * ({scale} if uniform1({key}, i) >= {float(n.attr['p'])!r} else {zero}))"


def _uniform(a, n: Node, c: _Ctx) -> str:
    key = c.hoist(f"stream_key({a[0]}, {int(n.attr['stream'])})")
    return f"{_np(n.types[0].dtype)}(uniform1({key}, i))"


def _arange(a, n: Node, c: _Ctx) -> str:
    """As the reference: i64 in integers; floats computed in f64, then cast."""
    at = n.attr
    if at["dtype"] == "i64":
        return f"np.int64({int(at['start'])} + {int(at['step'])} * i)"
    return f"{_np(at['dtype'])}({float(at['start'])!r} + {float(at['step'])!r} * np.float64(i))"


def _relu(a, n, c):
    z = c.const(n.types[0].dtype, 0.0)
    return f"({z} if {a[0]} < {z} else {a[0]})"


def _cast(a, n, c):
    dt = n.attr["dtype"]
    return f"({a[0]} != 0)" if dt == "bool" else f"{_np(dt)}({a[0]})"


EXPR = {
    "add": _bin("+"), "sub": _bin("-"), "mul": _bin("*"), "div": _bin("/"),
    "maximum": lambda a, n, c: f"({a[0]} if {a[0]} > {a[1]} or {a[0]} != {a[0]} else {a[1]})",
    "minimum": lambda a, n, c: f"({a[0]} if {a[0]} < {a[1]} or {a[0]} != {a[0]} else {a[1]})",
    "eq": _bin("=="), "ne": _bin("!="), "lt": _bin("<"), "le": _bin("<="), "gt": _bin(">"), "ge": _bin(">="),
    "where": lambda a, n, c: f"({a[1]} if {a[0]} else {a[2]})",
    "broadcast_to": lambda a, n, c: a[0],  # its operand, already read through broadcast strides
    "neg": lambda a, n, c: f"(-{a[0]})",
    "exp": lambda a, n, c: f"exp32({a[0]})" if n.types[0].dtype == "f32" else f"np.exp({a[0]})",
    "log": lambda a, n, c: f"np.log({a[0]})",
    "sqrt": lambda a, n, c: f"np.sqrt({a[0]})",
    "rsqrt": lambda a, n, c: f"({c.const(n.types[0].dtype, 1.0)} / np.sqrt({a[0]}))",
    "erf": lambda a, n, c: f"erf32({a[0]})" if n.types[0].dtype == "f32" else f"{_np(n.types[0].dtype)}(math.erf({a[0]}))",
    "tanh": lambda a, n, c: f"np.tanh({a[0]})",
    "pow": lambda a, n, c: f"({a[0]} ** {c.const(n.types[0].dtype, n.attr['exponent'])})",
    "relu": _relu,
    "sigmoid": lambda a, n, c: f"sigmoid1({a[0]})",
    "cast": _cast,
    "relu_backward": lambda a, n, c: f"({a[0]} if {a[1]} > {c.const(n.types[0].dtype, 0.0)} else "
                                     f"{c.const(n.types[0].dtype, 0.0)})",
    "sigmoid_backward": lambda a, n, c: f"({a[0]} * {a[1]} * ({c.const(n.types[0].dtype, 1.0)} - {a[1]}))",
    "tanh_backward": lambda a, n, c: f"({a[0]} * ({c.const(n.types[0].dtype, 1.0)} - {a[1]} * {a[1]}))",
    "dropout": _dropout,
    "uniform": _uniform,
    "arange": _arange,
    "mse_loss_backward": lambda a, n, c: f"(({a[1]} - {a[2]}) * ({a[0]} * "
                                         f"{c.const(n.types[0].dtype, 2.0 / (_size(n) if n.attr['reduction'] == 'mean' else 1))}))",
}


def _size(n: Node) -> int:
    return TensorType(n.types[0].shape).size


def lowerable(n: Node) -> bool:
    """Whether a node may sit in a generated loop (its scalar expression is known here)."""
    return n.op in EXPR


# ------------------------------------------------------------------ one kernel -> one function


def kernel_function(name: str, node: Node, scalars: set[str], ident, out_strides: dict | None = None
                    ) -> tuple[str, list[str], list[str]]:
    """(source of `def name(...)`, operand values in argument order, output values in argument
    order). Operands travel as flat views, except scalars (rng seeds) as ints; outputs flat.
    The source names nothing of the plan (arguments a0.., o0..; locals t0.. in member order), so
    two kernels of the same structure and shapes (a model's repeated layers) get the same source
    and codegen emits and compiles it once. (`ident` is kept for callers; names stay canonical.)
    `out_strides`: {output: element strides} of outputs the memory plan stores as strided pieces.)"""
    body = node.body
    kind = node.attr["kind"]
    if kind == "rows":
        return rows_function(name, node, scalars)
    if kind == "strided_gemm":
        from .lower_strided import strided_gemm_function

        return strided_gemm_function(name, node, (out_strides or {}).get(node.outputs[0]))  # a concat's piece
    if body.nodes[0].op == "addmm":  # a gemm kernel {impl="loops"} of the SGD update's GEMM
        from .lower_small_gemm import addmm_function

        return addmm_function(name, node)
    members = list(body.nodes)
    types = body.types
    inputs = [i.name for i in body.inputs]
    outputs = list(node.outputs)
    arg = {v: f"a{k}" for k, v in enumerate(inputs)}
    out = {v: f"o{k}" for k, v in enumerate(outputs)}
    c = _Ctx()
    lines: list[str] = []
    gemm = next(m for m in members if m.op in GEMMS) if kind == "gemm" else None
    prologue = {m.outputs[0]: m.inputs[0] for m in members[:members.index(gemm)]} if gemm is not None else {}
    red = members[-1] if members[-1].op in REDUCTIONS else None
    space = (types[gemm.outputs[0]].shape if gemm is not None else
             types[red.inputs[0]].shape if red is not None else types[members[0].outputs[0]].shape)
    rank = len(space)
    idx = [f"i{d}" for d in range(rank)]
    local = {v: f"t{j}" for j, v in enumerate(v for m in members for v in m.outputs)}

    def read(v: str) -> str:
        """The expression of operand v at the current iteration (v external)."""
        t = types[v]
        if v in scalars:
            return arg[v]
        if t.size == 1:
            return c.hoist(f"{arg[v]}[0]")
        if t.shape == space:
            return f"{arg[v]}[i]"
        st = broadcast_strides(t.shape, space)
        off = " + ".join(f"{ix} * {s}" for ix, s in zip(idx, st) if s) or "0"
        return f"{arg[v]}[{off}]"

    gemm_dst = None
    if gemm is not None:
        def operand(v):
            src = prologue.get(v, v)
            return c.hoist(f"{arg[src]}.reshape({types[src].shape!r}){'.T' if v in prologue else ''}")

        a2, b2 = operand(gemm.inputs[0]), operand(gemm.inputs[1])
        g_out = gemm.outputs[0]
        g_t = types[g_out]
        if g_out in out:
            gemm_dst = out[g_out]
        else:
            gemm_dst = next((out[o] for o in outputs if types[o] == g_t), None) or "s0"
        d2 = c.hoist(f"{gemm_dst}.reshape({g_t.shape!r})")
        c.pre.append(f"np.dot({a2}, {b2}{'.T' if gemm.op != 'matmul' else ''}, {d2})")

    loop: list[str] = []
    for m in members:
        if m.outputs[0] in prologue:
            continue
        if m is gemm:
            e = f"{gemm_dst}[i]"
            if len(m.inputs) == 3:  # the bias
                e = f"({e} + {read(m.inputs[2])})"
            if m.op == "linear_relu":
                z = c.const(m.types[0].dtype, 0.0)
                loop.append(f"u = {e}")
                e = f"({z} if u < {z} else u)"
            loop.append(f"{local[m.outputs[0]]} = {e}")
            continue
        if m is red:
            continue
        ops = [local[i] if i in local else read(i) for i in m.inputs]
        loop.append(f"{local[m.outputs[0]]} = {EXPR[m.op](ops, m, c)}")
    for v in outputs:
        if red is None or v != red.outputs[0]:
            loop.append(f"{out[v]}[i] = {local[v]}")

    post: list[str] = []
    if red is not None:
        r_out, r_in, dims = red.outputs[0], red.inputs[0], red.attr["dims"]
        src = local[r_in] if r_in in local else read(r_in)
        rt = types[r_out]
        o = out[r_out]
        count = int(np.prod([space[d] for d in dims], dtype=np.int64))
        if red.op == "max":
            init = "-np.inf" if rt.is_float else str(-(1 << 63))
        else:
            init = "0"
        full = rt.size == 1
        if full and red.op != "max":
            c.pre.append("acc = 0.0")
            loop.append(f"acc += {src}")
            post.append(f"{o}[0] = acc / {count}" if red.op == "mean" else f"{o}[0] = acc")
        else:
            c.pre.append(f"for q in range({o}.size):\n        {o}[q] = {init}")
            keep = tuple(1 if d in dims else n for d, n in enumerate(space))
            so = [0 if d in dims else s for d, s in enumerate(c_strides(keep))]
            off = " + ".join(f"{ix} * {s}" for ix, s in zip(idx, so) if s) or "0"
            if red.op == "max":
                loop.append(f"v = {src}")
                loop.append(f"if v > {o}[{off}] or v != v:\n{{ind}}    {o}[{off}] = v")
            else:
                loop.append(f"{o}[{off}] += {src}")
            if red.op == "mean":
                cc = c.const(rt.dtype, count)
                post.append(f"for q in range({o}.size):\n        {o}[q] = {o}[q] / {cc}")

    params = [arg[v] for v in inputs] + [out[v] for v in outputs] + (["s0"] if gemm_dst == "s0" else [])
    src = [f"@njit({_JIT})", f"def {name}({', '.join(params)}):"]
    src += [f"    {ln}" for ln in c.pre]
    ind = "    "
    for d in range(rank):
        src.append(f"{ind}for i{d} in range({space[d]}):")
        ind += "    "
    # the flat index from the loop indices (not a running counter): provably non-negative and
    # affine in the innermost index, so the innermost loop reads and writes contiguously and vectorizes
    flat = " + ".join(f"i{d} * {s}" if s != 1 else f"i{d}" for d, s in enumerate(c_strides(space)) if space[d] != 1)
    src.append(f"{ind}i = {flat or '0'}")
    for ln in loop:
        src.append(ind + ln.replace("{ind}", ind))
    src += [f"    {ln}" for ln in post]
    return "\n".join(src) + "\n", inputs, outputs + (["#scratch0"] if gemm_dst == "s0" else [])


# codegen replaces this line: runtime/kernel_lib.py compiles and caches each distinct kernel
_JIT = 'nogil=True, error_model="numpy"'


def _llvm_lowers() -> bool:
    """codegen.use_llvm(): generated kernels lower to LLVM IR (numba's lowering of a kernel
    ignores its `threads`, and takes no partial sums)."""
    import os

    from numba.core import config

    return not config.DISABLE_JIT and os.environ.get("GRAPHC_LLVM", "1") != "0"


def kernel_scratch(node: Node) -> list[TensorType]:
    """A GEMM kernel whose product stays inside and matches no output's type needs a buffer; a
    rows kernel, one row of each value that one pass computes and a later pass reads."""
    if node.attr["kind"] == "reduce" and node.attr.get("threads", 1) > 1 and _llvm_lowers():
        from .split_llvm import TASKS_PER_THREAD, summed_outputs  # partial sums of tasks 1.. (split_llvm)

        tasks = node.attr["threads"] * TASKS_PER_THREAD
        return [TensorType(((tasks - 1) * t.size,), t.dtype) for _, t in summed_outputs(node)]
    if node.attr["kind"] == "rows":  # (split over threads: one row per thread, runtime/split_llvm.py)
        rows = node.attr.get("threads", 1)
        return [TensorType((rows * _rows_plan(node)[0][-1],), node.body.types[v].dtype) for v in _rows_plan(node)[2]]
    if node.attr["kind"] != "gemm" or node.body.nodes[0].op == "addmm":  # (addmm writes its output)
        return []
    g = next(m for m in node.body.nodes if m.op in GEMMS)
    t = g.types[0]
    if g.outputs[0] in node.outputs or any(ot == t for ot in node.types):
        return []
    return [t]


# ------------------------------------------------------------------ rows kernels


def _rows_plan(node: Node):
    """(space, passes, kept): the kernel's full shape; its members cut after each reduction; the
    full-shape values that are not outputs and that a later pass reads (one row of scratch each)."""
    members, types = list(node.body.nodes), node.body.types
    space = next(types[m.inputs[0]].shape for m in members if m.op in REDUCTIONS)
    passes: list[list[Node]] = [[]]
    for m in members:
        passes[-1].append(m)
        if m.op in REDUCTIONS:
            passes.append([])
    made_in = {v: p for p, ms in enumerate(passes) for m in ms for v in m.outputs}
    outs = set(node.outputs)
    later = [i for p, ms in enumerate(passes) for m in ms for i in m.inputs if i in made_in and made_in[i] < p]
    # a reduction accumulates in a loop of its own, over the row its pass stored: the pass's loop
    # then has no reduction in it and vectorizes (exp32 and friends)
    reduced = [ms[-1].inputs[0] for p, ms in enumerate(passes)
               if ms and ms[-1].op in REDUCTIONS and made_in.get(ms[-1].inputs[0]) == p]
    kept = list(dict.fromkeys(i for i in later + reduced if types[i].shape == space and i not in outs))
    return space, passes, kept


def rows_function(name: str, node: Node, scalars: set[str]) -> tuple[str, list[str], list[str]]:
    """A rows kernel (kernel_function's contract): for each row, each pass is one loop over the row
    (its full-shape members, then its reduction accumulated in a local), the row-shaped members
    computed once before the pass that first needs them. A full-shape value a later pass reads
    comes back from its output, or from a row of scratch."""
    body = node.body
    types = body.types
    inputs = [i.name for i in body.inputs]
    outputs = list(node.outputs)
    space, passes, kept = _rows_plan(node)
    n, lead = space[-1], space[:-1]
    arg = {v: f"a{k}" for k, v in enumerate(inputs)}
    out = {v: f"o{k}" for k, v in enumerate(outputs)}
    scratch = {v: f"s{k}" for k, v in enumerate(kept)}
    local = {v: f"t{j}" for j, v in enumerate(v for m in body.nodes for v in m.outputs)}
    c = _Ctx()
    idx = [f"i{d}" for d in range(len(lead))]
    lines: list[str] = []  # (the row's body, indented under the loops over the leading dims)
    bases: dict[tuple, str] = {}

    def base(st) -> str:
        """The offset of the row's first element in an operand of broadcast strides st (per row)."""
        st = tuple(st[:-1])
        if st not in bases:
            bases[st] = f"b{len(bases)}"
            off = " + ".join(f"{ix} * {s}" if s != 1 else ix for ix, s in zip(idx, st) if s) or "0"
            lines.append(f"{bases[st]} = {off}")
        return bases[st]

    def read_row(v: str) -> str:
        """External operand v at the current row (v broadcasts along the row)."""
        if v in scalars:
            return arg[v]
        if types[v].size == 1:
            return c.hoist(f"{arg[v]}[0]")
        return f"{arg[v]}[{base(broadcast_strides(types[v].shape, space))}]"

    def read_full(v: str) -> str:
        st = broadcast_strides(types[v].shape, space)
        if v in scalars or types[v].size == 1 or st[-1] == 0:
            return read_row(v)
        return f"{arg[v]}[{base(st)} + k{'' if st[-1] == 1 else f' * {st[-1]}'}]"

    row_base = base(c_strides(space))  # the row's offset in full-shape outputs (r * n)
    row_index = " + ".join(f"{ix} * {s}" if s != 1 else ix for ix, s in zip(idx, c_strides(lead)) if s) or "0"
    lines.append(f"r = {row_index}")
    done: set[str] = set()  # values available as locals outside the passes' loops (row values)
    for p, ms in enumerate(passes):
        row_ms = [m for m in ms if types[m.outputs[0]].shape != space and m.op not in REDUCTIONS]
        full_ms = [m for m in ms if types[m.outputs[0]].shape == space]
        red = ms[-1] if ms and ms[-1].op in REDUCTIONS else None
        if row_ms:
            lines.append("i = r")
        for m in row_ms:
            ops = [local[i] if i in done else read_row(i) for i in m.inputs]
            lines.append(f"{local[m.outputs[0]]} = {EXPR[m.op](ops, m, c)}")
            done.add(m.outputs[0])
            if m.outputs[0] in out:
                lines.append(f"{out[m.outputs[0]]}[r] = {local[m.outputs[0]]}")
        if not full_ms and red is None:
            continue
        here: set[str] = set()
        loop: list[str] = [f"i = {row_base} + k"]

        def operand(i: str) -> str:
            if i in here or i in done:
                return local[i]
            if i in out and types[i].shape == space:
                return f"{out[i]}[i]"
            if i in scratch:
                return f"{scratch[i]}[k]"
            return read_full(i)

        for m in full_ms:
            v = m.outputs[0]
            loop.append(f"{local[v]} = {EXPR[m.op]([operand(i) for i in m.inputs], m, c)}")
            here.add(v)
            if v in out:
                loop.append(f"{out[v]}[i] = {local[v]}")
            if v in scratch:
                loop.append(f"{scratch[v]}[k] = {local[v]}")
        if full_ms:
            lines.append(f"for k in range({n}):")
            lines += [f"    {ln}" for ln in loop]
        if red is not None:
            v, dt = red.outputs[0], types[red.outputs[0]].dtype
            here.clear()  # the reduction's loop reads what the pass stored
            src = operand(red.inputs[0])
            lines += _accumulate(red.op, src, row_base, n, f"{_np(dt)}(-np.inf)" if red.op == "max" else c.const(dt, 0.0))
        if red is not None:
            v = red.outputs[0]
            div = f" / {c.const(types[v].dtype, n)}" if red.op == "mean" else ""
            lines.append(f"{local[v]} = acc{div}")
            done.add(v)
            if v in out:
                lines.append(f"{out[v]}[r] = {local[v]}")
    params = [arg[v] for v in inputs] + [out[v] for v in outputs] + [scratch[v] for v in kept]
    src = [f"@njit({_JIT})", f"def {name}({', '.join(params)}):"]
    src += [f"    {ln}" for ln in c.pre]
    ind = "    "
    for d, size in enumerate(lead):
        src.append(f"{ind}for i{d} in range({size}):")
        ind += "    "
    if not lead:
        src.append(f"{ind}if True:")
        ind += "    "
    for ln in lines:
        src += [ind + part for part in ln.split("\n")]
    return "\n".join(src) + "\n", inputs, outputs + [f"#scratch{k}" for k in range(len(kept))]


LANES = 8  # independent accumulators of a row reduction: the compiler packs them into one vector


def _accumulate(op: str, src: str, row_base: str, n: int, init: str) -> list[str]:
    """`acc` = the sum or max (NaN wins, as numpy's) of src over the row. Rows of a multiple of
    LANES use LANES accumulators, combined pairwise at the end: a fixed order (deterministic), and
    a loop whose adds or compares vectorize, which one running accumulator (an exact order of
    float adds) does not."""
    def step(a: str, x: str) -> str:
        return f"{a} = {x} if ({x} > {a} or {x} != {x}) else {a}" if op == "max" else f"{a} += {x}"

    if n % LANES or n < 2 * LANES:
        return [f"acc = {init}", f"for k in range({n}):", f"    i = {row_base} + k", f"    x = {src}", f"    {step('acc', 'x')}"]
    out = [f"acc{j} = {init}" for j in range(LANES)] + [f"for k0 in range(0, {n}, {LANES}):"]
    for j in range(LANES):
        out += [f"    k = k0 + {j}", f"    i = {row_base} + k", f"    x{j} = {src}", f"    {step(f'acc{j}', f'x{j}')}"]
    level = [f"acc{j}" for j in range(LANES)]
    while len(level) > 1:  # pairwise: ((a0 . a1) . (a2 . a3)) . ...
        nxt = []
        for a, b in zip(level[::2], level[1::2]):
            out.append(step(a, b))
            nxt.append(a)
        level = nxt
    out.append(f"acc = {level[0]}")
    return out
