"""graphc: a static-graph compiler and numba-JIT executor for PyTorch-style neural networks.

    import graphc, graphc.nn as nn
    g = graphc.trace(model, x)            # typed graph IR
    print(g)                              # readable IR text
"""
import os as _os

# In a source checkout, graphc.passes and graphc.runtime are the top-level passes/ and runtime/
# folders (pyproject maps them into the package when installed); make that hold here too.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "passes")) and _os.path.isdir(_os.path.join(_os.path.dirname(_here), "passes")):
    __path__.append(_os.path.dirname(_here))  # noqa: F821

from . import ir, nn  # noqa: E402
from .ir import GraphcError, ShapeError, VerifyError, ParseError  # noqa: E402
from .random import manual_seed  # noqa: E402
from .tracing import TraceError, trace  # noqa: E402

if _os.environ.get("GRAPHC_LOG"):  # GRAPHC_LOG=debug: each pass and each compile, in scripts too
    from .log import configure_from_env as _configure_log

    _configure_log()

# The rest of the face loads on first use, so `import graphc` stays light (no numba import).
_LAZY = {
    "compile": ("graphc.compiler", "compile"),
    "compile_train_step": ("graphc.compiler", "compile_train_step"),
    "CompiledModule": ("graphc.compiler", "CompiledModule"),
    "TrainStep": ("graphc.compiler", "TrainStep"),
    "dump": ("graphc.inspect", "dump"),
    "report": ("graphc.inspect.html", "report"),
    "optim": ("graphc.optim", None),
    "data": ("graphc.data", None),
    "distributed": ("graphc.distributed", None),
    "passes": ("graphc.passes", None),
    "runtime": ("graphc.runtime", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")


__all__ = ["ir", "nn", "trace", "TraceError", "GraphcError", "ShapeError", "VerifyError", "ParseError",
           "manual_seed", *_LAZY]
