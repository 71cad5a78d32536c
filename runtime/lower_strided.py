"""Lowering of a `strided_gemm` kernel (passes/strided_gemm.py chose its members): a loop over
the batch of BLAS gemm calls on offset pointers, each operand read through the strides of its
movement chain (leading dim and transpose flag), the product written through the strides of its
transpose; every stride is a constant of the generated source, worked out by graphc/ir/strides.py
as the pass did.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from graphc.ir import Node
from graphc.ir.strides import blas_layout, chain_view, contiguous, written_as


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


def strided_gemm_function(name: str, node: Node) -> tuple[str, list[str], list[str]]:
    body = node.body
    types_ = body.types
    gemm = next(m for m in body.nodes if m.op == "matmul")
    made = {m.outputs[0]: m for m in body.nodes[:body.nodes.index(gemm)]}
    (ra, (oa, sha, sta)), (rb, (ob, shb, stb)) = (_operand_view(v, made, types_) for v in gemm.inputs[:2])
    prod = gemm.outputs[0]
    shape = types_[prod].shape
    after = [m for m in body.nodes if m.op == "transpose" and m.inputs[0] == prod]
    out, cst = ((after[0].outputs[0], written_as(after[0].attr["perm"], after[0].types[0].shape)) if after
                else (prod, contiguous(shape)[2]))
    batch, (m_, n_), k_ = shape[:-2], shape[-2:], sha[-1]
    la, lb, lc = blas_layout(m_, k_, sta[-2:]), blas_layout(k_, n_, stb[-2:]), blas_layout(m_, n_, cst[-2:])
    inputs = [i.name for i in body.inputs]
    arg = {v: f"a{j}" for j, v in enumerate(inputs)}
    bi = [f"b{d}" for d in range(len(batch))]
    pa = _sum(zip(bi, _batch_strides(sha, sta, batch)), oa)
    pb = _sum(zip(bi, _batch_strides(shb, stb, batch)), ob)
    pc = _sum(zip(bi, cst[:-2]))
    A, B = (arg[ra], pa, la[1], int(la[0])), (arg[rb], pb, lb[1], int(lb[0]))
    if lc[0]:  # C stored transposed: C^T = B^T A^T, row-major
        call = (f"gemm_view({B[0]}, {B[1]}, {B[2]}, {1 - B[3]}, {A[0]}, {A[1]}, {A[2]}, {1 - A[3]}, "
                f"o0, {pc}, {lc[1]}, {n_}, {m_}, {k_})")
    else:
        call = f"gemm_view({A[0]}, {A[1]}, {A[2]}, {A[3]}, {B[0]}, {B[1]}, {B[2]}, {B[3]}, o0, {pc}, {lc[1]}, {m_}, {n_}, {k_})"
    src = [f"@njit({_JIT})", f"def {name}({', '.join(arg[v] for v in inputs)}, o0):"]
    ind = "    "
    for d, b in enumerate(bi):
        src.append(f"{ind}for {b} in range({batch[d]}):")
        ind += "    "
    src.append(ind + call)
    if not bi:
        src.append("    pass")
    return "\n".join(src) + "\n", inputs, [out]


_JIT = 'nogil=True, error_model="numpy"'
