"""graphc.optim: torch.optim's SGD and Adam, eagerly on numpy Parameters, with torch's exact formulas.

Each optimizer updates `p` in place (`p[...] = ...`) from `p.grad`, so modules, compiled plans and
the optimizer share one array per parameter.

The contract a compiled train step keeps (it runs the same update inside one graph):
  * hyperparameters: `opt.param_groups[0]` (torch's names: lr, momentum, dampening,
    weight_decay, nesterov / lr, betas, eps, weight_decay);
  * `opt.ensure_state()` allocates every per-parameter state array up front (zeros, the
    parameter's shape and dtype), reachable as `opt.state_of(p)[name]`; the compiled step
    reads and writes those arrays in place;
  * `opt.step_count` is the number of steps already taken: the graph gets it as its
    i64 `step` input (SGD's first step sets the momentum buffer to the gradient, as torch
    does; Adam's bias correction uses step_count + 1);
  * after running, the compiled step calls `opt.count_step()`, so eager and compiled steps
    can be mixed and `state_dict()` stays right.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .ir import GraphcError
from . import eager as _eager
from .eager import flush_if_reads
from .nn.parameter import Parameter


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


class Optimizer:
    """Base class: one param group, per-parameter state keyed by id(p) (ndarrays are unhashable)."""

    defaults: dict[str, Any] = {}
    state_names: tuple[str, ...] = ()  # per-parameter arrays, torch's names

    def __init__(self, params, **hyper):
        params = list(params)
        if params and isinstance(params[0], dict):
            if len(params) != 1:
                raise OptimizerError(f"{type(self).__name__}: graphc supports one parameter group, got {len(params)}")
            group = dict(params[0])
            params = list(group.pop("params"))
            hyper = {**hyper, **group}
        if not params:
            raise OptimizerError(f"{type(self).__name__} got an empty parameter list")
        for k, p in enumerate(params):
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise OptimizerError(f"{type(self).__name__}: parameter {k} must be a float32/float64 Parameter, "
                                     f"got {type(p).__name__}" + (f" of {p.dtype}" if isinstance(p, np.ndarray) else ""))
        if len({id(p) for p in params}) != len(params):
            raise OptimizerError(f"{type(self).__name__}: some parameters appear more than once in the list")
        self.param_groups: list[dict] = [{"params": params, **self._check({**self.defaults, **hyper})}]
        self._state: dict[int, dict] = {}
        self.step_count = 0

    # ---- hyperparameters ----
    def _check(self, hyper: dict) -> dict:
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            raise OptimizerError(f"{type(self).__name__}: unknown argument(s) {unknown}; expected {sorted(self.defaults)}")
        if not hyper["lr"] >= 0.0:
            raise OptimizerError(f"Invalid learning rate: {hyper['lr']} (must be >= 0)")
        if not hyper["weight_decay"] >= 0.0:
            raise OptimizerError(f"Invalid weight_decay value: {hyper['weight_decay']} (must be >= 0)")
        return hyper

    @property
    def params(self) -> list[Parameter]:
        return self.param_groups[0]["params"]

    @property
    def hyper(self) -> dict:
        """The group's hyperparameters (without 'params'), read afresh at every step."""
        return {k: v for k, v in self.param_groups[0].items() if k != "params"}

    # ---- state ----
    def state_of(self, p) -> dict:
        """Parameter p's state dict (torch's `opt.state[p]`), empty before its first update."""
        if not any(q is p for q in self.params):
            raise OptimizerError(f"{type(self).__name__}.state_of: this array is not one of the optimizer's parameters")
        return self._state.setdefault(id(p), {})

    def _state_for(self, p) -> dict:
        return self._state.setdefault(id(p), {})

    def ensure_state(self) -> "Optimizer":
        """Allocate every missing per-parameter state array (zeros, the parameter's shape and dtype)."""
        for p in self.params:
            st = self._state_for(p)
            for name in self.state_names:
                if name not in st:
                    st[name] = np.zeros(p.shape, dtype=p.dtype)
            self._init_extra_state(st)
        return self

    def _init_extra_state(self, st: dict) -> None:
        pass

    def count_step(self) -> None:
        """Record one step taken elsewhere (a compiled train step): step_count += 1."""
        self.step_count += 1

    # ---- stepping ----
    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient (params whose .grad is None are skipped)."""
        if closure is None and _eager._pending is not None:
            from .autograd import join_step

            if join_step(self):  # the deferred backward and this update ran as one compiled plan
                return None
        loss = closure() if closure is not None else None
        hyper = self._check(self.hyper)
        flush_if_reads(self.params)  # values recorded from the old weights are computed first
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = np.asarray(p.grad)
            if g.shape != p.shape or g.dtype != p.dtype:
                raise OptimizerError(f"{type(self).__name__}: parameter {k} is {p.dtype}{list(p.shape)} but its "
                                     f".grad is {g.dtype}{list(g.shape)}")
            self._update(p.view(np.ndarray), g, self._state_for(p), **hyper)
        self.step_count += 1
        return loss

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict, **hyper) -> None:
        raise NotImplementedError

    # ---- checkpoints, in torch's layout ----
    def state_dict(self) -> dict:
        """{'state': {index: {name: value}}, 'param_groups': [{..., 'params': [indices]}]} (copies),
        plus 'step_count'."""
        state = {}
        for k, p in enumerate(self.params):
            st = self._state.get(id(p))
            if st:
                state[k] = {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in st.items()}
        group = {**self.hyper, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group], "step_count": self.step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this optimizer or of the same torch.optim optimizer (tensors allowed).

        State arrays are copied into existing arrays in place where there are some, so a compiled
        step holding them keeps seeing the loaded values."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise OptimizerError(f"{type(self).__name__}.load_state_dict: expected one group of {len(self.params)} "
                                 f"parameters, got {[len(g['params']) for g in groups]}")
        group = dict(groups[0])
        index = group.pop("params")
        for key, default in _TORCH_EXTRAS.items():
            if key in group and key not in self.defaults:
                if group.pop(key) not in (default, None):
                    raise OptimizerError(f"{type(self).__name__}.load_state_dict: {key}={groups[0][key]!r} is not supported")
        group.pop("initial_lr", None)  # set by torch's LR schedulers
        unknown = sorted(set(group) - set(self.defaults))
        if unknown:
            raise OptimizerError(f"{type(self).__name__}.load_state_dict: unknown hyperparameter(s) {unknown}; "
                                 f"is this another optimizer's state?")
        if "betas" in group:
            group["betas"] = tuple(float(b) for b in group["betas"])
        hyper = self._check({**self.defaults, **group})
        new_state: dict[int, dict] = {}
        for k, st in state_dict["state"].items():
            pos = index.index(k)
            p = self.params[pos]
            new_state[id(p)] = {n: self._load_value(p, n, v, self._state.get(id(p), {}).get(n))
                                for n, v in st.items() if v is not None}
        self.param_groups[0] = {"params": self.params, **hyper}
        self._state = new_state
        self.step_count = int(state_dict["step_count"]) if "step_count" in state_dict else self._infer_step_count()

    def _load_value(self, p, name, value, existing):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if name == "step":
            return int(np.asarray(value).item())
        a = np.asarray(value)
        if a.shape != p.shape:
            raise OptimizerError(f"{type(self).__name__}.load_state_dict: state {name!r} has shape {list(a.shape)}, "
                                 f"its parameter {list(p.shape)}")
        if isinstance(existing, np.ndarray) and existing.shape == p.shape and existing.dtype == p.dtype:
            existing[...] = a
            return existing
        return np.array(a, dtype=p.dtype)

    def _infer_step_count(self) -> int:
        return 1 if self._state else 0

    def __repr__(self):
        lines = [f"{type(self).__name__} (", "Parameter Group 0"]
        lines += [f"    {k}: {v}" for k, v in self.hyper.items()]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """torch.optim.SGD: d_p = g + wd*p; buf = d_p at the first step, else momentum*buf + (1-dampening)*d_p;
    d_p = d_p + momentum*buf (nesterov) or buf; p -= lr * d_p.

    State: 'momentum_buffer' (only with momentum). A compiled step passes `step_count` so that its
    first step sets buf = d_p as torch does, with buffers that ensure_state() allocated as zeros."""

    defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **torch_options):
        _only_defaults(self, torch_options)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    @property
    def state_names(self):
        return ("momentum_buffer",) if self.param_groups[0]["momentum"] != 0 else ()

    def _check(self, hyper):
        hyper = super()._check(hyper)
        if not hyper["momentum"] >= 0.0:
            raise OptimizerError(f"Invalid momentum value: {hyper['momentum']} (must be >= 0)")
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise OptimizerError("Nesterov momentum requires a momentum and zero dampening, got "
                                 f"momentum={hyper['momentum']}, dampening={hyper['dampening']}")
        return hyper

    def _update(self, p, g, state, *, lr, momentum, dampening, weight_decay, nesterov):
        # Same operation order as torch's _single_tensor_sgd (float32 results agree to the last bits).
        d_p = g + weight_decay * p if weight_decay != 0 else g
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d_p.copy()
            elif self.step_count == 0:  # allocated by ensure_state(): torch's first step sets buf = d_p
                buf[...] = d_p
            else:
                buf *= momentum
                buf += (1 - dampening) * d_p
            d_p = d_p + momentum * buf if nesterov else buf
        p -= lr * d_p

    def _infer_step_count(self) -> int:
        # torch keeps no step count for SGD; buffers exist once a step was taken.
        return 1 if any("momentum_buffer" in st for st in self._state.values()) else 0


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad=False): g += wd*p; m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g*g;
    p -= lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps), t = the parameter's step count.

    State: 'step' (int, steps this parameter took), 'exp_avg', 'exp_avg_sq'. A compiled step passes
    `step_count` (t = step_count + 1); count_step() then advances every parameter's 'step'."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, **torch_options):
        _only_defaults(self, torch_options)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check(self, hyper):
        hyper = super()._check(hyper)
        betas = tuple(hyper["betas"])
        if len(betas) != 2:
            raise OptimizerError(f"Invalid betas: expected two numbers, got {hyper['betas']}")
        for k, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise OptimizerError(f"Invalid beta parameter at index {k}: {b} (must be in [0, 1))")
        if not hyper["eps"] >= 0.0:
            raise OptimizerError(f"Invalid epsilon value: {hyper['eps']} (must be >= 0)")
        return {**hyper, "betas": tuple(float(b) for b in betas)}

    def _init_extra_state(self, st):
        st.setdefault("step", self.step_count)

    def count_step(self):
        super().count_step()
        for p in self.params:
            st = self._state_for(p)
            if "exp_avg" in st:
                st["step"] = st.get("step", 0) + 1

    def _update(self, p, g, state, *, lr, betas, eps, weight_decay):
        # Same operation order as torch's _single_tensor_adam.
        beta1, beta2 = betas
        if "exp_avg" not in state:
            state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if weight_decay != 0:
            g = g + weight_decay * p
        w = 1 - beta1  # torch's lerp switches formula at weight 0.5; keep its rounding
        m[...] = m + w * (g - m) if w < 0.5 else g - (g - m) * (1 - w)
        v *= beta2
        v += (1 - beta2) * g * g
        t = state["step"]
        step_size = lr / (1 - beta1 ** t)
        denom = np.sqrt(v) / (1 - beta2 ** t) ** 0.5 + eps
        p += (-step_size) * m / denom

    def _infer_step_count(self) -> int:
        return max((st.get("step", 0) for st in self._state.values()), default=0)


class AdamW(Optimizer):
    """torch.optim.AdamW (amsgrad=False): decoupled weight decay p *= 1 - lr*wd, then Adam's
    update without the L2 term. Same state as Adam ('step', 'exp_avg', 'exp_avg_sq').

    Not an Adam subclass on purpose: a compiled train step folds Adam's weight decay into the
    gradient, which would be wrong for AdamW; compile_train_step rejects AdamW by name."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    state_names = Adam.state_names
    _init_extra_state = Adam._init_extra_state
    count_step = Adam.count_step
    _infer_step_count = Adam._infer_step_count

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, **torch_options):
        _only_defaults(self, torch_options)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check(self, hyper):
        return Adam._check(_AdamChecks(), hyper)

    def _update(self, p, g, state, *, lr, betas, eps, weight_decay):
        if weight_decay != 0:
            p *= 1 - lr * weight_decay  # torch's _single_tensor_adamw: param.mul_(1 - lr * weight_decay)
        Adam._update(self, p, g, state, lr=lr, betas=betas, eps=eps, weight_decay=0.0)


class _AdamChecks(Adam):
    """Adam's hyperparameter checks, for AdamW (which is not an Adam)."""

    def __init__(self):
        pass
