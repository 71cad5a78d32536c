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
from .eager import (Tensor, arange, as_tensor, bool_, cat, double, empty, empty_like, enable_grad, float32,  # noqa: E402
                     float64, from_numpy, full, full_like, inference_mode, int32, int64, is_grad_enabled, is_tensor,
                     long, no_grad, numel, ones, ones_like, rand, rand_like, randint, randn, randn_like,
                     set_grad_enabled, stack, tensor, zeros, zeros_like)
from .eager import float as float  # noqa: E402,F401  (torch.float)
from .tensor_methods import arange, full, ones, tril, triu, where, zeros  # noqa: E402  (constants when traced)

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
    "save": ("graphc.checkpoint", "save"),
    "load": ("graphc.checkpoint", "load"),
    "utils": ("graphc.utils", None),
    "passes": ("graphc.passes", None),
    "runtime": ("graphc.runtime", None),
    "autograd": ("graphc.autograd", None),
    "func": ("graphc.func", None),
    "interop": ("graphc.interop", None),
    "from_torch": ("graphc.interop.torch_fx", "from_torch"),
    "export_onnx": ("graphc.interop.onnx_export", "export_onnx"),
    "load_safetensors": ("graphc.interop.safetensors", "load_safetensors"),
    "save_safetensors": ("graphc.interop.safetensors", "save_safetensors"),
    "warmup": ("graphc.kernel_warmup", "warmup"),
    "profile": ("graphc.profiler", "profile"),
    "set_num_threads": ("graphc.passes.parallel", "set_num_threads"),  # threads kernels are split over
    "get_num_threads": ("graphc.passes.parallel", "num_threads"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")


__all__ = ["ir", "nn", "trace", "TraceError", "GraphcError", "ShapeError", "VerifyError", "ParseError",
           "manual_seed", "Tensor", "tensor", "as_tensor", "from_numpy", "zeros", "ones", "full", "arange", "rand",
           "randn", "randint", "empty", "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
           "cat", "stack", "no_grad", "enable_grad", "inference_mode", "set_grad_enabled", "is_grad_enabled",
           "is_tensor", "numel", "float32", "float64", "int64", "int32", "long", "double", "bool_", "tril", "triu", "where", *_LAZY]
