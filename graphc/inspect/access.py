"""Uniform read access to what can be inspected: a Graph, a pipeline result, a CompiledModule or a TrainStep.

Reports and dumps only read; they never import the compiler. Each accessor looks for the
attribute the compiler exposes (`.plans.stages`, `.plans.ledger`, `.plans.fusion_records`,
`.executables[*].memory_plan`) and falls back to what can be derived from a bare graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from graphc.ir import Graph, GraphcError


@dataclass(frozen=True)
class Stage:
    """A stage as reports see it (the same fields as the pass manager's Snapshot)."""

    name: str
    graph: Graph | None
    ir: str
    changed: bool | None = None
    nodes_before: int | None = None
    nodes_after: int | None = None
    seconds: float | None = None
    notes: tuple[str, ...] = ()


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` present on obj (attribute or mapping key) and not None."""
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v is not None:
            return v
    return default


def _as_stage(s: Any, obj: Any = None) -> Stage:
    if isinstance(s, Stage):
        return s
    if isinstance(s, str):  # a stage name: ask the compiled object for its graph and text
        g = obj.graph(s) if callable(getattr(obj, "graph", None)) else None
        ir = obj.ir(s) if callable(getattr(obj, "ir", None)) else (str(g) if g is not None else "")
        return Stage(s, g, ir, nodes_after=len(g.nodes) if g is not None else None)
    g = _field(s, "graph")
    ir = _field(s, "ir", default=str(g) if g is not None else "")
    notes = tuple(str(n) for n in (_field(s, "notes", default=()) or ()))
    return Stage(str(_field(s, "name", default="?")), g, ir, _field(s, "changed"), _field(s, "nodes_before"),
                 _field(s, "nodes_after", default=len(g.nodes) if g is not None else None),
                 _field(s, "seconds"), notes)


def plans_of(obj: Any) -> Any:
    """The compiler's plans object (CompiledPlans), or None for a bare graph."""
    if isinstance(obj, Graph):
        return None
    return _field(obj, "plans", "_plans")


def stages(obj: Any) -> list[Stage]:
    """Every stage in pipeline order, for a Graph (one stage), a pipeline result or a compiled object."""
    if isinstance(obj, Graph):
        return [Stage(str(obj.meta.get("stage", "graph")), obj, str(obj), nodes_after=len(obj.nodes))]
    for source in (plans_of(obj), obj):
        if source is None:
            continue
        snaps = _field(source, "snapshots", "stages")
        if snaps is not None and not callable(snaps):
            snaps = list(snaps)
            if snaps and not isinstance(snaps[0], str):
                return [_as_stage(s) for s in snaps]
            if snaps:
                return [_as_stage(s, obj) for s in snaps]
    raise GraphcError(f"cannot inspect a {type(obj).__name__}: expected a Graph, CompiledModule or TrainStep")


def find_stage(obj: Any, name: str | int) -> Stage:
    """A stage by exact name, by index (`3`, `-1`), or by unique prefix; GraphcError naming the choices."""
    all_stages = stages(obj)
    names = [s.name for s in all_stages]
    if isinstance(name, int) or (isinstance(name, str) and name.lstrip("-").isdigit() and name not in names):
        k = int(name)
        if -len(all_stages) <= k < len(all_stages):
            return all_stages[k]
        raise GraphcError(f"no stage number {k}: there are {len(all_stages)} stages ({', '.join(names)})")
    for s in all_stages:
        if s.name == name:
            return s
    matches = [s for s in all_stages if s.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    what = "is ambiguous" if matches else "does not exist"
    raise GraphcError(f"stage {name!r} {what}; stages: {', '.join(names)}")


def plan_graphs(obj: Any) -> list[tuple[str, Graph]]:
    """The compiled plans (forward / backward / train_step graphs) that exist, in that order."""
    plans = plans_of(obj)
    if plans is None:
        return []
    out = []
    for name in ("forward", "backward", "train_step"):
        g = _field(plans, name)
        if isinstance(g, Graph):
            out.append((name, g))
    return out


def ledger(obj: Any) -> list | None:
    """The saved-value ledger (SavedValue records) of a compiled object, None if it keeps none."""
    for source in (plans_of(obj), obj):
        if source is not None and not isinstance(source, Graph):
            led = _field(source, "ledger", "saved")
            if led is not None and not callable(led):
                return list(led)
    return None


def fusion_records(obj: Any) -> list | None:
    for source in (plans_of(obj), obj):
        if source is not None and not isinstance(source, Graph):
            recs = _field(source, "fusion_records")
            if recs is not None:
                return list(recs)
    recs: list = []
    found = False
    for s in stages(obj):  # the pass manager keeps each pass's records in its graph's meta
        if s.graph is not None and "fusion_records" in s.graph.meta:
            found = True
            recs.extend(s.graph.meta["fusion_records"])
    return recs if found else None


def memory_plans(obj: Any) -> list[tuple[str, Any]]:
    """(plan name, memory plan) for each executable that carries one."""
    exes = _field(obj, "executables") if not isinstance(obj, Graph) else None
    if exes is None:
        return []
    items: Iterable = exes.items() if isinstance(exes, dict) else ((_field(e, "name", default=str(k)), e)
                                                                    for k, e in enumerate(exes))
    out = []
    for name, exe in items:
        plan = _field(exe, "memory_plan", "memory", "plan")
        if plan is None and _field(exe, "buffers") is not None:
            plan = exe
        if plan is not None:
            out.append((str(name), plan))
    return out


def field(obj: Any, *names: str, default: Any = None) -> Any:
    return _field(obj, *names, default=default)
