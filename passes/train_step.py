"""The train-step graph: forward, loss, backward and the optimizer update, as one graph.

The graph is built in two clear parts: the joint graph (forward, loss, then the gradients
labelled "grad:<param>"), then one update node per trained param reading that gradient. A
pass that changes gradients before they are applied (an all-reduce across processes,
clipping) goes between the two: it rewrites the "grad:" values that `build_train_step` reads.

Inputs: the loss graph's inputs, then the optimizer state (kind "state"): per param
`state.<param>.momentum_buffer` (SGD with momentum) or `state.<param>.exp_avg` and
`state.<param>.exp_avg_sq` (Adam, AdamW), and per parameter group `state.group<k>.step`
(i64[], steps that group already took); then the hyperparameters (kind "hyper"), per group
`hyper.group<k>.<name>` (f64[]: lr, momentum, dampening, weight_decay / lr, beta1, beta2, eps,
weight_decay). Hyperparameters are runtime values: a train step copies them from the
optimizer's param_groups before each call, so changing lr never recompiles. Only the structure
(which terms exist: momentum != 0, nesterov, weight_decay != 0, decoupled) is fixed per graph.
Outputs: the loss ("loss"), each param's new value ("update:<param>"), each new state value
("update:state.<...>"). The runtime writes every "update:" output back into the buffer of the
input it names, so one call of the graph is one `optimizer.step()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphc.ir import Graph, GraphBuilder, GraphcError, Node, Output, TensorType, get_op
from graphc.ir.graph import KERNEL
from graphc.ir.ops import ADAM_SCALARS, SGD_SCALARS

from .autodiff import GRAD_PREFIX, grad_graph, is_joint

UPDATE_PREFIX = "update:"
HYPER = TensorType((), "f64")

# torch.optim's defaults; the keys a group accepts.
_DEFAULTS = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
}


def _check_group(kind: str, hyper: dict) -> dict:
    unknown = sorted(set(hyper) - set(_DEFAULTS[kind]))
    if unknown:
        raise GraphcError(f"{kind}: unknown hyperparameter(s) {unknown}; expected {sorted(_DEFAULTS[kind])}")
    h = {**_DEFAULTS[kind], **hyper}
    if kind in ("adam", "adamw"):
        betas = tuple(float(x) for x in h["betas"])
        if len(betas) != 2 or not all(0.0 <= x < 1.0 for x in betas):
            raise GraphcError(f"{kind}: betas must be two numbers in [0, 1), got {h['betas']}")
        h["betas"] = betas
        if not h["eps"] >= 0:
            raise GraphcError(f"{kind}: eps must be >= 0, got {h['eps']}")
    else:
        if not h["momentum"] >= 0:
            raise GraphcError(f"sgd: momentum must be >= 0, got {h['momentum']}")
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise GraphcError(f"sgd: nesterov momentum requires a momentum and zero dampening, "
                              f"got momentum={h['momentum']}, dampening={h['dampening']}")
    if not (h["lr"] >= 0 and h["weight_decay"] >= 0):
        raise GraphcError(f"{kind}: lr and weight_decay must be >= 0, got lr={h['lr']}, weight_decay={h['weight_decay']}")
    return h


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimizer, its parameter groups' hyperparameters, and which group each param is in.

    kind: "sgd" (lr, momentum, dampening, weight_decay, nesterov), "adam" or "adamw" (lr, betas,
    eps, weight_decay), torch.optim's names and defaults. `hyper` is the one group's settings;
    `groups` (instead) one dict per group, and `group_of` maps param names to their group
    (params not named are in group 0). The values only seed the plan's hyper inputs: what is
    compiled in is the structure (`structure()`).
    """

    kind: str
    hyper: dict = field(default_factory=dict)
    groups: tuple = ()
    group_of: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in _DEFAULTS:
            raise GraphcError(f"optimizer kind {self.kind!r} is not supported; expected one of {sorted(_DEFAULTS)}")
        if self.groups and self.hyper:
            raise GraphcError("OptimizerSpec: give `hyper` (one group) or `groups`, not both")
        groups = tuple(_check_group(self.kind, dict(h)) for h in (self.groups or (self.hyper,)))
        bad = sorted(n for n, k in self.group_of.items() if not 0 <= k < len(groups))
        if bad:
            raise GraphcError(f"OptimizerSpec: params {bad} are in groups that do not exist ({len(groups)} groups)")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "hyper", groups[0])

    def state_names(self, group: int = 0) -> tuple[str, ...]:
        """Per-param state of a group's params, named as in torch's optimizer.state[p]."""
        if self.kind in ("adam", "adamw"):
            return ("exp_avg", "exp_avg_sq")
        return ("momentum_buffer",) if self.groups[group]["momentum"] else ()

    def update_attrs(self, group: int = 0) -> dict:
        """The structure of a group's update op: which terms exist (torch's own `if` tests)."""
        h = self.groups[group]
        if self.kind in ("adam", "adamw"):
            return {"weight_decay": h["weight_decay"] != 0, "decoupled": self.kind == "adamw"}
        return {"momentum": h["momentum"] != 0, "nesterov": bool(h["nesterov"]), "weight_decay": h["weight_decay"] != 0}

    def structure(self) -> tuple:
        """What a compiled step is specialised on (hyperparameter values are not part of it)."""
        return (self.kind, tuple(tuple(sorted(self.update_attrs(k).items())) for k in range(len(self.groups))))

    def scalars(self, group: int = 0) -> dict[str, float]:
        """The group's hyperparameters as the update op's f64 scalar inputs, in operand order."""
        h = self.groups[group]
        if self.kind in ("adam", "adamw"):
            h = {**h, "beta1": h["betas"][0], "beta2": h["betas"][1]}
            return {k: float(h[k]) for k in ADAM_SCALARS}
        return {k: float(h[k]) for k in SGD_SCALARS}


def state_input(param: str, name: str) -> str:
    return f"state.{param}.{name}"


def step_input(group: int) -> str:
    return f"state.group{group}.step"


def hyper_input(group: int, name: str) -> str:
    return f"hyper.group{group}.{name}"


def hyper_values(spec: OptimizerSpec) -> dict[str, np.ndarray]:
    """The hyper inputs of `spec`'s train-step graph, filled with its values (f64[] arrays)."""
    return {hyper_input(k, n): np.asarray(v, np.float64) for k in range(len(spec.groups)) for n, v in spec.scalars(k).items()}


def is_update(n: Node) -> bool:
    """Whether `n` applies an optimizer update (reading its param as operand 0 and its gradient as
    operand 1): the op table's "optimizer" tag. A kernel node of the kernel stage has no tags of its
    own, and updates are never kernel members (sgd_update/adam_update are opaque), so the gradients
    they read stay visible and passes find the same updates before and after the kernel stage."""
    return n.op != KERNEL and "optimizer" in get_op(n.op).tags


def build_train_step(g: Graph, spec: OptimizerSpec) -> Graph:
    """One graph for a whole training step of `g` (a scalar loss graph, or its joint graph).

    Params that the loss does not reach get no gradient and are not updated, as torch skips
    params whose .grad is None. Groups are listed even when none of their params is trained,
    so the inputs depend on the spec's structure only.
    """
    joint = g if is_joint(g) else grad_graph(g)
    fwd_outs = [o for o in joint.outputs if not (o.label and o.label.startswith(GRAD_PREFIX))]
    buffer_updates = _buffer_updates(fwd_outs)
    fwd_outs = [o for o in fwd_outs if o not in buffer_updates]
    if len(fwd_outs) != 1 or joint.types[fwd_outs[0].value].shape != () or not joint.types[fwd_outs[0].value].is_float:
        raise GraphcError(f"build_train_step: graph {g.name} must have one output, a float scalar loss; "
                          f"found {[f'%{o.value}: {joint.types[o.value]}' for o in fwd_outs]}")
    if any(i.kind == "grad" for i in joint.inputs):
        raise GraphcError(f"build_train_step: graph {g.name} has gradient seed inputs; the train step seeds the loss with 1")
    # part 1: the gradients, as the joint graph left them
    grads = {o.label[len(GRAD_PREFIX):]: o.value for o in joint.outputs if o.label and o.label.startswith(GRAD_PREFIX)}
    params = [i for i in joint.inputs if i.kind == "param" and i.name in grads]
    group = {p.name: spec.group_of.get(p.name, 0) for p in params}
    n_groups = len(spec.groups)

    b = GraphBuilder(joint.name, like=joint)
    for i in joint.inputs:
        b.add_input(i.name, i.type, i.kind)
    for p in params:
        for s in spec.state_names(group[p.name]):
            b.add_input(state_input(p.name, s), p.type, "state")
    for k in range(n_groups):
        b.add_input(step_input(k), TensorType((), "i64"), "state")
    for k in range(n_groups):
        for name in spec.scalars(k):
            b.add_input(hyper_input(k, name), HYPER, "hyper")
    for n in joint.nodes:
        b.add_node(n)

    # part 2: one update per trained param, reading its gradient and its group's hyperparameters
    b.phase = "optimizer"
    outputs = [Output(fwd_outs[0].value, "loss")] + buffer_updates  # the forward's outputs keep their places
    new_state = []
    op = "sgd_update" if spec.kind == "sgd" else "adam_update"
    for p in params:
        k = group[p.name]
        state = [state_input(p.name, s) for s in spec.state_names(k)]
        scalars = [hyper_input(k, name) for name in spec.scalars(k)]
        if op == "sgd_update":
            operands = [p.name, grads[p.name], *scalars] + (state + [step_input(k)] if state else [])
        else:
            operands = [p.name, grads[p.name], *state, step_input(k), *scalars]
        res = b.emit(op, operands, spec.update_attrs(k))
        res = res if isinstance(res, tuple) else (res,)
        outputs.append(Output(res[0], UPDATE_PREFIX + p.name))
        new_state += [Output(v, UPDATE_PREFIX + s) for v, s in zip(res[1:], state)]
    for k in range(n_groups):
        one = b.emit("full", [], {"shape": (), "value": 1.0, "dtype": "i64"})
        new_state.append(Output(b.emit("add", [step_input(k), one]), UPDATE_PREFIX + step_input(k)))

    meta = dict(joint.meta, training=True, optimizer={"kind": spec.kind, "structure": spec.structure()})
    return b.build(outputs + new_state, meta).verify()


def _buffer_updates(outputs) -> list[Output]:
    """The forward's "update:<buffer>" outputs (BatchNorm's running statistics): the step keeps
    them as they are, so the runtime writes them back with the optimizer's updates."""
    return [o for o in outputs if o.label and o.label.startswith(UPDATE_PREFIX)]
