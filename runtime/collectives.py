"""The native kernel of `all_reduce`: a bucket of gradients summed across ranks by MPI, inside the plan.

The plan stays one native call: the kernel packs the bucket into one scratch buffer, calls
MPI_Allreduce on it in place through a C function pointer, and writes each mean into its
output. MPI reaches the kernel as the plan's `comm` input, an int64 array (COMM_WORDS) that
`comm_words(mpi4py_comm)` fills from mpi4py: the address of MPI_Allreduce in the libmpi that
mpi4py loaded, and the communicator, datatype, op and MPI_IN_PLACE handles. numba calls the
pointer through a small LLVM intrinsic (`_allreduce`), so nothing process-specific is baked into
the compiled code and the disk cache stays valid across processes. With world size 1 (comm[SIZE]
== 1) the kernel never calls MPI. mpi4py is imported only by comm_words, never by `import graphc`.

Why not mpi4py between two native calls: splitting the plan at each bucket would cost a Python
round trip per bucket and a second code path; calling MPI from native code keeps one.
"""
from __future__ import annotations

import ctypes
import os

import numba
import numpy as np
from numba import literal_unroll, njit

from .kernels import JIT, Code, kernel

# the comm input's layout (int64 words)
SIZE, ALLREDUCE, HANDLE_BYTES, COMM, FLOAT32, FLOAT64, SUM, IN_PLACE = range(8)
COMM_WORDS = 8
CHUNK = 1 << 30  # elements per MPI call: MPI counts are C ints


if numba.config.DISABLE_JIT:
    def _allreduce(fn, in_place, buf, count, dtype, op, comm):
        """MPI_Allreduce(in_place, buf, count, dtype, op, comm) through ctypes (plain-Python plans)."""
        h = ctypes.c_int32 if isinstance(dtype, np.int32) else ctypes.c_int64
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, h, h, h)
        return proto(int(fn))(int(in_place), int(buf), int(count), int(dtype), int(op), int(comm))
else:
    from llvmlite import ir as llvm
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def _allreduce(typingctx, fn, in_place, buf, count, dtype, op, comm):
        """Call MPI_Allreduce at address `fn`: (void* send, void* recv, int count, H dtype, H op, H comm),
        H the handle type (int for MPICH's ABI, a pointer-sized integer for others: the argument types say)."""
        sig = types.int32(fn, in_place, buf, count, dtype, op, comm)

        def codegen(context, builder, signature, args):
            f, send, recv, n, d, o, c = args
            ptr, i32 = cgutils.voidptr_t, llvm.IntType(32)
            handles = [context.get_value_type(t) for t in signature.args[4:]]
            fnty = llvm.FunctionType(i32, [ptr, ptr, i32, *handles])
            call = builder.inttoptr(f, fnty.as_pointer())
            return builder.call(call, [builder.inttoptr(send, ptr), builder.inttoptr(recv, ptr),
                                       builder.trunc(n, i32), d, o, c])

        return sig, codegen


@njit(**JIT)
def _sum_across_ranks(comm, packed, n, dtype_word):
    """packed[:n] <- its sum over the ranks of comm (in place, in chunks of at most CHUNK)."""
    dtype = comm[dtype_word]
    base = np.int64(packed.ctypes.data)
    item = np.int64(packed.itemsize)
    start = np.int64(0)
    while start < n:
        count = np.int64(min(n - start, CHUNK))
        if comm[HANDLE_BYTES] == 4:
            err = _allreduce(comm[ALLREDUCE], comm[IN_PLACE], base + start * item, count, np.int32(dtype),
                             np.int32(comm[SUM]), np.int32(comm[COMM]))
        else:
            err = _allreduce(comm[ALLREDUCE], comm[IN_PLACE], base + start * item, count, dtype, comm[SUM], comm[COMM])
        if err != 0:
            raise RuntimeError("graphc all_reduce: MPI_Allreduce returned an error")
        start += count


@njit(**JIT)
def all_reduce_bucket(comm, packed, xs, outs, ranks, mean, dtype_word):
    """outs[k] = sum (or mean) over the ranks of xs[k]: pack, one MPI_Allreduce, unpack."""
    if comm[SIZE] != ranks:
        raise ValueError("graphc all_reduce: the plan was compiled for another number of ranks than the communicator has")
    n = 0
    for x in literal_unroll(xs):
        for i in range(x.size):
            packed[n + i] = x[i]
        n += x.size
    if ranks > 1:
        _sum_across_ranks(comm, packed, n, dtype_word)
    scale = packed.dtype.type(ranks if mean else 1)
    n = 0
    for o in literal_unroll(outs):
        for i in range(o.size):
            o[i] = packed[n + i] / scale
        n += o.size


def _scratch(node, types):
    """The packed bucket: every input's elements, one after another."""
    xs = [types[v] for v in node.inputs[1:]]
    return [xs[0].with_shape((sum(t.size for t in xs),))]


def _tuple(items):
    """A tuple argument: source text in code generation, a tuple of arrays in a direct call."""
    items = list(items)
    if items and isinstance(items[0], str):
        return Code("(" + ", ".join(items) + ",)")
    return tuple(items)


@kernel("all_reduce", scratch=_scratch)
def _(s):
    return all_reduce_bucket, [s.i[0].f, s.t[0].f, _tuple(x.f for x in s.i[1:]), _tuple(o.f for o in s.o),
                               int(s.attrs["ranks"]), s.attrs["op"] == "mean",
                               FLOAT32 if s.o[0].type.dtype == "f32" else FLOAT64]


# ------------------------------------------------------------------ the comm input, from mpi4py


def comm_words(comm=None) -> np.ndarray:
    """The `comm` input of a plan for an mpi4py communicator (None: a world of one, no MPI)."""
    words = np.zeros(COMM_WORDS, np.int64)
    if comm is None or comm.Get_size() == 1:
        words[SIZE] = 1
        return words
    from mpi4py import MPI

    words[SIZE] = comm.Get_size()
    words[ALLREDUCE] = ctypes.cast(_libmpi().MPI_Allreduce, ctypes.c_void_p).value
    words[HANDLE_BYTES] = MPI._sizeof(MPI.Comm)
    words[COMM] = MPI._handleof(comm)
    words[FLOAT32] = MPI._handleof(MPI.FLOAT)
    words[FLOAT64] = MPI._handleof(MPI.DOUBLE)
    words[SUM] = MPI._handleof(MPI.SUM)
    words[IN_PLACE] = int(MPI.IN_PLACE)
    return words


def _libmpi() -> ctypes.CDLL:
    """The MPI library mpi4py loaded (the same instance, so the same communicators)."""
    candidates = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libmpi") and path not in candidates:
                    candidates.append(path)
    except OSError:
        pass
    for path in candidates + [None]:
        try:
            lib = ctypes.CDLL(path)
            lib.MPI_Allreduce  # noqa: B018  (raises AttributeError when absent)
            return lib
        except (OSError, AttributeError):
            continue
    from graphc.ir import GraphcError

    raise GraphcError("graphc all_reduce: cannot find MPI_Allreduce in the MPI library mpi4py loaded "
                      f"(looked in {candidates or 'the process'})")
