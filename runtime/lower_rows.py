"""A rows kernel {vector=w} lowered with explicit vectors of w lanes: rows_vector_ir (loops over
the row, w elements at a time) and, with interleave=r, rows_block_ir (rows of at most a few
vectors whole in registers, r rows at a time; see its docstring).

Why: rows_ir's loops over a row are scalar loops with a constant trip count; LLVM unrolls a short
row (attention's 32, LayerNorm's 64) completely before it vectorizes, so the row ran scalar, and
a row reduction's LANES accumulators (lower._accumulate) are eight scalar chains that only SLP,
which numba's pipeline leaves off, would pack. Attention's softmax ran at ~4.4 ns an element.
passes/parallel.py writes `vector=w` on a rows kernel (its reason there); this lowers it:

- per row and pass, its row-shaped members once (scalars, as rows_ir), then one loop over the
  row's whole vectors of w elements and a last partial vector (masked loads and stores) for its
  full-shape members, each member the same operation on every lane as rows_ir's on one element
  (runtime/lower_llvm.EXPR on vectors: exp32 and erf32 included);
- the pass's reduction accumulates in that same loop, from the vector in registers (no scratch
  row and no second loop): LANES accumulators as one vector of LANES lanes, fed the row's
  elements in their order (lane j takes elements j, j + LANES, ...), combined pairwise at the end
  ((a0 . a1) . (a2 . a3)) . ... by shuffles; a row lower._accumulate gives one accumulator (not a
  multiple of LANES, or shorter than 2 * LANES) is accumulated element by element in order.

Per element the same operations in the same order as rows_ir and numba's rows_function: the
results are bit-equal (tests/test_lower_llvm.py). The function's skeleton (the loops over the
rows, argument names, scratch one row per thread) is rows_ir's, so runtime/split_llvm.py splits
it the same way. A member without a vector form (a libm call: tanh, float64 erf; arange; an
operand strided along the row) raises Unsupported, and kernel_ir lowers the kernel by rows_ir.
"""
from __future__ import annotations

import math

from graphc.ir.graph import Node

from .kernels import broadcast_strides, c_strides
from .lower import LANES, REDUCTIONS, _rows_plan
from .lower_llvm import (EXPR, FLOATS, _MEM, _SIZE, V, Unsupported, _affine, _assemble_rows, _extremum, _Fn,
                         _latch, _load, _store, fconst, splat)


def _vec_io(f: _Fn, w: int):
    """(scalar, vload, vstore): scalar(fn) runs fn on scalars (f.width None); vload and vstore move w
    consecutive elements at a scalar flat index, masked to the first `valid` lanes (the rest zero)."""
    def scalar(fn):
        width, f.width = f.width, None
        try:
            return fn()
        finally:
            f.width = width

    def mask_of(valid: int) -> str | None:
        return None if valid == w else "<" + ", ".join(f"i1 {'true' if j < valid else 'false'}" for j in range(w)) + ">"

    def sfx(dt: str) -> str:
        return f"v{w}{ {'f32': 'f32', 'f64': 'f64', 'bool': 'i8', 'i64': 'i64'}[dt]}"

    def vload(p: str, dt: str, at: V, valid: int) -> V:
        q = scalar(lambda: f.ins(f"getelementptr inbounds {_MEM[dt]}, ptr {p}, i64 {at.ref}", "ptr", "p"))
        vt, al, mask = f"<{w} x {_MEM[dt]}>", _SIZE[dt], mask_of(valid)
        if mask:
            name = f"llvm.masked.load.{sfx(dt)}.p0"
            f.declare(name, f"declare {vt} @{name}(ptr, i32, <{w} x i1>, {vt})")
            x = f.ins(f"call {vt} @{name}(ptr {q.ref}, i32 {al}, <{w} x i1> {mask}, {vt} zeroinitializer)", dt, "x")
        else:
            x = f.ins(f"load {vt}, ptr {q.ref}, align {al}", dt, "x")
        return f.ins(f"icmp ne {vt} {x.ref}, zeroinitializer", "bool") if dt == "bool" else x

    def vstore(p: str, dt: str, at: V, x: V, valid: int) -> None:
        q = scalar(lambda: f.ins(f"getelementptr inbounds {_MEM[dt]}, ptr {p}, i64 {at.ref}", "ptr", "p"))
        vt, al, mask = f"<{w} x {_MEM[dt]}>", _SIZE[dt], mask_of(valid)
        if dt == "bool":
            x = f.ins(f"zext {x} to {vt}", "i8")
        if mask:
            name = f"llvm.masked.store.{sfx(dt)}.p0"
            f.declare(name, f"declare void @{name}({vt}, ptr, i32, <{w} x i1>)")
            f.line(f"call void @{name}({vt} {x.ref}, ptr {q.ref}, i32 {al}, <{w} x i1> {mask})")
        else:
            f.line(f"store {vt} {x.ref}, ptr {q.ref}, align {al}")

    return scalar, vload, vstore


def _combine(f: _Fn, step, accs: V, dt: str) -> V:
    """The LANES accumulators of one vector combined pairwise, ((a0 . a1) . (a2 . a3)) . ..., as
    lower._accumulate: evens with odds, halving, then the last two as scalars."""
    level, width = accs, LANES
    while width > 2:
        width //= 2
        f.width = width
        vt = f"<{width * 2} x {_MEM[dt]}>"
        ev = f.ins(f"shufflevector {vt} {level.ref}, {vt} poison, <{width} x i32> "
                   f"<{', '.join(f'i32 {2 * j}' for j in range(width))}>", dt)
        od = f.ins(f"shufflevector {vt} {level.ref}, {vt} poison, <{width} x i32> "
                   f"<{', '.join(f'i32 {2 * j + 1}' for j in range(width))}>", dt)
        level = step(ev, od)
    f.width = None
    vt = f"<2 x {_MEM[dt]}>"
    return step(f.ins(f"extractelement {vt} {level.ref}, i64 0", dt), f.ins(f"extractelement {vt} {level.ref}, i64 1", dt))


def rows_vector_ir(node: Node, scalars: set[str], w: int) -> tuple[str, list[str], list[str], list[str]]:
    """rows_ir's contract (text, inputs, outputs + scratch, argument types), in vectors of w lanes."""
    body = node.body
    types = body.types
    members = list(body.nodes)
    inputs = [i.name for i in body.inputs]
    outputs = list(node.outputs)
    for m in members:
        if m.op not in EXPR and m.op not in REDUCTIONS:
            raise Unsupported(f"op {m.op}")
    if any(t.size == 0 for t in types.values()):
        raise Unsupported("an empty tensor")
    if w % LANES:  # (a vector holds whole groups of the LANES accumulators' elements)
        raise Unsupported(f"vector={w}: not a multiple of {LANES} lanes")
    space, passes, kept = _rows_plan(node)
    n, lead = space[-1], space[:-1]
    if n == 1:
        raise Unsupported("rows of one element")
    reds = [m for m in members if m.op in REDUCTIONS]
    rdt = {(types[r.inputs[0]].dtype, types[r.outputs[0]].dtype) for r in reds}
    if len(rdt) != 1 or next(iter(rdt))[0] != next(iter(rdt))[1] or next(iter(rdt))[0] not in FLOATS:
        raise Unsupported(f"row reductions of {sorted(rdt)}")
    f = _Fn()
    ptr = {v: f"%a{k}" for k, v in enumerate(inputs)}
    ptr.update({v: f"%o{k}" for k, v in enumerate(outputs)})
    scratch = {v: f"%s{k}" for k, v in enumerate(kept)}
    made_in = {v: p for p, ms in enumerate(passes) for m in ms for v in m.outputs}
    read_later = {i for p, ms in enumerate(passes) for m in ms for i in m.inputs if made_in.get(i, p) < p}
    idx = [V("i64", f"%i{d}") if size != 1 else V("i64", "0", True) for d, size in enumerate(lead)]
    f.sections["row"] = []
    bases: dict[tuple, V] = {}
    loops = [d for d, size in enumerate(lead) if size != 1]
    cur = [f"loop{loops[-1]}" if loops else "start"]

    scalar, vload, vstore = _vec_io(f, w)

    def base(st) -> V:
        st = tuple(st[:-1])
        if st not in bases:
            at, f.at = f.at, "row"
            bases[st] = scalar(lambda: _affine(f, zip(idx, st)))
            f.at = at
        return bases[st]

    def read_row(v: str) -> V:
        """External operand v at the current row, a scalar (v broadcasts along the row)."""
        if v in scalars:
            return V("i64", ptr[v], True)
        if types[v].size == 1:
            at, f.at = f.at, "hoist"
            got = scalar(lambda: _load(f, ptr[v], types[v].dtype, V("i64", "0", True)))
            f.at = at
            return got
        b = base(broadcast_strides(types[v].shape, space))
        return scalar(lambda: _load(f, ptr[v], types[v].dtype, b))

    def block(label: str) -> None:
        f.line(f"br label %{label}")
        f.sections["body"].append(f"{label}:")
        cur[0] = label

    def check(m: Node, got: V) -> V:
        if got.dtype != m.types[0].dtype:
            raise Unsupported(f"{m.op} gives {got.dtype}, the IR says {m.types[0].dtype}")
        return got

    row_base = base(c_strides(space))
    at, f.at = f.at, "row"
    r = scalar(lambda: _affine(f, zip(idx, c_strides(lead))))
    f.at = at
    local: dict[str, V] = {}
    done: set[str] = set()
    lanes_of = {}  # a reduction's accumulators: LANES (one vector) or 1, as lower._accumulate
    for p, ms in enumerate(passes):
        row_ms = [m for m in ms if types[m.outputs[0]].shape != space and m.op not in REDUCTIONS]
        full_ms = [m for m in ms if types[m.outputs[0]].shape == space]
        red = ms[-1] if ms and ms[-1].op in REDUCTIONS else None
        f.index = r
        for m in row_ms:
            v = m.outputs[0]
            local[v] = check(m, EXPR[m.op](f, [local[i] if i in done else read_row(i) for i in m.inputs], m))
            done.add(v)
            if v in outputs:
                _store(f, ptr[v], types[v].dtype, r, local[v])
        if not full_ms and red is None:
            continue
        rdt = types[red.outputs[0]].dtype if red is not None else None
        lanes = 0 if red is None else 1 if n % LANES or n < 2 * LANES else LANES
        lanes_of[p] = lanes

        def step(a: V, x: V) -> V:
            return _extremum("gt")(f, [x, a], red) if red.op == "max" else f.ins(f"fadd {a}, {x.ref}", rdt)

        def chunk(k: V, valid: int, accs: V | None) -> V | None:
            """One vector of the row from position k (valid lanes of w): the pass's members, their
            stores, the reduction's accumulators fed; returns the accumulators after."""
            at = scalar(lambda: f.ins(f"add nuw nsw i64 {row_base.ref}, {k.ref}", "i64"))
            f.width = w
            f.index = f.ins(f"add {splat(f, at)}, <{', '.join(f'i64 {j}' for j in range(w))}>", "i64")
            here: dict[str, V] = {}

            def operand(i: str) -> V:
                if i in here:
                    return here[i]
                if i in done:  # a row value, in every lane
                    return splat(f, local[i]) if local[i].width is None and i not in scalars else local[i]
                if i in outputs and types[i].shape == space:
                    return vload(ptr[i], types[i].dtype, at, valid)
                if i in scratch:
                    return vload(scratch[i], types[i].dtype, k, valid)
                st = broadcast_strides(types[i].shape, space)
                if i in scalars:
                    return V("i64", ptr[i], True)
                if types[i].size == 1 or st[-1] == 0:
                    return splat(f, read_row(i))
                if st[-1] != 1:
                    raise Unsupported(f"an operand strided along the row ({st[-1]})")
                b = base(st)
                return vload(ptr[i], types[i].dtype, scalar(lambda: f.ins(f"add nuw nsw i64 {b.ref}, {k.ref}", "i64")), valid)

            for m in full_ms:
                v = m.outputs[0]
                here[v] = check(m, EXPR[m.op](f, [operand(i) for i in m.inputs], m))
                if v in outputs:
                    vstore(ptr[v], types[v].dtype, at, here[v], valid)
                if v in scratch and v in read_later:
                    vstore(scratch[v], types[v].dtype, k, here[v], valid)
            if red is not None:
                x = operand(red.inputs[0])
                if lanes == LANES:  # lane j of the accumulators takes the elements j, j + LANES, ... in order
                    for g in range(0, valid, LANES):
                        part = x
                        if w != LANES:
                            sel = ", ".join(f"i32 {g + j}" for j in range(LANES))
                            f.width = LANES
                            part = f.ins(f"shufflevector {x}, <{w} x {_MEM[rdt]}> poison, <{LANES} x i32> <{sel}>", rdt)
                        f.width = LANES
                        accs = step(accs, part)
                        f.width = w
                else:  # one accumulator: the elements one by one, in order
                    f.width = None
                    for j in range(valid):
                        accs = step(accs, f.ins(f"extractelement <{w} x {_MEM[rdt]}> {x.ref}, i64 {j}", rdt))
            f.width = None
            return accs

        init = None
        if red is not None:
            f.width = lanes if lanes > 1 else None
            init = f.c(rdt, -math.inf if red.op == "max" else 0.0)
            f.width = None
        accs = init
        whole, tail = divmod(n, w)
        if whole:
            start = cur[0]
            block(f"c{p}")
            k = V("i64", f"%k{p}")
            f.line(f"{k.ref} = phi i64 [ 0, %{start} ], [ {k.ref}.next, %c{p} ]")
            phi_at = len(f.sections["body"])
            if red is not None:
                f.line("")  # the accumulators' phi, written once their next value is known
                a = V(rdt, f.fresh("acc"), False, lanes if lanes > 1 else None)
            else:
                a = None
            nxt = chunk(k, w, a)
            if red is not None:
                f.sections["body"][phi_at] = f"  {a.ref} = phi {a.ty} [ {init.ref}, %{start} ], [ {nxt.ref}, %c{p} ]"
            _latch(f, k.ref, w, whole * w, f"c{p}")
            cur[0] = f"c{p}.done"
            accs = nxt
        if tail:
            accs = chunk(V("i64", str(whole * w), True), tail, accs)
        if red is None:
            continue
        if lanes == LANES:  # ((a0 . a1) . (a2 . a3)) . ...
            accs = _combine(f, step, accs, rdt)
        v = red.outputs[0]
        acc = accs
        if red.op == "mean":
            acc = f.ins(f"fdiv {acc}, {fconst(rdt, n)}", rdt)
        local[v] = acc
        done.add(v)
        f.index = r
        if v in outputs:
            _store(f, ptr[v], rdt, r, acc)
    params = [f"i64 {ptr[v]}" if v in scalars else f"ptr {ptr[v]}" for v in inputs]
    params += [f"ptr {ptr[v]}" for v in outputs] + [f"ptr {scratch[v]}" for v in kept]
    text = _assemble_rows(f, space, params, [m.op for m in members], cur[0])
    text = text.replace("{kind=rows}", f"{{kind=rows, vector={w}}}", 1)
    args = ["i64 scalar" if v in scalars else types[v].dtype for v in inputs]
    args += [types[v].dtype for v in outputs] + [types[v].dtype for v in kept]
    return text, inputs, outputs + [f"#scratch{k}" for k in range(len(kept))], args


# ------------------------------------------------------------------ short rows: whole rows in registers, several at a time

MAX_CHUNKS = 16  # rows_block_ir takes rows of at most this many vectors (passes/parallel.py asks for <= 8)


def rows_block_ir(node: Node, scalars: set[str], w: int, rows: int) -> tuple[str, list[str], list[str], list[str]]:
    """rows_ir's contract for rows of at most MAX_CHUNKS vectors of w lanes, `rows` rows at a time
    (interleave=rows, dividing the innermost dim of the rows' loops): no loop inside a row, every
    value of the row in registers (no scratch rows: a later pass reuses the vectors), and each
    step of a pass done for the block's rows side by side, so their reductions' chains (short
    rows are latency-bound: max, then exp, then sum, then div) overlap. Per element the same
    operations in the same order as rows_ir: bit-equal."""
    body = node.body
    types = body.types
    members = list(body.nodes)
    inputs = [i.name for i in body.inputs]
    outputs = list(node.outputs)
    for m in members:
        if m.op not in EXPR and m.op not in REDUCTIONS:
            raise Unsupported(f"op {m.op}")
    if any(t.size == 0 for t in types.values()):
        raise Unsupported("an empty tensor")
    if w % LANES:
        raise Unsupported(f"vector={w}: not a multiple of {LANES} lanes")
    space, passes, kept = _rows_plan(node)
    n, lead = space[-1], space[:-1]
    if n == 1:
        raise Unsupported("rows of one element")
    if -(-n // w) > MAX_CHUNKS:
        raise Unsupported(f"rows of {n}: more than {MAX_CHUNKS} vectors of {w}")
    loops = [d for d, size in enumerate(lead) if size != 1]
    inner = loops[-1] if loops else None
    if rows > 1 and (inner is None or lead[inner] % rows):
        raise Unsupported(f"interleave={rows} does not divide the rows' innermost dim")
    reds = [m for m in members if m.op in REDUCTIONS]
    rdt = {(types[r.inputs[0]].dtype, types[r.outputs[0]].dtype) for r in reds}
    if len(rdt) != 1 or next(iter(rdt))[0] != next(iter(rdt))[1] or next(iter(rdt))[0] not in FLOATS:
        raise Unsupported(f"row reductions of {sorted(rdt)}")
    f = _Fn()
    scalar, vload, vstore = _vec_io(f, w)
    ptr = {v: f"%a{k}" for k, v in enumerate(inputs)}
    ptr.update({v: f"%o{k}" for k, v in enumerate(outputs)})
    f.sections["row"] = []
    steps = list(lead)
    if rows > 1:
        steps[inner] = lead[inner] // rows
    loop_ix = [V("i64", f"%i{d}") if size != 1 else V("i64", "0", True) for d, size in enumerate(steps)]
    # the index of row j of the block along each dim: the loops' own, the innermost one's times rows, plus j
    idx = []
    f.at = "row"
    for j in range(rows):
        ix = list(loop_ix)
        if rows > 1:
            t = scalar(lambda: f.ins(f"mul nuw nsw i64 {loop_ix[inner].ref}, {rows}", "i64")) if loop_ix[inner].ref != "0" else V("i64", "0", True)
            ix[inner] = scalar(lambda: f.ins(f"add nuw nsw i64 {t.ref}, {j}", "i64")) if j else t
        idx.append(ix)
    f.at = "body"
    bases: dict[tuple, V] = {}

    def base(st, j: int) -> V:
        key = (tuple(st[:-1]), j)
        if key not in bases:
            at, f.at = f.at, "row"
            bases[key] = scalar(lambda: _affine(f, zip(idx[j], key[0])))
            f.at = at
        return bases[key]

    def read_row(v: str, j: int) -> V:
        if v in scalars:
            return V("i64", ptr[v], True)
        if types[v].size == 1:
            at, f.at = f.at, "hoist"
            got = scalar(lambda: _load(f, ptr[v], types[v].dtype, V("i64", "0", True)))
            f.at = at
            return got
        b = base(broadcast_strides(types[v].shape, space), j)
        return scalar(lambda: _load(f, ptr[v], types[v].dtype, b))

    def check(m: Node, got: V) -> V:
        if got.dtype != m.types[0].dtype:
            raise Unsupported(f"{m.op} gives {got.dtype}, the IR says {m.types[0].dtype}")
        return got

    row_base = [base(c_strides(space), j) for j in range(rows)]
    f.at = "row"
    r = [scalar(lambda: _affine(f, zip(idx[j], c_strides(lead)))) for j in range(rows)]
    f.at = "body"
    local: dict[tuple, V] = {}  # (value, row) -> a row value (scalar); (value, row, chunk) -> a vector
    done: set[str] = set()
    chunks = [(c * w, min(w, n - c * w)) for c in range(-(-n // w))]
    for p, ms in enumerate(passes):
        row_ms = [m for m in ms if types[m.outputs[0]].shape != space and m.op not in REDUCTIONS]
        full_ms = [m for m in ms if types[m.outputs[0]].shape == space]
        red = ms[-1] if ms and ms[-1].op in REDUCTIONS else None
        for j in range(rows):
            f.index = r[j]
            for m in row_ms:
                v = m.outputs[0]
                local[v, j] = check(m, EXPR[m.op](f, [local[i, j] if (i, j) in local else read_row(i, j) for i in m.inputs], m))
                if v in outputs:
                    _store(f, ptr[v], types[v].dtype, r[j], local[v, j])
        done.update(m.outputs[0] for m in row_ms)
        if not full_ms and red is None:
            continue
        rdt = types[red.outputs[0]].dtype if red is not None else None
        lanes = 0 if red is None else 1 if n % LANES or n < 2 * LANES else LANES

        def step(a: V, x: V) -> V:
            return _extremum("gt")(f, [x, a], red) if red.op == "max" else f.ins(f"fadd {a}, {x.ref}", rdt)

        accs = []
        if red is not None:
            f.width = lanes if lanes > 1 else None
            accs = [f.c(rdt, -math.inf if red.op == "max" else 0.0) for _ in range(rows)]
            f.width = None
        for c, (k, valid) in enumerate(chunks):
            for j in range(rows):
                at = scalar(lambda: f.ins(f"add nuw nsw i64 {row_base[j].ref}, {k}", "i64")) if k else row_base[j]
                f.width = w
                f.index = f.ins(f"add {splat(f, at)}, <{', '.join(f'i64 {q}' for q in range(w))}>", "i64")

                def operand(i: str) -> V:
                    if (i, j, c) in local:  # a vector of this row (this pass's or an earlier one's)
                        return local[i, j, c]
                    if i in done:  # a row value, in every lane
                        return local[i, j] if local[i, j].width else splat(f, local[i, j])
                    if i in scalars:
                        return V("i64", ptr[i], True)
                    st = broadcast_strides(types[i].shape, space)
                    if types[i].size == 1 or st[-1] == 0:
                        return splat(f, read_row(i, j))
                    if st[-1] != 1:
                        raise Unsupported(f"an operand strided along the row ({st[-1]})")
                    b = base(st, j)
                    return vload(ptr[i], types[i].dtype, scalar(lambda: f.ins(f"add nuw nsw i64 {b.ref}, {k}", "i64")) if k else b, valid)

                for m in full_ms:
                    v = m.outputs[0]
                    local[v, j, c] = check(m, EXPR[m.op](f, [operand(i) for i in m.inputs], m))
                    if v in outputs:
                        vstore(ptr[v], types[v].dtype, at, local[v, j, c], valid)
                if red is not None:
                    x = operand(red.inputs[0])
                    if lanes == LANES:
                        for g in range(0, valid, LANES):
                            part = x
                            if w != LANES:
                                f.width = LANES
                                sel = ", ".join(f"i32 {g + q}" for q in range(LANES))
                                part = f.ins(f"shufflevector {x}, <{w} x {_MEM[rdt]}> poison, <{LANES} x i32> <{sel}>", rdt)
                            f.width = LANES
                            accs[j] = step(accs[j], part)
                            f.width = w
                    else:
                        f.width = None
                        for q in range(valid):
                            accs[j] = step(accs[j], f.ins(f"extractelement <{w} x {_MEM[rdt]}> {x.ref}, i64 {q}", rdt))
                f.width = None
        if red is None:
            continue
        v = red.outputs[0]
        for j in range(rows):
            acc = _combine(f, step, accs[j], rdt) if lanes == LANES else accs[j]
            if red.op == "mean":
                acc = f.ins(f"fdiv {acc}, {fconst(rdt, n)}", rdt)
            local[v, j] = acc
            if v in outputs:
                _store(f, ptr[v], rdt, r[j], acc)
        done.add(v)
    scratch = [f"%s{k}" for k in range(len(kept))]  # (unused: every row value stays in registers)
    params = [f"i64 {ptr[v]}" if v in scalars else f"ptr {ptr[v]}" for v in inputs]
    params += [f"ptr {ptr[v]}" for v in outputs] + [f"ptr {s}" for s in scratch]
    text = _assemble_rows(f, tuple(steps) + (n,), params, [m.op for m in members], "")
    attrs = f"interleave={rows}, kind=rows, vector={w}"
    text = text.replace(f"{{kind=rows}}: {', '.join(m.op for m in members)}; iteration space {list(tuple(steps) + (n,))}",
                        f"{{{attrs}}}: {', '.join(m.op for m in members)}; iteration space {list(space)}", 1)
    args = ["i64 scalar" if v in scalars else types[v].dtype for v in inputs]
    args += [types[v].dtype for v in outputs] + [types[v].dtype for v in kept]
    return text, inputs, outputs + [f"#scratch{k}" for k in range(len(kept))], args
