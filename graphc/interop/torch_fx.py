"""`graphc.from_torch(module, *example_inputs)`: a torch.nn.Module as a graphc.nn.Module.

    gm = graphc.from_torch(torch_model, x)     # torch.fx capture, mapped onto graphc's ops
    step = graphc.compile_train_step(gm, graphc.nn.MSELoss(), graphc.optim.SGD(gm.parameters(), lr=0.1), x, y)
    torch_model.load_state_dict(gm.state_dict())   # the trained weights go back, same keys

torch.fx's symbolic trace captures `forward` as a list of nodes (torch.export's ATen graph when
fx cannot: Python control flow on shapes, for example). Each node is turned into a `Step` that
names the graphc call from the table in `torch_ops.py`, before anything runs, so an op graphc
lacks is reported together with every other one, and no half-mapped model is ever returned.
The result's `forward` replays the steps on graphc's ops, so it traces, compiles, trains and
runs eagerly like any graphc model; every IR node carries the torch model's own source line.
Parameters (and buffers, where graphc has them) are copies under torch's `state_dict` names.
"""
from __future__ import annotations

import inspect
import linecache
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import nn
from .. import random as _random
from ..ir import GraphcError
from ..nn.parameter import Parameter
from ..tracing import TraceError, _wrap_eager, source_line, trace
from . import torch_ops

__all__ = ["from_torch", "TorchImportError"]


class TorchImportError(GraphcError):
    """A torch model that from_torch cannot map: names the ops, their fx nodes and source lines."""


# ------------------------------------------------------------------ the captured program


@dataclass(frozen=True)
class Ref:
    """An argument that is the value of an earlier step (fx node name)."""
    name: str


class _Training:
    """An argument that is the module's training flag (fx baked in `self.training`)."""

    def __repr__(self):
        return "self.training"


TRAINING = _Training()


@dataclass
class Step:
    kind: str  # placeholder | get_attr | call_module | call_function | call_method | output
    name: str  # the fx node's name
    what: str  # torch's name of the op, as errors and docs say it
    fn: Any = None  # the graphc call (call_*), None otherwise
    target: Any = None  # placeholder: (index, default); get_attr/call_module: the attribute path
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    path: str | None = None  # the torch model's source file and line this node came from
    line: int | None = None

    def where(self) -> str:
        if not self.path:
            return "(no source line recorded)"
        code = linecache.getline(self.path, self.line).strip()
        return f"{self.path}:{self.line}" + (f"\n    {code}" if code else "")


# ------------------------------------------------------------------ the graphc module


class TorchContainer(nn.Module):
    """A torch sub-module that fx traced through: it only holds parameters and children under
    torch's names; the top module's forward replays its code."""

    def forward(self, *args, **kwargs):
        raise GraphcError(f"{type(self).__name__} came from torch via from_torch: call the top-level model, "
                          "whose forward replays the whole captured graph")

    def __getitem__(self, key):
        """gm.h[0] for a torch ModuleList/Sequential, gm.blocks["attn"] for a ModuleDict."""
        return self._modules[key] if isinstance(key, str) else list(self._modules.values())[key]

    def __len__(self):
        return len(self._modules)


class FromTorch(nn.Module):
    """Base of from_torch's results (each gets a subclass named after the torch class)."""

    def forward(self, *args, **kwargs):
        return self._replay(args, kwargs)

    def _replay(self, args, kwargs):
        steps = self.__dict__["_steps"]
        names = [s.target[2] for s in steps if s.kind == "placeholder"]
        given = dict(zip(names, args))
        if len(args) > len(names):
            raise GraphcError(f"{type(self).__name__}.forward takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        given.update(kwargs)
        env: dict[str, Any] = {}

        def value(a):
            if isinstance(a, Ref):
                return env[a.name]
            if a is TRAINING:
                return self.training
            if isinstance(a, tuple):
                return tuple(value(x) for x in a)
            if isinstance(a, list):
                return [value(x) for x in a]
            if isinstance(a, dict):
                return {k: value(x) for k, x in a.items()}
            if isinstance(a, slice):
                return slice(value(a.start), value(a.stop), value(a.step))
            return a

        for s in steps:
            if s.kind == "placeholder":
                k, default, arg = s.target
                if arg not in given and default is _NO_DEFAULT:
                    raise GraphcError(f"{type(self).__name__}.forward is missing its input {arg!r}")
                env[s.name] = given.get(arg, default)
                continue
            if s.kind == "output":
                return value(s.args[0])
            with source_line(s.path, s.line):
                env[s.name] = self._run(s, value(s.args), value(s.kwargs))
        raise GraphcError("the captured torch graph has no output")

    def _run(self, s: Step, args, kwargs):
        try:
            if s.kind == "get_attr":
                v = _walk(self, s.target)
                if type(v) is np.ndarray:  # a buffer read eagerly: give it the tensor methods, as Module.__call__ does
                    v = _wrap_eager(v)
                return s.fn(v) if s.fn else v
            if s.kind == "call_module":
                return _walk(self, s.target)(*args, **kwargs)
            return s.fn(*args, **kwargs)
        except TraceError:
            raise  # already names the op, the shapes and the torch source line
        except GraphcError as e:
            raise type(e)(f"{e}\n  in torch op {s.what} (fx node {s.name!r}) at {s.where()}") from None
        except Exception as e:
            raise TorchImportError(f"torch op {s.what} (fx node {s.name!r}) failed on graphc values: "
                                   f"{type(e).__name__}: {e}\n  at {s.where()}") from None

    def _state_arrays(self):
        """torch's keys, tied weights under each of their names (torch's state_dict keeps both
        `wte.weight` and `lm_head.weight`; graphc's own modules list a shared array once)."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            items = list(m._parameters.items()) + [(k, b) for k, b in m._buffers.items() if k not in m._non_persistent]
            for name, a in items:
                if a is not None:
                    out[f"{mname}.{name}" if mname else name] = a
        return out

    def state_dict(self):
        """torch's keys and torch tensors, so `torch_model.load_state_dict(gm.state_dict())` works;
        graphc's own `load_state_dict` takes them back too."""
        import torch

        return OrderedDict((k, torch.from_numpy(v)) for k, v in super().state_dict().items())

    def numpy_state_dict(self):
        """The same keys with numpy arrays (what every other graphc module's state_dict gives)."""
        return super().state_dict()

    def captured(self) -> str:
        """The captured torch program, one step per line with the graphc call it maps to."""
        lines = []
        for s in self.__dict__["_steps"]:
            call = getattr(s.fn, "__qualname__", repr(s.fn)) if s.fn is not None else s.kind
            where = f"  # {os.path.basename(s.path)}:{s.line}" if s.path else ""
            lines.append(f"{s.name:<20} {s.what:<36} -> {call}{where}")
        return "\n".join(lines)


_NO_DEFAULT = object()


def _walk(module, path: str):
    for part in path.split(".") if path else ():
        module = getattr(module, part)
    return module


# ------------------------------------------------------------------ capture


def _torch_name(target) -> str:
    """torch's public name of a call_function target (`torch.fft.fft`, not torch._C._fft.fft_fft)."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    public = _table_names().get(id(target)) or _public_names().get(id(target))
    if public:
        return public
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module == "builtins":
        return name
    return f"{module}.{name}" if module else name


_PUBLIC: dict[int, str] = {}
_TABLE: dict[int, str] = {}


def _table_names() -> dict[int, str]:
    """id(torch function) -> its key in torch_ops.FUNCTIONS (whatever alias torch also has)."""
    if not _TABLE:
        import builtins
        import math
        import operator

        import torch

        roots = {"torch": torch, "operator": operator, "math": math}
        for key in torch_ops.FUNCTIONS:
            head, *rest = key.split(".")
            obj = roots.get(head, builtins) if rest else getattr(builtins, head, None)
            for part in rest:
                obj = getattr(obj, part, None)
            if obj is not None:
                _TABLE.setdefault(id(obj), key)
    return _TABLE


def _public_names() -> dict[int, str]:
    """id(function) -> its public torch name, first namespace wins (built once)."""
    if not _PUBLIC:
        import torch

        for prefix, mod in (("torch", torch), ("torch.nn.functional", torch.nn.functional), ("torch.fft", torch.fft),
                            ("torch.linalg", torch.linalg), ("torch.special", torch.special)):
            for k, v in sorted(vars(mod).items()):
                if callable(v) and not isinstance(v, type) and not k.startswith("_"):
                    _PUBLIC.setdefault(id(v), f"{prefix}.{k}")
    return _PUBLIC


def _module_name(m) -> str:
    for cls in type(m).__mro__:
        name = f"torch.nn.{cls.__name__}"
        if name in torch_ops.MODULES and cls.__module__.startswith("torch.nn"):
            return name
    return f"{type(m).__module__}.{type(m).__qualname__}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _source_of(node) -> tuple[str | None, int | None]:
    """The innermost frame of the node's recorded stack outside torch and graphc: the user's line."""
    import torch

    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)
    frames = [(p, int(n)) for p, n in _FRAME.findall(node.meta.get("stack_trace") or "")]
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(skip)]
    if user:
        return user[-1]
    return frames[-1] if frames else (None, None)


def _arg(a, constants):
    """An fx argument as replay data: Nodes become Refs; torch scalars and tensors become numbers."""
    import torch

    if isinstance(a, torch.fx.Node):
        return Ref(a.name)
    if isinstance(a, (tuple, list)):
        return type(a)(_arg(x, constants) for x in a)
    if isinstance(a, dict):
        return {k: _arg(x, constants) for k, x in a.items()}
    if isinstance(a, slice):
        return slice(_arg(a.start, constants), _arg(a.stop, constants), _arg(a.step, constants))
    if isinstance(a, torch.Tensor):
        if a.numel() == 1:
            return a.item()
        constants.append(a)
        return a
    if isinstance(a, torch.dtype):  # torch.long -> np.int64: what graphc's functions take (others fail there, named)
        return getattr(np, str(a).rpartition(".")[2], str(a))
    if isinstance(a, (torch.device, torch.memory_format, torch.layout)):
        return str(a)
    return a


def _fx_graph(module, n_given: int = 0):
    """fx's graph; forward's arguments past the example inputs that have defaults are traced
    with those defaults (fx's concrete_args), so `if targets is not None:` takes the branch the
    call without targets takes (nanoGPT's forward(idx, targets=None))."""
    import torch

    concrete = {}
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        concrete = {p.name: p.default for p in params[n_given:] if p.default is not p.empty}
    except (TypeError, ValueError):
        pass

    class _Tracer(torch.fx.Tracer):
        record_stack_traces = True
        proxy_buffer_attributes = True  # self.mask[:, :, :T, :T] with a traced T: buffers are graph values

    tracer = _Tracer()
    with _creation_calls_traced(tracer):
        graph = tracer.trace(module, concrete_args=concrete or None)
    return graph, {}


_CREATION = ("ones", "zeros", "full", "arange")


class _creation_calls_traced:
    """torch.ones(T, T) with a traced size T: torch's factories never see a Proxy among their
    arguments' __torch_function__ (ints have none), so fx cannot record them and the call fails.
    While fx traces, each factory called with a Proxy anywhere in its arguments becomes a
    call_function node of the real torch function (graphc maps it to a constant op)."""

    def __init__(self, tracer):
        self.tracer, self.saved = tracer, {}

    def __enter__(self):
        import torch

        def traced(fn):
            def call(*args, **kwargs):
                flat = list(args) + list(kwargs.values())
                flat += [v for a in flat if isinstance(a, (tuple, list)) for v in a]
                if any(isinstance(a, torch.fx.Proxy) for a in flat):
                    return self.tracer.create_proxy("call_function", fn, args, kwargs)
                return fn(*args, **kwargs)
            return call

        for name in _CREATION:
            self.saved[name] = getattr(torch, name)
            setattr(torch, name, traced(self.saved[name]))
        return self

    def __exit__(self, *exc):
        import torch

        for name, fn in self.saved.items():
            setattr(torch, name, fn)
        return False


def _export_graph(module, example_inputs):
    """torch.export's ATen graph with the batch dim dynamic where export allows it."""
    import torch

    def export(dynamic):
        shapes = None
        if dynamic:
            batch = torch.export.Dim("batch", min=1)
            shapes = tuple({0: batch} if t.dim() >= 1 else None for t in example_inputs)
        return torch.export.export(module, tuple(example_inputs), dynamic_shapes=shapes, strict=False)

    try:
        ep = export(True)
    except Exception:
        ep = export(False)
    params = {}
    for spec in ep.graph_signature.input_specs:
        kind = spec.kind.name
        if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            params[spec.arg.name] = spec.target
    user_outputs = [i for i, spec in enumerate(ep.graph_signature.output_specs) if spec.kind.name == "USER_OUTPUT"]
    return ep.graph_module.graph, {"params": params, "user_outputs": user_outputs}


def _steps(graph, torch_module, extra, *, via: str) -> list[Step]:
    """The captured graph as replay steps; every unsupported op is collected and reported at once."""
    import torch

    params = extra.get("params", {})
    try:  # the torch forward's own argument names (fx renames `input` to `input_1`)
        arg_names = [p.name for p in inspect.signature(torch_module.forward).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        arg_names = []
    steps, missing, constants = [], [], []
    placeholder = 0
    for node in graph.nodes:
        path, line = _source_of(node)
        s = Step(node.op, node.name, "", path=path, line=line)
        args, kwargs = _arg(node.args, constants), _arg(dict(node.kwargs), constants)
        if node.op == "placeholder":
            if node.name in params:  # torch.export: parameters and buffers are inputs
                s.kind, s.what, s.target = "get_attr", f"self.{params[node.name]}", params[node.name]
            else:
                s.what = "input"
                arg = arg_names[placeholder] if placeholder < len(arg_names) else str(node.target).lstrip("*")
                s.target = (placeholder, args[0] if args else _NO_DEFAULT, arg)
                placeholder += 1
        elif node.op == "get_attr":
            s.what, s.target = f"self.{node.target}", node.target
            attr = _walk(torch_module, node.target)
            if not isinstance(attr, torch.Tensor):
                missing.append((s, f"attribute self.{node.target} of type {type(attr).__name__}"))
            elif not _is_state(torch_module, node.target):
                if attr.numel() == 1:  # a Python number
                    s.kind, s.fn, args = "call_function", (lambda v: (lambda: v))(attr.item()), ()
                elif attr.dtype in (torch.float32, torch.float64, torch.int64, torch.bool):
                    # a tensor made in forward from Python numbers only (torch.tril(torch.ones(8, 8))):
                    # fx keeps it as self._tensor_constantN; graphc holds it as a non-persistent buffer
                    # (bool as int64, read back through `!= 0`: graphc buffers are numbers)
                    extra.setdefault("tensor_constants", {})[node.target] = attr
                    s.fn = torch_ops.as_bool if attr.dtype == torch.bool else None
                else:
                    missing.append((s, f"tensor constant self.{node.target} of dtype {attr.dtype}"))
        elif node.op == "call_module":
            m = _walk(torch_module, node.target)
            s.what, s.target = f"{_module_name(m)} (self.{node.target})", node.target
            if _module_name(m) not in torch_ops.MODULES:
                missing.append((s, _module_name(m)))
        elif node.op == "call_function":
            name = _torch_name(node.target)
            table = torch_ops.ATEN if via == "torch.export" else torch_ops.FUNCTIONS
            s.what, s.fn = name, table.get(name)
            if s.fn is None:
                missing.append((s, name))
            if name in torch_ops.TRAINING_ARGUMENT:
                args, kwargs = _follow_training(name, args, kwargs, torch_module.training)
        elif node.op == "call_method":
            s.what, s.fn = f"Tensor.{node.target}", torch_ops.METHODS.get(node.target)
            if s.fn is None:
                missing.append((s, f"Tensor.{node.target}"))
        elif node.op == "output":
            s.what = "output"
            if "user_outputs" in extra:
                outs = args[0]
                kept = [outs[i] for i in extra["user_outputs"]]
                args = (kept[0] if len(kept) == 1 else tuple(kept),)
        s.args, s.kwargs = tuple(args), kwargs
        steps.append(s)
    if constants:
        s = next(s for s in steps if s.kind != "placeholder")
        missing.append((s, f"tensor constant of shape {list(constants[0].shape)} inside forward"))
    if missing:
        raise _unsupported(torch_module, missing, via)
    return steps


def _follow_training(name, args, kwargs, training: bool):
    k, key = torch_ops.TRAINING_ARGUMENT[name]
    args = list(args)
    if key in kwargs and kwargs[key] == training:
        kwargs = {**kwargs, key: TRAINING}
    elif len(args) > k and args[k] == training:
        args[k] = TRAINING
    elif len(args) <= k and key not in kwargs and training:  # default training=True
        kwargs = {**kwargs, key: TRAINING}
    return args, kwargs


def _is_state(module, path: str) -> bool:
    owner, _, name = path.rpartition(".")
    m = _walk(module, owner)
    return name in m._parameters or name in m._buffers


def _unsupported(torch_module, missing, via) -> TorchImportError:
    ops = list(dict.fromkeys(op for _, op in missing))
    lines = [f"from_torch: {type(torch_module).__name__} uses {len(ops)} op(s) graphc cannot map "
             f"(captured with {via}): {', '.join(ops)}"]
    for s, op in missing:
        lines.append(f"  {op} at fx node {s.name!r} ({s.kind})\n    at {s.where()}")
    lines.append("supported torch functions: " + ", ".join(sorted(torch_ops.FUNCTIONS)))
    lines.append("supported tensor methods: " + ", ".join(f"Tensor.{m}" for m in sorted(torch_ops.METHODS)))
    lines.append("supported layers: " + ", ".join(sorted(torch_ops.MODULES)))
    if via == "torch.export":
        lines.append("supported ATen ops (torch.export): " + ", ".join(sorted(torch_ops.ATEN)))
    return TorchImportError("\n".join(lines))


# ------------------------------------------------------------------ building the graphc module


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _build_modules(torch_module, called: set[str]):
    """graphc modules mirroring torch's tree: table layers where fx called a layer, containers elsewhere."""
    shared: dict[int, Parameter] = {}  # id(torch parameter) -> its graphc copy: tied weights stay tied

    def build(tm, path):
        name = _module_name(tm)
        if path in called and name in torch_ops.MODULES:
            state = _random.generator().bit_generator.state  # a layer's own init must not move graphc's rng
            try:
                gm = torch_ops.MODULES[name](tm)
            finally:
                _random.generator().bit_generator.state = state
            for k in list(gm._parameters):  # torch's parameters replace the fresh ones
                delattr(gm, k)
        else:
            gm = type(type(tm).__name__, (TorchContainer,), {"__module__": __name__})()
        for k, p in tm._parameters.items():
            if p is not None:
                if id(p) not in shared:
                    shared[id(p)] = Parameter(_numpy(p), requires_grad=p.requires_grad)
                setattr(gm, k, shared[id(p)])
            elif hasattr(gm, "register_parameter"):  # bias=False: the layer reads self.bias as None
                gm.register_parameter(k, None)
        for k, b in tm._buffers.items():
            if b is None:
                continue
            if not hasattr(gm, "register_buffer"):
                raise TorchImportError(f"from_torch: buffer {path + '.' if path else ''}{k} of {type(tm).__name__}: "
                                       "graphc modules have no buffers yet")
            gm.register_buffer(k, _numpy(b), persistent=k not in tm._non_persistent_buffers_set)
        for k, child in tm._modules.items():
            if child is not None:
                gm.add_module(k, build(child, f"{path}.{k}" if path else k))
        gm.train(tm.training)
        return gm

    return build(torch_module, "")


def _forward_signature(steps):
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for s in steps:
        if s.kind == "placeholder":
            default = s.target[1]
            params.append(inspect.Parameter(s.target[2], inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=inspect.Parameter.empty if default is _NO_DEFAULT else default))
    return inspect.Signature(params)


def from_torch(module, *example_inputs, name: str | None = None):
    """A graphc.nn.Module computing what the torch module computes, with copies of its weights.

    Captured with torch.fx (torch.export when fx cannot trace the forward), every node mapped
    through graphc/interop/torch_ops.py, then traced once on `example_inputs` (torch tensors or
    numpy arrays) so shape errors surface here. The torch module is not modified. Raises
    TorchImportError naming every op graphc lacks, with its fx node and source line."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise GraphcError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    if not example_inputs:
        raise GraphcError("from_torch needs example inputs (torch tensors or numpy arrays), e.g. from_torch(model, x)")
    torch_inputs = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)) for x in example_inputs]
    arrays = [x.detach().cpu().numpy() for x in torch_inputs]

    try:
        graph, extra = _fx_graph(module, len(example_inputs))
        via = "torch.fx"
    except Exception as fx_error:  # fx cannot trace it (Python control flow, ...): try torch.export
        try:
            graph, extra = _export_graph(module, torch_inputs)
            via = "torch.export"
        except Exception as export_error:
            raise TorchImportError(f"from_torch: neither torch.fx nor torch.export could capture "
                                   f"{type(module).__name__}.forward\n  torch.fx: {type(fx_error).__name__}: "
                                   f"{str(fx_error).strip().splitlines()[0]}\n  torch.export: "
                                   f"{type(export_error).__name__}: {str(export_error).strip().splitlines()[0]}") from None
    try:
        steps = _steps(graph, module, extra, via=via)
    finally:
        if via == "torch.fx":  # fx stored forward's tensor constants on the torch model itself: take them off
            for path in extra.get("tensor_constants", {}):
                owner, _, attr = path.rpartition(".")
                if attr in vars(_walk(module, owner)):
                    delattr(_walk(module, owner), attr)
    called = {s.target for s in steps if s.kind == "call_module"}
    body = _build_modules(module, called)

    cls_name = name or type(module).__name__
    cls = type(cls_name, (FromTorch,), {"__module__": __name__, "__doc__": f"{cls_name} from torch ({via})"})
    forward = lambda self, *args, **kwargs: self._replay(args, kwargs)  # noqa: E731
    forward.__signature__ = _forward_signature(steps)
    cls.forward = forward
    gm = cls()
    for k, p in body._parameters.items():
        setattr(gm, k, p)
    for k, c in body._modules.items():
        gm.add_module(k, c)
    for k, b in getattr(body, "_buffers", {}).items():
        gm.register_buffer(k, b, persistent=k not in getattr(body, "_non_persistent", ()))
    for path, t in extra.get("tensor_constants", {}).items():
        owner, _, attr = path.rpartition(".")
        value = _numpy(t.to(torch.int64) if t.dtype == torch.bool else t)
        _walk(gm, owner).register_buffer(attr, value, persistent=False)
    object.__setattr__(gm, "_steps", steps)
    object.__setattr__(gm, "captured_with", via)
    gm.train(module.training)
    trace(gm, *arrays)  # every step maps on these shapes, or the error is raised now
    return gm
