"""The functional forms of the transformer layers (issue 11): embedding, layer_norm, gelu, silu,
scaled_dot_product_attention and cross_entropy's general case.

Each is a composition of op-table primitives with torch's formula, so autodiff, the saved-values
ledger and the kernel pass see ordinary ops (no hand-fused kernels): LayerNorm is mean, sub,
mul, rsqrt; GELU is erf (or tanh) and muls; attention is two batched matmuls around
scale, mask and softmax. graphc.nn.functional re-exports them under torch's names.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor_methods import _as_operand, _dtype_of, compare, masked_fill, where
from ..tracing import Proxy, _shape, dispatch, reduce, reshape, trace_error


def _c(value: float, like) -> object:
    return _as_operand(float(value), _dtype_of(like))


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False, *, _layer: str = "embedding"):
    """weight[input]: rows of weight [num_embeddings, dim] picked by integer ids of any shape.

    One index_select of the weight's rows by the flattened ids (each id read once per row; its
    VJP is an index_add of the output gradient's rows into the weight's gradient). Ids must be
    int64; an id outside [0, num_embeddings) is an error naming the layer, the id and where it is
    (eagerly before the lookup; compiled, when the lookup kernel stops, for ids that are graph
    inputs: the tracer records them in the graph's meta "id_checks"). With
    padding_idx, positions holding it output zeros and send no gradient to that row (torch
    keeps that row at zero, so outputs agree unless the row is overwritten by hand)."""
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise trace_error("embedding: max_norm, scale_grad_by_freq and sparse are not supported")
    n, d = (int(v) for v in _shape(weight))
    if isinstance(input, Proxy):
        if input.type.dtype != "i64":
            raise trace_error(f"{_layer}: ids must be int64 (token ids), got {input.type}")
        input.tracer.check_ids(input, n, _layer)
    else:
        ids = np.asarray(input)
        if ids.dtype.kind not in "iu":
            raise trace_error(f"{_layer}: ids must be integers, got dtype {ids.dtype}")
        bad = ids_out_of_range(ids, n, _layer)
        if bad:
            raise trace_error(bad)
        input = ids.astype(np.int64, copy=False)
    s = tuple(_shape(input))
    rows = int(np.prod(s, dtype=np.int64))
    out = dispatch("index_select", [weight, reshape(input, (rows,))], {"dim": 0})
    if padding_idx is not None:
        p = int(padding_idx) % n if -n <= int(padding_idx) < n else None
        if p is None:
            raise trace_error(f"{_layer}: padding_idx {padding_idx} must be within num_embeddings={n}")
        keep = dispatch("cast", [compare("ne", reshape(input, (rows, 1)), p)], {"dtype": _dtype_of(weight)})
        out = dispatch("mul", [out, keep])
    return reshape(out, s + (d,))


def ids_out_of_range(ids: np.ndarray, n: int, layer: str) -> str | None:
    """The error for the first id outside [0, n), naming the layer, the id and its position (or None).
    Eager calls check before the lookup; a compiled forward checks here when its index_select kernel stops."""
    bad = np.argwhere((ids < 0) | (ids >= n))
    if not len(bad):
        return None
    pos = tuple(int(i) for i in bad[0])
    return (f"{layer}: token id {int(ids[pos])} at position {list(pos)} is out of range for an "
            f"Embedding with num_embeddings={n} (ids must be in [0, {n}))")


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last len(normalized_shape) dims
    (biased variance, as torch)."""
    ns = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(int(v) for v in normalized_shape)
    s = tuple(_shape(input))
    if not ns or s[len(s) - len(ns):] != ns:
        raise trace_error(f"layer_norm: normalized_shape {list(ns)} must match the last dims of the input {list(s)}")
    dims = tuple(range(len(s) - len(ns), len(s)))
    mu = reduce("mean", input, dims, True)
    xc = dispatch("sub", [input, mu])
    var = reduce("mean", dispatch("mul", [xc, xc]), dims, True)
    y = dispatch("mul", [xc, dispatch("rsqrt", [dispatch("add", [var, _c(eps, input)])])])
    if weight is not None:
        y = dispatch("mul", [y, weight])
    if bias is not None:
        y = dispatch("add", [y, bias])
    return y


def gelu(input, approximate: str = "none"):
    """x * Phi(x): 0.5 x (1 + erf(x / sqrt 2)); approximate='tanh': 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = input
    if approximate == "none":
        inner = dispatch("erf", [dispatch("mul", [x, _c(1 / math.sqrt(2.0), x)])])
    elif approximate == "tanh":
        cube = dispatch("mul", [dispatch("mul", [x, x]), x])
        u = dispatch("add", [x, dispatch("mul", [cube, _c(0.044715, x)])])
        inner = dispatch("tanh", [dispatch("mul", [u, _c(math.sqrt(2.0 / math.pi), x)])])
    else:
        raise trace_error(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    half_x = dispatch("mul", [x, _c(0.5, x)])
    return dispatch("mul", [half_x, dispatch("add", [inner, _c(1.0, x)])])


def silu(input, inplace: bool = False):
    """x * sigmoid(x)."""
    return dispatch("mul", [input, dispatch("sigmoid", [input])])


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale=None, enable_gqa: bool = False):
    """softmax(q @ k^T * scale + mask) @ v over [..., L, E] / [..., S, E] / [..., S, Ev], as torch.

    attn_mask: bool (True = take part) or float (added to the scores), broadcasting to [..., L, S];
    is_causal: query i sees keys j <= i (torch's top-left aligned tril)."""
    if dropout_p != 0.0:
        raise trace_error(f"scaled_dot_product_attention: dropout_p={dropout_p} is not supported by graphc; "
                          "pass dropout_p=0.0 (or apply nn.Dropout to the attention output)")
    if enable_gqa:
        raise trace_error("scaled_dot_product_attention: enable_gqa is not supported")
    if is_causal and attn_mask is not None:
        raise trace_error("scaled_dot_product_attention: give attn_mask or is_causal, not both (as torch)")
    qs, ks, vs = (tuple(_shape(t)) for t in (query, key, value))
    if len(qs) < 2 or qs[-1] != ks[-1] or ks[-2] != vs[-2]:
        raise trace_error(f"scaled_dot_product_attention: shapes do not fit: query {list(qs)}, key {list(ks)}, "
                          f"value {list(vs)} (need query [..., L, E], key [..., S, E], value [..., S, Ev])")
    L, S = qs[-2], ks[-2]
    scale = 1.0 / math.sqrt(qs[-1]) if scale is None else float(scale)
    r = len(ks)
    kt = dispatch("transpose", [key], {"perm": (*range(r - 2), r - 1, r - 2)})
    att = dispatch("mul", [dispatch("matmul", [query, kt]), _c(scale, query)])
    if is_causal:
        from ..tensor_methods import arange
        keep = compare("le", reshape(arange(S), (1, S)), reshape(arange(L), (L, 1)))
        att = where(keep, att, float("-inf"))
    elif attn_mask is not None:
        ms, want = tuple(_shape(attn_mask)), tuple(_shape(att))
        try:
            if tuple(np.broadcast_shapes(ms, want)) != want:
                raise ValueError
        except ValueError:
            raise trace_error(f"scaled_dot_product_attention: attn_mask of shape {list(ms)} does not broadcast to "
                              f"the attention scores' shape {list(want)} ([..., L={L}, S={S}])") from None
        if _dtype_of(attn_mask) == "bool":
            att = masked_fill(att, _not(attn_mask), float("-inf"))
        else:
            att = dispatch("add", [att, attn_mask])
    p = dispatch("softmax", [att], {"dim": len(_shape(att)) - 1})
    return dispatch("matmul", [p, value])


def _not(mask):
    """logical not of a bool mask (where(mask, False, True) has no bool constants: use ne on i64)."""
    return compare("eq", dispatch("cast", [mask], {"dtype": "i64"}), 0)


def _cross_entropy_general(input, target, ignore_index: int, reduction: str, label_smoothing: float):
    """torch's cross_entropy over [N, C] with ignore_index and label smoothing:
    loss_i = (1 - ls) * -logp[i, y_i] + ls / C * -sum_c logp[i, c] for rows with y_i != ignore_index."""
    xs, ts = tuple(_shape(input)), tuple(_shape(target))
    if len(xs) != 2 or ts != xs[:1]:
        raise trace_error(f"cross_entropy: expected logits [N, C] and targets [N], got {list(xs)} and {list(ts)}")
    n, c = xs
    logp = dispatch("log_softmax", [input], {"dim": 1})
    valid = compare("ne", target, ignore_index)
    safe = where(valid, target, 0)
    picked = reshape(dispatch("gather", [logp, reshape(safe, (n, 1))], {"dim": 1}), (n,))
    loss = dispatch("neg", [picked])
    if label_smoothing > 0.0:
        smooth = dispatch("neg", [reduce("sum", logp, 1)])
        loss = dispatch("add", [dispatch("mul", [loss, _c(1.0 - label_smoothing, input)]),
                                dispatch("mul", [smooth, _c(label_smoothing / c, input)])])
    loss = where(valid, loss, 0.0)
    total = reduce("sum", loss, 0)
    if reduction == "sum":
        return total
    count = reduce("sum", dispatch("cast", [valid], {"dtype": _dtype_of(input)}), 0)
    return dispatch("div", [total, count])
