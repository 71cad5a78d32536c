"""Module: PyTorch's container of parameters and sub-modules, with the same names and API."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..ir import GraphcError, ShapeError
from ..tracing import current_tracer, eager_forward
from .parameter import Parameter


_version = [0]  # bumped whenever a Parameter or sub-module is (re)assigned anywhere


def _structure_changed() -> None:
    _version[0] += 1


def structure_version() -> int:
    """A counter compiled objects compare to notice replaced Parameters or sub-modules cheaply."""
    return _version[0]


class Module:
    """Base class of layers and models: register Parameters and Modules by attribute assignment."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ----
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called (call super().__init__() first)")
        params, modules = self.__dict__["_parameters"], self.__dict__["_modules"]
        if name in params and value is not None and not isinstance(value, Parameter):
            raise TypeError(f"cannot assign '{type(value).__module__}.{type(value).__name__}' as parameter "
                            f"'{name}' (graphc.nn.Parameter or None expected)")
        if isinstance(value, (Parameter, Module)) or name in params or name in modules:
            _structure_changed()
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        if name in d.get("_parameters", ()):
            p = d["_parameters"][name]
            tracer = current_tracer()
            # Inside a traced forward a parameter reads as its graph input; eagerly it is itself
            # (a Parameter has the tensor methods; operations on it are recorded for autograd).
            if tracer is not None and p is not None:
                return tracer.params.get(id(p), p)
            return p
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in ("_parameters", "_modules"):
            if name in self.__dict__[store]:
                del self.__dict__[store][name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is None:
            self.__dict__["_parameters"][name] = None
        else:
            setattr(self, name, param)

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # ---- calling ----
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        if current_tracer() is not None:
            return self.forward(*args, **kwargs)
        return eager_forward(self.forward, args, kwargs)

    # ---- traversal ----
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def apply(self, fn) -> "Module":
        """fn(m) for every submodule (children first) and then self, as torch's Module.apply."""
        for m in self._modules.values():
            m.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    # ---- state ----
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameter name -> a copy of its values (PyTorch's names, e.g. `linear1.weight`)."""
        return OrderedDict((n, np.array(p, copy=True).view(np.ndarray)) for n, p in self.named_parameters())

    def load_state_dict(self, state, strict: bool = True):
        """Copy values in place from anything np.asarray takes (numpy arrays, torch tensors)."""
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise GraphcError(f"load_state_dict of {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}")
        for k, p in own.items():
            if k not in state:
                continue
            v = state[k]
            v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            if v.shape != p.shape:
                raise ShapeError(f"load_state_dict: {k} expected shape {list(p.shape)}, got {list(v.shape)}")
            p[...] = v
        return self

    # ---- modes and dtypes ----
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        _structure_changed()  # compiled objects re-read the modes
        return self

    def eval(self):
        return self.train(False)

    def to(self, dtype):
        """Convert every parameter to `dtype` (float32 or float64). Parameters become new arrays."""
        dt = np.dtype(dtype)
        converted: dict[int, Parameter] = {}  # a parameter shared by two modules (tied weights) stays shared
        for m in self.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.dtype != dt:
                    if id(p) not in converted:
                        converted[id(p)] = Parameter(np.asarray(p), dtype=dt, requires_grad=p.requires_grad)
                    m._parameters[name] = converted[id(p)]
                    _structure_changed()
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- printing (like PyTorch's) ----
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"
