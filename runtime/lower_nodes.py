"""LLVM lowering of plain nodes: one node the kernel pass left on its own -> one LLVM function.

Why: a plain node ran the op's generic library kernel (runtime/kernels.py, primitive_kernels.py),
which numba compiles on a cold start once per dtype and rank signature: 0.2-2.2 s each (the
generic `strided` loop nest, with its switch over every op code, alone took 2.2 s of the GPT's
8 s cold start), while llvmlite compiles a function specialised to the node's shapes in tens of
milliseconds, cached in the kernel library like every generated kernel.

Nothing is decided here: the node is the IR's, and its lowering is the op's, one to one.
- Elementwise, broadcast and reduction nodes and 2-D GEMMs are lowered as a kernel of one member
  (runtime/lower_llvm.kernel_ir): the same loop, expressions and BLAS call a fused kernel of that
  op gets. Only ops whose expression there computes exactly what the library kernel computes are
  taken (SAME_AS_LIBRARY): sigmoid and erf are not (the library's sigmoid computes in the
  array's dtype, float32 erf calls libm's erff), so those stay library kernels.
- Movement (transpose, slice, concat, pad, a reshape that copies) is a strided copy: the loop
  nest `strided` ran with op COPY, its dims collapsed the same way, specialised to the shapes.

A node this does not lower (another op, a dtype, an empty tensor) raises Unsupported and keeps
its library kernel; `GRAPHC_LLVM=0` keeps every library kernel (to compare).
"""
from __future__ import annotations

import math
import re

from graphc.ir import TensorType
from graphc.ir.graph import Node, kernel_node

from .kernels import broadcast_strides, c_strides, collapse
from .lower_llvm import _MEM, _VAL, ATTRIBUTES, Unsupported, V, _Fn, _load, _store, const, exp32, fconst, kernel_ir

# ops whose lower_llvm expression is the library kernel's computation, bit for bit
SAME_AS_LIBRARY = ("add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "where",
                   "neg", "exp", "log", "sqrt", "rsqrt", "tanh", "pow", "relu", "cast", "relu_backward",
                   "sigmoid_backward", "tanh_backward", "dropout", "uniform", "arange", "broadcast_to",
                   "mse_loss_backward")
REDUCE = ("sum", "mean", "max", "sum_to")
GEMM = ("matmul", "linear", "linear_relu")
MOVE = ("transpose", "slice", "concat", "pad", "reshape")
# ops whose function returns a status (i32, 0 = done): codegen checks it and raises this, as the
# library kernel raises it (the LLVM glue returns at once; the numba glue raises here)
ERRORS = {"gather": "index out of range in gather / scatter_add",
          "scatter_add": "index out of range in gather / scatter_add",
          "index_select": "index out of range in gather / scatter_add",
          "index_add": "index out of range in gather / scatter_add",
          "cross_entropy": "class label out of range for the number of classes",
          "cross_entropy_backward": "class label out of range for the number of classes"}


def node_ir(n: Node, types: dict, scalars: set[str], scratch: list | None = None
            ) -> tuple[str, list[str], list[str], list[str]]:
    """(IR text of `define void @kernel(...)`, operand values in argument order, output values in
    argument order (then "#scratch<k>" for each scratch buffer it takes, and an int for a constant
    argument: the updates' element count, so every param of a dtype shares one function), argument types), as
    lower_llvm.kernel_ir returns for a kernel node; raises Unsupported. `scratch`: the
    TensorTypes of the node's scratch buffers in the memory plan."""
    scratch = list(scratch or ())
    if n.body is not None:
        raise Unsupported("a kernel node (lower_llvm.kernel_ir lowers those)")
    if any(t.size == 0 for t in (*n.types, *(types[i] for i in n.inputs))):
        raise Unsupported("an empty tensor")
    if n.op in ("cross_entropy", "cross_entropy_backward"):
        return _cross_entropy_ir(n, types, scratch)
    if n.op == "addmm":  # its two-element scratch (alpha and beta) becomes two stack slots
        return _addmm_ir(n, types)
    if scratch:
        raise Unsupported(f"{n.op} with scratch buffers")
    if n.op == "sgd_update":
        return _sgd_ir(n, types)
    if n.op == "adam_update":
        return _adam_ir(n, types)
    if n.op in MOVE:
        return _move_ir(n, types)
    if n.op in ("gather", "scatter_add"):
        return _indexing_ir(n, types)
    if n.op in ("index_select", "index_add"):
        return _rows_ir(n, types)
    inputs = list(dict.fromkeys(n.inputs))
    sub = {v: types[v] for v in inputs}
    sub.update(zip(n.outputs, n.types))
    if n.op in SAME_AS_LIBRARY:
        kind, n = "elementwise", _collapsed(n, sub, [v for v in inputs if v not in scalars])
    elif n.op in REDUCE:
        kind, n = "reduce", _collapsed_reduction(_as_sum(n, types), sub)
    elif n.op in GEMM and all(types[i].rank == 2 for i in n.inputs[:2]):
        kind = "gemm"
    else:
        raise Unsupported(f"op {n.op}")
    text, ins, outs, args = kernel_ir(kernel_node([n], inputs, list(n.outputs), sub, kind), scalars)
    return no_unroll(text), ins, outs, args


def _merge(shape, *strides) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """kernels.collapse without its padding: size-1 dims dropped, neighbours contiguous for every
    operand merged (the same loop order, so the same operations in the same order)."""
    shape, *st = collapse(shape, *strides)
    keep = [d for d, size in enumerate(shape) if size != 1]
    return tuple(shape[d] for d in keep), [tuple(s[d] for d in keep) for s in st]


def _collapsed(n: Node, sub: dict, arrays: list[str]) -> Node:
    """n over its merged iteration space: fewer loops for LLVM to optimise (a [32,4,32,32] * scalar
    is one loop), every operand read at the same elements; `sub` gets the merged types."""
    space = n.types[0].shape
    shape, st = _merge(space, *(broadcast_strides(sub[v].shape, space) for v in arrays), c_strides(space))
    for v, s in zip(arrays, st):
        sub[v] = TensorType(tuple(size if k else 1 for size, k in zip(shape, s)), sub[v].dtype)
    types = tuple(TensorType(shape, t.dtype) for t in n.types)
    sub.update(zip(n.outputs, types))
    return n.replace(types=types)


def _collapsed_reduction(n: Node, sub: dict) -> Node:
    """A sum/mean/max over merged dims (the library's reduce_sum collapses them the same way)."""
    x = n.inputs[0]
    shape, dims = sub[x].shape, n.attr["dims"]
    keep = tuple(1 if d in dims else size for d, size in enumerate(shape))
    so = tuple(0 if d in dims else s for d, s in enumerate(c_strides(keep)))
    merged, (_, so) = _merge(shape, c_strides(shape), so)
    sub[x] = TensorType(merged, sub[x].dtype)
    out = TensorType(tuple(size for size, s in zip(merged, so) if s), n.types[0].dtype)
    sub[n.outputs[0]] = out
    attrs = dict(n.attr, dims=tuple(d for d, s in enumerate(so) if not s), keepdim=False)
    return n.replace(types=(out,), attrs=tuple(sorted(attrs.items())))


def no_unroll(text: str) -> str:
    """Every loop of the function marked llvm.loop.unroll.disable: a plain node's loop is still
    vectorized, but not unrolled (for constant trip counts, fully): half the compile time of these
    small kernels, and no slower per element."""
    k = 0

    def mark(m):
        nonlocal k
        k += 1
        return f"{m.group(1)}, !llvm.loop !{k}"

    body = re.sub(r"^(  br i1 %[\w.]+, label %[\w.]+, label %[\w.]+)$", mark, text, flags=re.M)
    if not k:
        return text
    return body + '\n!0 = !{!"llvm.loop.unroll.disable"}\n' + "".join(f"!{i} = distinct !{{!{i}, !0}}\n" for i in range(1, k + 1))


def _as_sum(n: Node, types: dict) -> Node:
    """sum_to as the sum over the dims it reduces (the library kernel's own reading of it)."""
    if n.op != "sum_to":
        return n
    x, shape = types[n.inputs[0]].shape, tuple(n.attr["shape"])
    lead = len(x) - len(shape)
    dims = tuple(range(lead)) + tuple(lead + d for d, s in enumerate(shape) if s == 1 and x[lead + d] != 1)
    return n.replace(op="sum", attrs=(("dims", dims), ("keepdim", False)))


# ------------------------------------------------------------------ movement: strided copies


def _move_ir(n: Node, types: dict) -> tuple[str, list[str], list[str], list[str]]:
    """The copies primitive_kernels' movement kernels make with `strided` (COPY): per operand, its
    elements at element strides `sa` stored at `so` from a start offset, over the collapsed shape."""
    out_t = n.types[0]
    dt = out_t.dtype
    if dt not in _MEM or any(types[i].dtype != dt for i in n.inputs):
        raise Unsupported(f"{n.op} of {dt}")
    a = n.attr
    x = types[n.inputs[0]]
    fill = None
    if n.op == "transpose":
        st = c_strides(x.shape)
        pieces = [(0, 0, *collapse(out_t.shape, tuple(st[p] for p in a["perm"]), c_strides(out_t.shape)), 0)]
    elif n.op == "slice":
        st = c_strides(x.shape)
        sa = tuple(v * a["step"] if d == a["dim"] else v for d, v in enumerate(st))
        shape, sa, so = collapse(out_t.shape, sa, c_strides(out_t.shape))
        pieces = [(0, a["start"] * st[a["dim"]], shape, sa, so, 0)]
    elif n.op == "reshape":
        pieces = [(0, 0, *collapse((out_t.size,), (1,), (1,)), 0)]
    elif n.op == "concat":
        so_full, at, pieces = c_strides(out_t.shape), 0, []
        for k, v in enumerate(n.inputs):
            t = types[v]
            if t.size:
                pieces.append((k, 0, *collapse(t.shape, c_strides(t.shape), so_full), at * so_full[a["dim"]]))
            at += t.shape[a["dim"]]
    else:  # pad: the value everywhere, then the operand's elements at their places
        inner = a["interior"] or (0,) * len(x.shape)
        so_full = c_strides(out_t.shape)
        so = tuple(v * (inner[d] + 1) for d, v in enumerate(so_full))
        shape, sa, so = collapse(x.shape, c_strides(x.shape), so)
        pieces = [(0, 0, shape, sa, so, sum(a["widths"][2 * d] * v for d, v in enumerate(so_full)))]
        fill = const(dt, float(a["value"]))
    inputs = list(n.inputs)
    f = _Fn()
    ty = _MEM[dt]
    lines = [f"; graphc node {n.op}: {len(pieces)} strided cop{'y' if len(pieces) == 1 else 'ies'} of {dt}",
             f"define void @kernel({', '.join([f'ptr %a{k}' for k in range(len(inputs))] + ['ptr %o0'])}) #0 {{",
             "entry:"]
    prev = "entry"
    if fill is not None:
        lines += ["  br label %fill", "fill:", "  %f.q = phi i64 [ 0, %entry ], [ %f.next, %fill ]",
                  f"  %f.p = getelementptr inbounds {ty}, ptr %o0, i64 %f.q", f"  store {ty} {fill}, ptr %f.p",
                  "  %f.next = add nuw nsw i64 %f.q, 1", f"  %f.end = icmp eq i64 %f.next, {out_t.size}",
                  "  br i1 %f.end, label %filled, label %fill", "filled:"]
        prev = "filled"
    for p, (k, src0, shape, sa, so, dst0) in enumerate(pieces):
        lines += _copy_nest(f, p, prev, ty, f"%a{k}", src0, dst0, shape, sa, so)
        prev = f"c{p}.done"
    lines += ["  ret void", "}", "", f"attributes #0 = {{ {ATTRIBUTES} }}"]
    return no_unroll("\n".join(lines) + "\n"), inputs, list(n.outputs), [types[v].dtype for v in inputs] + [dt]


def _copy_nest(f: _Fn, p: int, prev: str, ty: str, src: str, src0: int, dst0: int, shape, sa, so) -> list[str]:
    """out[dst0 + sum(i*so)] = src[src0 + sum(i*sa)] over the dims of `shape` that are not 1."""
    dims = [d for d, n in enumerate(shape) if n != 1]
    out = [] if dims else [f"  br label %c{p}.body"]
    pred = f"%{prev}"
    for j, d in enumerate(dims):
        back = f"%c{p}.latch{dims[j + 1]}" if j + 1 < len(dims) else f"%c{p}.l{d}"
        out += [f"  br label %c{p}.l{d}", f"c{p}.l{d}:", f"  %c{p}.i{d} = phi i64 [ 0, {pred} ], [ %c{p}.i{d}.next, {back} ]"]
        pred = f"%c{p}.l{d}"
    if not dims:
        out.append(f"c{p}.body:")

    def offset(name: str, base: int, strides) -> str:
        acc = str(base)
        for d in dims:
            if strides[d]:
                t = f.fresh(f"c{p}.{name}")
                out.append(f"  {t} = mul nsw i64 %c{p}.i{d}, {strides[d]}")
                s = f.fresh(f"c{p}.{name}")
                out.append(f"  {s} = add nsw i64 {acc}, {t}")
                acc = s
        return acc

    ia, io = offset("a", src0, sa), offset("o", dst0, so)
    out += [f"  %c{p}.pa = getelementptr inbounds {ty}, ptr {src}, i64 {ia}", f"  %c{p}.x = load {ty}, ptr %c{p}.pa",
            f"  %c{p}.po = getelementptr inbounds {ty}, ptr %o0, i64 {io}", f"  store {ty} %c{p}.x, ptr %c{p}.po"]
    for j, d in reversed(list(enumerate(dims))):
        if j + 1 < len(dims):
            out.append(f"c{p}.latch{dims[j + 1]}:")
        nxt = f"c{p}.latch{d}" if j > 0 else f"c{p}.done"
        out += [f"  %c{p}.i{d}.next = add nuw nsw i64 %c{p}.i{d}, 1",
                f"  %c{p}.i{d}.end = icmp eq i64 %c{p}.i{d}.next, {shape[d]}",
                f"  br i1 %c{p}.i{d}.end, label %{nxt}, label %c{p}.l{d}"]
    if not dims:
        out.append(f"  br label %c{p}.done")
    out.append(f"c{p}.done:")
    return out


# ------------------------------------------------------------------ indexing: gather, scatter_add


def _indexing_ir(n: Node, types: dict) -> tuple[str, list[str], list[str], list[str]]:
    """primitive_kernels.gather / scatter_add (x seen as [outer, n, inner], index and the output or
    source as [outer, m, inner]), in their order: element p = (o*m + j)*inner + i reads index[p];
    an index outside [0, n) returns 1 there (the library kernel raises there)."""
    x, index = types[n.inputs[0]], types[n.inputs[1]]
    dim, dt = n.attr["dim"], x.dtype
    if dt not in ("f32", "f64", "i64") or index.dtype != "i64" or n.types[0].dtype != dt:
        raise Unsupported(f"{n.op} of {dt} by {index.dtype}")
    outer = math.prod(x.shape[:dim])
    size, m, inner = x.shape[dim], index.shape[dim], math.prod(x.shape[dim + 1:])
    ty = _MEM[dt]
    gather = n.op == "gather"
    params = ["ptr %a0", "ptr %a1"] + ([] if gather else ["ptr %a2"]) + ["ptr %o0"]
    lines = [f"; graphc node {n.op} {{dim={dim}}}: x as [{outer}, {size}, {inner}], index as [{outer}, {m}, {inner}]",
             f"define i32 @kernel({', '.join(params)}) #0 {{", "entry:"]
    prev = "entry"
    if not gather:
        lines += _copy_x_to_out(ty, x.size, "entry", "c")
        prev = "copied"
    lines += ["  br label %rows", "rows:",  # q = o*m + j; then i
              f"  %q = phi i64 [ 0, %{prev} ], [ %q.next, %row.done ]",
              f"  %o = udiv i64 %q, {m}", f"  %o.n = mul nuw nsw i64 %o, {size}",
              f"  %p0 = mul nuw nsw i64 %q, {inner}", "  br label %elems", "elems:",
              "  %i = phi i64 [ 0, %rows ], [ %i.next, %ok ]",
              "  %p = add nuw nsw i64 %p0, %i",
              "  %k.p = getelementptr inbounds i64, ptr %a1, i64 %p", "  %k = load i64, ptr %k.p",
              f"  %bad = icmp uge i64 %k, {size}",  # negative ids are huge unsigned
              "  br i1 %bad, label %fail, label %ok", "ok:",
              "  %r = add nsw i64 %o.n, %k", f"  %r.i = mul nsw i64 %r, {inner}", "  %at = add nsw i64 %r.i, %i"]
    lines += _move_element(ty, gather, "%at") + _rows_tail(inner, outer * m)
    inputs = list(n.inputs)
    return no_unroll("\n".join(lines) + "\n"), inputs, list(n.outputs), [types[v].dtype for v in inputs] + [dt]


def _copy_x_to_out(ty: str, size: int, after: str, p: str) -> list[str]:
    """An update kernel's out = x (operand a0 into o0, `size` elements) first, unless the update
    is in place (the same pointer); its values named %p.*, entered from block `after`, ending in
    block `copied`."""
    return ["  %same = icmp eq ptr %a0, %o0", "  br i1 %same, label %copied, label %copy", "copy:",
            f"  %{p}.q = phi i64 [ 0, %{after} ], [ %{p}.next, %copy ]",
            f"  %{p}.pa = getelementptr inbounds {ty}, ptr %a0, i64 %{p}.q", f"  %{p}.x = load {ty}, ptr %{p}.pa",
            f"  %{p}.po = getelementptr inbounds {ty}, ptr %o0, i64 %{p}.q", f"  store {ty} %{p}.x, ptr %{p}.po",
            f"  %{p}.next = add nuw nsw i64 %{p}.q, 1", f"  %{p}.end = icmp eq i64 %{p}.next, {size}",
            f"  br i1 %{p}.end, label %copied, label %copy", "copied:"]


def _move_element(ty: str, read: bool, at: str) -> list[str]:
    """One element of an indexing kernel: read x at `at` into out at %p (gather, index_select), or
    add the source's element %p into out at `at` (scatter_add, index_add)."""
    if read:
        return [f"  %s.p = getelementptr inbounds {ty}, ptr %a0, i64 {at}", f"  %v = load {ty}, ptr %s.p",
                f"  %d.p = getelementptr inbounds {ty}, ptr %o0, i64 %p", f"  store {ty} %v, ptr %d.p"]
    add = "add" if ty == "i64" else "fadd"
    return [f"  %s.p = getelementptr inbounds {ty}, ptr %a2, i64 %p", f"  %v = load {ty}, ptr %s.p",
            f"  %d.p = getelementptr inbounds {ty}, ptr %o0, i64 {at}", f"  %old = load {ty}, ptr %d.p",
            f"  %new = {add} {ty} %old, %v", f"  store {ty} %new, ptr %d.p"]


def _rows_tail(inner: int, rows: int) -> list[str]:
    """The latches of an indexing kernel's element loop (%i over `inner`) and row loop (%q over
    `rows`), its exits (0 done, 1 an index out of range) and attributes."""
    return ["  %i.next = add nuw nsw i64 %i, 1", f"  %i.end = icmp eq i64 %i.next, {inner}",
            "  br i1 %i.end, label %row.done, label %elems", "row.done:",
            "  %q.next = add nuw nsw i64 %q, 1", f"  %q.end = icmp eq i64 %q.next, {rows}",
            "  br i1 %q.end, label %done, label %rows", "done:", "  ret i32 0", "fail:", "  ret i32 1", "}", "",
            f"attributes #0 = {{ {ATTRIBUTES} }}"]


def _rows_ir(n: Node, types: dict) -> tuple[str, list[str], list[str], list[str]]:
    """primitive_kernels.index_select / index_add (x seen as [outer, n, inner], a 1-D index of m
    ids, the output or source as [outer, m, inner]), in their order: every id checked first (one
    outside [0, n) returns 1 before anything is written, where the library kernel raises), then
    per (o, j) one contiguous row of `inner` elements copied (index_select) or added (index_add)
    at row index[j]: an inner loop LLVM vectorizes, the id read once per row."""
    x, index = types[n.inputs[0]], types[n.inputs[1]]
    dim, dt = n.attr["dim"], x.dtype
    if dt not in ("f32", "f64", "i64") or index.dtype != "i64" or n.types[0].dtype != dt:
        raise Unsupported(f"{n.op} of {dt} by {index.dtype}")
    outer, size, m, inner = math.prod(x.shape[:dim]), x.shape[dim], index.shape[0], math.prod(x.shape[dim + 1:])
    ty = _MEM[dt]
    select = n.op == "index_select"
    params = ["ptr %a0", "ptr %a1"] + ([] if select else ["ptr %a2"]) + ["ptr %o0"]
    lines = [f"; graphc node {n.op} {{dim={dim}}}: x as [{outer}, {size}, {inner}], {m} ids",
             f"define i32 @kernel({', '.join(params)}) #0 {{", "entry:", "  br label %check", "check:",
             "  %c.j = phi i64 [ 0, %entry ], [ %c.next, %check.ok ]",
             "  %c.p = getelementptr inbounds i64, ptr %a1, i64 %c.j", "  %c.k = load i64, ptr %c.p",
             f"  %c.bad = icmp uge i64 %c.k, {size}",  # negative ids are huge unsigned
             "  br i1 %c.bad, label %fail, label %check.ok", "check.ok:",
             "  %c.next = add nuw nsw i64 %c.j, 1", f"  %c.end = icmp eq i64 %c.next, {m}",
             "  br i1 %c.end, label %checked, label %check", "checked:"]
    prev = "checked"
    if not select:
        lines += _copy_x_to_out(ty, x.size, "checked", "y")
        prev = "copied"
    lines += ["  br label %rows", "rows:",  # q = o*m + j; then i
              f"  %q = phi i64 [ 0, %{prev} ], [ %q.next, %row.done ]",
              f"  %o = udiv i64 %q, {m}", f"  %j = urem i64 %q, {m}", f"  %o.n = mul nuw nsw i64 %o, {size}",
              "  %k.p = getelementptr inbounds i64, ptr %a1, i64 %j", "  %k = load i64, ptr %k.p",
              "  %r = add nsw i64 %o.n, %k", f"  %at = mul nsw i64 %r, {inner}",
              f"  %p0 = mul nuw nsw i64 %q, {inner}", "  br label %elems", "elems:",
              "  %i = phi i64 [ 0, %rows ], [ %i.next, %elems ]",
              "  %p = add nuw nsw i64 %p0, %i", "  %a = add nsw i64 %at, %i"]
    lines += _move_element(ty, select, "%a") + _rows_tail(inner, outer * m)
    inputs = list(n.inputs)
    return no_unroll("\n".join(lines) + "\n"), inputs, list(n.outputs), [types[v].dtype for v in inputs] + [dt]


# ------------------------------------------------------------------ losses and optimizer updates
# Written as the library kernels' loops, statement for statement (runtime/kernels.py): the same
# operations in the same dtypes (numba's promotions spelled out: a double accumulator, float32
# values widened where numba widens them), so the results are bit-equal.


class _Build:
    """A function body written as straight-line text: counted loops (a counter in a stack slot,
    which LLVM's SROA turns into the usual phi loop), stack slots for accumulators, a `fail` exit
    for a label out of range. Instructions go through lower_llvm's _Fn (exp32 and friends)."""

    def __init__(self):
        self.f = _Fn()
        self.k = 0

    def ins(self, text: str, dtype: str) -> V:
        return self.f.ins(text, dtype)

    def raw(self, text: str) -> None:
        self.f.sections["body"].append(text)

    def label(self, stem: str) -> str:
        self.k += 1
        return f"{stem}{self.k}"

    def slot(self, ty: str, init: str) -> str:
        name = self.f.fresh("slot")
        self.f.line(f"{name} = alloca {ty}", "alloca")
        self.f.line(f"store {ty} {init}, ptr {name}")
        return name

    def loop(self, count, body) -> None:
        """body(i) for i in range(count): count a constant (nothing when < 1) or an i64 V, >= 1."""
        if isinstance(count, int) and count < 1:
            return
        count = count.ref if isinstance(count, V) else count
        ctr = self.slot("i64", "0")
        head = self.label("loop")
        self.f.line(f"br label %{head}")
        self.raw(f"{head}:")
        i = self.ins(f"load i64, ptr {ctr}", "i64")
        body(i)
        nxt = self.ins(f"add nuw nsw i64 {i.ref}, 1", "i64")
        self.f.line(f"store i64 {nxt.ref}, ptr {ctr}")
        end = self.ins(f"icmp eq i64 {nxt.ref}, {count}", "bool")
        out = self.label("after")
        self.f.line(f"br i1 {end.ref}, label %{out}, label %{head}")
        self.raw(f"{out}:")

    def op(self, name: str, x: V, y: V) -> V:
        """A binary instruction on two values of one dtype."""
        return self.ins(f"{name} {x}, {y.ref}", x.dtype)

    def accumulate(self, slot: str, x: V) -> None:
        """*slot += x (a double accumulator)."""
        s = self.ins(f"load double, ptr {slot}", "f64")
        self.f.line(f"store double {self.op('fadd', s, x).ref}, ptr {slot}")

    def check(self, bad: V) -> None:
        ok = self.label("ok")
        self.f.line(f"br i1 {bad.ref}, label %fail, label %{ok}")
        self.raw(f"{ok}:")

    def at(self, p: str, dt: str, i) -> V:
        return _load(self.f, p, dt, i if isinstance(i, V) else V("i64", str(i), True))

    def put(self, p: str, dt: str, i, x: V) -> None:
        _store(self.f, p, dt, i if isinstance(i, V) else V("i64", str(i), True), x)

    def add(self, a, b) -> V:
        return self.ins(f"add nsw i64 {a.ref if isinstance(a, V) else a}, {b.ref if isinstance(b, V) else b}", "i64")

    def mul(self, a, b) -> V:
        return self.ins(f"mul nsw i64 {a.ref if isinstance(a, V) else a}, {b.ref if isinstance(b, V) else b}", "i64")

    def text(self, params: list[str], comment: str, status: bool, unroll: bool = False) -> str:
        """The function; its loops marked unroll.disable unless `unroll`."""
        s = self.f.sections
        ret = "i32" if status else "void"
        lines = [f"; graphc node {comment}", f"define {ret} @kernel({', '.join(params)}) #0 {{", "entry:"]
        lines += s["alloca"] + s["body"] + (["  ret i32 0", "fail:", "  ret i32 1"] if status else ["  ret void"]) + ["}", ""]
        lines += [self.f.decls[k] for k in sorted(self.f.decls)] + ["", f"attributes #0 = {{ {ATTRIBUTES} }}"]
        return "\n".join(lines) + "\n" if unroll else no_unroll("\n".join(lines) + "\n")


def _widen(b: _Build, x: V) -> V:
    return x if x.dtype == "f64" else b.ins(f"fpext float {x.ref} to double", "f64")


def _narrow(b: _Build, x: V, dt: str) -> V:
    return x if dt == "f64" else b.ins(f"fptrunc double {x.ref} to float", "f32")


def _fexp(b: _Build, x: V) -> V:
    """kernels.fexp: exp32 for float32, np.exp (llvm.exp) otherwise."""
    return exp32(b.f, x) if x.dtype == "f32" else b.f.call("llvm.exp", "double", [x], "f64")


def _shifted_exp(b: _Build, x: str, e: str, m: str, dt: str, r0, rows: int, c: int) -> None:
    """kernels._shifted_exp over rows r0 .. r0 + rows of x [., c]: row maxima into m, x - max into e,
    then exp over the block as one flat loop."""
    ty = _VAL[dt]

    def row(il: V):
        i = b.add(r0, il)
        base = b.mul(i, c)
        mi = b.slot(ty, b.at(x, dt, base).ref)

        def col(jj: V):
            v = b.at(x, dt, b.add(base, b.add(jj, 1)))
            cur = b.ins(f"load {ty}, ptr {mi}", dt)
            gt = b.ins(f"fcmp ogt {v}, {cur.ref}", "bool")
            b.f.line(f"store {ty} {b.ins(f'select i1 {gt.ref}, {v}, {cur}', dt).ref}, ptr {mi}")
        b.loop(c - 1, col)
        mv = b.ins(f"load {ty}, ptr {mi}", dt)
        b.put(m, dt, il, mv)
        ebase = b.mul(il, c)
        b.loop(c, lambda j: b.put(e, dt, b.add(ebase, j), b.op("fsub", b.at(x, dt, b.add(base, j)), mv)))
    b.loop(rows, row)
    b.loop(rows * c, lambda k: b.put(e, dt, k, _fexp(b, b.at(e, dt, k))))


def _cross_entropy_ir(n: Node, types: dict, scratch: list) -> tuple[str, list[str], list[str], list[str]]:
    """kernels.cross_entropy (its exps in blocks of rows of the scratch's size) and
    cross_entropy_backward (its exps written into its output); a label out of range returns 1."""
    x = types[n.inputs[0 if n.op == "cross_entropy" else 1]]
    dt = x.dtype
    if dt not in ("f32", "f64") or types[n.inputs[-1]].dtype != "i64" or x.rank != 2:
        raise Unsupported(f"{n.op} of {dt}")
    rows_n, c = x.shape
    mean = n.attr["reduction"] == "mean"
    b = _Build()
    label_of = "%a1" if n.op == "cross_entropy" else "%a2"

    def label(i: V) -> V:
        lab = b.at(label_of, "i64", i)
        b.check(b.ins(f"icmp uge i64 {lab.ref}, {c}", "bool"))  # negative labels are huge unsigned
        return lab

    def row_sum(p: str, base: V) -> V:
        s = b.slot("double", fconst("f64", 0.0))
        b.loop(c, lambda j: b.accumulate(s, _widen(b, b.at(p, dt, b.add(base, j)))))
        return b.ins(f"load double, ptr {s}", "f64")

    if n.op == "cross_entropy":  # x, labels -> out[1]; scratch e [rows, c], m [rows]
        if len(scratch) != 2:
            raise Unsupported("cross_entropy without its two scratch buffers")
        block = scratch[0].shape[0]
        total = b.slot("double", fconst("f64", 0.0))

        def block_of(r0, rows: int):
            _shifted_exp(b, "%a0", "%s0", "%s1", dt, r0, rows, c)

            def row(il: V):
                i = b.add(r0, il)
                lab = label(i)
                ls = b.f.call("llvm.log", "double", [row_sum("%s0", b.mul(il, c))], "f64")
                d = b.op("fsub", b.at("%a0", dt, b.add(b.mul(i, c), lab)), b.at("%s1", dt, il))
                b.accumulate(total, b.ins(f"fsub double {ls.ref}, {_widen(b, d).ref}", "f64"))
            b.loop(rows, row)
        full, tail = divmod(rows_n, block)
        b.loop(full, lambda blk: block_of(b.mul(blk, block), block))
        if tail:
            block_of(full * block, tail)
        tot = b.ins(f"load double, ptr {total}", "f64")
        if mean:
            tot = b.ins(f"fdiv double {tot.ref}, {fconst('f64', rows_n)}", "f64")
        b.put("%o0", dt, 0, _narrow(b, tot, dt))
        params = ["ptr %a0", "ptr %a1", "ptr %o0", "ptr %s0", "ptr %s1"]
        outs = list(n.outputs) + ["#scratch0", "#scratch1"]
    else:  # gy, x, labels -> out [n, c]; scratch m [n]
        if len(scratch) != 1:
            raise Unsupported("cross_entropy_backward without its scratch buffer")
        gy = b.at("%a0", dt, 0)
        scale = b.ins(f"fdiv {gy}, {const(dt, rows_n)}", dt) if mean else gy
        _shifted_exp(b, "%a1", "%o0", "%s0", dt, "0", rows_n, c)

        def row(i: V):
            lab = label(i)
            base = b.mul(i, c)
            r = _narrow(b, b.ins(f"fdiv double {_widen(b, scale).ref}, {row_sum('%o0', base).ref}", "f64"), dt)
            b.loop(c, lambda j: b.put("%o0", dt, b.add(base, j), b.op("fmul", b.at("%o0", dt, b.add(base, j)), r)))
            at = b.add(base, lab)
            b.put("%o0", dt, at, b.op("fsub", b.at("%o0", dt, at), scale))
        b.loop(rows_n, row)
        params = ["ptr %a0", "ptr %a1", "ptr %a2", "ptr %o0", "ptr %s0"]
        outs = list(n.outputs) + ["#scratch0"]
    inputs = list(n.inputs)
    # unrolled: the row loops of a few classes (C's 10) ran 1.4x slower rolled than numba's kernel
    text = b.text(params, f"{n.op} {{reduction={n.attr['reduction']}}}: [{rows_n}, {c}] of {dt}", True, unroll=True)
    return text, inputs, outs, [types[v].dtype for v in inputs] + [dt] + [t.dtype for t in scratch]


def _sgd_ir(n: Node, types: dict) -> tuple[str, list[str], list[str], list[str]]:
    """kernels.sgd / sgd_momentum: the param (and buffer) copied to the outputs unless in place,
    then one pass; hyperparameters read from their f64[] operands, cast to the param's dtype."""
    p = types[n.inputs[0]]
    dt, size = p.dtype, V("i64", "%n", True)  # the size is an argument: one function for every param
    if dt not in ("f32", "f64"):
        raise Unsupported(f"{n.op} of {dt}")
    a = n.attr
    mom = a["momentum"]
    b = _Build()

    def scalar(k: int) -> V:  # dt(x) of the k-th input, an f64[]
        return _narrow(b, b.at(f"%a{k}", "f64", 0), dt)

    _into(b, "%a0", "%o0", dt, size)
    lr = scalar(2)
    wd = scalar(5) if a["weight_decay"] else None
    if mom:
        _into(b, "%a6", "%o1", dt, size)
        m = scalar(3)
        damp = _narrow(b, b.op("fsub", V("f64", fconst("f64", 1.0), True), b.at("%a4", "f64", 0)), dt)
        first = b.ins(f"icmp eq {b.at('%a7', 'i64', 0)}, 0", "bool")

    def step(i: V):
        d = b.at("%a1", dt, i)
        if wd is not None:  # d + wd * p
            d = b.op("fadd", d, b.op("fmul", wd, b.at("%o0", dt, i)))
        u = d
        if mom:  # d at the first step, else mom * buf + damp * d
            later = b.op("fadd", b.op("fmul", m, b.at("%o1", dt, i)), b.op("fmul", damp, d))
            u = b.ins(f"select i1 {first.ref}, {d}, {later}", dt)
            b.put("%o1", dt, i, u)
            if a["nesterov"]:
                u = b.op("fadd", d, b.op("fmul", m, u))
        b.put("%o0", dt, i, b.op("fsub", b.at("%o0", dt, i), b.op("fmul", lr, u)))
    b.loop(size, step)
    inputs = list(n.inputs)
    params = [f"ptr %a{k}" for k in range(len(inputs))] + [f"ptr %o{k}" for k in range(len(n.outputs))] + ["i64 %n"]
    flags = ", ".join(f"{k}={str(a[k]).lower()}" for k in ("momentum", "nesterov", "weight_decay"))
    text = b.text(params, f"{n.op} {{{flags}}}: %n elements of {dt}", False)
    return text, inputs, list(n.outputs) + [p.size], [types[v].dtype for v in inputs] + [t.dtype for t in n.types] + ["i64 scalar"]


def _adam_ir(n: Node, types: dict) -> tuple[str, list[str], list[str], list[str]]:
    """kernels.adam: inputs p, g, m, v, step, lr, beta1, beta2, eps, weight_decay (f64[]), then an
    optional grad scale (the param's dtype); outputs p, m, v (in place or copied first); the bias
    corrections in double, as numba computes them."""
    p = types[n.inputs[0]]
    dt, size = p.dtype, V("i64", "%n", True)  # the size is an argument: one function for every param
    if dt not in ("f32", "f64"):
        raise Unsupported(f"{n.op} of {dt}")
    a = n.attr
    b = _Build()
    for src, dst in (("%a0", "%o0"), ("%a2", "%o1"), ("%a3", "%o2")):
        _into(b, src, dst, dt, size)
    one = V("f64", fconst("f64", 1.0), True)
    hyper = {name: b.at(f"%a{k}", "f64", 0) for k, name in enumerate(("lr", "beta1", "beta2", "eps", "wd"), 5)
             if name != "wd" or a["weight_decay"]}
    t = b.ins(f"sitofp i64 {b.add(b.at('%a4', 'i64', 0), 1).ref} to double", "f64")
    bias1 = b.op("fsub", one, b.f.call("llvm.pow", "double", [hyper["beta1"], t], "f64"))
    bias2 = b.op("fsub", one, b.f.call("llvm.pow", "double", [hyper["beta2"], t], "f64"))
    w = b.op("fsub", one, hyper["beta1"])
    low = b.ins(f"fcmp olt {w}, {fconst('f64', 0.5)}", "bool")
    step_size = _narrow(b, b.op("fdiv", hyper["lr"], bias1), dt)
    sqrt_bias2 = _narrow(b, b.f.call("llvm.pow", "double", [bias2, V("f64", fconst("f64", 0.5), True)], "f64"), dt)
    w_, one_minus_w = _narrow(b, w, dt), _narrow(b, b.op("fsub", one, w), dt)
    b2, one_minus_b2 = _narrow(b, hyper["beta2"], dt), _narrow(b, b.op("fsub", one, hyper["beta2"]), dt)
    eps = _narrow(b, hyper["eps"], dt)
    if a["weight_decay"]:
        decay = (_narrow(b, b.op("fsub", one, b.op("fmul", hyper["lr"], hyper["wd"])), dt) if a["decoupled"]
                 else _narrow(b, hyper["wd"], dt))

    scale = b.at("%a10", dt, 0) if len(n.inputs) == 11 else None  # clip_grad_norm's coefficient

    def step(i: V):
        pi, gi = b.at("%o0", dt, i), b.at("%a1", dt, i)
        if scale is not None:
            gi = b.op("fmul", gi, scale)
        if a["weight_decay"]:
            if a["decoupled"]:
                pi = b.op("fmul", pi, decay)
            else:
                gi = b.op("fadd", gi, b.op("fmul", decay, pi))
        mi = b.at("%o1", dt, i)
        lo = b.op("fadd", mi, b.op("fmul", w_, b.op("fsub", gi, mi)))
        hi = b.op("fsub", gi, b.op("fmul", b.op("fsub", gi, mi), one_minus_w))
        mi = b.ins(f"select i1 {low.ref}, {lo}, {hi}", dt)
        vi = b.op("fadd", b.op("fmul", b2, b.at("%o2", dt, i)), b.op("fmul", one_minus_b2, b.op("fmul", gi, gi)))
        b.put("%o1", dt, i, mi)
        b.put("%o2", dt, i, vi)
        den = b.op("fadd", b.op("fdiv", b.f.call("llvm.sqrt", _VAL[dt], [vi], dt), sqrt_bias2), eps)
        b.put("%o0", dt, i, b.op("fsub", pi, b.op("fmul", step_size, b.op("fdiv", mi, den))))
    b.loop(size, step)
    inputs = list(n.inputs)
    params = [f"ptr %a{k}" for k in range(len(inputs))] + [f"ptr %o{k}" for k in range(len(n.outputs))] + ["i64 %n"]
    flags = ", ".join(f"{k}={str(a[k]).lower()}" for k in ("weight_decay", "decoupled"))
    text = b.text(params, f"{n.op} {{{flags}}}: %n elements of {dt}", False)
    return text, inputs, list(n.outputs) + [p.size], [types[v].dtype for v in inputs] + [t.dtype for t in n.types] + ["i64 scalar"]


def _into(b: _Build, src: str, dst: str, dt: str, size) -> None:
    """kernels._into: dst = src unless they are the same memory (the update then works in place)."""
    same = b.ins(f"icmp eq ptr {src}, {dst}", "bool")
    copy, done = b.label("copy"), b.label("copied")
    b.f.line(f"br i1 {same.ref}, label %{done}, label %{copy}")
    b.raw(f"{copy}:")
    b.loop(size, lambda i: b.put(dst, dt, i, b.at(src, dt, i)))
    b.f.line(f"br label %{done}")
    b.raw(f"{done}:")


def copy_ir(dtype: str, size: int) -> tuple[str, list[str]]:
    """(IR, argument types) of kernels.copy for `size` elements of `dtype`: the plan's copies of
    outputs that are inputs and of updates that could not be written in place."""
    if dtype not in _MEM or size < 1:
        raise Unsupported(f"copy of {size} {dtype}")
    b = _Build()
    b.loop(size, lambda i: b.put("%o0", dtype, i, b.at("%a0", dtype, i)))
    return b.text(["ptr %a0", "ptr %o0"], f"copy: {size} of {dtype}", False), [dtype, dtype]


def _addmm_ir(n: Node, types: dict) -> tuple[str, list[str], list[str], list[str]]:
    """kernels.addmm: out = c unless in place, then one BLAS gemm with alpha * s and beta (passed by
    reference in the param's dtype, as the library's two-element scratch holds them), the operands
    swapped for row-major as the library calls numba's xxgemm helper (the same BLAS routine)."""
    a = n.attr
    c, x, y = (types[v] for v in n.inputs[:3])
    dt = c.dtype
    if dt not in ("f32", "f64"):
        raise Unsupported(f"addmm of {dt}")
    m, nn = n.types[0].shape
    k = x.shape[0] if a["trans_a"] else x.shape[1]
    b = _Build()
    ty = _VAL[dt]
    _into(b, "%a0", "%o0", dt, c.size)
    alpha = V("f64", fconst("f64", float(a["alpha"])), True)
    if len(n.inputs) == 4:  # alpha * s, s the fourth operand's element (numba: in double)
        s = b.at("%a3", types[n.inputs[3]].dtype, 0)
        alpha = b.op("fmul", alpha, _widen(b, s) if s.dtype == "f32" else s)
    al = b.slot(ty, _narrow(b, alpha, dt).ref)
    be = b.slot(ty, const(dt, float(a["beta"])))
    ch = {True: b.slot("i8", str(ord("t"))), False: b.slot("i8", str(ord("n")))}
    ints = {}

    def i32(v: int) -> str:
        if v not in ints:
            ints[v] = b.slot("i32", str(v))
        return ints[v]
    kind = "s" if dt == "f32" else "d"
    b.f.declare(f"graphc_blas_{kind}gemm", f"declare void @graphc_blas_{kind}gemm(" + ", ".join(["ptr"] * 13) + ")")
    b.f.line(f"call void @graphc_blas_{kind}gemm(ptr {ch[a['trans_b']]}, ptr {ch[a['trans_a']]}, ptr {i32(nn)}, "
             f"ptr {i32(m)}, ptr {i32(k)}, ptr {al}, ptr %a2, ptr {i32(k if a['trans_b'] else nn)}, ptr %a1, "
             f"ptr {i32(m if a['trans_a'] else k)}, ptr {be}, ptr %o0, ptr {i32(nn)})")
    inputs = list(n.inputs)
    params = [f"ptr %a{j}" for j in range(len(inputs))] + ["ptr %o0"]
    flags = ", ".join(f"{q}={str(a[q]).lower()}" for q in ("trans_a", "trans_b"))
    text = b.text(params, f"addmm {{{flags}}}: [{m}, {nn}] += [{m}, {k}] @ [{k}, {nn}] of {dt}", False)
    return text, inputs, list(n.outputs), [types[v].dtype for v in inputs] + [dt]
