"""Data parallelism in the train-step graph: gradients -> all_reduce buckets -> updates.

Runs after build_train_step. Every rank runs the same plan on its own shard of the batch; this
pass averages each gradient across the ranks before the optimizer update reads it, so the
updates (run on every rank) keep the weights identical without sending them. The gradients
are grouped into buckets in the order the backward produces them (last layer first, as torch
DDP's buckets are), closing a bucket at `bucket_bytes` (DDP's bucket_cap_mb); each bucket is
one `all_reduce` node, one MPI message, placed right after its last gradient is computed. The
node reads the plan's communicator, a `comm` input named COMM_INPUT, which the runtime binds.

    %31: f32[512,784], %32: f32[512] = all_reduce(%comm.world, %27, %28) {ranks=2}  # backward, grads: 0.weight, 0.bias
    %33: f32[512,784] = sgd_update(%0.weight, %31, ...)

The all_reduce is blocking: the plan runs on one thread, and MPI progresses a message only
inside an MPI call, so a bucket sent early would not overlap the rest of the backward anyway;
placing it at its gradients keeps that choice a scheduling decision of this pass.
"""
from __future__ import annotations

from dataclasses import dataclass

from graphc.ir import Graph, GraphBuilder, GraphcError, TensorType
from graphc.ir.ops import COMM_WORDS

from .train_step import is_update

COMM_INPUT = "comm.world"
DEFAULT_BUCKET_BYTES = 25 * 2**20  # torch DDP's bucket_cap_mb=25


@dataclass(frozen=True)
class DistributedSpec:
    """How the train step is distributed: the number of ranks and the bucket size cap in bytes."""

    ranks: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES

    def __post_init__(self):
        if self.ranks < 1 or self.bucket_bytes < 1:
            raise GraphcError(f"distributed: ranks and bucket_bytes must be >= 1, got ranks={self.ranks}, "
                              f"bucket_bytes={self.bucket_bytes}")


@dataclass(frozen=True)
class Bucket:
    grads: tuple[str, ...]  # gradient values, in the order the backward produces them
    params: tuple[str, ...]  # the params they belong to
    nbytes: int
    after: int  # index of the node that produces the bucket's last gradient (-1: all are inputs)


def gradient_buckets(g: Graph, bucket_bytes: int) -> list[Bucket]:
    """The buckets of the train step's gradients: what each optimizer update reads as its gradient
    (operand 1), in production order, split where the dtype changes or the cap is reached."""
    where = {o: k for k, n in enumerate(g.nodes) for o in n.outputs}
    grads: dict[str, str] = {}  # gradient value -> param, one entry per gradient
    for n in g.nodes:
        if is_update(n):
            grads.setdefault(n.inputs[1], n.inputs[0])
    order = sorted(grads, key=lambda v: (where.get(v, -1), g.producers[v].outputs.index(v) if v in where else 0))
    buckets: list[list[str]] = []
    size = 0
    for v in order:
        t = g.types[v]
        if not buckets or size >= bucket_bytes or g.types[buckets[-1][0]].dtype != t.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(v)
        size += t.nbytes
    return [Bucket(tuple(b), tuple(grads[v] for v in b), sum(g.types[v].nbytes for v in b), max(where.get(v, -1) for v in b))
            for b in buckets]


def all_reduce_gradients(g: Graph, spec: DistributedSpec, ctx=None) -> Graph:
    """`g` with each optimizer update reading the mean of its gradient over `spec.ranks` ranks."""
    if COMM_INPUT in g.input_by_name:
        raise GraphcError(f"all_reduce_gradients: graph {g.name} already has a %{COMM_INPUT} input (ran twice?)")
    buckets = gradient_buckets(g, spec.bucket_bytes)
    if not buckets:
        raise GraphcError(f"all_reduce_gradients: graph {g.name} has no optimizer updates (is it a train step?)")
    b = GraphBuilder(g.name, like=g)
    for i in g.inputs:
        b.add_input(i.name, i.type, i.kind)
    b.add_input(COMM_INPUT, TensorType((COMM_WORDS,), "i64"), "comm")
    reduced: dict[str, str] = {}

    def emit(k: int, bucket: Bucket):
        outs = b.emit("all_reduce", [COMM_INPUT, *bucket.grads], {"ranks": spec.ranks, "bucket": k},
                      loc="grads: " + ", ".join(bucket.params), phase="backward")
        outs = outs if isinstance(outs, tuple) else (outs,)
        reduced.update(zip(bucket.grads, outs))
        if ctx is not None:
            ctx.note(f"bucket {k}: {len(bucket.grads)} gradient(s), {bucket.nbytes:,} B, after node {bucket.after}: "
                     + ", ".join(bucket.params))

    pending = sorted(enumerate(buckets), key=lambda kb: kb[1].after)
    for k, bucket in [kb for kb in pending if kb[1].after < 0]:
        emit(k, bucket)
    for idx, n in enumerate(g.nodes):
        if is_update(n) and n.inputs[1] in reduced:
            n = n.replace(inputs=(n.inputs[0], reduced[n.inputs[1]], *n.inputs[2:]))
        b.add_node(n)
        for k, bucket in [kb for kb in pending if kb[1].after == idx]:
            emit(k, bucket)
    meta = dict(g.meta, distributed={"ranks": spec.ranks, "bucket_bytes": spec.bucket_bytes,
                                     "buckets": [list(bk.params) for bk in buckets]})
    return b.build(list(g.outputs), meta).renumbered().verify()


__all__ = ["COMM_INPUT", "DEFAULT_BUCKET_BYTES", "DistributedSpec", "Bucket", "gradient_buckets",
           "all_reduce_gradients"]
