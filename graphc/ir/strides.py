"""Movement ops as strided views: where each element of reshape / transpose / slice of a
contiguous buffer lives in that buffer (an element offset and one stride per dim).

The kernel pass asks `chain_view` whether a batched matmul can read an operand through such a
view instead of a copy (attention's q, k, v split from c_attn's output and its head merge), and
the lowering reads the same numbers back, so the decision and the code agree by construction.
"""
from __future__ import annotations

View = tuple[int, tuple[int, ...], tuple[int, ...]]  # (offset, shape, strides), in elements


def contiguous(shape) -> View:
    strides, s = [], 1
    for d in reversed(tuple(shape)):
        strides.append(s)
        s *= int(d)
    return 0, tuple(int(d) for d in shape), tuple(reversed(strides))


def apply(view: View, op: str, attr: dict) -> View | None:
    """The view after one movement op, or None when its elements are no longer one strided view
    (a reshape that merges dims which are not adjacent in memory)."""
    off, shape, st = view
    if op == "transpose":
        perm = tuple(attr["perm"])
        return off, tuple(shape[p] for p in perm), tuple(st[p] for p in perm)
    if op == "slice":
        d, start, end, step = attr["dim"], attr["start"], attr["end"], attr.get("step", 1)
        n = max(0, (min(end, shape[d]) - start + step - 1) // step)
        return (off + start * st[d], shape[:d] + (n,) + shape[d + 1:], st[:d] + (st[d] * step,) + st[d + 1:])
    if op == "reshape":
        return _reshape(view, tuple(int(s) for s in attr["shape"]))
    return None


def _reshape(view: View, new: tuple[int, ...]) -> View | None:
    """numpy's no-copy reshape (`_attempt_nocopy_reshape`): old dims grouped to match new dims;
    each group must be contiguous in itself."""
    off, shape, st = view
    if 0 in shape:
        return None
    old = [(s, t) for s, t in zip(shape, st) if s != 1]
    out = [0] * len(new)
    oi, ni = 0, 0
    while ni < len(new) and oi < len(old):
        nj, oj, np_, op = ni + 1, oi + 1, new[ni], old[oi][0]
        while np_ != op:
            if np_ < op:
                if nj >= len(new):
                    return None
                np_ *= new[nj]
                nj += 1
            else:
                if oj >= len(old):
                    return None
                op *= old[oj][0]
                oj += 1
        if any(old[k][1] != old[k + 1][0] * old[k + 1][1] for k in range(oi, oj - 1)):
            return None
        out[nj - 1] = old[oj - 1][1]
        for k in range(nj - 1, ni, -1):
            out[k - 1] = out[k] * new[k]
        ni, oi = nj, oj
    if oi < len(old) or any(new[k] != 1 for k in range(ni, len(new))):
        return None
    for k in range(ni, len(new)):
        out[k] = 1
    return off, new, tuple(out)


def chain_view(root_shape, ops) -> View | None:
    """The view of a contiguous value of `root_shape` after `ops` [(op, attrs), ...], or None."""
    v = contiguous(root_shape)
    for op, attr in ops:
        v = apply(v, op, attr)
        if v is None:
            return None
    return v


def blas_layout(rows: int, cols: int, strides) -> tuple[bool, int] | None:
    """(transposed, leading dim) of a [rows, cols] matrix with element `strides` as BLAS takes it
    (row-major with a leading dim, or its transpose), or None when neither dim is unit-stride."""
    sr, sc = strides
    if sc == 1 or cols == 1:
        ld = sr if rows > 1 else cols
        return (False, ld) if ld >= max(1, cols) else None
    if sr == 1 or rows == 1:
        ld = sc if cols > 1 else rows
        return (True, ld) if ld >= max(1, rows) else None
    return None


def written_as(perm, out_shape, out_strides=None) -> tuple[int, ...]:
    """Strides of a value p such that transpose(p, perm) is the contiguous `out_shape` (or is
    stored at `out_strides`): p's dim perm[j] steps like the output's dim j."""
    st = contiguous(out_shape)[2] if out_strides is None else tuple(out_strides)
    inv = [0] * len(st)
    for j, p in enumerate(perm):
        inv[p] = st[j]
    return tuple(inv)
