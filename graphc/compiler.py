"""The face: `graphc.compile` and `graphc.compile_train_step` wire tracing, the pass pipeline and
the runtime together.

    cm = graphc.compile(model, x)            # forward (and, in training mode, backward) as native code
    y = cm(x); cm.backward(gy)               # .grad of the Parameters accumulates, as in PyTorch
    step = graphc.compile_train_step(model, loss_fn, opt, x, y)
    loss = step(x, y)                        # forward + loss + backward + optimizer update, one native call

The model's Parameters and the optimizer's state arrays are the single source of truth: plans
read and update them in place. Each input signature (shapes and dtypes; only the batch dim may
change) and mode gets its own traced, optimized and compiled specialisation, kept for reuse.

Both compiled objects expose the pipeline for inspection: `.stages` (stage names in order),
`.graph(stage)`, `.ir(stage)`, `.plans` (the passes' CompiledPlans), `.executables` (stage name
-> graphc.runtime.Executable, each with `.memory_plan`, `.compile_info`, `.source`), and the
reports of graphc.inspect.reports as methods: `.diff(a, b)`, `.passes_report()`,
`.saved_report()`, `.memory_plan()`, `.fusion_report()`.
"""
from __future__ import annotations

import inspect as _inspect
import logging
import operator

import numpy as np

from . import eager as _eager
from . import random as _random
from .ir import GraphcError, Input, TensorType, dtype_name
from .nn.module import Module, _version, structure_version
from .runtime import Executable, InputError
from .tracing import trace

GRAD = "grad:"
_log = logging.getLogger("graphc.compile")
_seeds = _random.seeds  # next_seed()'s block of drawn seeds (one list for good): TrainStep pops it inline
Signature = tuple  # ((shape, dtype name), ...) of the call's arrays


class _SignatureChanged(Exception):
    """Raised by a runner's slow path when only the batch size changed: re-specialise."""


def _signature(arrays) -> Signature:
    return tuple((a.shape, a.dtype.str) for a in arrays)


def _as_arrays(inputs, what: str) -> list[np.ndarray]:
    out = []
    for k, x in enumerate(inputs):
        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if a.dtype.kind in "iu" and a.dtype != np.int64:
            a = a.astype(np.int64)  # int32 labels: class indices are int64 in the graph
        if a.dtype.kind == "f" and a.dtype not in (np.float32, np.float64) or a.dtype.kind not in "fiub":
            raise InputError(f"{what}: input {k} has dtype {a.dtype}; graphc takes float32, float64, int64 or bool "
                             "(masks) arrays")
        out.append(a)
    return out


def _check_like(example: list[TensorType], arrays: list[np.ndarray], what: str) -> None:
    """Only the batch (first) dim may differ from the example inputs; say what else differs."""
    if len(arrays) != len(example):
        raise InputError(f"{what} takes {len(example)} inputs, got {len(arrays)}")
    for k, (t, a) in enumerate(zip(example, arrays)):
        got = f"{a.dtype}{list(a.shape)}"
        if a.ndim != t.rank:
            raise InputError(f"{what}: input {k} expected rank {t.rank} ({t}), got rank {a.ndim} ({got})")
        if a.dtype != t.np_dtype:
            raise InputError(f"{what}: input {k} expected dtype {t.np_dtype} ({t}), got {a.dtype} ({got})")
        if a.shape[1:] != t.shape[1:]:
            d = next(d for d in range(1, a.ndim) if a.shape[d] != t.shape[d])
            raise InputError(f"{what}: input {k} expected size {t.shape[d]} in dim {d} (like {t}, any batch size), "
                             f"got {a.shape[d]} ({got})")
        if a.ndim and t.rank and a.shape[0] == 0:
            raise InputError(f"{what}: input {k} has an empty batch ({got})")


class _Specialisation:
    """One traced, optimized and compiled signature of a compiled object."""

    def __init__(self, sig: Signature, training: bool, plans, executables: dict[str, Executable]):
        self.sig, self.training, self.plans, self.executables = sig, training, plans, executables
        self.version = structure_version()  # Module structure counter when last known current
        self.id_checks = ()  # the traced graph's meta "id_checks" (see _explain_bad_ids)


def _explain_bad_ids(id_checks, by_name: dict, error: Exception) -> Exception:
    """A plan stopped (an index_select or gather index out of range): if an Embedding's ids input holds an id out of
    range, the error eager mode gives (the layer, the id, its position) and the source line; else `error`."""
    from .nn.transformer_functional import ids_out_of_range

    for name, n, layer, loc in id_checks:
        msg = ids_out_of_range(np.asarray(by_name[name]), n, layer) if name in by_name else None
        if msg:
            return GraphcError(msg + (f" (at {loc})" if loc else ""))
    return error


def _module_state(module) -> tuple:
    """Every sub-module's training mode and every Parameter's identity and requires_grad: what a specialisation
    was traced with besides the input signature (a replaced Parameter or a submodule switched
    to eval on its own needs another one)."""
    return (tuple(m.training for m in module.modules()),
            tuple((n, id(p), bool(getattr(p, "requires_grad", True))) for n, p in module.named_parameters()))


class _Inspectable:
    """What both compiled objects share: the current specialisation's stages and reports."""

    _spec: _Specialisation

    @property
    def plans(self):
        """The pass pipeline's CompiledPlans of the current specialisation."""
        return self._spec.plans

    @property
    def executables(self) -> dict[str, Executable]:
        """Stage name -> runtime Executable (with .memory_plan, .compile_info, .source)."""
        return self._spec.executables

    @property
    def stages(self) -> list[str]:
        return self.plans.stage_names

    def graph(self, stage: str | int):
        return self.plans.graph(self._stage_name(stage))

    def ir(self, stage: str | int) -> str:
        return self.plans.ir(self._stage_name(stage))

    def _stage_name(self, stage) -> str:
        names = self.stages
        if isinstance(stage, int):
            return names[stage]
        if stage in names:
            return stage
        match = [n for n in names if n.startswith(str(stage))]
        if len(match) == 1:
            return match[0]
        raise GraphcError(f"no stage {stage!r}" + (" (ambiguous)" if match else "") + f"; stages: {', '.join(names)}")

    def _report(self, fn: str, *args):
        from .inspect import reports

        return getattr(reports, fn)(self, *args)

    def diff(self, a, b) -> str:
        return self._report("diff", a, b)

    def passes_report(self) -> str:
        return self._report("passes_report")

    def saved_report(self) -> str:
        return self._report("saved_report")

    def memory_plan(self) -> str:
        return self._report("memory_plan")

    def fusion_report(self) -> str:
        return self._report("fusion_report")

    def profile(self, *inputs, steps: int = 20, warmup: int = 3):
        """graphc.profile(self, *inputs, ...): each kernel call's median time (graphc/profiler.py)."""
        from .profiler import profile

        return profile(self, *inputs, steps=steps, warmup=warmup)


# ------------------------------------------------------------------ compile


class CompiledModule(_Inspectable):
    """A module's forward (training mode: and backward) compiled for its input signature(s).

    `cm(*inputs)` returns numpy arrays (fresh copies). In training mode the call keeps what the
    backward needs, and `cm.backward(*grad_outputs)` (none when the output is a scalar loss)
    accumulates `.grad` on the module's Parameters and returns the gradients of the inputs that
    have one (None for the others; the default pipeline differentiates parameters only).
    `cm.train()` / `cm.eval()` switch modes (Dropout on / off); the module's mode at compile
    time is the initial one. `compile_info` maps each plan stage to how its code was obtained.
    With input_grads=True the float inputs are differentiated too (before fusion, so the backward
    is less fused) and backward() returns their gradients.
    """

    def __init__(self, module: Module, example_inputs, passes=None, mode: str = "jit", disable=(),
                 input_grads: bool = False):
        if not isinstance(module, Module):
            raise GraphcError(f"graphc.compile expects a graphc.nn.Module, got {type(module).__name__}")
        if not example_inputs:
            raise GraphcError("graphc.compile needs example inputs (arrays of the shapes and dtypes to compile for)")
        self.module, self.mode, self.passes, self.disable = module, mode, passes, tuple(disable)
        self.input_grads = bool(input_grads)
        arrays = _as_arrays(example_inputs, "graphc.compile")
        self.example_types = [TensorType(a.shape, dtype_name(a.dtype)) for a in arrays]
        self.training = bool(module.training)
        self._specs: dict[tuple, _Specialisation] = {}
        self._pending = None  # (spec, call args, seed) of the last training-mode forward
        self._spec = self._specialise(_signature(arrays), self.training)

    # ---- modes
    def train(self, mode: bool = True) -> "CompiledModule":
        self.training = bool(mode)
        self.module.train(self.training)
        self._pending = None
        return self

    def eval(self) -> "CompiledModule":
        return self.train(False)

    @property
    def compile_info(self) -> dict:
        return {name: exe.compile_info for name, exe in self.executables.items()}

    # ---- building
    def _specialise(self, sig: Signature, training: bool) -> _Specialisation:
        from .passes import compile_pipeline

        was = [(m, m.training) for m in self.module.modules()]
        if self.module.training != training:  # cm.train()/cm.eval() asked for the other mode
            self.module.train(training)
        key = (sig, training, _module_state(self.module))
        if key in self._specs:
            for m, mode in was:
                object.__setattr__(m, "training", mode)
            self._specs[key].version = structure_version()
            return self._specs[key]
        try:  # each submodule keeps its own mode (a wrapped submodule in eval mode stays in eval)
            graph = trace(self.module, *[TensorType(s, dtype_name(np.dtype(d))) for s, d in sig])
        finally:
            for m, mode in was:
                object.__setattr__(m, "training", mode)
        _check_no_empty_dims(graph, f"graphc.compile({type(self.module).__name__})")
        id_checks = graph.meta.get("id_checks", ())
        frozen = {n for n, p in self.module.named_parameters() if not getattr(p, "requires_grad", True)}
        wrt = [i.name for i in graph.inputs if (i.kind == "param" and i.name not in frozen)
               or (self.input_grads and i.kind == "input" and i.type.is_float)]
        mode, disable = "training" if training else "inference", self.disable
        if training and not wrt:
            # nothing requires grad (no parameters, all frozen, no input_grads): the training-mode
            # forward alone (Dropout on), and backward() says why there is none
            mode, disable = "inference", (*self.disable, "remove_dropout")
            training = False
        elif training and (self.input_grads or frozen):
            from .passes.autodiff import grad_graph

            graph = grad_graph(graph, wrt=wrt)  # before the pipeline, whose autodiff leaves a joint graph as it is
        plans = compile_pipeline(graph, mode, passes=self.passes, disable=disable)
        params = {**dict(self.module.named_buffers()), **dict(self.module.named_parameters())}
        fwd_stage = next(s for s in reversed(plans.stage_names) if s.startswith("forward_plan"))
        fwd = Executable(plans.forward, _bind(plans.forward, params), self.mode, name=plans.forward.name)
        exes = {fwd_stage: fwd}
        bwd = None
        if training:
            saved = {o.value: a for o, a in zip(plans.forward.outputs, fwd.outputs) if o.label == "saved"}
            bind = {**_bind(plans.backward, params), **{i.name: saved[i.name] for i in plans.backward.inputs if i.kind == "saved"}}
            bwd_stage = next(s for s in reversed(plans.stage_names) if s.startswith("backward_plan"))
            bwd = Executable(plans.backward, bind, self.mode, name=plans.backward.name)
            exes[bwd_stage] = bwd
        spec = _Specialisation(sig, key[1], plans, exes)
        spec.fwd, spec.bwd = fwd, bwd
        spec.input_names = [i.name for i in graph.inputs if i.kind == "input"]
        # where each forward call argument comes from, worked out once: an index into the
        # call's arrays, or None for the step's seed
        position = {name: k for k, name in enumerate(spec.input_names)}
        spec.fwd_args = [None if i.kind == "rng" else position[i.name] for i in fwd.call_inputs]
        spec.fwd_rng = None in spec.fwd_args
        spec.user_outputs = [k for k, o in enumerate(plans.forward.outputs)
                             if o.label != "saved" and not (o.label or "").startswith("update:")]
        spec.params = params
        spec.id_checks = id_checks
        self._specs[key] = spec
        return spec

    # ---- running
    def __call__(self, *inputs):
        arrays = _as_arrays(inputs, "compiled module")
        sig = _signature(arrays)
        spec = self._spec
        if sig != spec.sig or spec.training != self.training or spec.version != _version[0]:
            _check_like(self.example_types, arrays, f"compiled {type(self.module).__name__}")
            spec = self._spec = self._specialise(sig, self.training)
        seed = _random.next_seed() if spec.fwd_rng else None
        try:
            spec.fwd(*[seed if k is None else arrays[k] for k in spec.fwd_args])
        except (GraphcError, IndexError, ValueError) as e:
            raise _explain_bad_ids(spec.id_checks, dict(zip(spec.input_names, arrays)), e) from None
        outs = [spec.fwd.outputs[k].copy() for k in spec.user_outputs]
        if spec.bwd is not None:
            self._pending = (spec, dict(zip(spec.input_names, arrays)), seed)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def backward(self, *grad_outputs):
        """Run the backward plan of the last forward: accumulate .grad of the Parameters (as
        torch does) and return the gradients of the inputs (None where there is none)."""
        if not self.training:
            raise GraphcError("backward() in eval mode: call cm.train() and run the forward again")
        if self._spec.bwd is None:
            raise GraphcError(f"backward(): nothing in {type(self.module).__name__} requires grad (it has no parameters, "
                              f"or all have requires_grad=False); compile with input_grads=True for the inputs' gradients")
        if self._pending is None:
            raise GraphcError("backward() needs a forward call first (in training mode), and runs once per forward")
        spec, by_name, seed = self._pending
        bwd = spec.bwd
        grads = [i for i in bwd.call_inputs if i.kind == "grad"]
        if not grad_outputs and grads:
            if grads[0].type.shape == () and grads[0].name == "grad.0":
                # forward returned (loss, extras...): backward() differentiates the loss, as loss.backward() would
                grad_outputs = [np.ones((), grads[0].type.np_dtype)] + [np.zeros(i.type.shape, i.type.np_dtype) for i in grads[1:]]
            else:
                shapes = ", ".join(str(i.type) for i in grads)
                raise GraphcError(f"backward() needs the gradients of the outputs ({shapes}): the output is not a scalar loss")
        if grad_outputs and len(grad_outputs) != len(grads):
            raise GraphcError(f"backward() takes {len(grads)} output gradient(s) ({', '.join(str(i.type) for i in grads)}), "
                              f"got {len(grad_outputs)}")
        gmap = {i.name: np.asarray(g, dtype=i.type.np_dtype) for i, g in zip(grads, grad_outputs)}
        args = [seed if i.kind == "rng" else gmap[i.name] if i.kind == "grad" else by_name[i.name] for i in bwd.call_inputs]
        bwd(*args)
        self._pending = None
        input_grads = {}
        for o, g in zip(bwd.graph.outputs, bwd.outputs):
            if not (o.label and o.label.startswith(GRAD)):
                continue
            name = o.label[len(GRAD):]
            p = spec.params.get(name)
            if p is None:
                input_grads[name] = g.copy()
            elif p.grad is None:
                p.grad = g.copy()
            else:
                p.grad += g
        result = [input_grads.get(n) for n in spec.input_names]
        return result[0] if len(result) == 1 else tuple(result)

    def __repr__(self):
        return (f"<CompiledModule {type(self.module).__name__} ({'training' if self.training else 'eval'}, {self.mode}; "
                f"{len(self._specs)} specialisation(s))>")


def _check_no_empty_dims(graph, what: str) -> None:
    """Zero-size arrays (Linear(0, 5), an empty feature dim) get a clear error here rather than
    a failure inside the compiled plan."""
    for i in graph.inputs:
        if i.type.size == 0:
            kind = "parameter" if i.kind == "param" else "input"
            raise GraphcError(f"{what}: {kind} %{i.name} has a zero-size dimension ({i.type}); graphc compiles "
                              f"only non-empty arrays")


def _bind(g, params: dict) -> dict:
    """The graph's param inputs (and frozen params, plain inputs there) bound to the module's
    Parameters, its buffer inputs to the module's buffers: plans read and update them in place."""
    out = {}
    for i in g.inputs:
        if i.kind == "param" and i.name not in params:
            raise GraphcError(f"plan {g.name} reads parameter %{i.name}, which the module does not have")
        if i.name in params:
            out[i.name] = params[i.name]
    return out


class _FunctionModule(Module):
    """A plain function as a Module without parameters (graphc.compile(fn, *examples)): its forward
    is the function, so the graph's inputs take the function's argument names."""

    def __init__(self, fn, training: bool):
        super().__init__()
        object.__setattr__(self, "forward", fn)
        object.__setattr__(self, "training", training)
        object.__setattr__(self, "_fn_name", getattr(fn, "__name__", "function"))


def compile(module, *example_inputs, passes=None, mode: str = "jit", disable=(),  # noqa: A001
            input_grads: bool = False) -> CompiledModule:
    """Compile `module.forward` (or a plain function of arrays) for the example inputs' signature
    (other batch sizes compile on first use). passes: a custom pass list; mode: "jit" (native) or
    "interpret" (numpy reference); input_grads: backward() also returns the gradients of the float
    inputs (a plain function compiles for inference unless input_grads=True)."""
    if not isinstance(module, Module) and callable(module):
        module = _FunctionModule(module, training=bool(input_grads))
    return CompiledModule(module, example_inputs, passes=passes, mode=mode, disable=disable, input_grads=input_grads)


# ------------------------------------------------------------------ train steps


class _LossModule(Module):
    """model + loss_fn as one Module: forward(*model_inputs, target) -> loss. Its parameters are the
    model's, under the model's own names, so the plan's inputs read `linear1.weight` etc."""

    def __init__(self, model: Module, loss_fn):
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_loss_fn", loss_fn)
        names = []
        try:
            for p in _inspect.signature(model.forward).parameters.values():
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    names.append(p.name)
        except (TypeError, ValueError):
            pass
        object.__setattr__(self, "_input_names", names)
        object.__setattr__(self, "_targets", 1)

    def named_parameters(self, prefix: str = ""):
        yield from self._model.named_parameters(prefix)
        if isinstance(self._loss_fn, Module):
            yield from self._loss_fn.named_parameters(prefix + "loss_fn" if not prefix else f"{prefix}.loss_fn")

    def named_buffers(self, prefix: str = ""):
        yield from self._model.named_buffers(prefix)

    def named_for(self, n_inputs: int) -> list[str]:
        t = self._targets
        names = [self._input_names[k] if k < len(self._input_names) else f"input{k}" for k in range(n_inputs - t)]
        out = []
        for k in range(t):
            target = "target" if t == 1 else f"target{k}"
            while target in names:
                target += "_"
            out.append(target)
        return names + out

    def forward_for(self, n_inputs: int):
        """A forward whose signature names the inputs as the model does, plus the target."""
        model, loss_fn = self._model, self._loss_fn

        t = self._targets

        def forward(*args):
            if loss_fn is None:  # the model returns its loss (nanoGPT's forward(idx, targets))
                return model(*args)
            return loss_fn(model(*args[:-t]), *args[-t:])

        forward.__signature__ = _inspect.Signature(
            [_inspect.Parameter(n, _inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in self.named_for(n_inputs)])
        return forward


def _max_norm(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise GraphcError(f"compile_train_step: clip_grad_norm must be a positive finite number (the max_norm of "
                          f"torch.nn.utils.clip_grad_norm_), got {value!r}")
    return v


def _optimizer_spec(opt, group_of: dict | None = None):
    """The OptimizerSpec of a graphc optimizer's current param_groups (its structure is what a
    train-step plan is compiled for; the values are copied into the plan's hyper inputs)."""
    from .optim import Optimizer
    from .passes.train_step import OptimizerSpec

    if not isinstance(opt, Optimizer):
        where = type(opt).__module__.split(".")[0]
        raise GraphcError(f"compile_train_step: the optimizer must be a graphc.optim optimizer (SGD, Adam, AdamW), "
                          f"got {where}.{type(opt).__name__}" + (": build it with graphc.optim instead of torch.optim"
                                                                  if where == "torch" else ""))
    groups = tuple({k: g[k] for k in opt.defaults} for g in opt.param_groups)
    return OptimizerSpec(opt.kind, groups=groups, group_of=dict(group_of or {}))


def _hyper_check(read, seen: tuple):
    """`changed(param_groups)`: whether the groups' hyperparameters differ from `seen` (one tuple
    of `read(group)` per group), as `tuple(map(read, groups)) != seen` says, written out for
    this many groups: a step's check without building the tuple (0.6 -> 0.2 us a step, S's is ~6)."""
    ns = {"read": read, **{f"s{k}": v for k, v in enumerate(seen)}}
    body = " or ".join([f"len(groups) != {len(seen)}"] + [f"read(groups[{k}]) != s{k}" for k in range(len(seen))])
    exec(f"def changed(groups):\n    return {body}\n", ns)
    return ns["changed"]


class TrainStep(_Inspectable):
    """`step(*model_inputs, target)` runs forward, loss, backward and the optimizer update as one
    native call and returns the loss as a Python float.

    The model's Parameters and the optimizer's state arrays are updated in place, and
    `opt.count_step()` advances `opt.step_count` after each step, so `model.state_dict()`,
    eager `model(x)` and eager optimizer steps all see the same state. Hyperparameters (each
    group's lr, momentum, betas, ...) are runtime inputs of the plan, read from
    `opt.param_groups` at every call: a scheduler changing them never recompiles. A change of
    batch size, of the model's train/eval mode, of the optimizer's structure (a term switched on
    or off: momentum 0 <-> non-zero, nesterov, weight_decay 0 <-> non-zero; groups added) or of
    which Parameters require grad re-specialises the step: `compile_count` counts the plans
    built, `compile_log` says why, and graphc's logger reports it. `compile_info` is the
    train-step plan's CompileInfo.
    Parameters the optimizer does not hold, or with requires_grad=False, are frozen: read,
    neither differentiated nor updated.
    The step binds the Parameter and state arrays it was compiled with: replacing a Parameter
    object or a sub-module afterwards (rather than updating values in place, as load_state_dict
    does) needs a new compile_train_step, as it needs a new optimizer.
    """

    def __init__(self, model: Module, loss_fn, optimizer, example_inputs, passes=None, mode: str = "jit", disable=(),
                 distributed=None, targets: int = 1, clip_grad_norm: float | None = None):
        self._dist = distributed  # a passes.distributed.DistributedSpec: gradients all-reduced across ranks
        self._clip = None if clip_grad_norm is None else _max_norm(clip_grad_norm)
        if loss_fn is None:
            targets = 0  # every example input is the model's: its forward returns the loss
        if not isinstance(model, Module):
            raise GraphcError(f"compile_train_step expects a graphc.nn.Module, got {type(model).__name__}")
        if targets < (0 if loss_fn is None else 1) or len(example_inputs) < 1 + targets:
            raise GraphcError("compile_train_step needs example inputs: the model's inputs followed by the target"
                              + (f"s ({targets})" if targets != 1 else ""))
        _optimizer_spec(optimizer)  # a graphc optimizer with valid settings
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.mode, self.passes, self.disable = mode, passes, tuple(disable)
        self._wrapper = _LossModule(model, loss_fn)
        object.__setattr__(self._wrapper, "_targets", int(targets))
        params = dict(self._wrapper.named_parameters())
        theirs = {id(p) for p in optimizer.params}
        # names the optimizer held at construction: a replaced one later is an error, not a frozen param
        self._held_names = {n for n, p in params.items() if id(p) in theirs}
        extra = len(theirs - {id(p) for p in params.values()})
        if extra:
            raise GraphcError(f"compile_train_step: the optimizer must hold the model's parameters; "
                              f"{extra} of its {len(theirs)} parameter(s) are not the model's")
        arrays = _as_arrays(example_inputs, "compile_train_step")
        self.example_types = [TensorType(a.shape, dtype_name(a.dtype)) for a in arrays]
        self._specs: dict[tuple, _Specialisation] = {}
        self._hyper: dict[str, np.ndarray] = {}  # the plan's hyper inputs (f64[]), shared by every specialisation
        self._read_hyper = operator.itemgetter(*sorted(optimizer.defaults))
        self.compile_count = 0
        self.compile_log: list[str] = []
        self._spec = self._specialise(_signature(arrays), "first call")
        self._sync_hyper()

    @property
    def compile_info(self):
        return self._spec.exe.compile_info

    @property
    def _trained(self) -> list[str]:
        """Names of the params the step trains now (held by the optimizer, requiring grad)."""
        return list(self._membership()[0])

    def _membership(self) -> tuple[dict, frozenset]:
        """(param name -> group index, for the params trained now; frozen names)."""
        params = dict(self._wrapper.named_parameters())
        group = {id(p): k for k, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        trained = {n: group[id(p)] for n, p in params.items() if id(p) in group and getattr(p, "requires_grad", True)}
        return trained, frozenset(n for n in params if n not in trained)

    def _key(self, sig: Signature):
        trained, _ = self._membership()
        spec = _optimizer_spec(self.optimizer, trained)
        return (sig, bool(self.model.training), spec.structure(), tuple(sorted(trained.items())),
                _module_state(self.model)), spec

    def _specialise(self, sig: Signature, reason: str) -> _Specialisation:
        from .passes import compile_pipeline

        held = {id(p) for p in self.optimizer.params}
        replaced = [n for n, p in self.model.named_parameters() if id(p) not in held and n in self._held_names]
        if replaced:
            raise GraphcError(f"compile_train_step: parameter(s) {replaced} of {type(self.model).__name__} were replaced "
                              "after compiling (the optimizer still holds the old ones); update values in place "
                              "(p.data = ..., load_state_dict) or build a new optimizer and train step")
        key, spec_opt = self._key(sig)
        if key in self._specs:
            self._specs[key].version = structure_version()
            return self._specs[key]
        trained, frozen = self._membership()
        self.optimizer.ensure_state()
        w = self._wrapper
        object.__setattr__(w, "forward", w.forward_for(len(sig)))
        types = [TensorType(s, dtype_name(np.dtype(d))) for s, d in sig]
        graph = trace(w, *types, name=type(self.model).__name__)
        names = [i.name for i in graph.inputs if i.kind == "input"]
        if any(i.kind == "param" and i.name in frozen for i in graph.inputs):
            # frozen params are plain inputs to the step: not differentiated, not updated
            graph = graph.replace(inputs=tuple(Input(i.name, i.type, "input") if i.kind == "param" and i.name in frozen
                                               else i for i in graph.inputs)).verify()
        _check_no_empty_dims(graph, f"compile_train_step({type(self.model).__name__})")
        if not any(i.kind == "param" for i in graph.inputs):
            raise GraphcError(f"compile_train_step: nothing to train in {type(self.model).__name__}: it has no parameters "
                              f"that require grad and are held by the optimizer")
        plans = compile_pipeline(graph, "train_step", optimizer=spec_opt, passes=self.passes, disable=self.disable,
                                 distributed=self._dist, clip_grad_norm=self._clip)
        g = plans.train_step
        params = {**dict(w.named_buffers()), **dict(w.named_parameters())}
        bind = _bind(g, params)
        for i in g.inputs:
            if i.kind in ("state", "hyper"):
                bind[i.name] = self._state_array(i.name, params)
            elif i.kind == "comm":
                from .distributed import comm_words

                bind[i.name] = comm_words()
        stage = next(s for s in reversed(plans.stage_names) if s.startswith("train_step_plan"))
        exe = Executable(g, bind, self.mode, name=g.name + ".train_step", on_mismatch=self._mismatch)
        spec = _Specialisation(sig, key[1], plans, {stage: exe})
        spec.exe, spec.opt_spec = exe, spec_opt
        order = [i.name for i in exe.call_inputs]
        spec.has_rng = any(i.kind == "rng" for i in exe.call_inputs)
        if order != names + (["seed"] if spec.has_rng else []) or (spec.has_rng and exe.call_inputs[-1].kind != "rng"):
            raise GraphcError(f"train step plan {g.name}: unexpected call inputs {order} (expected {names} then the rng seed)")
        spec.run, spec.native, spec.table = exe.run, exe.native, exe.table
        self._specs[key] = spec
        self.compile_count += 1
        self.compile_log.append(reason)
        if self.compile_count > 1:  # a structural change is worth a warning: values alone never recompile
            level = logging.WARNING if reason.startswith("optimizer structure") else logging.INFO
            _log.log(level, "train step %s: compiled specialisation %d (%s)", type(self.model).__name__,
                     self.compile_count, reason)
        return spec

    def _state_array(self, name: str, params: dict) -> np.ndarray:
        from .passes.train_step import step_input

        opt = self.optimizer
        if name.startswith("hyper."):
            return self._hyper.setdefault(name, np.zeros((), np.float64))
        for k in range(len(opt.param_groups)):
            if name == step_input(k):
                return opt.group_step(k)
        group = {id(p): k for k, g in enumerate(opt.param_groups) for p in g["params"]}
        for pname, p in params.items():
            prefix = f"state.{pname}."
            if name.startswith(prefix) and id(p) in group and name[len(prefix):] in opt.state_names_of(group[id(p)]):
                return opt.state_of(p)[name[len(prefix):]]
        raise GraphcError(f"train step plan reads optimizer state %{name}, which {type(opt).__name__} does not keep")

    def _sync_hyper(self) -> None:
        """Copy every group's hyperparameters into the plan's hyper inputs, after checking them
        all (an invalid value raises before anything is written). Re-specialises first when the
        optimizer's structure changed."""
        from .passes.train_step import hyper_values

        opt = self.optimizer
        for k, g in enumerate(opt.param_groups):
            try:
                opt._check(opt._settings(g))
            except GraphcError as e:
                raise type(e)(f"train step: param_groups[{k}] of {type(opt).__name__}: {e}") from None
        key, spec_opt = self._key(self._spec.sig)
        if key != self._key_of(self._spec):
            self._spec = self._specialise(self._spec.sig, "optimizer structure changed: " + _describe(self._spec, spec_opt))
        for name, value in hyper_values(spec_opt).items():
            self._hyper.setdefault(name, np.zeros((), np.float64))[()] = value
        self._hyper_values = tuple(map(self._read_hyper, opt.param_groups))
        self._hyper_changed = _hyper_check(self._read_hyper, self._hyper_values)
        from .optim.optimizer import Optimizer

        self._plain_count = type(opt).count_step is Optimizer.count_step  # count_step(groups=False): step_count += 1

    def _key_of(self, spec: _Specialisation):
        return next(k for k, s in self._specs.items() if s is spec)

    def _mismatch(self, k: int, inp, a: np.ndarray):
        """A call array of another signature: a new batch size re-specialises, anything else is an error."""
        _check_like(self.example_types, _as_arrays_at(self, k, a), "train step")
        raise _SignatureChanged()

    def __call__(self, *inputs) -> float:
        # the common path is this one frame and one native call: a small step costs a few
        # microseconds, of which each Python call or lookup here is a visible part
        spec = self._spec
        opt = self.optimizer
        if _eager._tape is not None and _eager._tape.by_id and not _eager._tape.closed:
            _eager.flush_if_reads(opt.params)  # recorded eager values read the weights this step changes
        if (self.model.training is not spec.training or spec.version != _version[0]
                or self._hyper_changed(opt.param_groups)):
            spec = self._respecialise(inputs)
        native = spec.native
        if native is None:
            loss = self._run(spec, inputs)
        elif spec.has_rng:
            seed = _seeds.pop() if _seeds else _random.next_seed()  # = next_seed(), inline
            try:
                loss = native(*inputs, seed, spec.table)
            except (TypeError, ValueError) as e:
                loss = self._recover(spec, e, inputs, seed)
        else:
            try:
                loss = native(*inputs, spec.table)
            except (TypeError, ValueError) as e:
                loss = self._recover(spec, e, inputs, None)
        if self._plain_count:  # the plan advanced each group's step itself
            opt.step_count += 1
        else:
            opt.count_step(groups=False)
        return loss

    def _recover(self, spec: _Specialisation, error: Exception, inputs, seed):
        """The native call rejected its arguments (or a kernel raised): what the runner's slow path does."""
        if len(inputs) != len(self.example_types):
            raise InputError(f"train step takes {len(self.example_types)} inputs (model inputs, then the target), "
                             f"got {len(inputs)}") from None
        try:
            return spec.exe.recover(error, *inputs, seed) if spec.has_rng else spec.exe.recover(error, *inputs)
        except _SignatureChanged:
            return self._run(self._respecialise(inputs), inputs)

    def _run(self, spec: _Specialisation, inputs):
        """One step through the executable's runner (interpret mode, numba's JIT disabled)."""
        try:
            return spec.run(*inputs, _random.next_seed()) if spec.has_rng else spec.run(*inputs)
        except _SignatureChanged:
            spec = self._respecialise(inputs)
            return spec.run(*inputs, _random.next_seed()) if spec.has_rng else spec.run(*inputs)
        except TypeError:
            if len(inputs) != len(self.example_types):
                raise InputError(f"train step takes {len(self.example_types)} inputs (model inputs, then the target), "
                                 f"got {len(inputs)}") from None
            raise

    def _respecialise(self, inputs) -> _Specialisation:
        arrays = _as_arrays(inputs, "train step")
        _check_like(self.example_types, arrays, "train step")
        sig = _signature(arrays)
        if sig != self._spec.sig or bool(self.model.training) is not self._spec.training:
            why = "batch size changed" if sig != self._spec.sig else f"model.training is {self.model.training}"
            self._spec = self._specialise(sig, why)
        elif self._spec.version != _version[0] and self._key(sig)[0] != self._key_of(self._spec):
            self._spec = self._specialise(sig, "a Parameter or sub-module was replaced, or a sub-module's mode changed")
        self._sync_hyper()
        self._spec.version = structure_version()
        return self._spec

    def __repr__(self):
        return (f"<TrainStep {type(self.model).__name__} + {type(self.optimizer).__name__} ({self.mode}; "
                f"{len(self._specs)} specialisation(s))>")


def _describe(spec: _Specialisation, new) -> str:
    old = spec.opt_spec
    if len(old.groups) != len(new.groups):
        return f"{len(old.groups)} -> {len(new.groups)} param groups"
    changes = [f"group {k} {a}: {old.update_attrs(k)[a]} -> {v}" for k in range(len(new.groups))
               for a, v in new.update_attrs(k).items() if old.update_attrs(k)[a] != v]
    return ", ".join(changes) or "parameters trained changed"


def _as_arrays_at(step: TrainStep, k: int, a: np.ndarray) -> list[np.ndarray]:
    """The example arrays with call input k replaced by `a`, for _check_like's message."""
    arrays = [np.empty(t.shape, t.np_dtype) for t in step.example_types]
    if k < len(arrays):
        arrays[k] = a
    return arrays


class DistributedTrainStep(TrainStep):
    """A TrainStep of a data-parallel job (see graphc.distributed): its plan all-reduces the gradients,
    and its first call makes rank 0's parameters and optimizer state every rank's."""

    _unsynced = True

    def __call__(self, *inputs) -> float:
        if self._unsynced:
            self.broadcast_state()
        return TrainStep.__call__(self, *inputs)

    def broadcast_state(self, root: int = 0) -> None:
        """Overwrite every rank's parameters, optimizer state and step count with rank `root`'s (collective)."""
        from .distributed import broadcast_arrays

        self.optimizer.ensure_state()
        params = dict(self._wrapper.named_parameters())
        arrays = [params[n] for n in self._trained]
        arrays += [a for n in self._trained for a in self.optimizer.state_of(params[n]).values()
                   if isinstance(a, np.ndarray)]
        count = np.array(self.optimizer.step_count, np.int64)  # Adam's bias correction reads it
        broadcast_arrays(arrays + [count], root)
        self.optimizer.step_count = int(count)
        self._unsynced = False


def compile_train_step(model: Module, loss_fn, optimizer, *example_inputs, passes=None, mode: str = "jit",
                       disable=(), distributed: bool = False, bucket_cap_mb: float = 25.0,
                       targets: int = 1, clip_grad_norm: float | None = None) -> TrainStep:
    """Compile one training step: model inputs and target like `example_inputs` (the target last;
    with targets=k the last k example inputs are targets: loss_fn(model(*inputs), *targets)).
    loss_fn=None: the model's forward returns the loss itself (nanoGPT's `forward(idx, targets)`);
    every example input is the model's.

    clip_grad_norm=max_norm: the gradients are clipped to that total 2-norm before the update,
    inside the plan, as `torch.nn.utils.clip_grad_norm_(params, max_norm)` between backward and
    `optimizer.step()` (passes/clip_grad.py).

    distributed=True: a data-parallel step (graphc.distributed.init() is called): each rank steps on
    its own batch and the gradients are averaged across ranks, in buckets of at most bucket_cap_mb
    MB, by all_reduce nodes of the train-step plan."""
    if not distributed:
        return TrainStep(model, loss_fn, optimizer, example_inputs, passes=passes, mode=mode, disable=disable,
                         targets=targets, clip_grad_norm=clip_grad_norm)
    from . import distributed as dist
    from .passes.distributed import DistributedSpec

    dist.init()
    spec = DistributedSpec(dist.world_size(), max(1, int(bucket_cap_mb * 2**20)))
    return DistributedTrainStep(model, loss_fn, optimizer, example_inputs, passes=passes, mode=mode, disable=disable,
                                distributed=spec, targets=targets, clip_grad_norm=clip_grad_norm)


__all__ = ["CompiledModule", "TrainStep", "DistributedTrainStep", "compile", "compile_train_step"]
