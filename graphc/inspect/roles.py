"""What each node of a graph is for: forward, backward or optimizer phase; fused; saved for backward.

Read off the graph alone (grad_of, the op table's tags, input kinds, output labels), so pictures and
reports agree on it and neither needs the compiler.
"""
from __future__ import annotations

from graphc.ir import OPS, Graph, Node

# Fusions by construction (the fusion passes emit them): the op table's "fused" tag.
FUSED_OPS = frozenset(name for name, op in OPS.items() if "fused" in op.tags)


def _tagged(node: Node, tag: str) -> bool:
    op = OPS.get(node.op)
    return op is not None and tag in op.tags


def is_fused(node: Node) -> bool:
    return node.op in FUSED_OPS or (node.op == "linear_backward" and bool(node.attr.get("relu")))


def is_backward(node: Node) -> bool:
    return node.grad_of is not None or _tagged(node, "backward")


def _reached_labels(g: Graph) -> dict[str, set[str]]:
    """For each value: the kinds of output labels ("loss", "grad", "update", ...) it flows into."""
    reach: dict[str, set[str]] = {v: set() for v in g.types}
    for o in g.outputs:
        reach[o.value].add((o.label or "out").split(":")[0])
    for n in reversed(g.nodes):
        below: set[str] = set()
        for o in n.outputs:
            below |= reach[o]
        for i in n.inputs:
            reach[i] |= below
    return reach


def phases(g: Graph) -> dict[str, str]:
    """Node (by first output) -> "forward" | "backward" | "optimizer".

    Backward nodes say so (grad_of, the "backward" tag); optimizer nodes read optimizer state or only
    feed `update:` outputs from gradients; untagged nodes that read gradients are backward;
    constants (no inputs) sit with their first user.
    """
    reach = _reached_labels(g)
    value_phase = {i.name: ("backward" if i.kind == "grad" else "optimizer" if i.kind in ("state", "hyper") else "forward")
                   for i in g.inputs}
    result: dict[str, str] = {}
    for n in g.nodes:
        read = {value_phase.get(i, "forward") for i in n.inputs}
        if _tagged(n, "optimizer"):
            p = "optimizer"
        elif is_backward(n):
            p = "backward"
        elif "optimizer" in read:
            p = "optimizer"
        elif "backward" in read:
            only_updates = reach[n.outputs[0]] == {"update"}
            p = "optimizer" if only_updates else "backward"
        else:
            p = "forward"
        result[n.outputs[0]] = p
        for o in n.outputs:
            value_phase[o] = p
    for n in reversed(g.nodes):
        if not n.inputs:
            users = g.users.get(n.outputs[0], [])
            if users:
                result[n.outputs[0]] = result[users[0].outputs[0]]
    return result


def saved_values(g: Graph) -> list[str]:
    """Values kept between forward and backward: `saved` inputs, `saved` outputs, and (in a joint
    graph) forward values that backward nodes read. In definition order."""
    phase = phases(g)
    saved = {i.name for i in g.inputs if i.kind == "saved"}
    saved |= {o.value for o in g.outputs if o.label == "saved"}
    joint = any(p == "backward" for p in phase.values()) and not any(i.kind in ("saved", "grad") for i in g.inputs)
    if joint:  # (in a backward plan, forward ops are recomputations, not saved values)
        for n in g.nodes:
            if phase[n.outputs[0]] != "backward":
                continue
            for i in n.inputs:
                p = g.producer(i)
                if p is not None and phase[p.outputs[0]] == "forward" and p.inputs:
                    saved.add(i)
    return [v for v in g.types if v in saved]
