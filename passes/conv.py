"""Convolution passes: the relu epilogue (fuse_conv_relu) and the lowering choice (lower_conv).

fuse_conv_relu: relu(conv2d(x, w, b)) -> conv2d {relu=true}, as fuse_linear_relu does for
linear: the relu runs in the pass that writes the conv's output, and its VJP is one
conv2d_backward {relu=true} that masks gy with y > 0 while it copies gy (so neither relu nor
relu_backward is a kernel of its own). It runs before autodiff, like every fusion of
passes/fusion.py. A following max_pool2d is not fused (recorded): its windows span output rows
of several channels' epilogue passes, and its argmax indices are a second output.

lower_conv: which of conv2d's native lowerings each layer runs.

Written on the node as `algo` (so the IR shows what runs, and the backward op the VJP emits
inherits the forward's choice), and noted with the reason in the pass record:

- "wide" (every stride-1 conv): the windows unrolled in the wide-row layout of
  runtime/conv_direct.py (row stride of the padded input, so one copy of a whole plane per tap
  instead of one per output row), `chunk` samples at a time, then one BLAS GEMM per group
  (runtime/conv_wide.py).
- "im2col" (strided convs): the windows unrolled into a [C/g*kh*kw, NB*OH*OW] scratch matrix,
  one copy per tap and output row, then one BLAS GEMM per group.
- "direct": stride-1 loop nests over wide rows, no unrolled matrix; the pass no longer picks
  it (kept as a reference lowering, tested like the others).

The rule comes from `python benchmarks/bench_cnn.py --im2col-vs-direct` (README, CNN section),
min of 40 interleaved calls of process CPU time, one BLAS thread, on the shared 2-core machine:
wide was the fastest forward on every conv layer of workloads C and B (1.4-3x faster than
im2col, 1.4-3x faster than direct) and the fastest backward on all but LeNet's conv1 (tied
with direct there: 760 vs 665 us min, 864 vs 941 us median). LeNet's conv2 backward, the
largest kernel of C's step, went from 4.6 ms (im2col) to 1.8 ms: im2col copied 10-element
rows, 1,500 of them a sample, and col2im added them back the same way.
"""
from __future__ import annotations

from graphc.ir import Graph
from graphc.ir.graph import Node
from graphc.ir.text import format_node

from .fusion import fuse_pairs
from .manager import PassContext, register_pass

# im2col runs NB samples at a time, NB chosen so that one chunk's matrix is at most this many
# bytes (it then stays in L2 between im2col writing it and the GEMM reading it): LeNet's conv2
# (60 KB a sample) took 1.2 ms in chunks of 8 against 2.1 ms for the whole batch of 64.
CHUNK_BYTES = 512 * 1024
# The wide lowering's chunk bound: LeNet's conv1 and conv2 (89 and 82 KB of wide matrix a
# sample) were fastest in chunks of 2 samples, forward and backward (1 to 6 measured).
WIDE_CHUNK_BYTES = 192 * 1024


def _chunk_of(n: int, per_sample: int, limit: int) -> int:
    chunk = max(1, min(n, limit // per_sample))
    return 0 if chunk >= n else chunk


def choose_algo(n: Node, types) -> tuple[str, int, str]:
    """(algo, chunk, why) for one conv2d node."""
    x, w, y = types[n.inputs[0]], types[n.inputs[1]], n.types[0]
    k = w.shape[1] * w.shape[2] * w.shape[3]
    item = x.np_dtype.itemsize
    if tuple(n.attr["stride"]) == (1, 1):
        dh, dw = n.attr["dilation"]
        wp = y.shape[3] + dw * (w.shape[3] - 1)
        per_sample = x.shape[1] * w.shape[2] * w.shape[3] * ((y.shape[2] - 1) * wp + y.shape[3]) * item
        chunk = _chunk_of(x.shape[0], per_sample, WIDE_CHUNK_BYTES)
        return "wide", chunk, (f"stride 1: windows unrolled as wide rows (one copy of a whole plane per tap, "
                               f"K = C/groups*kh*kw = {k}), then BLAS; {chunk or x.shape[0]} samples per GEMM "
                               f"({per_sample:,} B of wide matrix a sample, at most {WIDE_CHUNK_BYTES:,} B a chunk)")
    per_sample = x.shape[1] * w.shape[2] * w.shape[3] * y.shape[2] * y.shape[3] * item
    chunk = _chunk_of(x.shape[0], per_sample, CHUNK_BYTES)
    return "im2col", chunk, (f"stride {list(n.attr['stride'])}: the wide rows need stride 1; {chunk or x.shape[0]} "
                             f"samples per GEMM ({per_sample:,} B of im2col matrix a sample, at most "
                             f"{CHUNK_BYTES:,} B a chunk)")


@register_pass("lower_conv")
def lower_conv(g: Graph, ctx: PassContext | None = None):
    """Set `algo` (and im2col's `chunk`) on every conv2d (see the module docstring)."""
    ctx = ctx or PassContext("lower_conv")
    types = g.types
    nodes, changed = [], False
    for n in g.nodes:
        if n.op == "conv2d":
            algo, chunk, why = choose_algo(n, types)
            ctx.note(f"%{n.out} = conv2d: algo={algo}: {why}")
            if (algo, chunk) != (n.attr["algo"], n.attr["chunk"]):
                n = n.replace(attrs=tuple({**n.attr, "algo": algo, "chunk": chunk}.items()))
                changed = True
        nodes.append(n)
    return (g.replace(nodes=tuple(nodes)), True) if changed else (g, False)


def _match_conv_relu(consumer: Node, producer: Node):
    return True if consumer.op == "relu" and producer.op == "conv2d" and not producer.attr["relu"] else None


POOL_NOT_FUSED = ("a pooling epilogue needs whole windows of output rows and writes argmax indices "
                  "(a second output); max_pool2d runs as its own kernel")


@register_pass("fuse_conv_relu")
def fuse_conv_relu(g: Graph, ctx: PassContext | None = None):
    """relu(conv2d(...)) -> conv2d {relu=true} (see the module docstring)."""
    ctx = ctx or PassContext("fuse_conv_relu")

    def make(conv: Node, relu: Node) -> Node:
        attrs = tuple({**conv.attr, "relu": True}.items())
        return Node("conv2d", conv.inputs, relu.outputs, relu.types, attrs, conv.loc, relu.grad_of, phase=relu.phase)

    g, changed = fuse_pairs(g, ctx, "conv2d+relu", _match_conv_relu, make)
    for n in g.nodes:  # record why the pool after a conv stays a kernel of its own
        p = g.producers.get(n.inputs[0]) if n.inputs else None
        if n.op == "max_pool2d" and p is not None and p.op == "conv2d":
            ctx.not_fused("conv2d+max_pool2d", [format_node(p, comment=False), format_node(n, comment=False)],
                          f"%{p.out} (conv2d) -> %{n.outputs[0]} (max_pool2d): {POOL_NOT_FUSED}")
    return g, changed


# ------------------------------------------------------------------ per-channel affine (eval BatchNorm) -> conv weights

AFFINE_OPS = ("add", "sub", "mul", "div")


def _per_channel(t, c: int) -> bool:
    """A shape that broadcasts one value per channel of an NCHW output: [1,C,1,1] or [C,1,1]."""
    return t.shape in ((1, c, 1, 1), (c, 1, 1))


def _fold_chain(g: Graph, conv: Node, below: set[str]) -> list[tuple[Node, str]]:
    """The elementwise nodes after `conv` that fold into its weights and bias: each one is the
    only user of the value before it (not a graph output), computes v op o with o per channel
    and not computed from the conv's output (`below`: the values downstream of it; a batch
    statistic of training-mode BatchNorm is, so training BatchNorm never folds)."""
    chain, v, c, dt = [], conv.out, conv.type.shape[1], conv.type.dtype
    while g.uses(v) == 1 and v not in g.output_values:
        u = g.users[v][0]
        if u.op not in AFFINE_OPS or len(u.inputs) != 2:
            break
        pos = u.inputs.index(v)
        if pos == 1 and u.op in ("sub", "div"):
            break  # o - v and o / v are not affine in the conv's weights
        o = u.inputs[1 - pos]
        if o in below or not _per_channel(g.types[o], c) or g.types[o].dtype != dt or u.type != conv.type:
            break
        chain.append((u, o))
        v = u.out
    return chain


def _downstream(g: Graph, v: str) -> set[str]:
    seen = {v}
    for n in g.nodes:  # topological order: one pass finds every value computed from v
        if any(i in seen for i in n.inputs):
            seen.update(n.outputs)
    return seen


@register_pass("fold_conv_affine", reassociates=True)
def fold_conv_affine(g: Graph, ctx: PassContext | None = None):
    """conv2d followed by per-channel add/sub/mul/div (eval-mode BatchNorm after decomposition:
    (y - mean) * rsqrt(var + eps) * gamma + beta) -> one conv2d with scaled weights and shifted
    bias: w' = w * s[co], b' = b * s + t, computed on the [C]-sized operands, so no pass over
    the activations remains. Runs in the inference pipeline (eval mode), before fuse_conv_relu."""
    from graphc.ir import GraphBuilder
    from graphc.ir.graph import Output

    ctx = ctx or PassContext("fold_conv_affine")
    chains: dict[int, list[tuple[Node, str]]] = {}
    for k, n in enumerate(g.nodes):
        if n.op == "conv2d" and not n.attr["relu"]:
            chain = _fold_chain(g, n, _downstream(g, n.out))
            if chain:
                chains[k] = chain
    if not chains:
        return g, False
    folded = {id(u): k for k, ch in chains.items() for u, _ in ch[:-1]}
    last = {id(ch[-1][0]): k for k, ch in chains.items()}
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    for k, n in enumerate(g.nodes):
        if k in chains or id(n) in folded:
            continue  # the conv moves to where its chain ends (its operands exist by then)
        if id(n) not in last:
            b.add_node(n)
            continue
        conv = g.nodes[last[id(n)]]
        co = conv.type.shape[1]
        w = conv.inputs[1]
        bias = conv.inputs[2] if len(conv.inputs) == 3 else None
        for u, o in chains[last[id(n)]]:
            vec = b.emit("reshape", [o], {"shape": (co,)})
            if u.op in ("mul", "div"):
                w = b.emit(u.op, [w, b.emit("reshape", [o], {"shape": (co, 1, 1, 1)})])
                bias = b.emit(u.op, [bias, vec]) if bias is not None else None
            elif bias is None:
                bias = vec if u.op == "add" else b.emit("neg", [vec])
            else:
                bias = b.emit(u.op, [bias, vec])
        new = conv.replace(inputs=(conv.inputs[0], w, bias), outputs=n.outputs, types=n.types, grad_of=n.grad_of, phase=n.phase)
        b.add_node(new)
        ctx.fused("conv2d+affine", [format_node(conv, comment=False)] +
                  [format_node(u, comment=False) for u, _ in chains[last[id(n)]]],
                  f"{format_node(new, comment=False)}  (weights scaled and bias shifted per channel)")
    return b.build([Output(o.value, o.label) for o in g.outputs], meta=dict(g.meta)), True
