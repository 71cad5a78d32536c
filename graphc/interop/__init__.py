"""graphc.interop: models and weights in and out of graphc.

    gm = graphc.from_torch(torch_model, x)              # torch.fx capture -> graphc.nn.Module (needs torch)
    graphc.export_onnx(gm, "model.onnx", x)             # eval-mode forward as ONNX (needs onnx)
    graphc.save_safetensors(gm.state_dict(), "w.safetensors"); graphc.load_safetensors("w.safetensors")

Each lives in its own module and imports its heavy dependency only when called, so
`import graphc` (and this package) pulls in neither torch nor onnx.
"""
from __future__ import annotations

_LAZY = {
    "from_torch": ("graphc.interop.torch_fx", "from_torch"),
    "TorchImportError": ("graphc.interop.torch_fx", "TorchImportError"),
    "export_onnx": ("graphc.interop.onnx_export", "export_onnx"),
    "OnnxExportError": ("graphc.interop.onnx_export", "OnnxExportError"),
    "load_safetensors": ("graphc.interop.safetensors", "load_safetensors"),
    "save_safetensors": ("graphc.interop.safetensors", "save_safetensors"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'graphc.interop' has no attribute {name!r}")


__all__ = list(_LAZY)
