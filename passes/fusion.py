"""Fusion passes: merge a producer into its single consumer so the runtime makes one pass.

A producer is fused only when its output has exactly one user (the consumer) and is not a
graph output; otherwise its value must exist on its own and fusing would compute it twice.
Every candidate leaves a FusionRecord in the pass context: fused (which nodes became which)
or not fused (and why).

The fused node takes the consumer's output name, so nothing downstream is renamed, and the
producer's source location (where the bulk of the work was written, e.g. the Linear layer).
"""
from __future__ import annotations

from graphc.ir import Graph, get_op
from graphc.ir.graph import Node
from graphc.ir.text import format_node

from .cleanup import rewrite
from .manager import PassContext, register_pass


def _line(n: Node) -> str:
    return format_node(n, comment=False)


def _short(n: Node) -> str:
    return f"%{n.outputs[0]} = {n.op}({', '.join('%' + i for i in n.inputs)})"


def why_not_single_use(g: Graph, producer: Node, consumer: Node) -> str | None:
    """None if `consumer` is the only reader of producer's output, else the reason in words."""
    v = producer.out
    others = [u for u in g.users.get(v, ()) if u is not consumer]
    if others:
        users = ", ".join(f"%{u.outputs[0]} ({u.op})" for u in others)
        return f"{_short(producer)} not fused with %{consumer.outputs[0]} ({consumer.op}): its output is also used by {users}"
    if v in g.output_values:
        return f"{_short(producer)} not fused with %{consumer.outputs[0]} ({consumer.op}): its output is a graph output"
    return None


def fuse_pairs(g: Graph, ctx: PassContext | None, pattern: str, match, make) -> tuple[Graph, bool]:
    """Fuse every (producer, consumer) pair where `match(consumer, producer)` holds.

    `match` returns True or a reason it cannot fuse; `make(producer, consumer)` builds the fused
    node, which replaces the consumer; the producer disappears."""
    ctx = ctx or PassContext()
    fused: dict[int, Node] = {}  # id(consumer) -> fused node
    absorbed: set[int] = set()  # ids of producers merged into a consumer
    for n in g.nodes:
        p = g.producers.get(n.inputs[0]) if n.inputs else None
        if p is None:
            continue
        ok = match(n, p)
        if ok is None:
            continue
        reason = why_not_single_use(g, p, n) if ok is True else ok
        if reason:
            ctx.not_fused(pattern, [_line(p), _line(n)], reason)
            continue
        new = make(p, n)
        get_op(new.op).infer_types([g.types[i] for i in new.inputs], new.attr)  # the rule must accept it
        fused[id(n)] = new
        absorbed.add(id(p))
        ctx.fused(pattern, [_line(p), _line(n)], _line(new))
    if not fused:
        return g, False
    nodes = tuple(fused.get(id(n), n) for n in g.nodes if id(n) not in absorbed)
    return g.replace(nodes=nodes), True


# ------------------------------------------------------------------ linear + relu


def _match_linear_relu(consumer: Node, producer: Node):
    return True if consumer.op == "relu" and producer.op == "linear" else None


@register_pass("fuse_linear_relu")
def fuse_linear_relu(g: Graph, ctx: PassContext | None = None):
    """relu(linear(x, w, b)) -> linear_relu(x, w, b): the relu runs in the GEMM epilogue.
    Its backward becomes one `linear_backward {relu=true}` that masks gy on the fly."""
    def make(lin: Node, relu: Node) -> Node:
        return Node("linear_relu", lin.inputs, relu.outputs, relu.types, (), lin.loc, relu.grad_of, phase=relu.phase)

    return fuse_pairs(g, ctx, "linear+relu", _match_linear_relu, make)


# ------------------------------------------------------------------ log_softmax + nll_loss


def _match_cross_entropy(consumer: Node, producer: Node):
    if consumer.op != "nll_loss" or producer.op != "log_softmax":
        return None
    if producer.attr["dim"] != 1:
        return (f"{_short(producer)} not fused with %{consumer.out} (nll_loss): log_softmax is over dim "
                f"{producer.attr['dim']}, cross_entropy needs dim=1 (the class dim)")
    return True


@register_pass("fuse_cross_entropy")
def fuse_cross_entropy(g: Graph, ctx: PassContext | None = None):
    """nll_loss(log_softmax(x, dim=1), labels) -> cross_entropy(x, labels): one log-sum-exp, and
    a backward of softmax(x) - onehot that needs no log-probabilities saved."""
    def make(ls: Node, nll: Node) -> Node:
        attrs = get_op("cross_entropy").normalize_attrs({"reduction": nll.attr["reduction"]})
        return Node("cross_entropy", (ls.inputs[0], nll.inputs[1]), nll.outputs, nll.types, tuple(attrs.items()),
                    ls.loc, nll.grad_of, phase=nll.phase)

    return fuse_pairs(g, ctx, "log_softmax+nll_loss", _match_cross_entropy, make)


# ------------------------------------------------------------------ x @ w.T + b -> linear


@register_pass("canonicalize_linear")
def canonicalize_linear(g: Graph, ctx: PassContext | None = None):
    """matmul(x, transpose(w)) -> linear(x, w), and linear(x, w) + b -> linear(x, w, b) for a
    bias b of shape [out]: what users who write `x @ w.T + b` mean, in the form the runtime
    lowers to one GEMM with a bias epilogue (and fuse_linear_relu can then fuse)."""
    types = g.types

    def rule(n: Node, producers):
        if n.op == "matmul":
            t = producers.get(n.inputs[1])
            if t is not None and t.op == "transpose" and t.attr["perm"] == (1, 0):
                return n.replace(op="linear", inputs=(n.inputs[0], t.inputs[0]), attrs=())
        if n.op == "add":
            for a, b in (n.inputs, n.inputs[::-1]):
                lin = producers.get(a)
                if (lin is not None and lin.op == "linear" and len(lin.inputs) == 2 and g.uses(a) == 1
                        and types[b].shape == (lin.type.shape[1],) and types[b].dtype == lin.type.dtype):
                    return n.replace(op="linear", inputs=lin.inputs + (b,), attrs=(), loc=lin.loc)
        return None

    return rewrite(g, rule)  # the transpose and bias-less linear left unused are dce's to remove
