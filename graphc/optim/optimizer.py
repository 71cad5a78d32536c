"""torch.optim's SGD, Adam and AdamW, eagerly on numpy Parameters, with torch's exact formulas
and parameter groups.

Each optimizer updates `p` in place (`p[...] = ...`) from `p.grad`, so modules, compiled plans and
the optimizer share one array per parameter.

The contract a compiled train step keeps (it runs the same update inside one graph):
  * hyperparameters: `opt.param_groups[k]` (torch's names: lr, momentum, dampening,
    weight_decay, nesterov / lr, betas, eps, weight_decay), read at every step, so editing
    them (as a scheduler does) takes effect at the next step, compiled or not;
  * `opt.ensure_state()` allocates every per-parameter state array up front (zeros, the
    parameter's shape and dtype), reachable as `opt.state_of(p)[name]`; the compiled step
    reads and writes those arrays in place;
  * `opt.group_step(k)` is a 0-d int64 array: the steps group k already took (SGD's first
    step sets the momentum buffer to the gradient, as torch does; Adam's bias correction
    uses it + 1). A compiled step reads and advances it in place, then calls
    `opt.count_step(groups=False)` so `step_count` and Adam's per-param 'step' follow.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from .. import eager as _eager
from ..eager import flush_if_reads
from ..ir import GraphcError
from ..nn.parameter import Parameter


_autograd = None  # graphc.autograd, once imported (its fast_step is join_step, or the last replayed plan's step)


class OptimizerError(GraphcError, ValueError):
    """An optimizer was built or loaded with an invalid setting; the message names it."""


# Keys torch.optim puts in a param group that graphc accepts only at their default values.
_TORCH_EXTRAS = {"maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
                 "amsgrad": False, "decoupled_weight_decay": False}


def _only_defaults(opt, options: dict) -> None:
    """Accept torch.optim's other switches (amsgrad=False, foreach=None, ...) at their defaults only."""
    for key, value in options.items():
        if key not in _TORCH_EXTRAS:
            raise OptimizerError(f"{type(opt).__name__}: unknown argument {key!r}")
        if value not in (_TORCH_EXTRAS[key], None, False):
            raise OptimizerError(f"{type(opt).__name__}: {key}={value!r} is not supported by graphc")


def _number(opt: str, name: str, value) -> float:
    """A real, finite number, or an OptimizerError naming the setting (lr="0.1", lr=nan, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptimizerError(f"{opt}: {name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise OptimizerError(f"{opt}: {name} must be finite, got {value}")
    return value


class Optimizer:
    """Base class: parameter groups as in torch (`param_groups`, `add_param_group`), per-parameter
    state keyed by id(p) (ndarrays are unhashable)."""

    kind = ""  # the train step's name for the update ("sgd", "adam", "adamw")
    defaults: dict[str, Any] = {}
    _state_names: tuple[str, ...] = ()  # per-parameter arrays, torch's names

    def __init__(self, params, **hyper):
        if isinstance(params, np.ndarray):
            raise OptimizerError(f"{type(self).__name__}: params must be an iterable of Parameters or of dicts, "
                                 f"got one array (wrap it in a list)")
        groups = list(params)
        if not groups:
            raise OptimizerError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = {**type(self).defaults, **hyper}
        self.param_groups: list[dict] = []
        self._group_steps: list[np.ndarray] = []
        self._state: dict[int, dict] = {}
        self.step_count = 0
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (a dict with 'params' and any hyperparameters; the others take the
        optimizer's defaults), as torch's add_param_group. Its steps count from 0."""
        name = type(self).__name__
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise OptimizerError(f"{name}.add_param_group: expected a dict with a 'params' key, got {param_group!r:.80}")
        params = param_group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        if not params:
            raise OptimizerError(f"{name} got an empty parameter list")
        where = f" in group {len(self.param_groups)}" if self.param_groups else ""
        for k, p in enumerate(params):
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise OptimizerError(f"{name}: parameter {k}{where} must be a float32/float64 Parameter, "
                                     f"got {type(p).__name__}" + (f" of {p.dtype}" if isinstance(p, np.ndarray) else ""))
        if len({id(p) for p in params}) != len(params):
            raise OptimizerError(f"{name}: some parameters appear more than once in the list{where}")
        held = {id(p) for p in self.params}
        if any(id(p) in held for p in params):
            raise OptimizerError(f"{name}: some parameters appear in more than one parameter group")
        group = self._check({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        self.param_groups.append({"params": params, **group})
        self._group_steps.append(np.zeros((), np.int64))

    # ---- hyperparameters
    def _check(self, hyper: dict) -> dict:
        """Validate a group's settings as torch does (and: numbers only, finite); returns them."""
        name = type(self).__name__
        for key, value in list(hyper.items()):
            if key in _TORCH_EXTRAS and key not in self.defaults:
                if value not in (_TORCH_EXTRAS[key], None, False):
                    raise OptimizerError(f"{name}: {key}={value!r} is not supported by graphc")
                hyper.pop(key)
        _number(name, "learning rate (lr)", hyper["lr"])
        if not hyper["lr"] >= 0.0:
            raise OptimizerError(f"Invalid learning rate: {hyper['lr']} (must be >= 0)")
        _number(name, "weight_decay", hyper["weight_decay"])
        if not hyper["weight_decay"] >= 0.0:
            raise OptimizerError(f"Invalid weight_decay value: {hyper['weight_decay']} (must be >= 0)")
        return hyper

    @property
    def params(self) -> list[Parameter]:
        """Every parameter, group by group (the indices of state_dict())."""
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def hyper(self) -> dict:
        """Group 0's hyperparameters (without 'params')."""
        return {k: v for k, v in self.param_groups[0].items() if k != "params"}

    # ---- state
    def state_names_of(self, group: int) -> tuple[str, ...]:
        """The per-parameter state arrays of group `group`'s params."""
        return self._state_names

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.state_names_of(0)

    def group_step(self, k: int) -> np.ndarray:
        """Steps group k already took: a 0-d int64 array, read and advanced in place by compiled steps."""
        return self._group_steps[k]

    def state_of(self, p) -> dict:
        """Parameter p's state dict (torch's `opt.state[p]`), empty before its first update."""
        if not any(q is p for q in self.params):
            raise OptimizerError(f"{type(self).__name__}.state_of: this array is not one of the optimizer's parameters")
        return self._state.setdefault(id(p), {})

    def _state_for(self, p) -> dict:
        return self._state.setdefault(id(p), {})

    def ensure_state(self) -> "Optimizer":
        """Allocate every missing per-parameter state array (zeros, the parameter's shape and dtype)."""
        for k, g in enumerate(self.param_groups):
            for p in g["params"]:
                st = self._state_for(p)
                for name in self.state_names_of(k):
                    if name not in st:
                        st[name] = np.zeros(p.shape, dtype=p.dtype)
                self._init_extra_state(st, k)
        return self

    def _init_extra_state(self, st: dict, group: int) -> None:
        pass

    def count_step(self, groups: bool = True) -> None:
        """Record one step taken elsewhere: step_count += 1 (and each group's step, unless the
        caller, a compiled step, advanced those itself)."""
        self.step_count += 1
        if groups:
            for s in self._group_steps:
                s += 1

    # ---- stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        if _eager._pending is not None:
            _eager.flush_pending()  # a deferred backward runs first, as if it had run at once
        for g in self.param_groups:
            if not set_to_none:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad[...] = 0
                continue
            for p in g["params"]:
                if type(p) is Parameter:
                    p.__dict__["_grad"] = None  # Parameter.grad's setter, without its frames (a loop runs this every step)
                else:
                    p.grad = None

    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient (params whose .grad is None are skipped)."""
        if closure is None and _eager._pending is not None:
            global _autograd
            if _autograd is None:
                from .. import autograd as _autograd  # (graphc.autograd imports the optimizers)
            if _autograd.fast_step(self):  # the deferred backward and this update ran as one compiled plan
                return None
        return self._step_eager(closure)

    def _step_eager(self, closure):
        """step() one parameter at a time (the update was not joined to a recorded step)."""
        loss = closure() if closure is not None else None
        checked = [self._check(self._settings(g)) for g in self.param_groups]  # all groups before any update
        flush_if_reads(self.params)  # values recorded from the old weights are computed first
        index = 0
        for k, (g, hyper) in enumerate(zip(self.param_groups, checked)):
            step = int(self._group_steps[k])
            for p in g["params"]:
                index += 1
                if p.grad is None:
                    continue
                grad = np.asarray(p.grad)
                if grad.shape != p.shape or grad.dtype != p.dtype:
                    raise OptimizerError(f"{type(self).__name__}: parameter {index - 1} is {p.dtype}{list(p.shape)} but "
                                         f"its .grad is {grad.dtype}{list(grad.shape)}")
                self._update(p.view(np.ndarray), grad, self._state_for(p), step, **hyper)
        self.step_count += 1  # (not count_step(): Adam's _update advanced its per-param 'step' itself)
        for s in self._group_steps:
            s += 1
        return loss

    def _settings(self, group: dict) -> dict:
        """The group's hyperparameters the update takes (other keys, e.g. 'initial_lr', are the user's)."""
        return {k: group[k] for k in self.defaults}

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict, step: int, **hyper) -> None:
        raise NotImplementedError

    # ---- checkpoints, in torch's layout
    def state_dict(self) -> dict:
        """{'state': {index: {name: value}}, 'param_groups': [{..., 'params': [indices]}]} (copies),
        plus 'step_count' and 'group_steps'."""
        state, groups, index = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                st = self._state.get(id(p))
                if st:
                    state[index] = {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in st.items()}
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups, "step_count": self.step_count,
                "group_steps": [int(s) for s in self._group_steps]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this optimizer or of the same torch.optim optimizer (tensors allowed).

        Everything is checked before anything changes (a bad entry raises, naming it, and leaves
        the optimizer as it was). State arrays are copied into existing arrays in place where there
        are some, so a compiled step holding them keeps seeing the loaded values."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            got = sorted(map(str, state_dict)) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise OptimizerError(f"{name}: expected a dict with 'state' and 'param_groups' (an optimizer's state_dict()), "
                                 f"got {got}")
        groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        if len(groups) != len(sizes) or [len(g["params"]) for g in groups] != sizes:
            what = "one group" if len(sizes) == 1 else f"{len(sizes)} groups"
            raise OptimizerError(f"{name}: expected {what} of {sizes[0] if len(sizes) == 1 else sizes} parameters, "
                                 f"got {[len(g['params']) for g in groups]}")
        new_groups, position = [], {}
        for k, g in enumerate(groups):
            group = dict(g)
            for pos, idx in enumerate(group.pop("params")):
                position[idx] = (k, pos)
            unknown = sorted(set(group) - set(self.defaults) - set(_TORCH_EXTRAS) - {"initial_lr"})
            if unknown and any(u in ("momentum", "betas", "dampening", "eps", "nesterov") for u in unknown):
                raise OptimizerError(f"{name}: unknown hyperparameter(s) {unknown}; is this another optimizer's state?")
            if "betas" in group:
                group["betas"] = tuple(float(b) for b in group["betas"])
            new_groups.append(self._check({**self.defaults, **group}))
        new_state: dict[int, dict] = {}
        for idx, st in state_dict["state"].items():
            if idx not in position:
                raise OptimizerError(f"{name}: state for parameter {idx!r}, which no group lists")
            k, pos = position[idx]
            p = self.param_groups[k]["params"][pos]
            new_state[id(p)] = {n: self._load_value(p, idx, n, v) for n, v in st.items() if v is not None}
        steps = state_dict.get("group_steps")
        if steps is not None and len(steps) != len(groups):
            raise OptimizerError(f"{name}: 'group_steps' has {len(steps)} entries for {len(groups)} groups")
        # all checked: now change things
        for g, hyper in zip(self.param_groups, new_groups):
            params = g["params"]
            g.clear()
            g.update({"params": params, **hyper})
        for pid, st in new_state.items():
            old = self._state.get(pid, {})
            for n, v in st.items():
                if isinstance(v, np.ndarray) and isinstance(old.get(n), np.ndarray) and old[n].shape == v.shape \
                        and old[n].dtype == v.dtype:
                    old[n][...] = v
                    st[n] = old[n]
        self._state = new_state
        self.step_count = int(state_dict["step_count"]) if "step_count" in state_dict else self._infer_step_count()
        for k, s in enumerate(self._group_steps):
            s[()] = int(steps[k]) if steps is not None else self._infer_group_step(k)

    def _load_value(self, p, index, name, value):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if name == "step":
            return int(np.asarray(value).item())
        a = np.asarray(value)
        if a.shape != p.shape:
            raise OptimizerError(f"{type(self).__name__}.load_state_dict: state {name!r} of parameter {index} has shape "
                                 f"{list(a.shape)}, its parameter {list(p.shape)}")
        if a.dtype.kind != "f":
            raise OptimizerError(f"{type(self).__name__}.load_state_dict: state {name!r} of parameter {index} has dtype "
                                 f"{a.dtype}, expected {p.dtype}")
        return np.array(a, dtype=p.dtype)

    def _infer_step_count(self) -> int:
        return max((self._infer_group_step(k) for k in range(len(self.param_groups))), default=0)

    def _infer_group_step(self, k: int) -> int:
        return 1 if any(self._state.get(id(p)) for p in self.param_groups[k]["params"]) else 0

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines += [f"    {key}: {v}" for key, v in g.items() if key != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """torch.optim.SGD: d_p = g + wd*p; buf = d_p at the first step, else momentum*buf + (1-dampening)*d_p;
    d_p = d_p + momentum*buf (nesterov) or buf; p -= lr * d_p.

    State: 'momentum_buffer' (only in groups with momentum). A compiled step passes the group's
    step so that its first step sets buf = d_p as torch does, with buffers that ensure_state()
    allocated as zeros."""

    kind = "sgd"
    defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **torch_options):
        _only_defaults(self, torch_options)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    def state_names_of(self, group):
        return ("momentum_buffer",) if self.param_groups[group]["momentum"] != 0 else ()

    def _check(self, hyper):
        hyper = super()._check(hyper)
        _number(type(self).__name__, "momentum", hyper["momentum"])
        _number(type(self).__name__, "dampening", hyper["dampening"])
        if not hyper["momentum"] >= 0.0:
            raise OptimizerError(f"Invalid momentum value: {hyper['momentum']} (must be >= 0)")
        if not isinstance(hyper["nesterov"], (bool, np.bool_)):
            raise OptimizerError(f"{type(self).__name__}: nesterov must be True or False, got {hyper['nesterov']!r}")
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise OptimizerError("Nesterov momentum requires a momentum and zero dampening, got "
                                 f"momentum={hyper['momentum']}, dampening={hyper['dampening']}")
        return hyper

    def _update(self, p, g, state, step, *, lr, momentum, dampening, weight_decay, nesterov):
        # Same operation order as torch's _single_tensor_sgd (float32 results agree to the last bits).
        d_p = g + weight_decay * p if weight_decay != 0 else g
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d_p.copy()
            elif step == 0:  # allocated by ensure_state(): torch's first step sets buf = d_p
                buf[...] = d_p
            else:
                buf *= momentum
                buf += (1 - dampening) * d_p
            d_p = d_p + momentum * buf if nesterov else buf
        p -= lr * d_p

    def _infer_group_step(self, k):
        # torch keeps no step count for SGD; buffers exist once a step was taken.
        return 1 if any("momentum_buffer" in self._state.get(id(p), {}) for p in self.param_groups[k]["params"]) else 0


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad=False): g += wd*p; m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g*g;
    p -= lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps), t = the parameter's step count.

    State: 'step' (int, steps this parameter took), 'exp_avg', 'exp_avg_sq'. A compiled step passes
    its group's step (t = step + 1); count_step() then advances every parameter's 'step'."""

    kind = "adam"
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, **torch_options):
        _only_defaults(self, torch_options)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check(self, hyper):
        hyper = super()._check(hyper)
        try:
            betas = tuple(hyper["betas"])
        except TypeError:
            raise OptimizerError(f"Invalid betas: expected two numbers, got {hyper['betas']!r}") from None
        if len(betas) != 2:
            raise OptimizerError(f"Invalid betas: expected two numbers, got {hyper['betas']}")
        for k, b in enumerate(betas):
            _number(type(self).__name__, f"betas[{k}]", b)
            if not 0.0 <= b < 1.0:
                raise OptimizerError(f"Invalid beta parameter at index {k}: {b} (must be in [0, 1))")
        _number(type(self).__name__, "eps", hyper["eps"])
        if not hyper["eps"] >= 0.0:
            raise OptimizerError(f"Invalid epsilon value: {hyper['eps']} (must be >= 0)")
        return {**hyper, "betas": tuple(float(b) for b in betas)}

    def _init_extra_state(self, st, group):
        st.setdefault("step", int(self._group_steps[group]))

    def count_step(self, groups: bool = True):
        super().count_step(groups)
        for p in self.params:
            st = self._state_for(p)
            if "exp_avg" in st:
                st["step"] = st.get("step", 0) + 1

    _decoupled = False

    def _update(self, p, g, state, step, *, lr, betas, eps, weight_decay):
        # Same operation order as torch's _single_tensor_adam.
        beta1, beta2 = betas
        if "exp_avg" not in state:
            state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if weight_decay != 0:
            if self._decoupled:  # AdamW
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        w = 1 - beta1  # torch's lerp switches formula at weight 0.5; keep its rounding
        m[...] = m + w * (g - m) if w < 0.5 else g - (g - m) * (1 - w)
        v *= beta2
        v += (1 - beta2) * g * g
        t = state["step"]
        step_size = lr / (1 - beta1 ** t)
        denom = np.sqrt(v) / (1 - beta2 ** t) ** 0.5 + eps
        p += (-step_size) * m / denom

    def _infer_group_step(self, k):
        return max((self._state.get(id(p), {}).get("step", 0) for p in self.param_groups[k]["params"]), default=0)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay before the
    Adam step (default weight_decay=1e-2)."""

    kind = "adamw"
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, **torch_options):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **torch_options)
