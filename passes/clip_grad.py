"""Gradient clipping inside the train step: torch.nn.utils.clip_grad_norm_ as graph nodes.

Runs after build_train_step (and after the all-reduce of a distributed step: the norm is the
averaged gradients'). Every optimizer update reads its gradient scaled by one coefficient,

    total = sqrt(sum over the trained params of sum(g * g))     (accumulated in float64)
    coef  = min(max_norm / (total + 1e-6), 1)                   (torch's formula)
    update(param, g * coef, ...)

so a compiled step with `compile_train_step(..., clip_grad_norm=max_norm)` does what the eager
loop `loss.backward(); clip_grad_norm_(params, max_norm); opt.step()` does, in the same plan: the
squares are summed by generated reduce kernels, the scaling is an elementwise node per gradient
(an Adam update takes the coefficient as its grad_scale operand instead: one pass less over each
gradient), no eager pass over the .grad arrays and no Python between backward and update. max_norm is part
of the compiled structure (a constant of the plan), as torch's argument is of each call.
"""
from __future__ import annotations

from graphc.ir import Graph, GraphBuilder, GraphcError

from .train_step import is_update

EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s `total_norm + 1e-6`


def clip_gradients(g: Graph, max_norm: float, ctx=None) -> Graph:
    """`g` (a train-step graph) with each optimizer update reading its gradient times the clipping
    coefficient of all the updates' gradients together (2-norm)."""
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise GraphcError(f"clip_grad_norm: max_norm must be a positive number, got {max_norm}")
    updates = [k for k, n in enumerate(g.nodes) if is_update(n) and len(n.inputs) > 1]
    if not updates:
        raise GraphcError(f"clip_grad_norm: graph {g.name} has no optimizer updates (is it a train step?)")
    grads = list(dict.fromkeys(g.nodes[k].inputs[1] for k in updates))
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    moved = set(updates)  # (the updates are re-added below, after the clipping nodes)
    for k, n in enumerate(g.nodes):
        if k not in moved:
            b.add_node(n)  # the backward (and anything else): the gradients exist before the clip
    b.phase = "optimizer"
    loc = f"clip_grad_norm(max_norm={max_norm:g})"
    total = None
    for v in grads:
        t = g.types[v]
        sq = b.emit("sum", [b.emit("mul", [v, v], loc=loc)], {"dims": list(range(t.rank))}, loc=loc)
        if t.dtype != "f64":
            sq = b.emit("cast", [sq], {"dtype": "f64"}, loc=loc)
        total = sq if total is None else b.emit("add", [total, sq], loc=loc)

    def const(value):
        return b.emit("full", [], {"shape": [], "value": value, "dtype": "f64"}, loc=loc)

    norm = b.emit("add", [b.emit("sqrt", [total], loc=loc), const(EPS)], loc=loc)
    coef = b.emit("minimum", [b.emit("div", [const(max_norm), norm], loc=loc), const(1.0)], loc=loc)
    by_dtype: dict[str, str] = {"f64": coef}
    clipped: dict[str, str] = {}
    scaled_inside = {g.nodes[k].inputs[1] for k in updates if g.nodes[k].op == "adam_update"}
    for v in grads:
        dt = g.types[v].dtype
        if dt not in by_dtype:
            by_dtype[dt] = b.emit("cast", [coef], {"dtype": dt}, loc=loc)
        if v not in scaled_inside or any(g.nodes[k].inputs[1] == v and g.nodes[k].op != "adam_update" for k in updates):
            clipped[v] = b.emit("mul", [v, by_dtype[dt]], loc=loc)
    for k in updates:
        n = g.nodes[k]
        if n.op == "adam_update":  # takes the coefficient as its grad_scale: no pass writes g * coef
            b.add_node(n.replace(inputs=(*n.inputs, by_dtype[g.types[n.inputs[1]].dtype])))
        else:
            b.add_node(n.replace(inputs=(n.inputs[0], clipped[n.inputs[1]], *n.inputs[2:])))
    if ctx is not None:
        ctx.note(f"{len(grads)} gradients scaled by min({max_norm:g} / (their total 2-norm + {EPS:g}), 1) before the updates")
    return b.build(list(g.outputs), dict(g.meta, clip_grad_norm=max_norm)).verify()


__all__ = ["clip_gradients"]
