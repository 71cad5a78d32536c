"""Reverse-mode autodiff as a graph-to-graph transform.

`grad_graph(g)` appends the backward computation to a forward graph and returns the JOINT
graph: the original outputs plus one `grad:<input>` output per differentiated input. The
derivative of each op is its VJP rule in the op table (graphc/ir/ops.py); this module only
walks the graph backwards, sums the gradients of values read more than once, and stamps every
backward node with the forward node it differentiates (`# grad of %4, simple_net.py:14`).
"""
from __future__ import annotations

from typing import Sequence

from graphc.ir import Graph, GraphBuilder, GraphcError, Output
from graphc.ir.opdef import OPS, _NoGradient

GRAD_PREFIX = "grad:"


class _Stamped:
    """The builder as a VJP rule sees it: every node it emits is marked as the gradient of one
    forward node (grad_of, loc), so the IR says where each backward node comes from."""

    def __init__(self, b: GraphBuilder, grad_of: str, loc: str | None):
        self._b, self.grad_of, self.loc = b, grad_of, loc

    @property
    def types(self):
        return self._b.types

    def emit(self, op: str, inputs=(), attrs: dict | None = None):
        return self._b.emit(op, inputs, attrs, loc=self.loc, grad_of=self.grad_of)


def is_joint(g: Graph) -> bool:
    """Whether `g` already carries gradient outputs (autodiff ran on it)."""
    return any(o.label and o.label.startswith(GRAD_PREFIX) for o in g.outputs)


def grad_graph(g: Graph, wrt: Sequence[str] | None = None, seeds: str | None = None) -> Graph:
    """The joint forward+backward graph of `g`.

    wrt: names of the inputs to differentiate (default: every `param` input).
    seeds: where the output gradients come from:
      - "ones": each output is a scalar loss, seeded with `full 1.0`;
      - "inputs": one `grad` input per float output, named `grad.<output index>`;
      - None (default): "ones" for a single scalar output, otherwise "inputs" (also when `g`
        already has `grad` inputs, which are then used as the seeds).
    Inputs that do not reach a seeded output get no gradient output (like torch's grad=None).
    """
    wrt = _check_wrt(g, wrt)
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    for n in g.nodes:
        b.add_node(n)

    grads: dict[str, list[str]] = {}  # value -> gradient contributions, in the order found
    for value, seed in _seeds(g, b, seeds):
        grads.setdefault(value, []).append(seed)
    needs = _needs_grad(g, set(wrt), set(grads))

    for n in reversed(g.nodes):
        want = [i in needs for i in n.inputs]
        if not any(want) or not any(o in grads for o in n.outputs):
            continue
        rule = OPS[n.op].vjp
        if rule is None or isinstance(rule, _NoGradient):
            why = f": {rule.why}" if rule is not None else " (no VJP rule in the op table)"
            raise GraphcError(f"cannot differentiate %{n.outputs[0]} = {n.op}(...){' at ' + n.loc if n.loc else ''}: "
                              f"{n.op} has no gradient{why}")
        gys = [_total(b, g, grads, o) if o in grads else None for o in n.outputs]
        gxs = list(rule(_Stamped(b, n.outputs[0], n.loc), n, gys, want))
        if len(gxs) != len(n.inputs):
            raise GraphcError(f"VJP rule of {n.op} returned {len(gxs)} gradients for {len(n.inputs)} inputs")
        for x, gx, w in zip(n.inputs, gxs, want):
            if not w:
                continue
            if gx is None:
                raise GraphcError(f"VJP rule of {n.op} gave no gradient for %{x}, which needs one (node %{n.outputs[0]})")
            if b.types[gx] != b.types[x]:
                raise GraphcError(f"VJP rule of {n.op}: gradient %{gx} of %{x} has type {b.types[gx]}, expected {b.types[x]}")
            grads.setdefault(x, []).append(gx)

    outputs = list(g.outputs) + [Output(_total(b, g, grads, w), GRAD_PREFIX + w) for w in wrt if w in grads]
    meta = dict(g.meta)
    meta["autodiff"] = {"wrt": [w for w in wrt if w in grads], "unreached": [w for w in wrt if w not in grads]}
    return _drop_dead_backward(b.build(outputs, meta), first=len(g.nodes)).verify()


def autodiff(g: Graph, ctx=None) -> tuple[Graph, bool]:
    """Pass form of grad_graph (gradients of every param). A joint graph is left as it is."""
    if is_joint(g):
        return g, False
    joint = grad_graph(g)
    if ctx is not None:
        unreached = joint.meta["autodiff"]["unreached"]
        ctx.note(f"gradients of {len(joint.meta['autodiff']['wrt'])} params"
                 + (f"; no gradient (does not reach the loss): {', '.join(unreached)}" if unreached else ""))
    return joint, True


# ------------------------------------------------------------------ helpers


def _check_wrt(g: Graph, wrt) -> list[str]:
    if wrt is None:
        wrt = [i.name for i in g.inputs if i.kind == "param"]
        if not wrt:
            raise GraphcError(f"graph {g.name} has no param inputs to differentiate; pass wrt=[input names]")
        return wrt
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    for w in wrt:
        inp = g.input_by_name.get(w)
        if inp is None:
            raise GraphcError(f"wrt: %{w} is not an input of graph {g.name}; inputs are {[i.name for i in g.inputs]}")
        if not inp.type.is_float:
            raise GraphcError(f"wrt: %{w} is {inp.type}; only float inputs have gradients")
    if len(set(wrt)) != len(wrt):
        raise GraphcError(f"wrt: names repeat: {wrt}")
    return wrt


def _seeds(g: Graph, b: GraphBuilder, mode: str | None) -> list[tuple[str, str]]:
    """(output value, seed value) pairs; adds the seed nodes or grad inputs to `b`."""
    has_grad_inputs = any(i.kind == "grad" for i in g.inputs)
    # "update:" outputs (new values of module buffers, e.g. BatchNorm's running statistics) are state, not results
    outputs = [o for o in g.outputs if not (o.label and o.label.startswith("update:"))]
    if mode is None:
        scalar = len(outputs) == 1 and g.types[outputs[0].value].shape == ()
        mode = "inputs" if has_grad_inputs or not scalar else "ones"
    if mode not in ("ones", "inputs"):
        raise GraphcError(f"seeds={mode!r}: expected 'ones', 'inputs' or None")
    pairs = []
    for k, o in enumerate(outputs):
        t = g.types[o.value]
        if not t.is_float:
            continue
        if mode == "ones":
            if t.shape != ():
                raise GraphcError(f"seeds='ones': output {k} (%{o.value}) is {t}, not a scalar loss; use seeds='inputs'")
            p = g.producer(o.value)
            pairs.append((o.value, b.emit("full", [], {"shape": (), "value": 1.0, "dtype": t.dtype},
                                          loc=p.loc if p else None, grad_of=o.value)))
        else:
            name = f"grad.{k}"
            existing = g.input_by_name.get(name)
            if existing is None:
                b.add_input(name, t, "grad")
            elif existing.kind != "grad" or existing.type != t:
                raise GraphcError(f"input %{name} should be the gradient seed of output {k}: grad {t}, found {existing.kind} {existing.type}")
            pairs.append((o.value, name))
    return pairs


def _needs_grad(g: Graph, wrt: set[str], seeded: set[str]) -> set[str]:
    """Float values that depend on a wrt input AND reach a seeded output: only these get gradients."""
    depends = set(wrt)
    for n in g.nodes:
        if any(i in depends for i in n.inputs):
            depends.update(o for o, t in zip(n.outputs, n.types) if t.is_float)
    reaches = set(seeded)
    for n in reversed(g.nodes):
        if any(o in reaches for o in n.outputs):
            reaches.update(n.inputs)
    return {v for v in depends & reaches if g.types[v].is_float}


def _total(b: GraphBuilder, g: Graph, grads: dict[str, list[str]], value: str) -> str:
    """The gradient of `value`: its contributions summed (once; the sum replaces the list)."""
    parts = grads[value]
    if len(parts) > 1:
        p = g.producer(value)
        acc = parts[0]
        for part in parts[1:]:
            acc = b.emit("add", [acc, part], loc=p.loc if p else None, grad_of=value)
        grads[value] = parts = [acc]
    return parts[0]


def _drop_dead_backward(g: Graph, first: int) -> Graph:
    """Remove backward nodes (index >= first) none of whose outputs is used; forward nodes stay."""
    live = set(g.output_values)
    keep = [True] * len(g.nodes)
    for k in range(len(g.nodes) - 1, -1, -1):
        n = g.nodes[k]
        if k >= first and not any(o in live for o in n.outputs):
            keep[k] = False
            continue
        live.update(n.inputs)
    if all(keep):
        return g
    return g.replace(nodes=tuple(n for n, k in zip(g.nodes, keep) if k))
