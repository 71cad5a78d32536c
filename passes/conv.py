"""Convolution passes: the relu epilogue (fuse_conv_relu) and the lowering choice (lower_conv).

fuse_conv_relu: relu(conv2d(x, w, b)) -> conv2d {relu=true}, as fuse_linear_relu does for
linear: the relu runs in the pass that writes the conv's output, and its VJP is one
conv2d_backward {relu=true} that masks gy with y > 0 while it copies gy (so neither relu nor
relu_backward is a kernel of its own). It runs before autodiff, like every fusion of
passes/fusion.py. A following max_pool2d is not fused (recorded): its windows span output rows
of several channels' epilogue passes, and its argmax indices are a second output.

lower_conv: which of conv2d's two native lowerings each layer runs.

Written on the node as `algo` (so the IR shows what runs, and the backward op the VJP emits
inherits the forward's choice), and noted with the reason in the pass record:

- "im2col": the windows unrolled into a [C/g*kh*kw, N*OH*OW] scratch matrix, then one BLAS
  GEMM per group. Wins when K = C/g*kh*kw is large: the GEMM's register blocking pays for
  writing and reading the kh*kw-times-larger matrix.
- "direct": stride-1 loop nests over wide rows (runtime/conv_direct.py), no unrolled matrix.
  Wins when K is small: the GEMM is then memory-bound on the matrix it reads.

The threshold comes from `python benchmarks/bench_cnn.py --im2col-vs-direct` (README, CNN
section), min of 40 interleaved calls on the shared 2-core machine, one BLAS thread: direct was
2-3x faster at K = 25 and 27 (LeNet conv1, a 3->16 3x3 conv), tied at K = 150 forward and 1.8x
slower backward (LeNet conv2), and 1.5-4x slower at K = 144 and 288 with 32 output channels.
"""
from __future__ import annotations

from graphc.ir import Graph
from graphc.ir.graph import Node
from graphc.ir.text import format_node

from .fusion import fuse_pairs
from .manager import PassContext, register_pass

DIRECT_MAX_K = 64  # the largest C/groups*kh*kw lowered as direct loops
# im2col runs NB samples at a time, NB chosen so that one chunk's matrix is at most this many
# bytes (it then stays in L2 between im2col writing it and the GEMM reading it): LeNet's conv2
# (60 KB a sample) took 1.2 ms in chunks of 8 against 2.1 ms for the whole batch of 64.
CHUNK_BYTES = 512 * 1024


def choose_algo(n: Node, types) -> tuple[str, int, str]:
    """(algo, chunk, why) for one conv2d node."""
    x, w, y = types[n.inputs[0]], types[n.inputs[1]], n.types[0]
    k = w.shape[1] * w.shape[2] * w.shape[3]
    if tuple(n.attr["stride"]) == (1, 1) and k <= DIRECT_MAX_K:
        return "direct", 0, f"K = C/groups*kh*kw = {k} <= {DIRECT_MAX_K}: no im2col matrix to write and read"
    why = (f"stride {list(n.attr['stride'])}: the direct loops need stride 1" if tuple(n.attr["stride"]) != (1, 1)
           else f"K = C/groups*kh*kw = {k} > {DIRECT_MAX_K}: the GEMM's blocking wins")
    per_sample = x.shape[1] * w.shape[2] * w.shape[3] * y.shape[2] * y.shape[3] * x.np_dtype.itemsize
    chunk = max(1, min(x.shape[0], CHUNK_BYTES // per_sample))
    chunk = 0 if chunk >= x.shape[0] else chunk
    return "im2col", chunk, (f"{why}; {chunk or x.shape[0]} samples per GEMM ({per_sample:,} B of im2col matrix "
                             f"a sample, at most {CHUNK_BYTES:,} B a chunk)")


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
        return Node("conv2d", conv.inputs, relu.outputs, relu.types, attrs, conv.loc, relu.grad_of)

    g, changed = fuse_pairs(g, ctx, "conv2d+relu", _match_conv_relu, make)
    for n in g.nodes:  # record why the pool after a conv stays a kernel of its own
        p = g.producers.get(n.inputs[0]) if n.inputs else None
        if n.op == "max_pool2d" and p is not None and p.op == "conv2d":
            ctx.not_fused("conv2d+max_pool2d", [format_node(p, comment=False), format_node(n, comment=False)],
                          f"%{p.out} (conv2d) -> %{n.outputs[0]} (max_pool2d): {POOL_NOT_FUSED}")
    return g, changed
