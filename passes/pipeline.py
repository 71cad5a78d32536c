"""The compile pipeline: the default pass lists and `compile_pipeline`, which the face calls.

    traced graph -> decompose -> clean-ups -> fusion -> (autodiff -> clean-ups -> partition)  mode="training"
                                                    -> (build_train_step -> clean-ups)       mode="train_step"
                 -> decompose -> clean-ups -> remove_dropout -> fusion -> clean-ups         mode="inference"
    then each plan -> kernels (passes/kernels.py): the kernel stage the runtime compiles

Every stage is kept as a Snapshot ("traced", one per pass, then the plan stages
"forward_plan", "backward_plan" or "train_step_plan"), so each can be printed and inspected.
Fusion runs before autodiff: the VJP of a fused `linear_relu` is one fused
`linear_backward {relu=true}`, so the backward is fused for free.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from graphc.ir import Graph, GraphcError

from .manager import Checker, FusionRecord, PassError, PassManager, Snapshot, checking_enabled, compare_outputs, \
    run_reference, snapshot, unique_name

CLEANUP_PIPELINE = ("fold_constants", "simplify", "cse", "dce")
FUSION_PIPELINE = ("canonicalize_linear", "fuse_linear_relu", "fuse_conv_relu", "fuse_cross_entropy", "lower_conv")
INFERENCE_PIPELINE = ("decompose", *CLEANUP_PIPELINE, "remove_dropout", "fold_conv_affine", *FUSION_PIPELINE,
                      *CLEANUP_PIPELINE)
TRAINING_PIPELINE = ("decompose", *CLEANUP_PIPELINE, *FUSION_PIPELINE, "autodiff", *CLEANUP_PIPELINE)
# "build_train_step" is a stage of compile_pipeline (it needs the optimizer), not a registered pass.
TRAIN_STEP_PIPELINE = ("decompose", *CLEANUP_PIPELINE, *FUSION_PIPELINE, "build_train_step", *CLEANUP_PIPELINE)

PIPELINES = {"inference": INFERENCE_PIPELINE, "training": TRAINING_PIPELINE, "train_step": TRAIN_STEP_PIPELINE}
# The stage each mode cannot do without (switching it off would compile something else).
_ESSENTIAL = {"training": "autodiff", "train_step": "build_train_step"}


@dataclass
class CompiledPlans:
    """What the pipeline hands the runtime: the plan graphs and every stage that led to them.

    forward: the inference graph (inference), the forward plan (training), or the optimized
    forward+loss graph the train step was built from (train_step).
    backward: the backward plan (training only); train_step: the one-graph train step
    (train_step only); ledger: the saved values between forward and backward, a list of
    partition.SavedValue (training only); partition: the whole partition.Partition (training
    only: also the recomputed values and `format_ledger()`)."""

    mode: str
    stages: list[Snapshot]
    forward: Graph
    backward: Graph | None = None
    train_step: Graph | None = None
    ledger: Any = None
    fusion_records: list[FusionRecord] = field(default_factory=list)
    partition: Any = None

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Snapshot:
        for s in self.stages:
            if s.name == name:
                return s
        raise GraphcError(f"no stage {name!r}; stages: {', '.join(self.stage_names)}")

    def graph(self, name: str) -> Graph:
        return self.stage(name).graph

    def ir(self, name: str) -> str:
        return self.stage(name).ir


def default_pipeline(mode: str) -> tuple[str, ...]:
    _check_mode(mode)
    return PIPELINES[mode]


def _check_mode(mode: str) -> None:
    if mode not in PIPELINES:
        raise GraphcError(f"mode={mode!r}: expected one of {', '.join(repr(m) for m in PIPELINES)}")


def _train_step_stage(optimizer) -> Callable:
    def build_train_step(g: Graph, ctx=None):
        from .train_step import build_train_step as build

        return build(g, optimizer), True

    return build_train_step


def _all_reduce_stage(distributed) -> Callable:
    def all_reduce_gradients(g: Graph, ctx=None):
        from .distributed import all_reduce_gradients as insert

        return insert(g, distributed, ctx), True

    return all_reduce_gradients


def _clip_stage(max_norm: float) -> Callable:
    from .clip_grad import clip_gradients

    def clip_grad_norm(g: Graph, ctx=None):
        return clip_gradients(g, max_norm, ctx), True

    # it changes the updates on purpose: checked mode compares it with the clipped graph itself
    # (what it means is tested against torch's clip_grad_norm_, tests/test_transformer.py)
    clip_grad_norm.reference = lambda g: clip_gradients(g, max_norm)
    return clip_grad_norm


def compile_pipeline(graph: Graph, mode: str = "inference", optimizer=None, passes: Iterable | None = None,
                     disable: Iterable[str] = (), check: bool | None = None, distributed=None,
                     clip_grad_norm: float | None = None) -> CompiledPlans:
    """Run the passes for `mode` on a traced graph and build the plans.

    mode: "inference" (eval-mode forward), "training" (forward and backward plans; the graph's
    outputs may be model outputs, whose gradients come in as `grad` inputs of the backward, or
    one scalar loss) or "train_step" (graph = forward + scalar loss; `optimizer` is an
    OptimizerSpec; one graph does forward, backward and the parameter updates).
    distributed: a passes.distributed.DistributedSpec (train_step only): the gradients are averaged
    across ranks by all_reduce nodes, inserted right after build_train_step.
    clip_grad_norm: a max_norm (train_step only): the gradients (averaged, when distributed) are
    clipped to that total 2-norm before the updates (passes/clip_grad.py).
    passes: a custom list of pass names or callables replacing the mode's default list;
    disable: pass names to skip; check: checked mode (default: GRAPHC_CHECK in the environment).
    """
    _check_mode(mode)
    disable = tuple(disable)
    names = list(passes) if passes is not None else list(PIPELINES[mode])
    essential = _ESSENTIAL.get(mode)
    if essential in disable:
        raise GraphcError(f"mode={mode!r} cannot run without the {essential!r} stage; it is what the mode means")
    if essential and essential not in names:
        raise GraphcError(f"mode={mode!r} needs {essential!r} in the pass list; got {names}")
    if mode == "train_step":
        if optimizer is None:
            raise GraphcError("mode='train_step' needs an optimizer (an OptimizerSpec)")
        names = [_train_step_stage(optimizer) if p == "build_train_step" else p for p in names]
        k = next((k for k, p in enumerate(names) if getattr(p, "__name__", None) == "build_train_step"), None)
        if distributed is not None:
            names.insert(k + 1, _all_reduce_stage(distributed))
            k += 1
        if clip_grad_norm is not None:
            names.insert(k + 1, _clip_stage(clip_grad_norm))
    elif distributed is not None:
        raise GraphcError(f"distributed= needs mode='train_step', got mode={mode!r}")
    elif clip_grad_norm is not None:
        raise GraphcError(f"clip_grad_norm= needs mode='train_step', got mode={mode!r}")

    check = checking_enabled(check)
    checker = Checker(graph) if check else None
    result = PassManager(names, check=check, disable=disable).run(graph, checker=checker)
    stages, g = list(result.snapshots), result.graph
    plans = CompiledPlans(mode, stages, forward=g, fusion_records=list(result.fusion_records))

    taken = [s.name for s in stages]
    if mode == "inference":
        stages.append(snapshot(unique_name("forward_plan", taken), g))
        plans.forward = _kernel_stage(plans, g, "kernels", check, disable)
    elif mode == "train_step":
        plans.train_step = g
        plans.forward = _before_stage(stages, "build_train_step")
        stages.append(snapshot(unique_name("train_step_plan", taken), g))
        plans.train_step = _kernel_stage(plans, g, "kernels", check, disable)
    else:
        _partition(plans, g, checker, taken)
        if plans.backward is not None:
            plans.forward = _kernel_stage(plans, plans.forward, "forward_kernels", check, disable)
            plans.backward = _kernel_stage(plans, plans.backward, "backward_kernels", check, disable)
    return plans


def _kernel_stage(plans: CompiledPlans, plan: Graph, name: str, check: bool, disable) -> Graph:
    """Run the kernel pass (passes/kernels.py) on a plan as stage `name`; the plan the runtime
    compiles is its result. Checked mode compares it with the plan on the interpreter."""
    if "kernels" in disable:
        return plan
    from .kernels import kernels  # noqa: F401  (registers the pass)
    from .manager import get_pass, run_one

    taken = [s.name for s in plans.stages]
    new, snap = run_one(get_pass("kernels"), plan, unique_name(name, taken), taken, Checker(plan) if check else None)
    plans.stages.append(snap)
    plans.fusion_records.extend(snap.fusion_records)
    if "parallel" not in disable:  # the thread split of the kernels (passes/parallel.py)
        from . import parallel  # noqa: F401  (registers the pass)

        taken.append(snap.name)
        stage = unique_name(name.replace("kernels", "threads"), taken)
        new, snap = run_one(get_pass("parallel"), new, stage, taken, Checker(new) if check else None)
        plans.stages.append(snap)
    return new


def _before_stage(stages: list[Snapshot], name: str) -> Graph:
    """The graph that went into stage `name`."""
    for prev, s in zip(stages, stages[1:]):
        if s.name == name:
            return prev.graph
    raise GraphcError(f"no stage {name!r}")


def _partition(plans: CompiledPlans, joint: Graph, checker: Checker | None, taken: list[str]) -> None:
    from .autodiff import is_joint
    from .partition import partition

    if not is_joint(joint):
        raise GraphcError(f"mode='training': the pipeline produced no gradients (no autodiff stage ran?)\n{joint}")
    t0 = time.perf_counter()
    try:
        part = partition(joint)
    except GraphcError as e:
        e.add_note(f"(in partition, after {' -> '.join(taken)})")
        raise
    seconds = time.perf_counter() - t0
    for name, g in (("forward", part.forward), ("backward", part.backward)):
        try:
            g.verify()
        except GraphcError as e:
            raise PassError(f"partition produced an invalid {name} plan (after {' -> '.join(taken)}): {e}\n{g}",
                            "partition", tuple(taken), g) from None
    if checker is not None:
        problem = check_partition(joint, part, checker)
        if problem:
            raise PassError(f"partition (after {' -> '.join(taken)}) {problem}", "partition", tuple(taken), part.forward)
    plans.forward, plans.backward, plans.ledger, plans.partition = part.forward, part.backward, part.ledger, part
    n = len(joint.nodes)
    fwd = snapshot(unique_name("forward_plan", taken), part.forward, True, n, seconds)
    bwd = snapshot(unique_name("backward_plan", taken), part.backward, True, n, 0.0)
    plans.stages += [fwd, bwd]


def check_partition(joint: Graph, part, checker: Checker) -> str | None:
    """Run the forward plan, then the backward plan on its saved values, on the checker's inputs;
    None if they give the joint graph's outputs and gradients, else what differs (with the IR)."""
    want = checker.outputs(joint)
    fwd_want = [(o, v) for o, v in zip(joint.outputs, want) if not _is_grad(o)]
    grad_want = [(o, v) for o, v in zip(joint.outputs, want) if _is_grad(o)]
    fwd_got = run_reference(part.forward, checker.values)
    saved = {o.value: v for o, v in zip(part.forward.outputs, fwd_got) if o.label == "saved"}
    problem = _compare(fwd_want, part.forward, fwd_got, "forward plan")
    if problem:
        return problem
    values = {**checker.values, **saved}
    bwd_got = run_reference(part.backward, values)
    return _compare(grad_want, part.backward, bwd_got, "backward plan")


def _is_grad(o) -> bool:
    return bool(o.label) and o.label.startswith("grad:")


def _compare(want: list, plan: Graph, got: list, what: str) -> str | None:
    """`want` (joint output, value) pairs against the plan's leading outputs, label by label."""
    labels = [o.label for o, _ in want]
    if [o.label for o in plan.outputs[:len(want)]] != labels:
        return f"gives {what} outputs {[o.label for o in plan.outputs]}, expected {labels} first\n{plan}"
    problem = compare_outputs([o for o, _ in want], [v for _, v in want], plan.outputs, got)
    return f"changed the results of the {what}: {problem}\n{plan}" if problem else None
