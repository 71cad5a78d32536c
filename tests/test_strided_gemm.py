"""Batched matmuls reading and writing through strides (passes/strided_gemm.py,
runtime/lower_strided.py, graphc/ir/strides.py): attention's head split and merge move nothing."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.ir import GraphBuilder, TensorType, interpret, parse
from graphc.ir.strides import blas_layout, chain_view
from graphc.passes.kernels import kernel_count, kernels
from graphc.passes.manager import PassContext
from graphc.runtime import Executable

R = np.random.default_rng(0)


def _np_chain(x, ops):
    for op, a in ops:
        if op == "transpose":
            x = x.transpose(a["perm"])
        elif op == "slice":
            sl = [slice(None)] * x.ndim
            sl[a["dim"]] = slice(a["start"], a["end"], a.get("step", 1))
            x = x[tuple(sl)]
        else:
            x = x.reshape(a["shape"])
    return x


@pytest.mark.parametrize("root,ops,fits", [
    ((12, 18), [("reshape", {"shape": (3, 4, 18)}), ("slice", {"dim": 2, "start": 6, "end": 12}),
                ("reshape", {"shape": (3, 4, 2, 3)}), ("transpose", {"perm": (0, 2, 3, 1)})], True),
    ((3, 2, 4, 3), [("transpose", {"perm": (0, 2, 1, 3)}), ("reshape", {"shape": (3, 4, 6)})], False),
    ((2, 3, 1, 4), [("reshape", {"shape": (6, 1, 4, 1)}), ("slice", {"dim": 0, "start": 1, "end": 6, "step": 2})], True),
    ((6, 4), [("transpose", {"perm": (1, 0)}), ("reshape", {"shape": (24,)})], False),
])
def test_chain_view_is_numpys_view(root, ops, fits):
    x = np.arange(int(np.prod(root))).reshape(root)
    v = chain_view(root, ops)
    assert (v is not None) == fits
    if v is not None:
        off, shape, st = v
        got = np.lib.stride_tricks.as_strided(x.reshape(-1)[off:], shape, [s * x.itemsize for s in st])
        np.testing.assert_array_equal(got, _np_chain(x, ops))


def test_blas_layout():
    assert blas_layout(32, 16, (192, 1)) == (False, 192)  # a head of q inside c_attn's output
    assert blas_layout(16, 32, (1, 64)) == (True, 64)  # k transposed: stored column by column
    assert blas_layout(4, 4, (8, 2)) is None  # no unit stride: BLAS cannot read it


def _attention(b, dt="f32", bt=(2, 3), h=2, d=4):
    """c_attn's output [B*T, 3C] -> q, k, v heads -> (q @ k^T) @ v -> heads merged, as nanoGPT."""
    B, T = bt
    C = h * d
    x = b.add_input("x", TensorType((B * T, 3 * C), dt))
    x3 = b.emit("reshape", [x], {"shape": (B, T, 3 * C)})
    q, k, v = (b.emit("transpose", [b.emit("reshape", [b.emit("slice", [x3], {"dim": 2, "start": j * C, "end": (j + 1) * C})],
                                           {"shape": (B, T, h, d)})], {"perm": (0, 2, 1, 3)}) for j in range(3))
    s = b.emit("matmul", [q, b.emit("transpose", [k], {"perm": (0, 1, 3, 2)})])
    y = b.emit("matmul", [s, v])
    return b.emit("reshape", [b.emit("transpose", [y], {"perm": (0, 2, 1, 3)})], {"shape": (B * T, C)})


def _graph(build, **kw):
    b = GraphBuilder("t")
    out = build(b, **kw)
    return b.build(out if isinstance(out, list) else [out]).verify()


@pytest.mark.parametrize("dt,llvm", [("f32", "1"), ("f64", "1"), ("f32", "0")])
def test_attention_split_and_merge_fold_into_strided_gemms(dt, llvm, monkeypatch):
    monkeypatch.setenv("GRAPHC_LLVM", llvm)  # LLVM IR calling BLAS, or numba's loop around gemm_view
    g = _graph(_attention, dt=dt)
    ctx = PassContext("kernels")
    new, changed = kernels(g, ctx)
    new.verify()
    assert changed and parse(str(new)) == new
    ks = [n for n in new.nodes if n.op == "kernel"]
    assert [k.attr["kind"] for k in ks] == ["strided_gemm", "strided_gemm"]
    # q @ k^T reads q's and k's slices of x; @ v reads v's and writes the merged heads (x's reshape
    # to [B, T, 3C], read by all three chains, is one view per chain)
    assert sorted(m.op for m in ks[0].body.nodes) == ["matmul", "reshape", "reshape", "reshape", "reshape", "slice",
                                                     "slice", "transpose", "transpose", "transpose"]
    assert ks[1].body.nodes[-1].op == "transpose"
    assert not any(n.op in ("slice", "transpose") for n in new.nodes)  # no copies left
    assert kernel_count(new) == 3  # the two kernels and the output reshape (x as [B, T, 3C] is a view)
    assert any(r.fused and "strided_gemm" in r.pattern for r in ctx.fusion_records)
    args = [R.standard_normal(i.type.shape).astype(i.type.np_dtype) for i in g.inputs]
    want = interpret(g, args)[0]
    np.testing.assert_allclose(interpret(new, args)[0], want, rtol=1e-12)
    exe = Executable(new, mode="jit")
    assert ("llvm_kernel(" in exe.source.text) == (llvm == "1")
    exe.run(*args)
    np.testing.assert_allclose(np.array(exe.outputs[0]), want, rtol=1e-5 if dt == "f32" else 1e-12, atol=1e-6)


def test_a_transpose_read_by_several_matmuls_is_a_view_in_each_and_a_non_unit_stride_view_is_not_folded():
    def build(b):
        a = b.add_input("a", TensorType((2, 3, 4)))
        t = b.emit("transpose", [a], {"perm": (0, 2, 1)})  # [2, 4, 3], read by three matmuls: one copy of the node each
        s = b.emit("matmul", [t, a])
        u = b.emit("matmul", [s, t])
        w = b.add_input("w", TensorType((4, 2, 6)))
        # w[..., ::2] transposed twice: no matrix dim has unit stride, so the slice stays a copy
        # and the two transposes read it as a view
        ws = b.emit("transpose", [b.emit("slice", [w], {"dim": 2, "start": 0, "end": 6, "step": 2})], {"perm": (1, 0, 2)})
        return b.emit("add", [u, b.emit("matmul", [b.emit("matmul", [t, b.emit("transpose", [ws], {"perm": (0, 2, 1)})]), t])])

    g = _graph(build)
    ctx = PassContext("kernels")
    new, _ = kernels(g, ctx)
    new.verify()
    assert [n.op for n in new.nodes if n.op in ("transpose", "slice")] == ["slice"]
    assert sum(n.attr.get("kind") == "strided_gemm" for n in new.nodes if n.op == "kernel") == 4
    assert any("one node per reader" in n for n in ctx.notes)
    args = [R.standard_normal(i.type.shape).astype(np.float32) for i in g.inputs]
    exe = Executable(new, mode="jit")
    exe.run(*args)
    np.testing.assert_allclose(np.array(exe.outputs[0]), interpret(g, args)[0], rtol=1e-5, atol=1e-5)


def test_zero_pads_that_tile_a_dim_and_are_summed_become_one_concat():
    """The gradient of a split (slice's VJP pads with zeros): pad(a) + pad(b) + pad(c) -> concat."""
    from graphc.passes.pad_concat import pads_as_concat

    def build(b, tile=True):
        xs = [b.add_input(f"x{j}", TensorType((2, 3, 4))) for j in range(3)]
        w = [(8, 0), (4, 4), (0, 8)] if tile else [(8, 0), (4, 4), (1, 7)]
        p = [b.emit("pad", [x], {"widths": (0, 0, 0, 0, lo, hi)}) for x, (lo, hi) in zip(xs, w)]
        return b.emit("add", [b.emit("add", [p[0], p[1]]), p[2]])

    g = _graph(build)
    ctx = PassContext("kernels")
    new = pads_as_concat(g, ctx).verify()
    assert [(n.op, n.inputs) for n in new.nodes] == [("concat", ("x2", "x1", "x0"))]
    assert any("concat" in n for n in ctx.notes)
    args = [R.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(3)]
    np.testing.assert_array_equal(interpret(new, args)[0], interpret(g, args)[0])
    overlapping = _graph(build, tile=False)
    assert pads_as_concat(overlapping) is overlapping


def test_a_transpose_left_as_a_copy_is_recorded():
    def build(b):
        a = b.add_input("a", TensorType((2, 3, 4)))
        t = b.emit("transpose", [a], {"perm": (0, 2, 1)})  # read by a matmul and an exp: a copy
        return b.emit("matmul", [b.emit("matmul", [t, a]), b.emit("exp", [t])])

    ctx = PassContext("kernels")
    kernels(_graph(build), ctx)
    assert any(not r.fused and "transpose+matmul" == r.pattern and "read by 2 nodes" in r.reason for r in ctx.fusion_records)


def _heads_concat(b, dt="f32", shared=False, square=False):
    """Three batched matmuls, each merging heads ([B, h, T, d] -> [B, T, h*d]), concatenated along
    the last dim (attention's dq, dk, dv into the gradient of c_attn's output)."""
    B, T, h, d = 2, 3, 2, 4
    a = b.add_input("a", TensorType((B, h, T, T), dt))
    v = b.add_input("v", TensorType((B, h, T, d), dt))
    at = b.emit("transpose", [a], {"perm": (0, 1, 3, 2)})
    merged = [b.emit("reshape", [b.emit("transpose", [b.emit("matmul", [x, v])], {"perm": (0, 2, 1, 3)})],
                     {"shape": (B, T, h * d)}) for x in (a, at, a)]
    cat = b.emit("concat", merged, {"dim": 2})
    out = b.emit("mul", [cat, cat]) if square else cat
    return [out, merged[0]] if shared else [out]


@pytest.mark.parametrize("llvm,square", [("1", False), ("1", True), ("0", True)])
def test_a_concat_of_strided_gemm_products_is_written_in_place_by_them(llvm, square, monkeypatch):
    monkeypatch.setenv("GRAPHC_LLVM", llvm)
    g = _graph(_heads_concat, square=square)
    new, _ = kernels(g, PassContext("kernels"))
    exe = Executable(new, mode="jit")
    mp = exe.memory_plan
    assert len(mp.concats_in_place) == 1 and "the concat moves nothing" in str(mp)
    pieces = [s for s in mp.slots.values() if s.kind == "piece"]
    assert [s.view for s in pieces] == [(0, (72, 24, 4, 1)), (8, (72, 24, 4, 1)), (16, (72, 24, 4, 1))]
    assert "nothing to move, its producers wrote the pieces" in exe.source.text
    args = [R.standard_normal(i.type.shape).astype(np.float32) for i in g.inputs]
    exe.run(*args)
    np.testing.assert_allclose(np.array(exe.outputs[0]), interpret(g, args)[0], rtol=1e-5, atol=1e-6)


def test_a_concat_whose_piece_is_read_elsewhere_copies():
    g = _graph(_heads_concat, shared=True)
    new, _ = kernels(g, PassContext("kernels"))
    exe = Executable(new, mode="jit")
    assert not exe.memory_plan.concats_in_place
    args = [R.standard_normal(i.type.shape).astype(np.float32) for i in g.inputs]
    exe.run(*args)
    for got, want in zip(exe.outputs, interpret(g, args)):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6)
