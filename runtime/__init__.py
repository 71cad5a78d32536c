"""graphc.runtime: executes plan graphs natively (imports graphc.ir only; never passes or the front end).

    from graphc.runtime import Executable
    exe = Executable(plan_graph, bound={"linear1.weight": w, ...}, mode="jit")
    exe(x, seed); exe.outputs; print(exe.memory_plan); exe.compile_info; print(exe.source.text)

kernels.py: one numba kernel per op (KERNELS registry); memory.py: buffer sharing by liveness;
codegen.py: a plan -> one numba function; cache.py: the on-disk cache (GRAPHC_CACHE_DIR);
executor.py: Executable, which ties them together.

A call is one crossing into native code: the call's arrays plus one int64 table of addresses
(bound arrays and arenas). An Executable owns one set of buffers: it is not re-entrant, and
two threads must not call the same one at once.
"""
# OpenBLAS's kernel choice (OPENBLAS_CORETYPE) is left to the environment: some machines pin it
# because older OpenBLAS builds compute wrong results on newer CPUs, and correctness comes first.
from .cache import CompileInfo, cache_root
from .executor import MODES, Executable, InputError
from .memory import Buffer, MemoryPlan, Slot, plan_memory

__all__ = ["CompileInfo", "cache_root", "MODES", "Executable", "InputError", "Buffer", "MemoryPlan", "Slot",
           "plan_memory"]


def __getattr__(name):
    # the kernel registry imports numba's kernels module; only load it when asked for
    if name == "KERNELS":
        from .kernels import KERNELS

        return KERNELS
    raise AttributeError(f"module 'graphc.runtime' has no attribute {name!r}")
