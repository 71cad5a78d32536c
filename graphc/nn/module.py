"""Module: PyTorch's container of parameters and sub-modules, with the same names and API."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from ..ir import GraphcError, ShapeError
from .. import eager as _eager
from ..tracing import current_tracer
from .parameter import Parameter


_version = [0]  # bumped whenever a Parameter or sub-module is (re)assigned anywhere
_attr_version = [0]  # bumped by every Module attribute assignment, and with _version (graphc.replay's guard)


def _structure_changed() -> None:
    _version[0] += 1
    _attr_version[0] += 1  # (so graphc.replay's fastest check, the attribute counter alone, sees it too)


def structure_version() -> int:
    """A counter compiled objects compare to notice replaced Parameters or sub-modules cheaply."""
    return _version[0]


def _as_buffer(module, name: str, value) -> np.ndarray:
    """A buffer is a writeable C-contiguous float or int64 ndarray of its own (compiled plans update it in place)."""
    a = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    a = np.array(a, copy=True) if not isinstance(a, np.ndarray) or not a.flags.c_contiguous else a
    if a.dtype not in (np.float32, np.float64, np.int64):
        raise GraphcError(f"{type(module).__name__}.register_buffer({name!r}): buffers must be float32, float64 or "
                          f"int64 arrays, got {a.dtype}")
    return a.view(np.ndarray)


class Module:
    """Base class of layers and models: register Parameters and Modules by attribute assignment."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    # ---- registration ----
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called (call super().__init__() first)")
        params, modules = self.__dict__["_parameters"], self.__dict__["_modules"]
        buffers = self.__dict__.get("_buffers", {})
        _attr_version[0] += 1
        if name in buffers and not isinstance(value, (Parameter, Module)):
            buffers[name] = _as_buffer(self, name, value)  # torch: assigning to a buffer's name replaces it
            return
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
        if name in d.get("_buffers", ()):
            b = d["_buffers"][name]
            tracer = current_tracer()
            if tracer is not None:
                return tracer.buffers.get(id(b), b) if b is not None else None
            return b
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        _attr_version[0] += 1
        for store in ("_parameters", "_modules", "_buffers"):
            if name in self.__dict__[store]:
                del self.__dict__[store][name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is None:
            self.__dict__["_parameters"][name] = None
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Register non-parameter state (BatchNorm's running statistics), as torch does: read by
        forward as `self.<name>`, kept by state_dict() unless persistent=False, updated in place
        by compiled forwards and train steps (their "update:<name>" outputs)."""
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign a buffer before Module.__init__() is called")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if name in self._parameters or name in self._modules or (hasattr(self, name) and name not in self._buffers):
            raise KeyError(f"attribute {name!r} already exists")
        self.__dict__.pop(name, None)
        self._buffers[name] = None if tensor is None else _as_buffer(self, name, tensor)
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # ---- calling ----
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # module(*args): inside a trace, forward; eagerly, a call already recorded is replayed
    # (graphc.replay.module_call is __call__ itself: a loop makes several calls a step)
    __call__ = _eager.module_call

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

    def _named_members(self, store: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """(dotted name, array) of every module's `store` ("_parameters" or "_buffers"), each array
        once (a tied weight under its first name), None entries skipped, as torch's order."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for name, a in getattr(m, store).items():
                if a is not None and id(a) not in seen:
                    seen.add(id(a))
                    yield (f"{mname}.{name}" if mname else name), a

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return self._named_members("_parameters", prefix)

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        return self._named_members("_buffers", prefix)

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def _state_arrays(self) -> "OrderedDict[str, np.ndarray]":
        """What state_dict() holds, by torch's keys and in torch's order: per module, its
        parameters, then its persistent buffers."""
        out, seen = OrderedDict(), set()
        for mname, m in self.named_modules():
            items = list(m._parameters.items()) + [(k, b) for k, b in m._buffers.items() if k not in m._non_persistent]
            for name, a in items:
                if a is not None and id(a) not in seen:
                    seen.add(id(a))
                    out[f"{mname}.{name}" if mname else name] = a
        return out

    # ---- state ----
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameter and persistent buffer name -> a copy of its values (PyTorch's names, e.g.
        `linear1.weight`, `bn.running_mean`, `bn.num_batches_tracked`)."""
        return OrderedDict((n, np.array(p, copy=True).view(np.ndarray)) for n, p in self._state_arrays().items())

    def load_state_dict(self, state, strict: bool = True):
        """Copy values in place from anything np.asarray takes (numpy arrays, torch tensors).

        All or nothing: every key, shape and dtype is checked before any value is written, and
        one error lists every problem."""
        own = self._state_arrays()
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise GraphcError(f"load_state_dict of {type(self).__name__}: expected a dict of arrays (a state_dict()), "
                              f"got {type(state).__name__}")
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and (missing or unexpected):
            problems.append(f"missing keys {missing}, unexpected keys {unexpected}")
        values = {}
        for k, p in own.items():
            if k not in state:
                continue
            v = state[k]
            v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            if v.dtype.kind not in "fiu":
                problems.append(f"{k!r} has dtype {v.dtype}, expected numbers for {p.dtype}")
            elif v.shape != p.shape:
                problems.append(f"{k!r} expected shape {list(p.shape)}, got {list(v.shape)}")
            else:
                values[k] = v
        if problems:
            raise ShapeError(f"load_state_dict of {type(self).__name__}: " + "; ".join(problems) + "; nothing was loaded")
        for k, v in values.items():
            own[k][...] = v
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
            for name, b in list(m._buffers.items()):  # float buffers follow (num_batches_tracked stays int64)
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    m._buffers[name] = b.astype(dt)
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


_eager.replay_setup(Parameter, _version, _attr_version)  # graphc.replay's guard reads the counters above
