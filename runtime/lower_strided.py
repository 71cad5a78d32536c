"""Lowering of a `strided_gemm` kernel (passes/strided_gemm.py chose its members): a loop over
the batch of BLAS gemm calls on offset pointers, each operand read through the strides of its
movement chain (leading dim and transpose flag), the product written through the strides of its
transpose; every stride is a constant of the generated source, worked out by graphc/ir/strides.py
as the pass did.
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from graphc.ir import Node
from graphc.ir.strides import blas_layout, chain_view, contiguous, written_as


def _batch_extent(batch) -> tuple[int, list[int]]:
    """The batch's number of products and each batch dimension's stride in products (row-major)."""
    inner = [1] * len(batch)
    for d in range(len(batch) - 2, -1, -1):
        inner[d] = inner[d + 1] * batch[d + 1]
    return math.prod(batch), inner


@intrinsic
def gemm_view(typingctx, a, oa, lda, ta, b, ob, ldb, tb, c, oc, ldc, m, n, k):
    """C[m, n] = op(A) @ op(B) (row-major C at c + oc with leading dim ldc; A at a + oa, row-major
    with leading dim lda, or stored transposed when ta != 0; B alike): one BLAS gemm through
    numba's own binding (numba_xxgemm), computing C^T = B^T A^T in BLAS's column-major terms."""
    if not all(isinstance(x, types.Array) for x in (a, b, c)) or not a.dtype == b.dtype == c.dtype:
        return None
    if c.dtype not in (types.float32, types.float64):
        return None
    from numba.np.linalg import ensure_blas

    ensure_blas()
    kind = "s" if c.dtype == types.float32 else "d"
    sig = types.void(a, oa, lda, ta, b, ob, ldb, tb, c, oc, ldc, m, n, k)

    def codegen(context, builder, signature, args):
        char, intp, vp = ir.IntType(8), context.get_value_type(types.intp), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, vp, vp, intp, vp, intp, vp, vp, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        xa, xb, xc = args[0], args[4], args[8]
        iv = {i: context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13)}

        def at(arr, ty, off):
            data = context.make_array(ty)(context, builder, arr).data
            return builder.bitcast(builder.gep(data, [off]), vp)

        def flag(v):
            return builder.select(builder.icmp_signed("!=", v, ir.Constant(intp, 0)),
                                  ir.Constant(char, ord("t")), ir.Constant(char, ord("n")))

        dt = signature.args[0].dtype
        alpha = cgutils.alloca_once_value(builder, context.get_constant_generic(builder, dt, 1.0))
        beta = cgutils.alloca_once_value(builder, context.get_constant_generic(builder, dt, 0.0))
        builder.call(fn, (ir.Constant(char, ord(kind)), flag(iv[7]), flag(iv[3]), iv[12], iv[11], iv[13],
                          builder.bitcast(alpha, vp), at(xb, signature.args[4], iv[5]), iv[6],
                          at(xa, signature.args[0], iv[1]), iv[2], builder.bitcast(beta, vp),
                          at(xc, signature.args[8], iv[9]), iv[10]))
        return context.get_dummy_value()

    return sig, codegen


def _operand_view(v: str, made: dict, types_):
    """(root value, view) of operand v: the movement chain back to a kernel input."""
    ops = []
    while v in made:
        m = made[v]
        ops.insert(0, (m.op, m.attr))
        v = m.inputs[0]
    return v, chain_view(types_[v].shape, ops)


def _batch_strides(shape, st, batch: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of an operand's batch dims against the product's batch (broadcast dims: 0)."""
    shape, st = shape[:-2], st[:-2]
    lead = len(batch) - len(shape)
    return tuple(0 if d < lead or shape[d - lead] == 1 else st[d - lead] for d in range(len(batch)))


def _sum(terms, const=0) -> str:
    parts = [f"{a} * {s}" if s != 1 else a for a, s in terms if s != 0]
    return " + ".join(([str(const)] if const else []) + parts) or "0"


def writes_through(node: Node, strides) -> bool:
    """Whether this strided_gemm kernel can write its output stored at element `strides` (a slice
    of a concat's buffer, runtime/memory.py): each product matrix still one BLAS layout."""
    try:
        _plan(node, tuple(strides))
    except _NoLayout:
        return False
    return True


class _NoLayout(Exception):
    pass


def _plan(node: Node, out_strides: tuple | None = None):
    """What both lowerings need: kernel inputs, the output value, the batch shape, (m, n, k), and
    for A, B and C (root argument, constant element offset, per-batch-dim strides, transposed,
    leading dim); when C's matrices are stored transposed, C^T = B^T A^T is computed instead.
    `out_strides`: the output's element strides where the memory plan stores it inside a larger
    buffer (a concat's piece), else contiguous."""
    body = node.body
    types_ = body.types
    gemm = next(m for m in body.nodes if m.op == "matmul")
    made = {m.outputs[0]: m for m in body.nodes[:body.nodes.index(gemm)]}
    (ra, (oa, sha, sta)), (rb, (ob, shb, stb)) = (_operand_view(v, made, types_) for v in gemm.inputs[:2])
    prod = gemm.outputs[0]
    shape = types_[prod].shape
    after = [m for m in body.nodes if m.op == "transpose" and m.inputs[0] == prod]
    out, cst = ((after[0].outputs[0], written_as(after[0].attr["perm"], after[0].types[0].shape, out_strides)) if after
                else (prod, out_strides or contiguous(shape)[2]))
    batch, (m_, n_), k_ = shape[:-2], shape[-2:], sha[-1]
    la, lb, lc = blas_layout(m_, k_, sta[-2:]), blas_layout(k_, n_, stb[-2:]), blas_layout(m_, n_, cst[-2:])
    if lc is None:
        raise _NoLayout(f"output strides {list(cst)}")
    inputs = [i.name for i in body.inputs]
    A = (inputs.index(ra), oa, _batch_strides(sha, sta, batch), int(la[0]), la[1])
    B = (inputs.index(rb), ob, _batch_strides(shb, stb, batch), int(lb[0]), lb[1])
    C = (0, cst[:-2], lc[1])
    if lc[0]:  # C stored transposed: C^T = B^T A^T, row-major
        A, B = (B[0], B[1], B[2], 1 - B[3], B[4]), (A[0], A[1], A[2], 1 - A[3], A[4])
        m_, n_ = n_, m_
    return inputs, out, batch, (m_, n_, k_), A, B, C


def strided_gemm_function(name: str, node: Node, out_strides: tuple | None = None) -> tuple[str, list[str], list[str]]:
    """numba's lowering (GRAPHC_LLVM=0): the batch loops around `gemm_view`."""
    inputs, out, batch, (m_, n_, k_), A, B, C = _plan(node, out_strides)
    bi = [f"b{d}" for d in range(len(batch))]
    pa, pb, pc = _sum(zip(bi, A[2]), A[1]), _sum(zip(bi, B[2]), B[1]), _sum(zip(bi, C[1]))
    call = (f"gemm_view(a{A[0]}, {pa}, {A[4]}, {A[3]}, a{B[0]}, {pb}, {B[4]}, {B[3]}, "
            f"o0, {pc}, {C[2]}, {m_}, {n_}, {k_})")
    src = [f"@njit({_JIT})", f"def {name}({', '.join(f'a{j}' for j in range(len(inputs)))}, o0):"]
    ind = "    "
    for d, b in enumerate(bi):
        src.append(f"{ind}for {b} in range({batch[d]}):")
        ind += "    "
    src.append(ind + call)
    return "\n".join(src) + "\n", inputs, [out]


def strided_gemm_ir(node: Node, out_strides: tuple | None = None) -> tuple[str, list[str], list[str], list[str]]:
    """LLVM IR (runtime/lower_llvm.py's convention: pointer arguments, the kernel library's BLAS
    symbols): one loop over the flattened batch, each batch index split by constant divisions,
    calling Fortran gemm with C^T = B^T A^T (column-major terms) as `gemm_view` does."""
    inputs, out, batch, (m_, n_, k_), A, B, C = _plan(node, out_strides)
    dt = node.body.types[out].dtype
    ty, kind = ("float", "s") if dt == "f32" else ("double", "d")
    total, inner = _batch_extent(batch)
    lines = [f"; graphc kernel {{kind=strided_gemm}}: batched gemm [{m_}, {k_}] @ [{k_}, {n_}] over batch {list(batch)}",
             f"define void @kernel({', '.join(f'ptr %a{j}' for j in range(len(inputs)))}, ptr %o0) #0 {{", "entry:"]
    slots = {"ta": ("i8", ord("t" if B[3] else "n")), "tb": ("i8", ord("t" if A[3] else "n")),
             "m": ("i32", n_), "n": ("i32", m_), "k": ("i32", k_), "lda": ("i32", B[4]), "ldb": ("i32", A[4]),
             "ldc": ("i32", C[2]), "alpha": (ty, "1.0"), "beta": (ty, "0.0")}
    for name, (t, v) in slots.items():
        lines += [f"  %{name} = alloca {t}", f"  store {t} {v}, ptr %{name}"]
    lines += ["  br label %loop", "loop:", "  %t = phi i64 [ 0, %entry ], [ %t.next, %loop ]"]
    for d in range(len(batch)):
        lines += [f"  %q{d}.0 = udiv i64 %t, {inner[d]}", f"  %q{d} = urem i64 %q{d}.0, {batch[d]}"]

    def offset(tag, base, strides):
        acc = str(base)
        for d, s in enumerate(strides):
            if s:
                lines.append(f"  %{tag}{d}.m = mul i64 %q{d}, {s}")
                lines.append(f"  %{tag}{d}.s = add i64 {acc}, %{tag}{d}.m")
                acc = f"%{tag}{d}.s"
        return acc

    pa, pb, pc = offset("pa", A[1], A[2]), offset("pb", B[1], B[2]), offset("pc", 0, C[1])
    lines += [f"  %A = getelementptr inbounds {ty}, ptr %a{A[0]}, i64 {pa}",
              f"  %B = getelementptr inbounds {ty}, ptr %a{B[0]}, i64 {pb}",
              f"  %C = getelementptr inbounds {ty}, ptr %o0, i64 {pc}",
              f"  call void @graphc_blas_{kind}gemm(ptr %ta, ptr %tb, ptr %m, ptr %n, ptr %k, ptr %alpha, ptr %B, "
              f"ptr %lda, ptr %A, ptr %ldb, ptr %beta, ptr %C, ptr %ldc)",
              "  %t.next = add i64 %t, 1",
              f"  %done = icmp eq i64 %t.next, {total}",
              "  br i1 %done, label %exit, label %loop", "exit:", "  ret void", "}", "",
              f"declare void @graphc_blas_{kind}gemm(" + ", ".join(["ptr"] * 13) + ")", "",
              "attributes #0 = { nounwind }"]
    dtypes = [node.body.types[v].dtype for v in inputs] + [dt]
    return "\n".join(lines) + "\n", inputs, [out], dtypes


_JIT = 'nogil=True, error_model="numpy"'


def strided_loops_ir(node: Node, out_strides: tuple | None = None) -> tuple[str, list[str], list[str], list[str]]:
    """A strided_gemm kernel {impl="loops"} (passes/gemm_impl.choose_strided): the same loop over
    the flattened batch and the same operand views as strided_gemm_ir, each product a loop nest
    (runtime/lower_small_gemm.gemm_loops: its shapes and strides constants) instead of a BLAS
    call, whose start costs more than attention's [32, 16] @ [16, 32] products themselves. With
    threads=k the batch is cut into tasks on the pool (each product its own slice of C)."""
    from .lower_llvm import ATTRIBUTES
    from .lower_small_gemm import Lines, gemm_loops
    from .split_llvm import tasks_ir

    inputs, out, batch, (m_, n_, k_), A, B, C = _plan(node, out_strides)
    dt = node.body.types[out].dtype
    ty = "float" if dt == "f32" else "double"
    total, inner = _batch_extent(batch)
    threads = node.attr.get("threads", 1)
    lo, hi = ("%lo", "%hi") if threads > 1 else ("0", str(total))
    g = Lines("g")
    g.line("br label %bt_pre")
    g.block("bt_pre")
    g.line("br label %bt")
    g.block("bt")
    g.line(f"%t = phi i64 [ {lo}, %bt_pre ], [ %t.next, %bt_latch ]")
    for d in range(len(batch)):
        g.line(f"%q{d}.0 = udiv i64 %t, {inner[d]}")
        g.line(f"%q{d} = urem i64 %q{d}.0, {batch[d]}")

    def pointer(tag, p, base, strides):
        acc = str(base)
        for d, s in enumerate(strides):
            if s:
                g.line(f"%{tag}{d}.m = mul i64 %q{d}, {s}")
                g.line(f"%{tag}{d}.s = add i64 {acc}, %{tag}{d}.m")
                acc = f"%{tag}{d}.s"
        g.line(f"%{tag} = getelementptr inbounds {ty}, ptr {p}, i64 {acc}")
        return f"%{tag}"

    def view(op, p):  # (pointer, row stride, column stride) of a row-major or transposed matrix
        return (p, op[4], 1) if not op[3] else (p, 1, op[4])

    pa, pb = pointer("pA", f"%a{A[0]}", A[1], A[2]), pointer("pB", f"%a{B[0]}", B[1], B[2])
    pc = pointer("pC", "%o0", 0, C[1])
    gemm_loops(g, dt, m_, n_, k_, view(A, pa), view(B, pb), (pc, C[2], 1))
    g.line("br label %bt_latch")
    g.block("bt_latch")
    g.latch("%t.next", "%t", 1, hi, "bt_done", "bt")
    g.block("bt_done")
    params = [f"ptr %a{j}" for j in range(len(inputs))] + ["ptr %o0"]
    name = "kernel_body" if threads > 1 else "kernel"
    head = f"define {'internal ' if threads > 1 else ''}void @{name}({', '.join(params + (['i64 %lo', 'i64 %hi'] if threads > 1 else []))}) #0 {{"
    launch = tasks_ir("kernel", "kernel", params, total, threads)[0] if threads > 1 else ""
    decls = dict(g.decls)
    if threads > 1:
        decls["graphc_parallel_for"] = "declare void @graphc_parallel_for(ptr, ptr, i64, i64)"
    text = "\n".join([f"; graphc kernel {{impl=loops, kind=strided_gemm}}: batched gemm [{m_}, {k_}] @ [{k_}, {n_}] "
                      f"over batch {list(batch)}, loop nests", head, "entry:", *g.allocas, *g.body, "  ret void", "}", "",
                      launch, *[decls[d] for d in sorted(decls)], "", f"attributes #0 = {{ {ATTRIBUTES} }}"]) + "\n"
    dtypes = [node.body.types[v].dtype for v in inputs] + [dt]
    return text, inputs, [out], dtypes
