"""Split a joint forward+backward graph into a forward plan and a backward plan.

The forward computes the original outputs and the values the backward will need ("saved");
the backward starts from those, the gradient seeds and the inputs it reads (params, inputs,
the rng seed: these are available to it directly, so they are never saved copies). Every saved
value is entered in a ledger that says what it costs, who reads it and why it is kept.

Policy: a forward value read by the backward is saved, unless its producer is cheap
elementwise/shape work whose operands the backward already has (inputs, params, the rng seed,
other saved or recomputed values). Then the backward recomputes it: e.g. a dropout output
is recomputed from the saved relu output and the seed, so only one [batch, features] tensor is
kept where two were read. Recomputing never adds a saved value, so saved bytes only shrink.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import OPS, Graph, GraphBuilder, Output, TensorType
from graphc.ir.text import format_node

from .autodiff import GRAD_PREFIX



def recomputable(op: str) -> bool:
    """Cheap enough to redo in the backward instead of keeping its result (the op table's
    "recompute" tag: one pass over the data, no reduction or GEMM; dropout, as its mask is a
    function of the seed)."""
    return "recompute" in OPS[op].tags


@dataclass(frozen=True)
class SavedValue:
    """One entry of the ledger: a forward value kept alive for the backward."""

    value: str  # the value's name in both plans
    type: TensorType
    nbytes: int
    producer: str  # the forward node that computes it, as an IR line with its source location
    op: str  # the producer's op
    loc: str | None  # the producer's source location
    users: tuple[str, ...]  # the backward nodes that read it, as IR lines
    reason: str  # why it is saved rather than recomputed


@dataclass
class Partition:
    forward: Graph
    backward: Graph
    ledger: list[SavedValue]
    recomputed: list[str] = field(default_factory=list)  # forward values the backward recomputes

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.ledger)

    def format_ledger(self) -> str:
        """A readable table of what crosses from forward to backward, and why."""
        lines = [f"saved for backward: {len(self.ledger)} value(s), {self.saved_bytes:,} bytes"]
        for s in self.ledger:
            lines.append(f"  %{s.value}: {s.type}  {s.nbytes:,} B  from {s.op}" + (f" at {s.loc}" if s.loc else ""))
            lines.append(f"    why: {s.reason}")
            lines += [f"    read by: {u}" for u in s.users]
        if self.recomputed:
            lines.append("recomputed in backward (not saved): " + ", ".join(
                f"%{v} ({self.backward.producer(v).op})" for v in self.recomputed))
        return "\n".join(lines)


def is_grad_output(o: Output) -> bool:
    return bool(o.label) and o.label.startswith(GRAD_PREFIX)


def partition(joint: Graph) -> Partition:
    """Forward plan, backward plan and saved-values ledger of a joint graph (see grad_graph)."""
    fwd_outs = [o for o in joint.outputs if not is_grad_output(o)]
    grad_outs = [o for o in joint.outputs if is_grad_output(o)]
    fwd = _slice(joint, [o.value for o in fwd_outs], exclude=set())
    bwd = _slice(joint, [o.value for o in grad_outs], exclude=fwd)
    fwd_values = {o for k in fwd for o in joint.nodes[k].outputs}

    # Forward values the backward reads (or returns as a gradient), in definition order.
    wanted = {i for k in bwd for i in joint.nodes[k].inputs} | {o.value for o in grad_outs}
    boundary = [o for k in sorted(fwd) for o in joint.nodes[k].outputs if o in wanted]
    saved, recompute = _choose(joint, boundary, fwd_values)

    position = {n.outputs[0]: k for k, n in enumerate(joint.nodes)}
    recomputed_nodes = sorted({joint.producers[v] for v in recompute}, key=lambda n: position[n.outputs[0]])
    bwd_nodes = recomputed_nodes + [joint.nodes[k] for k in sorted(bwd)]

    forward = _build_forward(joint, [joint.nodes[k] for k in sorted(fwd)], fwd_outs, saved)
    backward = _build_backward(joint, bwd_nodes, grad_outs, saved)
    ledger = [_entry(joint, backward, v, set(saved), set(recompute)) for v in saved]
    return Partition(forward, backward, ledger, list(recompute))


# ------------------------------------------------------------------ analysis


def _slice(g: Graph, roots: list[str], exclude: set[int]) -> set[int]:
    """Indices of the nodes `roots` depend on (not crossing into `exclude`)."""
    index = {o: k for k, n in enumerate(g.nodes) for o in n.outputs}
    todo, seen = list(roots), set()
    while todo:
        k = index.get(todo.pop())
        if k is None or k in seen or k in exclude:
            continue
        seen.add(k)
        todo.extend(g.nodes[k].inputs)
    return seen


def _choose(g: Graph, boundary: list[str], fwd_values: set[str]) -> tuple[list[str], list[str]]:
    """Split the boundary into saved and recomputed values (both in definition order)."""
    saved = dict.fromkeys(boundary)
    recompute: dict[str, None] = {}
    for v in boundary:  # definition order: a value's operands are decided before it
        n = g.producers[v]
        if recomputable(n.op) and len(n.outputs) == 1 and all(
                i not in fwd_values or i in saved or i in recompute for i in n.inputs if i != v):
            del saved[v]
            recompute[v] = None
        elif n.op == "reshape" and n.inputs[0] in g.producers:
            # a reshape is a view of its operand: keeping the operand costs the same bytes and
            # the backward's reshape is free, while keeping the reshape would copy it in the forward
            del saved[v]
            saved[n.inputs[0]] = None
            recompute[v] = None
    _slices_as_operand(g, saved, recompute)
    order = {o: k for k, n in enumerate(g.nodes) for o in n.outputs}
    return sorted(saved, key=order.__getitem__), list(recompute)


def _slices_as_operand(g: Graph, saved: dict, recompute: dict) -> None:
    """Saved slices that together hold as many elements as their operand (attention's q, k, v
    split of c_attn's output): keep the operand instead, the same bytes, and recompute the
    slices in the backward, where they are views (strided GEMM operands), not copies; in the
    forward they then have no reader but attention's kernels, so they are views there too."""
    by: dict[str, list[str]] = {}
    for v in saved:
        n = g.producers[v]
        if n.op == "slice" and len(n.outputs) == 1 and n.inputs[0] in g.producers:
            by.setdefault(n.inputs[0], []).append(v)
    for x, vs in by.items():
        if sum(g.types[v].size for v in vs) < g.types[x].size:
            continue
        for v in vs:
            del saved[v]
            recompute[v] = None
        p = g.producers[x]
        if p.op == "reshape" and p.inputs[0] in g.producers:  # a view of its operand (as above)
            recompute[x] = None
            x = p.inputs[0]
        saved[x] = None


# ------------------------------------------------------------------ the two plans


def _build_forward(joint: Graph, nodes, fwd_outs, saved) -> Graph:
    b = GraphBuilder(joint.name + ".forward", like=joint)
    for i in joint.inputs:
        if i.kind != "grad":
            b.add_input(i.name, i.type, i.kind)
    for n in nodes:
        b.add_node(n)
    meta = dict(joint.meta, plan="forward")
    return b.build(list(fwd_outs) + [Output(v, "saved") for v in saved], meta).verify()


def _build_backward(joint: Graph, nodes, grad_outs, saved) -> Graph:
    b = GraphBuilder(joint.name + ".backward", like=joint)
    for v in saved:
        b.add_input(v, joint.types[v], "saved")
    for i in joint.inputs:
        if i.kind == "grad":
            b.add_input(i.name, i.type, "grad")
    read = {i for n in nodes for i in n.inputs} | {o.value for o in grad_outs}
    for i in joint.inputs:
        if i.kind != "grad" and i.name in read:
            b.add_input(i.name, i.type, i.kind)
    for n in nodes:
        b.add_node(n)
    meta = dict(joint.meta, plan="backward")
    return b.build(grad_outs, meta).verify()


# ------------------------------------------------------------------ the ledger


def _entry(joint: Graph, backward: Graph, v: str, saved: set[str], recompute: set[str]) -> SavedValue:
    n = joint.producers[v]
    users = backward.users.get(v, [])
    t = joint.types[v]
    return SavedValue(v, t, t.nbytes, format_node(n), n.op, n.loc, tuple(format_node(u) for u in users),
                      _reason(joint, v, users, saved, recompute))


def _reason(joint: Graph, v: str, users, saved: set[str], recompute: set[str]) -> str:
    # The backward's own uses first, then the recomputations that read it.
    ordered = [u for u in users if u.outputs[0] not in recompute] + [u for u in users if u.outputs[0] in recompute]
    reasons: list[str] = []
    for u in ordered:
        for pos, i in enumerate(u.inputs):
            if i == v:
                reasons.append(_use_reason(u, pos, u.outputs[0] in recompute))
    n = joint.producers[v]
    if recomputable(n.op):
        missing = [f"%{i}" for i in n.inputs if i in joint.producers and i not in saved and i not in recompute]
        reasons.append(f"cheap to recompute ({n.op}) but its operand(s) {', '.join(missing)} would have to be saved instead")
    return "; ".join(dict.fromkeys(reasons))


def _use_reason(u, pos: int, by_recompute: bool) -> str:
    if by_recompute:
        return f"operand of %{u.outputs[0]} = {u.op}(...), which the backward recomputes instead of saving"
    op = u.op
    if op == "relu_backward":
        return "relu mask: output kept (input not needed)"
    if op == "linear_backward":
        return {1: "weight-gradient GEMM operand (dW = gy^T @ x)",
                2: "input-gradient GEMM operand (dx = gy @ W)",
                3: "relu mask of fused linear_relu: output kept (pre-activation not needed)"}.get(pos, f"operand {pos} of linear_backward")
    if op == "matmul":
        return "GEMM operand of a matmul gradient"
    if op == "conv2d_backward":
        return {1: "conv input: dW = gy (x)^T through im2col or direct loops, which rebuild the windows (they are not saved)",
                2: "conv weight: dx = col2im(W^T gy)",
                3: "relu mask of a fused conv2d {relu=true}: output kept (pre-activation not needed)"}.get(
            pos, f"operand {pos} of conv2d_backward")
    if op == "max_pool2d_backward":
        return ("argmax indices of max_pool2d: the backward scatters gy to them (one int64 per output, "
                "instead of keeping the input and searching each window again)")
    if op in ("sigmoid_backward", "tanh_backward", "softmax_backward", "log_softmax_backward"):
        return f"{op[:-len('_backward')]} output: its derivative is computed from the output alone"
    if op == "cross_entropy_backward":
        return "logits: cross_entropy_backward recomputes the softmax from them"
    if op == "mse_loss_backward":
        return "mse_loss operand: the gradient is 2 (input - target) / N"
    if op in ("mul", "div"):
        return f"operand of the {op} in a product-rule gradient"
    return f"operand {pos} of backward {op}"
