"""What each node of a graph is for: forward, backward or optimizer phase; fused; saved for backward.

Read off the graph alone (the phase recorded on each node, the op table's tags, input kinds, output
labels), so pictures and reports agree on it and neither needs the compiler.
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
    return node.phase == "backward"


def phases(g: Graph) -> dict[str, str]:
    """Node (by first output) -> "forward" | "backward" | "optimizer": the phase each node was
    made in (Node.phase, recorded by tracing, autodiff and the train-step build; see graph.PHASES)."""
    return {n.outputs[0]: n.phase for n in g.nodes}


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
