"""graphc.distributed: data-parallel training over MPI (mpi4py), as torch.distributed is used with DDP.

    # mpiexec -n 2 python train.py
    import graphc.distributed as dist
    dist.init()                                   # a world of one when not started by mpiexec
    sampler = graphc.data.DistributedSampler(dataset, shuffle=True)
    loader = graphc.data.DataLoader(dataset, batch_size=64, sampler=sampler)
    step = graphc.compile_train_step(model, loss_fn, opt, x, y, distributed=True)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            step(xb, yb)                          # gradients averaged across ranks inside the plan

What a distributed train step does: each rank runs forward and backward on its own batch;
`all_reduce` nodes of the train-step IR (inserted by graphc.passes.distributed) average the
gradients across ranks with MPI_Allreduce before the optimizer update, which every rank runs,
so the weights stay identical without being sent. At its first call the step broadcasts rank
0's parameters and optimizer state. Dropout seeds differ per rank (rank r's seeds are rank 0's
XOR a constant of r), so masks differ across ranks and are reproducible under manual_seed.

Failures: init() installs an excepthook that prints the failing rank's traceback and calls
MPI_Abort, so an exception on one rank ends every rank with a non-zero exit instead of leaving
the others waiting in an all-reduce; mpiexec ends the job when a rank dies. MPI offers no
time-out on a blocking collective: a rank that hangs (rather than failing) hangs the job.

mpi4py is imported by init() only when the process was started by an MPI launcher, never by
`import graphc`. Install it with `pip install 'graphc[mpi]'` (mpi4py and the MPICH wheel,
which brings `mpiexec`).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .ir import GraphcError

# environment variables MPI launchers set in each process they start (MPICH/Hydra, PMIx, Open MPI, MVAPICH)
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_SALT = 0x5851F42D4C957F2D  # rank r's Dropout seeds are rank 0's XOR (r * _SALT mod 2**63)

_state = {"initialized": False, "comm": None, "rank": 0, "size": 1, "words": None}


def init() -> None:
    """Join the MPI job this process was started in (idempotent). Without an MPI launcher (or with
    one process) this is a world of one: rank 0 of 1, collectives are copies, no MPI is loaded."""
    if _state["initialized"]:
        return
    if any(v in os.environ for v in _LAUNCHER_VARS):
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD
        _state.update(comm=comm, rank=comm.Get_rank(), size=comm.Get_size())
        if _state["size"] > 1:
            from .ir.ops import COLLECTIVES
            from . import random as _random

            COLLECTIVES["all_reduce_sum"] = _reference_sum
            _random.set_seed_salt((_state["rank"] * _SALT) & (2**63 - 1))
            _install_excepthook()
    _state["initialized"] = True


def rank() -> int:
    init()
    return _state["rank"]


def world_size() -> int:
    init()
    return _state["size"]


def is_main() -> bool:
    """True on rank 0: the process that prints, logs and saves checkpoints."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        _state["comm"].Barrier()


def all_reduce_mean(x) -> np.ndarray:
    """The elementwise mean of `x` over the ranks (a new array of x's dtype and shape)."""
    a = np.array(x, copy=True)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if world_size() > 1:
        from mpi4py import MPI

        _state["comm"].Allreduce(MPI.IN_PLACE, a)
        a /= a.dtype.type(world_size())
    return a


def broadcast_arrays(arrays, root: int = 0) -> None:
    """Overwrite each array (in place) with rank `root`'s."""
    if world_size() > 1:
        for a in arrays:
            if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable):
                raise GraphcError(f"broadcast: arrays must be writeable C-contiguous numpy arrays, got {type(a).__name__}")
            _state["comm"].Bcast(a, root=root)


def broadcast_parameters(model, root: int = 0) -> None:
    """Make every rank's parameters rank `root`'s (in place), as torch DDP does when it starts."""
    broadcast_arrays([p for _, p in model.named_parameters()], root)


def comm_words() -> np.ndarray:
    """The `comm` input a distributed plan reads: the world communicator's MPI handles."""
    init()
    if _state["words"] is None:
        from .runtime.collectives import comm_words as words

        _state["words"] = words(_state["comm"] if _state["size"] > 1 else None)
    return _state["words"]


def mpiexec() -> str | None:
    """The path of `mpiexec` for this Python: beside the interpreter (a venv with the mpich wheel),
    in the mpich wheel's files, or on PATH; None if there is none."""
    import shutil

    here = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if here:
        return here
    try:
        from importlib.metadata import distribution

        for f in distribution("mpich").files or ():
            if str(f).replace(os.sep, "/").endswith("bin/mpiexec"):
                return os.path.normpath(str(distribution("mpich").locate_file(f)))
    except Exception:  # noqa: BLE001  (no mpich wheel)
        pass
    return shutil.which("mpiexec")


# ------------------------------------------------------------------ internals


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise GraphcError("graphc.distributed: this process was started by an MPI launcher but mpi4py is not "
                          "installed; pip install 'graphc[mpi]' (mpi4py and the mpich wheel)") from None
    except RuntimeError:  # mpi4py looks for libmpi beside sys.prefix; a venv sharing site-packages has none
        lib = _wheel_libmpi()
        if lib is None or os.environ.get("MPI4PY_LIBMPI"):
            raise
        os.environ["MPI4PY_LIBMPI"] = lib
        from mpi4py import MPI
    return MPI


def _wheel_libmpi() -> str | None:
    """The libmpi of the installed `mpich` wheel, if any."""
    try:
        from importlib.metadata import distribution

        dist = distribution("mpich")
    except Exception:  # noqa: BLE001  (not installed)
        return None
    # the versioned file: the wheel's unversioned libmpi.so is a small text stand-in, not a library
    for f in dist.files or ():
        name = os.path.basename(str(f))
        if name.startswith("libmpi.so.") or name.startswith("libmpi.") and name.endswith(".dylib"):
            return os.path.normpath(str(dist.locate_file(f)))
    return None


def _reference_sum(flat: np.ndarray, ranks: int) -> None:
    """COLLECTIVES["all_reduce_sum"]: what the IR's reference all_reduce calls (interpret mode)."""
    from mpi4py import MPI

    if ranks != _state["size"]:
        raise GraphcError(f"all_reduce over {ranks} ranks, but this job has {_state['size']}")
    _state["comm"].Allreduce(MPI.IN_PLACE, flat)


def _install_excepthook() -> None:
    """An uncaught exception on one rank aborts the whole job (the other ranks would wait forever
    in their next collective): print it, naming the rank, then MPI_Abort."""
    import traceback

    r, n = _state["rank"], _state["size"]

    def hook(kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        msg = f"graphc.distributed: rank {r} of {n} failed; aborting the job\n{text}"
        try:
            sys.stdout.flush()
            os.write(2, msg.encode(errors="replace"))  # one write: the launcher forwards it before the abort
        finally:
            time.sleep(0.2)  # let mpiexec's proxy forward this rank's output before the job is torn down
            _state["comm"].Abort(1)

    sys.excepthook = hook


__all__ = ["init", "rank", "world_size", "is_main", "barrier", "all_reduce_mean", "broadcast_arrays",
           "broadcast_parameters", "comm_words", "mpiexec"]
