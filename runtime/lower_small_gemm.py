"""A small GEMM as a loop nest in LLVM IR, its shapes and strides compile-time constants.

Why: for the GEMMs of small MLPs (M*N*K of 10^3-10^6) a BLAS call costs more than its
arithmetic: argument checks, the choice of a kernel, packing both operands and, for the
transposed layouts of a backward pass, the small-matrix paths OpenBLAS takes. A loop nest
whose every bound and stride is a constant is a handful of vector FMAs per step that LLVM
schedules and unrolls. The kernel pass chooses it (`impl="loops"` on the kernel node, with its
reason recorded; passes/kernels.py), codegen only lowers that choice (runtime/lower_llvm.py).

The loop nest (a register-blocked outer product, the BLIS micro-kernel shape):
- C (M x N, written through strides) = op(A) (M x K) @ op(B) (K x N), optionally
  C = beta * C0 + scale * op(A) @ op(B) (addmm's contract; scale a runtime f64);
- the vector dimension is C's unit-stride dimension: N, or M when C's rows are one element wide
  (then C^T = B^T A^T is computed: the same numbers);
- B's rows are read as <W x T> vectors (W = 16 for f32, 8 for f64; LLVM splits them where the
  CPU's registers are narrower), the last one through a mask when N is not a multiple of W;
  when B's rows are not unit-stride, B is first packed into a zero-padded stack buffer (K x N
  rounded up to W);
- rows of A are taken MR at a time, columns NB vectors at a time: MR * NB accumulators live in
  registers over the K loop, each step one vector load of B per column block and one broadcast
  of A per row; the last, partial vector is stored through a mask.

Sums run over k in order 0..K-1 with fused multiply-adds: results differ from BLAS's in the
last bits (another summation order), as any two BLAS builds do; tests compare with tolerances.
"""
from __future__ import annotations

ACCUMULATORS = 24  # vector accumulators per register block (of AVX-512's 32 registers; the rest: B's vectors)
NB = 4  # vectors of C's row per register block
K_UNROLL = 2  # the k loop of a register block: 24 FMAs a step already; LLVM unrolled it whole (compile time)
UNROLL_MD = 5000  # metadata ids of the loop nests' loops (lower_llvm's are 100.., lower_nodes' 0..)
KC = 64  # k in blocks of about this many: B's rows of a block stay in L1 across the register blocks
WIDTH = {"f32": 16, "f64": 8}  # elements per vector: one AVX-512 register
_T = {"f32": "float", "f64": "double"}
_SIZE = {"f32": 4, "f64": 8}


class Lines:
    """Where the loop nest goes: `body` (basic blocks; the first instructions join the current
    block), `allocas` (entry-block stack slots) and `decls` (intrinsic declarations), with a
    prefix that keeps its names apart from the rest of the function."""

    def __init__(self, prefix: str = "g"):
        self.p = prefix
        self.n = 0
        self.body: list[str] = []
        self.allocas: list[str] = []
        self.decls: dict[str, str] = {}

    def fresh(self, stem: str) -> str:
        self.n += 1
        return f"%{self.p}{stem}{self.n}"

    def label(self, stem: str) -> str:
        self.n += 1
        return f"{self.p}{stem}{self.n}"

    def ins(self, text: str, stem: str = "v") -> str:
        name = self.fresh(stem)
        self.body.append(f"  {name} = {text}")
        return name

    def line(self, text: str) -> None:
        self.body.append(f"  {text}")

    def block(self, label: str) -> None:
        self.body.append(f"{label}:")

    def latch(self, nxt: str, var: str, step, end, done: str, head: str, unroll: int | None = None) -> None:
        """A counted loop's back edge: nxt = var + step, then to `done` at `end`, else to `head`.
        unroll: LLVM may unroll the loop at most this many times (loop metadata; 1: not at all)."""
        self.line(f"{nxt} = add nuw nsw i64 {var}, {step}")
        e = self.ins(f"icmp eq i64 {nxt}, {end}")
        md = ""
        if unroll is not None:
            self.n += 1
            ident = UNROLL_MD + self.n
            what = '!"llvm.loop.unroll.disable"' if unroll == 1 else f'!"llvm.loop.unroll.count", i32 {unroll}'
            self.decls[f"!{ident}"] = f"!{ident} = distinct !{{!{ident}, !{ident + 1}}}\n!{ident + 1} = !{{{what}}}"
            self.n += 1
            md = f", !llvm.loop !{ident}"
        self.line(f"br i1 {e}, label %{done}, label %{head}{md}")


def plan_orientation(m: int, n: int, a: tuple, b: tuple, c: tuple):
    """(m, n, a, b, c) with C's vector dimension last: swapped to C^T = B^T A^T when C's columns
    are not unit-stride but its rows are (a column vector). a, b, c: (pointer, row stride, col stride)."""
    if c[2] != 1 and c[1] == 1:
        return n, m, (b[0], b[2], b[1]), (a[0], a[2], a[1]), (c[0], c[2], c[1])
    return m, n, a, b, c


def tiles(dt: str, m: int, n: int, a: tuple, b: tuple, c: tuple) -> tuple[int, int]:
    """(rows per register block, register blocks of rows) of gemm_loops on these operands: the
    units a thread split shares out (runtime/split_llvm.split_loop_gemm)."""
    m, n, _, _, _ = plan_orientation(m, n, a, b, c)
    mr = _rows_per_block(dt, m, n)
    return mr, -(-m // mr)


def _rows_per_block(dt: str, m: int, n: int) -> int:
    """Rows of A per register block: as many as the accumulators allow (fewer, 4 x 4 vectors for
    T's 1024-row GEMMs with no partial block, ran 10-30% slower than 6 x 4 and a partial block)."""
    nv = -(-n // WIDTH[dt])
    return max(1, min(8, ACCUMULATORS // min(nv, NB)))


def gemm_loops(out: Lines, dt: str, m: int, n: int, k: int, a: tuple, b: tuple, c: tuple,
               scale: str | None = None, c0: tuple | None = None, beta: float = 0.0, epilogue=None,
               span: tuple[str, str] | None = None, cbuf: str | None = None) -> None:
    """Append the loop nest computing C = op(A) @ op(B) (or beta * C0 + scale * op(A) @ op(B)
    when scale, an LLVM `double` operand, is given) to `out`. a, b, c, c0: (pointer, row
    stride, column stride) in elements; c must have a unit stride in one dimension.
    epilogue(row, col, value, partial), when given, is called for each vector of C (row: an i64
    operand, col: C's first column in it, partial: whether it is the masked last one) in place
    of C's store: it emits what the kernel does with those elements (tile_epilogue_ir).
    span: (lo, hi) i64 operands: only register blocks of rows lo <= t < hi (tiles(); a task of
    a thread split), else all. k longer than KC runs in blocks of about KC (B's rows of a block
    stay in L1 across the register blocks), the sums kept in C between blocks (in cbuf, a
    row-major M x N buffer, when an epilogue takes C's place; not with scale)."""
    if epilogue is not None and c[2] != 1:
        raise ValueError("gemm_loops: an epilogue needs C's rows unit-stride")
    m, n, a, b, c = plan_orientation(m, n, a, b, c)
    if c0 is not None and c[2] != 1:  # the same swap for C0 (it has C's shape)
        c0 = (c0[0], c0[2], c0[1])
    if c[2] != 1:
        raise ValueError("gemm_loops: C needs a unit stride in one dimension")
    ty, w = _T[dt], WIDTH[dt]
    vt = f"<{w} x {ty}>"
    nv = -(-n // w)  # vectors per row of C
    npad = nv * w
    # B as rows of vectors: itself when unit-stride and whole vectors, else a padded copy
    if b[2] == 1:
        bp, ldb = b[0], b[1]
    else:
        bp, ldb = _pack(out, dt, k, n, npad, b), npad
    tail_load = b[2] == 1 and n % w != 0  # the last vector of a row of B read through the mask
    fma = f"llvm.fmuladd.v{w}{'f32' if dt == 'f32' else 'f64'}"
    out.decls[fma] = f"declare {vt} @{fma}({vt}, {vt}, {vt})"
    mask_tail = n % w
    if mask_tail:
        st = f"llvm.masked.store.v{w}{'f32' if dt == 'f32' else 'f64'}.p0"
        out.decls[st] = f"declare void @{st}({vt}, ptr, i32, <{w} x i1>)"
        ld = f"llvm.masked.load.v{w}{'f32' if dt == 'f32' else 'f64'}.p0"
        out.decls[ld] = f"declare {vt} @{ld}(ptr, i32, <{w} x i1>, {vt})"
    mask = "<" + ", ".join(f"i1 {'true' if j < mask_tail else 'false'}" for j in range(w)) + ">"
    zero = f"{vt} zeroinitializer"
    svec = None
    if scale is not None:
        sf = out.ins(f"fptrunc double {scale} to {ty}") if dt == "f32" else scale
        s1 = out.ins(f"insertelement {vt} poison, {ty} {sf}, i64 0")
        svec = out.ins(f"shufflevector {vt} {s1}, {vt} poison, <{w} x i32> zeroinitializer")

    mr = _rows_per_block(dt, m, n)  # rows of A per register block
    nkb = -(-k // KC) if scale is None else 1
    kc = -(-k // nkb)
    cmem = None
    if nkb > 1:
        cmem = c if epilogue is None else (cbuf, n, 1)
        if cmem[0] is None:
            raise ValueError("gemm_loops: k in blocks with an epilogue needs cbuf")

    def block_rows(i0: str, rows: int, k0, klen: int, first: bool, last: bool, rows_max: int | None = None) -> None:
        """C[i0:i0+rows, cols]; i0 an i64 operand (rows_max: rows from it on are not C's)."""
        _micro(out, dt, i0, rows, cols, (k0, klen), a, bp, ldb, c, fma, zero, vt, w, n, mask_tail, mask, svec, c0,
               beta, tail_load, epilogue, cmem, first, last, jcol, rows_max)

    full, tail = divmod(m, mr)

    def all_rows(k0, klen: int, first: bool, last: bool) -> None:
        """For each column block of NB vectors (its rows of B stay in L1), the register blocks of rows."""
        nonlocal cols, jcol
        blocks = [list(range(j0, min(nv, j0 + NB))) for j0 in range(0, nv, NB)]
        whole = [b for b in blocks if len(b) == NB and (nv - 1 not in b or not (mask_tail or tail_load))]
        if len(whole) >= 2:  # the whole blocks alike: a loop over them (one copy of the nest: compile time)
            pre, head, after = out.label("jb_pre"), out.label("jb"), out.label("jb_done")
            out.line(f"br label %{pre}")
            out.block(pre)
            out.line(f"br label %{head}")
            out.block(head)
            jb, jn = out.fresh("jb"), out.fresh("jbn")
            out.line(f"{jb} = phi i64 [ 0, %{pre} ], [ {jn}, %{{latch}} ]")
            at = len(out.body) - 1
            cols, jcol = list(range(NB)), out.ins(f"mul nuw nsw i64 {jb}, {NB * w}")
            block_cols(k0, klen, first, last)
            latch = out.label("jb_latch")
            out.line(f"br label %{latch}")
            out.block(latch)
            out.body[at] = out.body[at].replace("{latch}", latch)
            out.latch(jn, jb, 1, len(whole), after, head)
            out.block(after)
            blocks = blocks[len(whole):]
        for b in blocks:
            cols, jcol = b, None
            block_cols(k0, klen, first, last)

    cols: list = []
    jcol = None

    def block_cols(k0, klen: int, first: bool, last: bool) -> None:
        lo, hi = span if span is not None else ("0", str(full + (tail > 0)))
        if full and tail:  # the partial block through the same nest, its missing rows not stored
            pre, head, latch, after = (out.label(x) for x in ("rows_pre", "rows", "rows_latch", "rows_done"))
            out.line(f"br label %{pre}")
            out.block(pre)
            out.line(f"br label %{head}")
            out.block(head)
            ib, nxt = out.fresh("ib"), out.fresh("ibn")
            out.line(f"{ib} = phi i64 [ {lo}, %{pre} ], [ {nxt}, %{latch} ]")
            i0 = out.ins(f"mul nuw nsw i64 {ib}, {mr}")
            block_rows(i0, mr, k0, klen, first, last, m)
            out.line(f"br label %{latch}")
            out.block(latch)
            out.latch(nxt, ib, 1, hi, after, head)
            out.block(after)
            return
        if full:
            pre, head, latch, after = (out.label(x) for x in ("rows_pre", "rows", "rows_latch", "rows_done"))
            if span is None:
                hf = str(full)
                out.line(f"br label %{pre}")
            else:  # full blocks lo <= t < min(hi, full), when any
                over = out.ins(f"icmp ugt i64 {hi}, {full}")
                hf = out.ins(f"select i1 {over}, i64 {full}, i64 {hi}")
                some = out.ins(f"icmp ult i64 {lo}, {hf}")
                out.line(f"br i1 {some}, label %{pre}, label %{after}")
            out.block(pre)
            out.line(f"br label %{head}")
            out.block(head)
            ib, nxt = out.fresh("ib"), out.fresh("ibn")
            out.line(f"{ib} = phi i64 [ {lo}, %{pre} ], [ {nxt}, %{latch} ]")
            i0 = out.ins(f"mul nuw nsw i64 {ib}, {mr}")
            block_rows(i0, mr, k0, klen, first, last)
            out.line(f"br label %{latch}")
            out.block(latch)
            out.latch(nxt, ib, 1, hf, after, head)
            out.block(after)
        if tail:
            if span is None:
                block_rows(str(full * mr), tail, k0, klen, first, last)
            else:  # the last, partial block: in the task whose span reaches it
                yes, done = out.label("tail"), out.label("tail_done")
                has = out.ins(f"icmp ugt i64 {hi}, {full}")
                out.line(f"br i1 {has}, label %{yes}, label %{done}")
                out.block(yes)
                block_rows(str(full * mr), tail, k0, klen, first, last)
                out.line(f"br label %{done}")
                out.block(done)

    if nkb == 1:
        all_rows("0", k, True, True)
        return
    # every block of k in one loop (one copy of the loop nest: compile time): the first starts its
    # sums at zero, the others at C's; the last runs the epilogue, the others store the sums
    pre, head, after = out.label("kb_pre"), out.label("kb"), out.label("kb_done")
    out.line(f"br label %{pre}")
    out.block(pre)
    out.line(f"br label %{head}")
    out.block(head)
    kb, kn = out.fresh("kb"), out.fresh("kbn")
    out.line(f"{kb} = phi i64 [ 0, %{pre} ], [ {kn}, %{{latch}} ]")
    at = len(out.body) - 1
    k0 = out.ins(f"mul nuw nsw i64 {kb}, {kc}")
    first = out.ins(f"icmp eq i64 {kb}, 0")
    last = out.ins(f"icmp eq i64 {kb}, {nkb - 1}")
    klen = out.ins(f"select i1 {last}, i64 {k - (nkb - 1) * kc}, i64 {kc}")
    all_rows(k0, klen, first, last)
    latch = out.label("kb_latch")
    out.line(f"br label %{latch}")
    out.block(latch)
    out.body[at] = out.body[at].replace("{latch}", latch)
    out.latch(kn, kb, 1, nkb, after, head)
    out.block(after)


def dots_form(dt: str, n: int, a: tuple, b: tuple) -> bool:
    """Whether C = A @ B is lowered as dot products along k (gemm_dots): one output (a row of C
    would fill one lane of 16) and both operands unit-stride along k (linear's x @ w.T with w of
    one row). passes/gemm_impl.py prices the same form by the same test (tested equal)."""
    return dt in WIDTH and n == 1 and a[2] == 1 and b[1] == 1


def gemm_dots(out: Lines, dt: str, m: int, n: int, k: int, a: tuple, b: tuple, c: tuple) -> None:
    """C[i, j] = dot(A[i, :], B[:, j]) for few outputs j (dots_form takes one): per row of A, its k in
    vectors of W (the last through a mask) against each of the n rows of B^T, n accumulators,
    each summed across its lanes at the end (a tree: another order than BLAS's, as any loop nest)."""
    ty, w = _T[dt], WIDTH[dt]
    vt = f"<{w} x {ty}>"
    sfx = "f32" if dt == "f32" else "f64"
    fma = f"llvm.fmuladd.v{w}{sfx}"
    out.decls[fma] = f"declare {vt} @{fma}({vt}, {vt}, {vt})"
    red = f"llvm.vector.reduce.fadd.v{w}{sfx}"
    out.decls[red] = f"declare {ty} @{red}({ty}, {vt})"
    tail = k % w
    if tail:
        ld = f"llvm.masked.load.v{w}{sfx}.p0"
        out.decls[ld] = f"declare {vt} @{ld}(ptr, i32, <{w} x i1>, {vt})"
        mask = "<" + ", ".join(f"i1 {'true' if j < tail else 'false'}" for j in range(w)) + ">"
    chunks = [(k0, k0 + w > k) for k0 in range(0, k, w)]
    pre, head, done = out.label("d_pre"), out.label("d_rows"), out.label("d_done")
    out.line(f"br label %{pre}")
    out.block(pre)
    out.line(f"br label %{head}")
    out.block(head)
    i, inext = out.fresh("di"), out.fresh("din")
    out.line(f"{i} = phi i64 [ 0, %{pre} ], [ {inext}, %{head} ]")
    arow = out.ins(f"mul nuw nsw i64 {i}, {a[1]}")
    acc = [f"{vt} zeroinitializer"] * n
    for k0, partial in chunks:  # unrolled: k / W steps (k <= 2^18 / m; a few for the sizes taken)
        o = out.ins(f"add nuw nsw i64 {arow}, {k0}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {a[0]}, i64 {o}")
        x = (out.ins(f"call {vt} @{ld}(ptr {p}, i32 {_SIZE[dt]}, <{w} x i1> {mask}, {vt} zeroinitializer)")
             if partial else out.ins(f"load {vt}, ptr {p}, align {_SIZE[dt]}"))
        for j in range(n):
            q = out.ins(f"getelementptr inbounds {ty}, ptr {b[0]}, i64 {j * b[2] + k0}")
            y = (out.ins(f"call {vt} @{ld}(ptr {q}, i32 {_SIZE[dt]}, <{w} x i1> {mask}, {vt} zeroinitializer)")
                 if partial else out.ins(f"load {vt}, ptr {q}, align {_SIZE[dt]}"))
            acc[j] = f"{vt} " + out.ins(f"call {vt} @{fma}({vt} {x}, {vt} {y}, {acc[j]})")
    crow = out.ins(f"mul nuw nsw i64 {i}, {c[1]}")
    for j in range(n):
        v = out.ins(f"call reassoc {ty} @{red}({ty} {'-0.0' if dt == 'f32' else '-0.0'}, {acc[j]})")
        o = out.ins(f"add nuw nsw i64 {crow}, {j * c[2]}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {c[0]}, i64 {o}")
        out.line(f"store {ty} {v}, ptr {p}")
    out.latch(inext, i, 1, m, done, head)
    out.block(done)


def _pack(out: Lines, dt: str, k: int, n: int, npad: int, b: tuple) -> str:
    """Copy B (k x n, any strides) into a zero-padded k x npad stack buffer; its pointer. When
    B is a transposed row-major matrix (linear's weight: k unit-stride), its whole W x W blocks
    are transposed in registers (_transpose_blocks), the rest element by element."""
    ty = _T[dt]
    buf = f"%{out.p}pack"
    out.allocas.append(f"  {buf} = alloca [{k * npad} x {ty}], align 64")
    if npad != n:
        out.decls["llvm.memset.p0.i64"] = "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)"
        out.line(f"call void @llvm.memset.p0.i64(ptr align 64 {buf}, i8 0, i64 {k * npad * _SIZE[dt]}, i1 false)")
    w = WIDTH[dt]
    kf, nf = (k // w * w, n // w * w) if b[1] == 1 else (0, 0)
    if kf and nf:
        _transpose_blocks(out, dt, kf, nf, npad, b, buf)
        if nf < n:
            _pack_rect(out, dt, (0, kf), (nf, n), npad, b, buf)
        if kf < k:
            _pack_rect(out, dt, (kf, k), (0, n), npad, b, buf)
    else:
        _pack_rect(out, dt, (0, k), (0, n), npad, b, buf)
    return buf


def _transpose_blocks(out: Lines, dt: str, kf: int, nf: int, npad: int, b: tuple, buf: str) -> None:
    """buf[k0 + r, j0:j0 + W] = B[k0 + r, j0:j0 + W] for every whole W x W block of B (k < kf,
    j < nf) where B's k is unit-stride: W vector loads along k (B's columns j0..j0+W-1), the
    block transposed by log2(W) rounds of two-vector shuffles (round h swaps the h x h
    off-diagonal sub-blocks of each 2h x 2h block), W vector stores of buf's rows."""
    ty, w = _T[dt], WIDTH[dt]
    vt = f"<{w} x {ty}>"
    pre, kh, jh, jl, done = (out.label(s) for s in ("tb_pre", "tb_k", "tb_j", "tb_jl", "tb_done"))
    out.line(f"br label %{pre}")
    out.block(pre)
    out.line(f"br label %{kh}")
    out.block(kh)  # k0 = 0, W, .. < kf
    k0, kn = out.fresh("tk"), out.fresh("tkn")
    out.line(f"{k0} = phi i64 [ 0, %{pre} ], [ {kn}, %{jl} ]")
    out.line(f"br label %{jh}")
    out.block(jh)  # j0 = 0, W, .. < nf
    j0, jn = out.fresh("tj"), out.fresh("tjn")
    out.line(f"{j0} = phi i64 [ 0, %{kh} ], [ {jn}, %{jh} ]")
    src = out.ins(f"mul nuw nsw i64 {j0}, {b[2]}")
    src = out.ins(f"add nuw nsw i64 {src}, {k0}")
    dst = out.ins(f"mul nuw nsw i64 {k0}, {npad}")
    dst = out.ins(f"add nuw nsw i64 {dst}, {j0}")
    rows = []
    for jj in range(w):  # row jj: B[k0:k0+W, j0+jj], contiguous
        o = out.ins(f"add nuw nsw i64 {src}, {jj * b[2]}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {b[0]}, i64 {o}")
        rows.append(out.ins(f"load {vt}, ptr {p}, align {_SIZE[dt]}"))
    h = w // 2
    while h:
        lo = "<" + ", ".join(f"i32 {j if not j & h else w + j - h}" for j in range(w)) + ">"
        hi = "<" + ", ".join(f"i32 {j + h if not j & h else w + j}" for j in range(w)) + ">"
        nxt = list(rows)
        for i in range(w):
            if not i & h:
                nxt[i] = out.ins(f"shufflevector {vt} {rows[i]}, {vt} {rows[i + h]}, <{w} x i32> {lo}")
                nxt[i + h] = out.ins(f"shufflevector {vt} {rows[i]}, {vt} {rows[i + h]}, <{w} x i32> {hi}")
        rows = nxt
        h //= 2
    for kk in range(w):  # row kk of the transposed block: buf[k0 + kk, j0:j0+W]
        o = out.ins(f"add nuw nsw i64 {dst}, {kk * npad}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {buf}, i64 {o}")
        out.line(f"store {vt} {rows[kk]}, ptr {p}, align {_SIZE[dt]}")
    out.latch(jn, j0, w, nf, jl, jh)
    out.block(jl)
    out.latch(kn, k0, w, kf, done, kh)
    out.block(done)


def _pack_rect(out: Lines, dt: str, ks: tuple, js: tuple, npad: int, b: tuple, buf: str) -> None:
    """buf[k, j] = B[k, j] element by element for ks[0] <= k < ks[1], js[0] <= j < js[1]."""
    ty = _T[dt]
    pre, head, inner, latch, done = (out.label(s) for s in ("pk_pre", "pk_k", "pk_n", "pk_latch", "pk_done"))
    out.line(f"br label %{pre}")
    out.block(pre)
    out.line(f"br label %{head}")
    out.block(head)
    kk, kn = out.fresh("pk"), out.fresh("pkn")
    out.line(f"{kk} = phi i64 [ {ks[0]}, %{pre} ], [ {kn}, %{latch} ]")
    src_row = out.ins(f"mul nuw nsw i64 {kk}, {b[1]}")
    dst_row = out.ins(f"mul nuw nsw i64 {kk}, {npad}")
    out.line(f"br label %{inner}")
    out.block(inner)
    jj, jn = out.fresh("pj"), out.fresh("pjn")
    out.line(f"{jj} = phi i64 [ {js[0]}, %{head} ], [ {jn}, %{inner} ]")
    so = out.ins(f"mul nuw nsw i64 {jj}, {b[2]}")
    so = out.ins(f"add nuw nsw i64 {src_row}, {so}")
    sp = out.ins(f"getelementptr inbounds {ty}, ptr {b[0]}, i64 {so}")
    x = out.ins(f"load {ty}, ptr {sp}")
    do = out.ins(f"add nuw nsw i64 {dst_row}, {jj}")
    dp = out.ins(f"getelementptr inbounds {ty}, ptr {buf}, i64 {do}")
    out.line(f"store {ty} {x}, ptr {dp}")
    out.latch(jn, jj, 1, js[1], latch, inner)
    out.block(latch)
    out.latch(kn, kk, 1, ks[1], done, head)
    out.block(done)


def _micro(out: Lines, dt, i0, rows, cols, ks, a, bp, ldb, c, fma, zero, vt, w, n, mask_tail, mask, svec, c0, beta,
           tail_load, epilogue=None, cmem=None, first=True, last=True, jcol=None, rows_max=None):
    """One register block: rows x len(cols) accumulators over k0 <= k < k0 + klen (ks), starting
    at zero when `first` (True or an i1 operand), else at the sums a block of k before stored in
    cmem (pointer, row stride, 1); then, when `last`, the stores (or epilogue), else the sums
    stored in cmem as they are. jcol: an i64 operand, the first column of a block of whole
    vectors (cols then 0..NB-1 from it), else None (cols: C's vectors). rows_max: C's rows (a
    block reaching past them reads A's and C's last row for the missing ones and stores none of
    them), else None (every row of the block is C's)."""
    init = None if first is True else cmem

    def colof(j: int):
        return j * w if jcol is None else out.ins(f"add nuw nsw i64 {jcol}, {j * w}")
    keep = None if last is True else cmem
    ty = _T[dt]
    nv = -(-n // w)
    k0, klen = ks
    sfx = "f32" if dt == "f32" else "f64"

    def vec_at(base: tuple, ir_: str, j: int, partial: bool, value: str | None = None):
        row = out.ins(f"mul nuw nsw i64 {ir_}, {base[1]}")
        o = out.ins(f"add nuw nsw i64 {row}, {colof(j)}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {base[0]}, i64 {o}")
        if value is None:
            return (out.ins(f"call {vt} @llvm.masked.load.v{w}{sfx}.p0(ptr {p}, i32 {_SIZE[dt]}, <{w} x i1> {mask}, {vt} zeroinitializer)")
                    if partial else out.ins(f"load {vt}, ptr {p}, align {_SIZE[dt]}"))
        if partial:
            out.line(f"call void @llvm.masked.store.v{w}{sfx}.p0({vt} {value}, ptr {p}, i32 {_SIZE[dt]}, <{w} x i1> {mask})")
        else:
            out.line(f"store {vt} {value}, ptr {p}, align {_SIZE[dt]}")

    def row_of(r: int) -> str:  # row i0 + r, or C's last one for a row past them (read, never stored)
        ir_ = out.ins(f"add nuw nsw i64 {i0}, {r}")
        if rows_max is None or r == 0:
            return ir_
        ok = out.ins(f"icmp ult i64 {ir_}, {rows_max}")
        return out.ins(f"select i1 {ok}, i64 {ir_}, i64 {rows_max - 1}")

    def guarded(r: int, body) -> None:  # body() for row i0 + r when it is one of C's
        if rows_max is None or r == 0:
            body()
            return
        yes, no = out.label("row"), out.label("row_done")
        ok = out.ins(f"icmp ult i64 {out.ins(f'add nuw nsw i64 {i0}, {r}')}, {rows_max}")
        out.line(f"br i1 {ok}, label %{yes}, label %{no}")
        out.block(yes)
        body()
        out.line(f"br label %{no}")
        out.block(no)

    pre, head, done = out.label("k_pre"), out.label("k"), out.label("k_done")
    out.line(f"br label %{pre}")
    out.block(pre)
    start = {}
    for r in range(rows):
        ir_ = row_of(r)
        for j in cols:
            start[r, j] = vec_at(init, ir_, j, bool(mask_tail and j == nv - 1)) if init is not None else "zeroinitializer"
            if init is not None and first is not False:  # the first block of k: zero (C not yet written)
                start[r, j] = out.ins(f"select i1 {first}, {vt} zeroinitializer, {vt} {start[r, j]}")
    # row bases of A (i0 + r) * sa_m + k0 * sa_k, of B k0 * ldb
    ka = out.ins(f"mul nuw nsw i64 {k0}, {a[2]}")
    abase = []
    for r in range(rows):
        ir_ = row_of(r)
        ra = out.ins(f"mul nuw nsw i64 {ir_}, {a[1]}")
        abase.append(out.ins(f"add nuw nsw i64 {ra}, {ka}"))
    kbb = out.ins(f"mul nuw nsw i64 {k0}, {ldb}")
    out.line(f"br label %{head}")
    out.block(head)
    kk, kn = out.fresh("k"), out.fresh("kn")
    out.line(f"{kk} = phi i64 [ 0, %{pre} ], [ {kn}, %{head} ]")
    acc = {}
    nxt = {}
    for r in range(rows):
        for j in cols:
            acc[r, j], nxt[r, j] = out.fresh("acc"), out.fresh("accn")
            out.line(f"{acc[r, j]} = phi {vt} [ {start[r, j]}, %{pre} ], [ {nxt[r, j]}, %{head} ]")
    brow = out.ins(f"mul nuw nsw i64 {kk}, {ldb}")
    brow = out.ins(f"add nuw nsw i64 {brow}, {kbb}")
    bv = {}
    for j in cols:
        o = out.ins(f"add nuw nsw i64 {brow}, {colof(j)}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {bp}, i64 {o}")
        if tail_load and j == nv - 1:
            bv[j] = out.ins(f"call {vt} @llvm.masked.load.v{w}{sfx}.p0(ptr {p}, i32 {_SIZE[dt]}, <{w} x i1> {mask}, {vt} zeroinitializer)")
        else:
            bv[j] = out.ins(f"load {vt}, ptr {p}, align {_SIZE[dt]}")
    ak = out.ins(f"mul nuw nsw i64 {kk}, {a[2]}")
    for r in range(rows):
        o = out.ins(f"add nuw nsw i64 {abase[r]}, {ak}")
        p = out.ins(f"getelementptr inbounds {ty}, ptr {a[0]}, i64 {o}")
        x = out.ins(f"load {ty}, ptr {p}")
        x1 = out.ins(f"insertelement {vt} poison, {ty} {x}, i64 0")
        xs = out.ins(f"shufflevector {vt} {x1}, {vt} poison, <{w} x i32> zeroinitializer")
        for j in cols:
            out.line(f"{nxt[r, j]} = call {vt} @{fma}({vt} {xs}, {vt} {bv[j]}, {vt} {acc[r, j]})")
    out.latch(kn, kk, 1, klen, done, head, K_UNROLL)
    out.block(done)
    if keep is not None:  # not the last block of k (an i1 operand: maybe): the sums so far, for the next
        fin, kept, skip = out.label("k_fin"), out.label("k_keep"), out.label("k_fin_done")
        out.line(f"br i1 {last}, label %{fin}, label %{kept}")
        out.block(kept)
        for r in range(rows):
            def keep_row(r=r):
                ir_ = out.ins(f"add nuw nsw i64 {i0}, {r}")
                for j in cols:
                    vec_at(keep, ir_, j, bool(mask_tail and j == nv - 1), nxt[r, j])
            guarded(r, keep_row)
        out.line(f"br label %{skip}")
        out.block(fin)
    _finish(out, dt, i0, rows, cols, nxt, c, vt, w, nv, mask_tail, svec, c0, beta, epilogue, vec_at, colof, guarded)
    if keep is not None:
        out.line(f"br label %{skip}")
        out.block(skip)


def _finish(out, dt, i0, rows, cols, nxt, c, vt, w, nv, mask_tail, svec, c0, beta, epilogue, vec_at, colof, guarded):
    """A register block's sums to C (scaled, added to beta * C0) or through the epilogue."""
    for r in range(rows):
        guarded(r, lambda r=r: _finish_row(out, dt, i0, r, cols, nxt, c, vt, w, nv, mask_tail, svec, c0, beta, epilogue,
                                           vec_at, colof))


def _finish_row(out, dt, i0, r, cols, nxt, c, vt, w, nv, mask_tail, svec, c0, beta, epilogue, vec_at, colof):
    ty = _T[dt]
    if True:
        ir_ = out.ins(f"add nuw nsw i64 {i0}, {r}")
        for j in cols:
            v = nxt[r, j]
            partial = bool(mask_tail and j == nv - 1)
            if svec is not None:
                v = out.ins(f"fmul {vt} {v}, {svec}")
                if c0 is not None and beta != 0.0:
                    old = vec_at(c0, ir_, j, partial)
                    if beta != 1.0:
                        from .lower_llvm import fconst
                        bvv = "<" + ", ".join(f"{ty} {fconst(dt, beta)}" for _ in range(w)) + ">"
                        old = out.ins(f"fmul {vt} {old}, {bvv}")
                    v = out.ins(f"fadd {vt} {old}, {v}")
            if epilogue is not None:
                epilogue(ir_, colof(j), v, partial)
                continue
            vec_at(c, ir_, j, partial, v)


def _operands(gemm, types, prologue: dict, ptr: dict):
    """(A, B, (m, n, k)) of a kernel's GEMM as gemm_loops reads them: each operand (pointer, row
    stride, column stride); one behind a prologue transpose, and linear's weight (x @ w.T), read
    through swapped strides."""
    def operand(v, transposed):
        src = prologue.get(v, v)
        r, c = types[src].shape
        if v in prologue:
            transposed = not transposed
        return (ptr[src], 1, c) if transposed else (ptr[src], c, 1), ((c, r) if transposed else (r, c))

    a, (m, k) = operand(gemm.inputs[0], False)
    b, (_, n) = operand(gemm.inputs[1], gemm.op != "matmul")
    return a, b, (m, n, k)


def lower_gemm(f, gemm, types, prologue: dict, ptr: dict, dst: str, threads: int = 1) -> None:
    """The GEMM of a kernel {impl="loops"} (runtime/lower_llvm.kernel_ir's `_blas`, as loops):
    dst (C, row-major) = op(A) @ op(B); an operand behind a prologue transpose, and linear's
    weight, is read through swapped strides. threads > 1 (the node's split="gemm_rows"): the
    loop nest in a function of its own, its register blocks of rows cut into tasks on the pool
    (runtime/split_llvm.tasks_ir); the kernel calls it where the GEMM was, the epilogue after."""
    from .lower_llvm import Unsupported

    dt = gemm.types[0].dtype
    if dt not in WIDTH:
        raise Unsupported(f"{gemm.op} on {dt}")

    a, b, (m, n, k) = _operands(gemm, types, prologue, ptr)
    out = Lines("g")
    if dots_form(dt, n, a, b):
        if threads > 1:
            raise Unsupported("a split of dot products")
        gemm_dots(out, dt, m, n, k, a, b, (dst, n, 1))
    elif threads > 1:
        from .lower_llvm import ATTRIBUTES
        from .split_llvm import tasks_ir

        gemm_loops(out, dt, m, n, k, a, b, (dst, n, 1), span=("%lo", "%hi"))
        params = [f"ptr {p}" for p in dict.fromkeys((a[0], b[0], dst))]
        body = "\n".join([f"define internal void @gemm_body({', '.join(params + ['i64 %lo', 'i64 %hi'])}) #0 {{",
                          "entry:", *out.allocas, *out.body, "  ret void", "}", ""])
        launch, _ = tasks_ir("gemm", "gemm_launch", params, tiles(dt, m, n, a, b, (dst, n, 1))[1], threads)
        f.sections["gemm"].append(f"  call void @gemm_launch({', '.join(params)})")
        f.decls.update(out.decls)
        f.decls["~gemm_split"] = body + "\n" + launch  # (the module's end: after the declarations)
        f.decls["graphc_parallel_for"] = "declare void @graphc_parallel_for(ptr, ptr, i64, i64)"
        return
    else:
        gemm_loops(out, dt, m, n, k, a, b, (dst, n, 1))
    f.sections["alloca"] += out.allocas
    f.sections["gemm"] += out.body
    f.decls.update(out.decls)


def addmm_ir(node) -> tuple[str, list[str], list[str], list[str]]:
    """A gemm kernel {impl="loops"} whose one member is addmm (c + alpha * s * op(a) @ op(b), the
    SGD update of a weight-gradient GEMM): the function, as lower_llvm.kernel_ir returns one.
    The output may be c's own buffer (the update in place): each element of c is read once, by
    the register block that then stores that element."""
    from .lower_llvm import ATTRIBUTES, Unsupported, fconst

    (n,) = node.body.nodes
    types = node.body.types
    dt = n.types[0].dtype
    if dt not in WIDTH:
        raise Unsupported(f"addmm on {dt}")
    inputs = [i.name for i in node.body.inputs]
    if inputs != list(n.inputs):
        raise Unsupported("addmm reading one value twice")
    ptr = {v: f"%a{k}" for k, v in enumerate(inputs)}

    def operand(v, transposed):
        r, c = types[v].shape
        return ((ptr[v], 1, c) if transposed else (ptr[v], c, 1)), ((c, r) if transposed else (r, c))

    a, (m, k) = operand(n.inputs[1], n.attr["trans_a"])
    b, (_, nn) = operand(n.inputs[2], n.attr["trans_b"])
    out = Lines("g")
    alpha = fconst("f64", float(n.attr["alpha"]))
    if len(n.inputs) == 4:
        s = out.ins(f"load double, ptr {ptr[n.inputs[3]]}")
        scale = out.ins(f"fmul double {alpha}, {s}")
    else:
        scale = alpha
    beta = float(n.attr["beta"])
    gemm_loops(out, dt, m, nn, k, a, b, ("%o0", nn, 1), scale=scale,
               c0=(ptr[n.inputs[0]], nn, 1) if beta else None, beta=beta)
    params = [f"ptr {ptr[v]}" for v in inputs] + ["ptr %o0"]
    text = "\n".join([f"; graphc kernel {{impl=loops, kind=gemm}}: addmm {m}x{nn}x{k}",
                      f"define void @kernel({', '.join(params)}) #0 {{", "entry:", *out.allocas, *out.body,
                      "  ret void", "}", "", *[out.decls[d] for d in sorted(out.decls)], "",
                      f"attributes #0 = {{ {ATTRIBUTES} }}"]) + "\n"
    return text, inputs, list(node.outputs), [types[v].dtype for v in inputs] + [dt]


def addmm_function(name: str, node) -> tuple[str, list[str], list[str]]:
    """The numba lowering of the same kernel (GRAPHC_LLVM=0, or LLVM unavailable): np.dot, then
    c + f32(alpha * s) * product elementwise, as the reference computes it."""
    (n,) = node.body.nodes
    types = node.body.types
    inputs = [i.name for i in node.body.inputs]
    c, a, b = (types[v] for v in n.inputs[:3])
    op_a = f"a1.reshape({a.shape!r}){'.T' if n.attr['trans_a'] else ''}"
    op_b = f"a2.reshape({b.shape!r}){'.T' if n.attr['trans_b'] else ''}"
    s = "a3[0]" if len(n.inputs) == 4 else "1.0"
    np_dt = "np.float32" if n.types[0].dtype == "f32" else "np.float64"
    beta = float(n.attr["beta"])
    keep = f"{beta!r} * a0[i]" if beta not in (0.0, 1.0) else "a0[i]" if beta else ""
    src = [f"@njit(nogil=True, error_model=\"numpy\")", f"def {name}({', '.join(f'a{k}' for k in range(len(inputs)))}, o0):",
           f"    p = np.dot({op_a}, {op_b}).ravel()",
           f"    scale = {np_dt}({float(n.attr['alpha'])!r} * {s})",
           f"    for i in range({c.size}):",
           f"        o0[i] = {keep + ' + ' if keep else ''}scale * p[i]"]
    return "\n".join(src) + "\n", inputs, list(node.outputs)


# the members an epilogue may hold to run on the GEMM's register tiles: elementwise ops whose
# lowering (runtime/lower_llvm.EXPR) is written for vectors as for scalars (no libm call, no
# conversion; dropout's stream is drawn at a vector of flat indices)
TILE_OPS = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "where",
                      "neg", "relu", "relu_backward", "sigmoid_backward", "tanh_backward", "broadcast_to", "dropout"})
_TILE_DTYPES = ("f32", "f64", "bool")


def _column_sum(red, types, space, made: set) -> bool:
    """Whether `red` is a trailing sum over the rows of the space (a bias gradient: dims [0],
    [M, N] -> [N] or [1, N]) of a value the tile computed, in that value's float dtype: then the
    tile adds each of its rows into the output in row order, the order (and the f32/f64
    accumulator in the output) of the epilogue loop's reduction, so the sums are bit-equal."""
    if red.op != "sum" or tuple(red.attr.get("dims", ())) != (0,) or red.inputs[0] not in made:
        return False
    src, out = types[red.inputs[0]], types[red.outputs[0]]
    return (src.shape == space and out.dtype == src.dtype and out.dtype in WIDTH
            and out.shape in ((space[1],), (1, space[1])))


def types_full(node, red) -> bool:
    """Whether the tile plan's reduction `red` is a sum into one element (_full_sum)."""
    return node.body.types[red.outputs[0]].size == 1


def _full_sum(red, types, made: set) -> bool:
    """Whether `red` is a trailing sum of a value the tile computed over all of it into one
    element (clip_grad_norm's sum of a weight gradient's squares): then each tile adds its
    vectors into a vector of f64 partial sums (a task's own), summed across lanes (and tasks, in
    task order) at the end: another order than the epilogue loop's one f64 accumulator, equal
    within rounding."""
    if red.op != "sum" or red.inputs[0] not in made:
        return False
    src, out = types[red.inputs[0]], types[red.outputs[0]]
    return (out.size == 1 and len(src.shape) == 2 and tuple(red.attr.get("dims", ())) == (0, 1)
            and out.dtype == src.dtype and out.dtype in WIDTH)


def _tile_plan(node, scalars: set[str]):
    """(gemm, prologue, epilogue members, space, column sum or None) when the kernel's epilogue
    can run on each register tile: every member after the GEMM elementwise over the GEMM's output
    space (TILE_OPS), but a last column sum (_column_sum), every operand it reads indexable per
    row of a tile (the space's shape, a row broadcast along the columns, a column broadcast along
    the rows, one element), every other output of the space's shape; else None (the kernel keeps
    its epilogue loop after the GEMM)."""
    from .kernels import broadcast_strides
    from .lower import GEMMS

    members = list(node.body.nodes)
    types = node.body.types
    gemms = [m for m in members if m.op in GEMMS]
    if len(gemms) != 1 or gemms[0].op not in ("matmul", "linear", "linear_relu"):
        return None
    gemm = gemms[0]
    at = members.index(gemm)
    if any(m.op != "transpose" for m in members[:at]):
        return None
    prologue = {m.outputs[0]: m.inputs[0] for m in members[:at]}
    space = types[gemm.outputs[0]].shape
    dt = gemm.types[0].dtype
    if dt in WIDTH and len(space) == 2 and all(len(types[prologue.get(v, v)].shape) == 2 for v in gemm.inputs[:2]):
        a, b, (_, n, _) = _operands(gemm, types, prologue, {v: "" for v in types})
        if dots_form(dt, n, a, b):
            return None  # dot products, no register tiles: the epilogue loop follows (lower_gemm)
    after = members[at + 1:]
    made = {o for m in [gemm] + after for o in m.outputs}
    red = after[-1] if after and len(space) == 2 and (_column_sum(after[-1], types, space, made)
                                                      or _full_sum(after[-1], types, made)) else None
    if red is not None:
        after = after[:-1]
    if len(space) != 2 or dt not in WIDTH or any(types[v].shape != space or types[v].dtype not in _TILE_DTYPES
                                                 for v in node.outputs if red is None or v != red.outputs[0]):
        return None
    made = {gemm.outputs[0]}
    reads = list(gemm.inputs[2:])
    for m in after:
        if m.op not in TILE_OPS or types[m.outputs[0]].shape != space or m.types[0].dtype not in _TILE_DTYPES:
            return None
        ins = list(m.inputs)
        if m.op == "dropout":  # its seed: an i64 scalar argument
            if ins[1] not in scalars or types[ins[1]].dtype != "i64":
                return None
            ins.pop(1)
        reads += [i for i in ins if i not in made]
        made.add(m.outputs[0])
    for v in reads:
        t = types[v]
        if v in scalars or t.dtype not in _TILE_DTYPES or v in prologue:
            return None
        if t.size != 1 and broadcast_strides(t.shape, space)[1] not in (0, 1):
            return None
    if any(v not in made for v in node.outputs if red is None or v != red.outputs[0]):
        return None
    return gemm, prologue, after, space, red


def tile_epilogue_ir(node, scalars: set[str]):
    """A gemm kernel {impl="loops"} in one pass: each register tile of the GEMM's result goes
    through the kernel's epilogue members (linear's bias and ReLU, relu_backward's mask, ...) as
    vectors, then the kernel's outputs are stored; the GEMM's own result is never written to
    memory unless it is an output. The members' lowering is runtime/lower_llvm's (EXPR) on
    vectors: per element the same operations in the same order as the epilogue loop, so the
    results are bit-equal to the two-pass form. None when the epilogue cannot run per tile
    (_tile_plan); then kernel_ir lowers the kernel as before. Returns what kernel_ir returns."""
    from .kernels import broadcast_strides
    from .lower_llvm import ATTRIBUTES, EXPR, V, Unsupported, _Fn, _MEM, _relu, splat

    threads = node.attr.get("threads", 1)
    if threads > 1 and node.attr.get("split") != "rows":
        return None  # the GEMM alone is split (split="gemm_rows"): the two-pass form
    plan = _tile_plan(node, scalars)
    if plan is None:
        if threads > 1:
            raise Unsupported("split=\"rows\": an epilogue that cannot run on the register tiles")
        return None
    gemm, prologue, after, space, red = plan
    whole = red is not None and types_full(node, red)  # a sum of everything into one element
    if threads > 1 and red is not None and not whole:
        raise Unsupported("split=\"rows\" with a column sum")
    types = node.body.types
    inputs = [i.name for i in node.body.inputs]
    outputs = list(node.outputs)
    dt = gemm.types[0].dtype
    w = WIDTH[dt]
    f = _Fn()
    ptr = {v: f"%a{k}" for k, v in enumerate(inputs)}
    ptr.update({v: f"%o{k}" for k, v in enumerate(outputs)})
    out = Lines("g")
    out.body = f.sections["gemm"]  # one list: the loop nest's lines and the epilogue's, in order
    f.at = "gemm"
    _, n = space
    mask = "<" + ", ".join(f"i1 {'true' if j < n % w else 'false'}" for j in range(w)) + ">"

    def sfx(mdt: str) -> str:
        return f"v{w}{ {'f32': 'f32', 'f64': 'f64', 'bool': 'i8'}[mdt]}"

    def address(p: str, mdt: str, at: str) -> str:
        return f.ins(f"getelementptr inbounds {_MEM[mdt]}, ptr {p}, i64 {at}", "ptr", "p").ref

    def offset(row: str, col, st) -> str:  # (col: an int, or an i64 operand in a loop over column blocks)
        o = f.ins(f"mul nuw nsw i64 {row}, {st[0]}", "i64").ref if st[0] else "0"
        if isinstance(col, int):
            return f.ins(f"add nuw nsw i64 {o}, {col * st[1]}", "i64").ref if col * st[1] else o
        if not st[1]:
            return o
        c = col if st[1] == 1 else f.ins(f"mul nuw nsw i64 {col}, {st[1]}", "i64").ref
        return f.ins(f"add nuw nsw i64 {o}, {c}", "i64").ref

    def read(v: str, row: str, col: int, partial: bool) -> V:
        if v in scalars:  # a dropout seed
            return V("i64", ptr[v], True)
        t = types[v]
        mt = _MEM[t.dtype]
        st = broadcast_strides(t.shape, space) if t.size != 1 else (0, 0)
        f.width = None
        p = address(ptr[v], t.dtype, offset(row, col, st))
        if st[1] == 0:  # one value for the whole row of the tile: loaded, then in every lane
            x = f.ins(f"load {mt}, ptr {p}", "f64")
            vt = f"<{w} x {mt}>"
            x1 = f.ins(f"insertelement {vt} poison, {mt} {x.ref}, i64 0", "f64")
            x = f.ins(f"shufflevector {vt} {x1.ref}, {vt} poison, <{w} x i32> zeroinitializer", "f64")
        elif partial:
            name = f"llvm.masked.load.{sfx(t.dtype)}.p0"
            f.declare(name, f"declare <{w} x {mt}> @{name}(ptr, i32, <{w} x i1>, <{w} x {mt}>)")
            x = f.ins(f"call <{w} x {mt}> @{name}(ptr {p}, i32 {_SIZE.get(t.dtype, 1)}, <{w} x i1> {mask}, "
                      f"<{w} x {mt}> zeroinitializer)", "f64")
        else:
            x = f.ins(f"load <{w} x {mt}>, ptr {p}, align {_SIZE.get(t.dtype, 1)}", "f64")
        f.width = w
        if t.dtype == "bool":
            return f.ins(f"icmp ne <{w} x i8> {x.ref}, zeroinitializer", "bool")
        return V(t.dtype, x.ref, False, w)

    def store(v: str, x: V, row: str, col: int, partial: bool) -> None:
        t = types[v]
        mt = _MEM[t.dtype]
        f.width = None
        p = address(ptr[v], t.dtype, offset(row, col, (n, 1)))
        f.width = w
        ref = x.ref
        if t.dtype == "bool":
            ref = f.ins(f"zext <{w} x i1> {x.ref} to <{w} x i8>", "bool").ref
        if partial:
            name = f"llvm.masked.store.{sfx(t.dtype)}.p0"
            f.declare(name, f"declare void @{name}(<{w} x {mt}>, ptr, i32, <{w} x i1>)")
            f.line(f"call void @{name}(<{w} x {mt}> {ref}, ptr {p}, i32 {_SIZE.get(t.dtype, 1)}, <{w} x i1> {mask})")
        else:
            f.line(f"store <{w} x {mt}> {ref}, ptr {p}, align {_SIZE.get(t.dtype, 1)}")

    def epilogue(row: str, col, acc: str, partial: bool) -> None:
        """kernel_ir's epilogue loop body, on one vector of the tile (the same members in order)."""
        f.width = None
        at = f.ins(f"mul nuw nsw i64 {row}, {n}", "i64")
        at = f.ins(f"add nuw nsw i64 {at.ref}, {col}", "i64")
        f.width = w
        lanes = "<" + ", ".join(f"i64 {j}" for j in range(w)) + ">"
        f.index = f.ins(f"add {splat(f, at)}, {lanes}", "i64")  # the flat indices of the vector's elements
        local: dict[str, V] = {}

        def operand(v: str) -> V:
            if v not in local:
                local[v] = read(v, row, col, partial)
            return local[v]

        e = V(dt, acc, False, w)
        if len(gemm.inputs) == 3:  # the bias
            e = EXPR["add"](f, [e, operand(gemm.inputs[2])], gemm)
        if gemm.op == "linear_relu":
            e = _relu(f, [e], gemm)
        local[gemm.outputs[0]] = e
        for m in after:
            got = EXPR[m.op](f, [operand(i) for i in m.inputs], m)
            if got.dtype != m.types[0].dtype:
                raise Unsupported(f"{m.op} gives {got.dtype}, the IR says {m.types[0].dtype}")
            local[m.outputs[0]] = got
        for v in outputs:
            if red is None or v != red.outputs[0]:
                store(v, local[v], row, col, partial)
        if whole:  # the sum of everything: this vector into the f64 partial sums (masked lanes: 0)
            vt, dv = f"<{w} x {_T[dt]}>", f"<{w} x double>"
            x = local[red.inputs[0]].ref
            f.width = None
            if partial:
                x = f.ins(f"select <{w} x i1> {mask}, {vt} {x}, {vt} zeroinitializer", dt).ref
            if dt == "f32":
                x = f.ins(f"fpext {vt} {x} to {dv}", "f64").ref
            old = f.ins(f"load {dv}, ptr %gsq, align 64", "f64")
            f.line(f"store {dv} {f.ins(f'fadd {dv} {old.ref}, {x}', 'f64').ref}, ptr %gsq, align 64")
        elif red is not None:  # the column sum: sums[col:col + w] += this row of the tile (rows in order)
            vt = f"<{w} x {_T[dt]}>"
            f.width = None
            p = f.ins(f"getelementptr inbounds {_T[dt]}, ptr %gsums, i64 {col}", "ptr", "p")
            f.width = w
            old = f.ins(f"load {vt}, ptr {p.ref}, align 64", dt)
            f.line(f"store {vt} {f.ins(f'fadd {old}, {local[red.inputs[0]].ref}', dt).ref}, ptr {p.ref}, align 64")
        f.width = None

    a, b, (m, nn, k) = _operands(gemm, types, prologue, ptr)
    if k > KC and gemm.outputs[0] not in outputs:
        return None  # k in blocks keeps C's sums in memory between them: the two-pass form's buffer
    npad = -(-nn // w) * w
    if whole:
        out.allocas.append(f"  %gsq = alloca <{w} x double>, align 64")
        out.line(f"store <{w} x double> zeroinitializer, ptr %gsq, align 64")
    elif red is not None:  # the column sum starts at zero, as the epilogue loop's reduction does, in a
        # stack buffer of whole vectors (no alias of any output: LLVM keeps it in registers)
        out.allocas.append(f"  %gsums = alloca [{npad} x {_T[dt]}], align 64")
        out.decls["llvm.memset.p0.i64"] = "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)"
        out.decls["llvm.memcpy.p0.p0.i64"] = "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)"
        out.line(f"call void @llvm.memset.p0.i64(ptr align 64 %gsums, i8 0, i64 {npad * _SIZE[dt]}, i1 false)")
    span = ("%lo", "%hi") if threads > 1 else None
    gemm_loops(out, dt, m, nn, k, a, b, ("%unused", nn, 1), epilogue=epilogue, cbuf=ptr.get(gemm.outputs[0]),
               span=span)
    if whole:  # the lanes summed (a tree: reassoc), then to the output, or to this task's slot
        rf = "llvm.vector.reduce.fadd.v{}f64".format(w)
        out.decls[rf] = f"declare double @{rf}(double, <{w} x double>)"
        acc = out.ins(f"load <{w} x double>, ptr %gsq, align 64")
        tot = out.ins(f"call reassoc double @{rf}(double -0.0, <{w} x double> {acc})")
        if threads > 1:
            out.line(f"store double {tot}, ptr %gslot")
        else:
            val = out.ins(f"fptrunc double {tot} to float") if dt == "f32" else tot
            out.line(f"store {_T[dt]} {val}, ptr {ptr[red.outputs[0]]}")
    elif red is not None:
        out.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {ptr[red.outputs[0]]}, ptr align 64 %gsums, "
                 f"i64 {nn * _SIZE[dt]}, i1 false)")
    s = f.sections
    params = [f"i64 {ptr[v]}" if v in scalars else f"ptr {ptr[v]}" for v in inputs]
    params += [f"ptr {ptr[v]}" for v in outputs]
    decls = {**out.decls, **f.decls}
    ops = [mm.op for mm in node.body.nodes]
    head = f"define void @kernel({', '.join(params)}) #0 {{"
    launch = ""
    if span is not None:  # the whole kernel, per register block of rows, cut into tasks on the pool
        from .split_llvm import tasks_ir

        extra = ["ptr %gslot"] if whole else []
        head = f"define internal void @kernel_body({', '.join(params + ['i64 %lo', 'i64 %hi'] + extra)}) #0 {{"
        launch = tasks_ir("kernel", "kernel", params, tiles(dt, m, nn, a, b, ("%unused", nn, 1))[1], threads,
                          partial=(ptr[red.outputs[0]], dt) if whole else None)[0]
        decls["graphc_parallel_for"] = "declare void @graphc_parallel_for(ptr, ptr, i64, i64)"
    text = "\n".join([f"; graphc kernel {{impl=loops, kind=gemm}}: {', '.join(ops)}; epilogue per tile of {list(space)}",
                      head, "entry:", *out.allocas, *s["alloca"],
                      *s["hoist"], *s["gemm"], "  ret void", "}", "", launch, *[decls[d] for d in sorted(decls)], "",
                      f"attributes #0 = {{ {ATTRIBUTES} }}"]) + "\n"
    args = ["i64 scalar" if v in scalars else types[v].dtype for v in inputs]
    return text, inputs, outputs, args + [types[v].dtype for v in outputs]
