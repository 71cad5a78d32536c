"""Readable reports on a compiled object (CompiledModule, TrainStep) or a bare Graph.

Each function returns a string; the compiler exposes them as methods (`step.saved_report()`).
They answer the questions one asks of a compiler: what did each pass do (`passes_report`),
what changed between two stages (`diff`), what does training keep alive between forward and
backward and why (`saved_report`), how is memory laid out (`memory_plan`), and what was fused
or not fused and why (`fusion_report`).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from graphc.ir import Graph, Node, TensorType
from graphc.passes.kernels import kernel_count

from . import access
from .access import field
from .roles import is_fused, phases, saved_values


# ------------------------------------------------------------------ formatting helpers


def fmt_bytes(n: int) -> str:
    n = int(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n:,} B ({n / size:.1f} {unit})"
    return f"{n:,} B"


def table(headers: list[str], rows: list[list[Any]], right: tuple[int, ...] = ()) -> str:
    """A plain-text table: columns padded to their widest cell; `right` columns right-aligned."""
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


_IR_LINE = re.compile(r"^\s*%([\w.]+)\s*:[^=]*=\s*(\w+)\(")


def describe(x: Any) -> str:
    """A short name for a node, an IR line, an input or a plain string in reports: `%3 = linear`."""
    if x is None:
        return "-"
    if isinstance(x, Node):
        return f"%{x.outputs[0]} = {x.op}"
    if isinstance(x, str):
        m = _IR_LINE.match(x)
        return f"%{m.group(1)} = {m.group(2)}" if m else x
    op, out = field(x, "op"), field(x, "outputs", "name", "value")
    if op is not None:
        return f"%{out[0] if isinstance(out, (tuple, list)) else out} = {op}"
    return str(x)


def _shape_of(t: Any) -> str:
    return str(t) if t is not None else "?"


# ------------------------------------------------------------------ diff and passes


def diff(obj, a: str | int, b: str | int, context: int = 3) -> str:
    """Unified diff of the IR text of stages `a` and `b` (names, unique prefixes or indexes)."""
    sa, sb = access.find_stage(obj, a), access.find_stage(obj, b)
    lines = list(difflib.unified_diff(sa.ir.splitlines(), sb.ir.splitlines(), fromfile=sa.name, tofile=sb.name,
                                      lineterm="", n=context))
    if not lines:
        return f"stages {sa.name} and {sb.name} have the same IR"
    return "\n".join(lines)


def passes_report(obj) -> str:
    """One row per stage: did the pass change the graph, node counts before -> after, time, notes."""
    rows = []
    total = 0.0
    changed = 0
    all_stages = access.stages(obj)
    for k, s in enumerate(all_stages):
        mark = "-" if s.changed is None else ("yes" if s.changed else "no")
        if s.nodes_before is not None and s.nodes_after is not None and k > 0:
            nodes = f"{s.nodes_before} -> {s.nodes_after}"
        else:
            nodes = "" if s.nodes_after is None else str(s.nodes_after)
        ms = "" if s.seconds is None or k == 0 else f"{s.seconds * 1e3:.2f} ms"
        total += s.seconds or 0.0
        changed += bool(s.changed) and k > 0
        note = "; ".join(s.notes)
        rows.append([k, s.name, mark if k > 0 else "-", nodes, ms, note[:90] + ("…" if len(note) > 90 else "")])
    head = table(["#", "stage", "changed", "nodes", "time", "notes"], rows, right=(0, 3, 4))
    passes = len(all_stages) - 1
    first = all_stages[0].name if all_stages else "?"
    counts = []
    for s in all_stages:  # the kernel stage: how many kernels each plan runs
        g = getattr(s, "graph", None)
        if s.name.endswith("kernels") and isinstance(g, Graph):
            kern = [n for n in g.nodes if n.body is not None]
            runs = kernel_count(g)
            counts.append(f"{s.name}: {runs} kernels ({len(kern)} fused from {sum(len(n.body.nodes) for n in kern)} nodes)")
    tail = ("; " + ", ".join(counts)) if counts else ""
    return f"{head}\n{passes} stages after {first}, {changed} changed the graph, {total * 1e3:.2f} ms in all{tail}"


# ------------------------------------------------------------------ saved values


@dataclass(frozen=True)
class DerivedSaved:
    """A saved value found by reading a graph (when no compiler ledger is at hand)."""

    value: str
    type: TensorType
    nbytes: int
    producer: Any
    users: tuple
    reason: str


def derived_ledger(g: Graph) -> list[DerivedSaved]:
    """What `g` keeps between forward and backward, read off the graph (see dot.saved_values)."""
    if any(n.body is not None for n in g.nodes):  # the kernel stage: read its members
        from graphc.ir.graph import members

        g = g.replace(nodes=tuple(members(g)))
    phase = phases(g)
    out = []
    for v in saved_values(g):
        t = g.types[v]
        prod = g.producer(v)
        users = tuple(n for n in g.users.get(v, ()) if phase[n.outputs[0]] == "backward")
        if g.input_by_name.get(v) is not None:
            reason = "saved input of the backward plan"
        elif users:
            reason = "read by backward"
        else:
            reason = "returned as a saved output"
        out.append(DerivedSaved(v, t, t.nbytes, prod or "input", users, reason))
    return out


def saved_entries(obj) -> list:
    """The ledger: the compiler's when it has one, else derived from the (last) graph."""
    led = access.ledger(obj)
    if led is not None:
        return led
    st = access.stages(obj)
    g = st[-1].graph if st else None
    return derived_ledger(g) if g is not None else []


def _where(e: Any) -> str:
    """The producer's source line, from the entry or the `# ..., file.py:3` comment of its IR line."""
    loc = field(e, "loc")
    prod = field(e, "producer")
    if loc is None and isinstance(prod, Node):
        loc = prod.loc
    if loc is None and isinstance(prod, str) and "#" in prod:
        loc = prod.rsplit("#", 1)[1].split(",")[-1].strip() or None
    return f" ({loc})" if loc else ""


def saved_report(obj) -> str:
    """Every value kept from forward for backward: producer, shape, bytes, backward users, why; total bytes."""
    entries = saved_entries(obj)
    if not entries:
        return "no saved values: nothing is kept between forward and backward"
    rows, why = [], []
    total = 0
    for e in entries:
        nbytes = int(field(e, "nbytes", default=0) or 0)
        total += nbytes
        users = field(e, "users", default=()) or ()
        value = f"%{field(e, 'value', default='?')}"
        rows.append([value, describe(field(e, "producer")) + _where(e), _shape_of(field(e, "type")), f"{nbytes:,}",
                     ", ".join(describe(u) for u in users) or "-"])
        why.append(f"  {value}: {field(e, 'reason', default='(no reason given)')}")
    head = table(["value", "producer", "type", "bytes", "users in backward"], rows, right=(3,))
    text = f"{head}\n{len(entries)} saved values, {fmt_bytes(total)} in all\nwhy saved:\n" + "\n".join(why)
    if entries and isinstance(entries[0], DerivedSaved):
        text = ("(read off the graph: forward values that its backward nodes use; "
                "a one-graph train step keeps them live until then)\n" + text)
    return text


# ------------------------------------------------------------------ memory plans


def _lifetime(b: Any) -> str:
    life = field(b, "lifetime", "live", "interval")
    if life is not None and not isinstance(life, str):
        life = tuple(life)
        return f"[{life[0]}, {life[-1]}]" if life else ""
    start, end = field(b, "start", "first", "begin"), field(b, "end", "last", "stop")
    if start is not None or end is not None:
        return f"[{start}, {end}]"
    return "" if life is None else str(life)


def _values(b: Any) -> list[str]:
    vals = field(b, "values", "tenants", "members", "assigned", default=()) or ()
    return [v if isinstance(v, str) else describe(v) for v in vals]


def buffer_rows(plan: Any) -> list[list[Any]]:
    rows = []
    for k, b in enumerate(field(plan, "buffers", default=()) or ()):
        vals = _values(b)
        nbytes = field(b, "nbytes", "size", "bytes", default=0)
        rows.append([field(b, "name", "id", "index", default=k), f"{int(nbytes):,}", _lifetime(b),
                     len(vals), ", ".join("%" + v.lstrip("%") for v in vals)])
    return rows


def peak_bytes(plan: Any) -> int | None:
    p = field(plan, "peak_bytes", "peak")
    return int(p) if p is not None and not callable(p) else None


def _has_own_str(plan: Any) -> bool:
    return type(plan).__str__ is not object.__str__


def memory_plan(obj) -> str:
    """Each executable's memory plan: the runtime's own rendering when it has one (buffers, offsets,
    roles, lifetimes, values sharing each buffer, views and in-place updates, peak bytes), else a
    table of its buffers."""
    plans = access.memory_plans(obj)
    if not plans:
        return "no memory plan: compile the model first (graphc.compile / graphc.compile_train_step)"
    parts = []
    for name, plan in plans:
        rows = buffer_rows(plan)
        if _has_own_str(plan) or not rows:
            parts.append(f"== {name} ==\n{str(plan).rstrip()}")
            continue
        shared = sum(1 for r in rows if r[3] > 1)
        total = sum(int(r[1].replace(",", "")) for r in rows)
        peak = peak_bytes(plan)
        summary = (f"{len(rows)} buffers ({shared} shared by several values), {fmt_bytes(total)} in buffers"
                   + (f", peak {fmt_bytes(peak)}" if peak is not None else ""))
        parts.append(f"== {name} ==\n" + table(["buffer", "bytes", "lifetime", "#values", "values"], rows, right=(1, 3))
                     + "\n" + summary)
    return "\n\n".join(parts)


# ------------------------------------------------------------------ fusion


def fusion_report(obj) -> str:
    """Fused groups (what became what) and candidates left alone, with the reason."""
    recs = access.fusion_records(obj)
    lines = []
    if recs is None:
        st = access.stages(obj)
        g = st[-1].graph if st else None
        fused = [n for n in g.nodes if is_fused(n)] if g is not None else []
        lines.append("no fusion records (not compiled by the pipeline); fused ops in the graph:")
        lines += [f"  %{', %'.join(n.outputs)} = {n.op}" for n in fused] or ["  (none)"]
        return "\n".join(lines)
    done = [r for r in recs if _is_fused_record(r)]
    left = [r for r in recs if not _is_fused_record(r)]
    lines.append(f"fused ({len(done)}):")
    for r in done:
        lines.append(f"  [{field(r, 'pattern', default='?')}] ({field(r, 'pass_name', default='')})")
        lines += [f"      {n}" for n in field(r, "nodes", default=()) or ()]
        lines.append(f"    -> {field(r, 'result', default='')}")
    if not done:
        lines.append("  (none)")
    lines.append(f"not fused ({len(left)}):")
    for r in left:
        lines.append(f"  [{field(r, 'pattern', default='?')}] {field(r, 'reason', default='(no reason given)')}")
        lines += [f"      {n}" for n in field(r, "nodes", default=()) or ()]
    if not left:
        lines.append("  (none)")
    return "\n".join(lines)


def _is_fused_record(r: Any) -> bool:
    f = field(r, "fused")
    return bool(f) if f is not None else field(r, "result") is not None
