"""The train-step graph: forward, loss, backward and the optimizer update, as one graph.

Inputs: the loss graph's inputs, then the optimizer state (kind "state"): per param
`state.<param>.momentum_buffer` (SGD with momentum) or `state.<param>.exp_avg` and
`state.<param>.exp_avg_sq` (Adam), and `state.step` (i64[], steps already taken).
Outputs: the loss ("loss"), each param's new value ("update:<param>"), each new state value
("update:state.<...>"). The runtime writes every "update:" output back into the buffer of the
input it names, so one call of the graph is one `optimizer.step()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import Graph, GraphBuilder, GraphcError, Output, TensorType

from .autodiff import GRAD_PREFIX, grad_graph, is_joint

UPDATE_PREFIX = "update:"
STEP = "state.step"

# torch.optim's defaults; the keys a spec accepts.
_DEFAULTS = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
}


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimizer and its hyperparameters, with torch.optim's names and defaults.

    sgd: lr, momentum, dampening, weight_decay, nesterov.  adam: lr, betas, eps, weight_decay.
    `hyper` is completed with the defaults and checked as torch checks it.
    """

    kind: str
    hyper: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in _DEFAULTS:
            raise GraphcError(f"optimizer kind {self.kind!r} is not supported; expected one of {sorted(_DEFAULTS)}")
        unknown = sorted(set(self.hyper) - set(_DEFAULTS[self.kind]))
        if unknown:
            raise GraphcError(f"{self.kind}: unknown hyperparameter(s) {unknown}; expected {sorted(_DEFAULTS[self.kind])}")
        h = {**_DEFAULTS[self.kind], **self.hyper}
        if self.kind == "adam":
            betas = tuple(float(x) for x in h["betas"])
            if len(betas) != 2 or not all(0.0 <= x < 1.0 for x in betas):
                raise GraphcError(f"adam: betas must be two numbers in [0, 1), got {h['betas']}")
            h["betas"] = betas
            if h["eps"] < 0:
                raise GraphcError(f"adam: eps must be >= 0, got {h['eps']}")
        else:
            if h["momentum"] < 0:
                raise GraphcError(f"sgd: momentum must be >= 0, got {h['momentum']}")
            if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
                raise GraphcError(f"sgd: nesterov momentum requires a momentum and zero dampening, "
                                  f"got momentum={h['momentum']}, dampening={h['dampening']}")
        if h["lr"] < 0 or h["weight_decay"] < 0:
            raise GraphcError(f"{self.kind}: lr and weight_decay must be >= 0, got lr={h['lr']}, weight_decay={h['weight_decay']}")
        object.__setattr__(self, "hyper", h)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Per-param state, named as in torch's optimizer.state[p]."""
        if self.kind == "adam":
            return ("exp_avg", "exp_avg_sq")
        return ("momentum_buffer",) if self.hyper["momentum"] else ()

    def update_attrs(self) -> dict:
        """The attributes of this optimizer's update op."""
        h = self.hyper
        if self.kind == "adam":
            return {"lr": h["lr"], "beta1": h["betas"][0], "beta2": h["betas"][1], "eps": h["eps"],
                    "weight_decay": h["weight_decay"]}
        return {k: h[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov")}


def state_input(param: str, name: str) -> str:
    return f"state.{param}.{name}"


def build_train_step(g: Graph, spec: OptimizerSpec) -> Graph:
    """One graph for a whole training step of `g` (a scalar loss graph, or its joint graph).

    Params that the loss does not reach get no gradient and are not updated, as torch skips
    params whose .grad is None.
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
    grads = {o.label[len(GRAD_PREFIX):]: o.value for o in joint.outputs if o.label and o.label.startswith(GRAD_PREFIX)}
    params = [i for i in joint.inputs if i.kind == "param" and i.name in grads]

    b = GraphBuilder(joint.name, like=joint)
    for i in joint.inputs:
        b.add_input(i.name, i.type, i.kind)
    for p in params:
        for s in spec.state_names:
            b.add_input(state_input(p.name, s), p.type, "state")
    b.add_input(STEP, TensorType((), "i64"), "state")
    for n in joint.nodes:
        b.add_node(n)

    outputs = [Output(fwd_outs[0].value, "loss")] + buffer_updates  # the forward's outputs keep their places
    new_state = []
    op = "sgd_update" if spec.kind == "sgd" else "adam_update"
    for p in params:
        state = [state_input(p.name, s) for s in spec.state_names]
        operands = [p.name, grads[p.name]] + state + ([STEP] if state else [])
        res = b.emit(op, operands, spec.update_attrs())
        res = res if isinstance(res, tuple) else (res,)
        outputs.append(Output(res[0], UPDATE_PREFIX + p.name))
        new_state += [Output(v, UPDATE_PREFIX + s) for v, s in zip(res[1:], state)]
    one = b.emit("full", [], {"shape": (), "value": 1.0, "dtype": "i64"})
    new_state.append(Output(b.emit("add", [STEP, one]), UPDATE_PREFIX + STEP))

    meta = dict(joint.meta, training=True, optimizer={"kind": spec.kind, **spec.hyper})
    return b.build(outputs + new_state, meta).verify()


def _buffer_updates(outputs) -> list[Output]:
    """The forward's "update:<buffer>" outputs (BatchNorm's running statistics): the step keeps
    them as they are, so the runtime writes them back with the optimizer's updates."""
    return [o for o in outputs if o.label and o.label.startswith(UPDATE_PREFIX)]
