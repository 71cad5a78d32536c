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
from .lower_llvm import _MEM, ATTRIBUTES, Unsupported, _Fn, const, kernel_ir

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
          "scatter_add": "index out of range in gather / scatter_add"}


def node_ir(n: Node, types: dict, scalars: set[str]) -> tuple[str, list[str], list[str], list[str]]:
    """(IR text of `define void @kernel(...)`, operand values in argument order, output values,
    argument types), as lower_llvm.kernel_ir returns for a kernel node; raises Unsupported."""
    if n.body is not None:
        raise Unsupported("a kernel node (lower_llvm.kernel_ir lowers those)")
    if any(t.size == 0 for t in (*n.types, *(types[i] for i in n.inputs))):
        raise Unsupported("an empty tensor")
    if n.op in MOVE:
        return _move_ir(n, types)
    if n.op in ERRORS:
        return _indexing_ir(n, types)
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
    if not gather:  # out = x first, unless the update is in place
        lines += ["  %same = icmp eq ptr %a0, %o0", "  br i1 %same, label %copied, label %copy", "copy:",
                  "  %c.q = phi i64 [ 0, %entry ], [ %c.next, %copy ]",
                  f"  %c.pa = getelementptr inbounds {ty}, ptr %a0, i64 %c.q", f"  %c.x = load {ty}, ptr %c.pa",
                  f"  %c.po = getelementptr inbounds {ty}, ptr %o0, i64 %c.q", f"  store {ty} %c.x, ptr %c.po",
                  "  %c.next = add nuw nsw i64 %c.q, 1", f"  %c.end = icmp eq i64 %c.next, {x.size}",
                  "  br i1 %c.end, label %copied, label %copy", "copied:"]
        prev = "copied"
    add = "fadd" if dt in ("f32", "f64") else "add"
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
    if gather:
        lines += [f"  %s.p = getelementptr inbounds {ty}, ptr %a0, i64 %at", f"  %v = load {ty}, ptr %s.p",
                  f"  %d.p = getelementptr inbounds {ty}, ptr %o0, i64 %p", f"  store {ty} %v, ptr %d.p"]
    else:
        lines += [f"  %s.p = getelementptr inbounds {ty}, ptr %a2, i64 %p", f"  %v = load {ty}, ptr %s.p",
                  f"  %d.p = getelementptr inbounds {ty}, ptr %o0, i64 %at", f"  %old = load {ty}, ptr %d.p",
                  f"  %new = {add} {ty} %old, %v", f"  store {ty} %new, ptr %d.p"]
    lines += ["  %i.next = add nuw nsw i64 %i, 1", f"  %i.end = icmp eq i64 %i.next, {inner}",
              "  br i1 %i.end, label %row.done, label %elems", "row.done:",
              "  %q.next = add nuw nsw i64 %q, 1", f"  %q.end = icmp eq i64 %q.next, {outer * m}",
              "  br i1 %q.end, label %done, label %rows", "done:", "  ret i32 0", "fail:", "  ret i32 1", "}", "",
              f"attributes #0 = {{ {ATTRIBUTES} }}"]
    inputs = list(n.inputs)
    return no_unroll("\n".join(lines) + "\n"), inputs, list(n.outputs), [types[v].dtype for v in inputs] + [dt]
