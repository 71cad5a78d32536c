"""The pass manager: runs named graph -> graph passes in order and keeps a snapshot of each stage.

A pass is a function `fn(graph, ctx=None) -> (new_graph, changed)`, registered by name with
`@register_pass("dce")`. `ctx` is a PassContext where a pass leaves notes for the reader (why a
fusion candidate was not fused) and fusion records; called on its own, outside a manager, a
pass gets ctx=None and its notes go nowhere. Plain one-argument callables `fn(graph)` are
accepted too (user passes that have nothing to say).

Every stage is verified. In checked mode (check=True, or GRAPHC_CHECK=1 in the environment)
the manager also runs the reference interpreter before and after each pass on the same random
inputs and raises PassError, naming the pass and the passes before it, when results differ.
"""
from __future__ import annotations

import inspect
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from graphc.ir import Graph, GraphcError, interpret
from graphc.ir.graph import Output

log = logging.getLogger("graphc.passes")


class PassError(GraphcError):
    """A pass broke the graph (invalid IR, or different results in checked mode), or crashed.

    `.pass_name` is the culprit, `.previous` the stages that ran before it, `.graph` its output."""

    def __init__(self, msg: str, pass_name: str = "", previous: tuple[str, ...] = (), graph: Graph | None = None):
        super().__init__(msg)
        self.pass_name, self.previous, self.graph = pass_name, previous, graph


# ------------------------------------------------------------------ notes and fusion records


@dataclass(frozen=True)
class FusionRecord:
    """One fusion candidate: fused (`result` is the new node) or not (`reason` says why)."""

    pass_name: str
    pattern: str  # e.g. "linear+relu"
    nodes: tuple[str, ...]  # the candidate's nodes as IR lines, producer first
    result: str | None = None  # the fused node as an IR line
    reason: str | None = None  # why not fused

    @property
    def fused(self) -> bool:
        return self.result is not None

    def __str__(self) -> str:
        if self.fused:
            return f"{self.pass_name}: fused " + " ; ".join(self.nodes) + f"  ->  {self.result}"
        return f"{self.pass_name}: not fused: {self.reason}"


@dataclass
class PassContext:
    """What a running pass may report besides its graph: free-text notes and fusion records."""

    pass_name: str = ""
    notes: list[str] = field(default_factory=list)
    fusion_records: list[FusionRecord] = field(default_factory=list)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def fused(self, pattern: str, nodes: Iterable[str], result: str) -> None:
        self.fusion_records.append(FusionRecord(self.pass_name, pattern, tuple(nodes), result=result))

    def not_fused(self, pattern: str, nodes: Iterable[str], reason: str) -> None:
        self.fusion_records.append(FusionRecord(self.pass_name, pattern, tuple(nodes), reason=reason))
        self.note(reason)


# ------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable
    takes_ctx: bool
    # For passes that change semantics on purpose (remove_dropout): maps the input graph to one
    # with the intended semantics, which checked mode compares the pass's output against.
    reference: Callable[[Graph], Graph] | None = None
    # For passes that reassociate floating-point sums on purpose (fold_conv_affine scales the
    # weights before a conv's sum instead of the sum): checked mode's atol then scales with each
    # output's largest magnitude (see compare_outputs). Every other pass keeps the plain tolerance.
    reassociates: bool = False


PASSES: dict[str, PassInfo] = {}

# Passes defined in modules this package does not import eagerly (they load on first use).
_LAZY = {"autodiff": ("graphc.passes.autodiff", "autodiff")}


def _takes_ctx(fn: Callable) -> bool:
    """Whether fn wants the PassContext: a second positional parameter, a `ctx` one, or *args."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.name == "ctx" for p in params) or any(p.kind == p.VAR_POSITIONAL for p in params)


def register_pass(name: str, reference: Callable[[Graph], Graph] | None = None, reassociates: bool = False):
    """Decorator: make `fn(graph, ctx=None) -> (graph, changed)` available to pipelines by `name`."""

    def deco(fn):
        if name in PASSES and PASSES[name].fn is not fn:
            raise ValueError(f"pass {name!r} is registered twice ({PASSES[name].fn.__module__} and {fn.__module__})")
        PASSES[name] = PassInfo(name, fn, _takes_ctx(fn), reference, reassociates)
        return fn

    return deco


def get_pass(name: str) -> PassInfo:
    """The registered pass `name`, importing its module on first use; GraphcError if unknown."""
    if name not in PASSES and name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        if name not in PASSES:
            register_pass(name)(getattr(mod, attr))
    if name not in PASSES:
        raise GraphcError(f"unknown pass {name!r}; known passes: {', '.join(known_passes())}")
    return PASSES[name]


def known_passes() -> list[str]:
    return sorted(set(PASSES) | set(_LAZY))


def call_pass(info: PassInfo, graph: Graph, ctx: PassContext | None):
    return info.fn(graph, ctx) if info.takes_ctx else info.fn(graph)


# ------------------------------------------------------------------ snapshots and results


@dataclass(frozen=True)
class Snapshot:
    """One stage of a pipeline: the graph after it and what the stage did."""

    name: str
    graph: Graph
    ir: str
    changed: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    notes: tuple[str, ...] = ()
    fusion_records: tuple[FusionRecord, ...] = ()

    def summary(self) -> str:
        mark = "changed" if self.changed else "unchanged"
        return f"{self.name}: {self.nodes_before} -> {self.nodes_after} nodes, {mark}, {self.seconds * 1e3:.2f} ms"


@dataclass
class PipelineResult:
    graph: Graph
    snapshots: list[Snapshot]
    fusion_records: list[FusionRecord] = field(default_factory=list)

    def __getitem__(self, name: str) -> Snapshot:
        for s in self.snapshots:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.snapshots]}")

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.snapshots]


def unique_name(name: str, taken: Iterable[str]) -> str:
    """`name`, or `name.2`, `name.3`, ... if a stage of that name already ran."""
    taken = set(taken)
    if name not in taken:
        return name
    k = 2
    while f"{name}.{k}" in taken:
        k += 1
    return f"{name}.{k}"


def snapshot(name: str, graph: Graph, changed: bool = False, nodes_before: int | None = None,
             seconds: float = 0.0, notes: Iterable[str] = (), fusion_records: Iterable[FusionRecord] = ()) -> Snapshot:
    n = len(graph.nodes)
    return Snapshot(name, graph, str(graph), changed, n if nodes_before is None else nodes_before, n, seconds,
                    tuple(notes), tuple(fusion_records))


def checking_enabled(check: bool | None) -> bool:
    if check is not None:
        return bool(check)
    return os.environ.get("GRAPHC_CHECK", "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------ the manager


class PassManager:
    """Runs passes (registered names or callables) in order, skipping those named in `disable`."""

    def __init__(self, passes: Iterable[str | Callable], check: bool | None = None, disable: Iterable[str] = ()):
        self.disable = tuple(disable)
        for d in self.disable:
            get_pass(d)  # a typo in `disable` must not silently keep the pass on
        self.passes: list[PassInfo] = []
        for p in passes:
            info = get_pass(p) if isinstance(p, str) else PassInfo(getattr(p, "__name__", "pass"), p, _takes_ctx(p),
                                                                    getattr(p, "reference", None))
            if info.name not in self.disable:
                self.passes.append(info)
        self.check = checking_enabled(check)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, graph: Graph, first_stage: str = "traced", checker: "Checker | None" = None) -> PipelineResult:
        graph.verify()
        snaps = [snapshot(first_stage, graph)]
        records: list[FusionRecord] = []
        checker = checker or (Checker(graph) if self.check else None)
        for info in self.passes:
            name = unique_name(info.name, [s.name for s in snaps])
            graph, snap = run_one(info, graph, name, [s.name for s in snaps], checker)
            snaps.append(snap)
            records.extend(snap.fusion_records)
        return PipelineResult(graph, snaps, records)


def run_one(info: PassInfo, graph: Graph, stage: str, previous: list[str], checker: "Checker | None"):
    """Run one pass as stage `stage`; return (new graph, its Snapshot). Raises PassError."""
    ctx = PassContext(info.name)
    t0 = time.perf_counter()
    try:
        result = call_pass(info, graph, ctx)
    except GraphcError as e:
        e.add_note(f"(in pass {info.name!r}, after {' -> '.join(previous)})")
        raise
    except Exception as e:
        raise PassError(f"pass {info.name!r} crashed ({type(e).__name__}: {e}); passes before it: "
                        f"{' -> '.join(previous)}\ninput IR:\n{graph}", info.name, tuple(previous), graph) from e
    seconds = time.perf_counter() - t0
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Graph)):
        raise PassError(f"pass {info.name!r} must return (Graph, changed: bool), got {type(result).__name__}",
                        info.name, tuple(previous))
    new, changed = result
    changed = bool(changed)
    where = f"pass {info.name!r} (stage {stage!r}, after {' -> '.join(previous)})"
    prev = tuple(previous)
    try:
        new.verify()
    except GraphcError as e:
        raise PassError(f"{where} produced invalid IR: {e}\nIR after the pass:\n{new}", info.name, prev, new) from None
    # Stamp the graph with what produced it (meta is not part of equality or the text form).
    new = new.replace(meta={**new.meta, "stage": stage, "produced_by": info.name, "seconds": seconds})
    if checker is not None:
        problem = checker.check(info, graph, new, changed)
        if problem:
            raise PassError(f"{where} {problem}", info.name, prev, new)
    log.debug("%s: %.3f ms, %d -> %d nodes%s", stage, seconds * 1e3, len(graph.nodes), len(new.nodes),
              "" if changed else " (unchanged)")
    for n in ctx.notes:
        log.debug("%s: note: %s", stage, n)
    return new, snapshot(stage, new, changed, len(graph.nodes), seconds, ctx.notes, ctx.fusion_records)


# ------------------------------------------------------------------ checked mode


def _class_count(g: Graph, value: str) -> int | None:
    """How many classes an i64 label value indexes, from the op that consumes it."""
    for n in g.users.get(value, ()):
        for k, i in enumerate(n.inputs):
            if i != value:
                continue
            if n.op in ("nll_loss", "cross_entropy") and k == 1:
                return g.types[n.inputs[0]].shape[1]
            if n.op == "cross_entropy_backward" and k == 2:
                return g.types[n.inputs[1]].shape[1]
            if n.op == "nll_loss_backward" and k == 1:
                return n.attr["classes"]
    return None


def random_input(g: Graph, name: str) -> np.ndarray:
    """A deterministic random value for input `name` (seeded by the name, so order does not matter)."""
    inp = g.input_by_name[name]
    t = inp.type
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if t.dtype == "i64":
        if inp.kind == "rng":
            return np.asarray(rng.integers(0, 2**62), dtype=np.int64).reshape(t.shape)
        classes = _class_count(g, name) or 2
        return rng.integers(0, classes, size=t.shape).astype(np.int64)
    if inp.kind == "hyper":  # lr, betas, eps, ...: in [0, 1) as real ones are
        return np.asarray(rng.uniform(0.01, 0.5), dtype=t.np_dtype).reshape(t.shape)
    x = rng.standard_normal(t.shape)
    # Optimizer state and module buffers are non-negative where it matters (Adam's exp_avg_sq,
    # BatchNorm's running_var go under a square root).
    return (np.abs(x) if inp.kind in ("state", "buffer") else x).astype(t.np_dtype)


def run_reference(g: Graph, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    for i in g.inputs:
        v = values.get(i.name)
        if v is None or v.shape != i.type.shape or v.dtype != i.type.np_dtype:
            values[i.name] = random_input(g, i.name)
    with np.errstate(all="ignore"):
        return interpret(g, {i.name: values[i.name] for i in g.inputs})


def _tolerance(dtype) -> dict:
    return {"rtol": 1e-4, "atol": 1e-5} if np.dtype(dtype) == np.float32 else {"rtol": 1e-9, "atol": 1e-12}


def compare_outputs(before: Sequence[Output], want: list, after: Sequence[Output], got: list,
                    scale_atol: bool = False) -> str | None:
    """None if the `after` outputs' leading values equal the `before` ones, else the first difference.

    A pass may append outputs (autodiff adds gradients) but not drop or reorder them. With
    `scale_atol` (a pass registered with reassociates=True) a float output's atol is multiplied by
    its largest finite magnitude: a reassociated sum of k terms differs from the original by
    rounding errors of its terms, about eps * sqrt(k) * max|term|, and the output's largest value
    stands for max|term| where a cancelling element is near 0 (LeNet-sized f32 convs on checked
    mode's random inputs reach 1e5 and moved a cancelling element by 0.3 under fold_conv_affine)."""
    if len(got) < len(want):
        return f"the graph had {len(want)} outputs before and has {len(got)} after"
    for k, (a, b) in enumerate(zip(want, got)):
        label = before[k].label
        what = f"output {k} (%{before[k].value}{' as ' + label if label else ''} -> %{after[k].value})"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{what}: expected {a.dtype}{list(a.shape)}, got {b.dtype}{list(b.shape)}"
        if a.dtype.kind == "f":
            tol = _tolerance(a.dtype)
            if scale_atol:
                finite = np.abs(a[np.isfinite(a)])
                tol["atol"] *= max(1.0, float(finite.max()) if finite.size else 1.0)
            ok = np.allclose(a, b, equal_nan=True, **tol)
        else:
            ok = np.array_equal(a, b)
        if not ok:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            diff = np.where(np.isnan(diff), np.inf, diff)
            return f"{what}: values differ (max abs difference {diff.max():.3g}; expected {_head(a)}, got {_head(b)})"
    return None


def _head(a: np.ndarray) -> str:
    flat = a.reshape(-1)[:4]
    return "[" + ", ".join(f"{x:.6g}" if a.dtype.kind == "f" else str(x) for x in flat) + (", ...]" if a.size > 4 else "]")


class Checker:
    """Checked mode: interpret each stage on the same random inputs and compare with the stage before."""

    def __init__(self, graph: Graph):
        self.values: dict[str, np.ndarray] = {}
        self._last: tuple[Graph, list] | None = None
        self.outputs(graph)

    def outputs(self, g: Graph) -> list:
        if self._last is not None and self._last[0] is g:
            return self._last[1]
        outs = run_reference(g, self.values)
        self._last = (g, outs)
        return outs

    def check(self, info: PassInfo, before: Graph, after: Graph, changed: bool) -> str | None:
        """None if `after` is a faithful rewrite of `before`, else what is wrong (with both IRs)."""
        if not changed:
            if after != before:
                return f"reported changed=False but changed the graph\nIR after the pass:\n{after}"
            if not info.reference:  # the same graph: the same results, no need to interpret it again
                self._last = (after, self.outputs(before))
                return None
        oracle = info.reference(before) if info.reference else before
        want = self.outputs(before) if oracle is before else run_reference(oracle, self.values)
        try:
            got = self.outputs(after)
        except GraphcError as e:
            return f"produced a graph the reference interpreter fails on: {e}\nIR after the pass:\n{after}"
        problem = compare_outputs(oracle.outputs, want, after.outputs, got, scale_atol=info.reassociates)
        if problem:
            return f"changed the results: {problem}\nIR before the pass:\n{before}\nIR after the pass:\n{after}"
        return None
