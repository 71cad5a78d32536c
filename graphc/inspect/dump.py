"""`graphc.dump(obj, out_dir)`: every stage of a compilation as text and pictures, plus an index.

Files are named `NN_stage.ext` so `ls` lists them in pipeline order (`00_traced.txt`,
`01_dce.dot`, ...); the compiled plans follow the stages. `index.md` links them all and
carries the reports (passes, saved values, memory plan, fusion).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable

from graphc.ir import Graph

from . import access, reports
from .dot import RENDER_FORMATS, graphviz_available, pydot_available, write_graph

log = logging.getLogger("graphc.inspect")

FORMATS = ("txt", "dot", *RENDER_FORMATS)
_FUSED_OUT = re.compile(r"%([\w.]+)\s*:")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "stage"


def _fused_values(g: Graph) -> set[str]:
    """Outputs of the nodes a fusion pass reported creating (its records hold IR lines)."""
    out: set[str] = set()
    for r in g.meta.get("fusion_records", ()) or ():
        result = access.field(r, "result")
        if isinstance(result, str):
            out.update(_FUSED_OUT.findall(result.split("=", 1)[0]))
    return out


def dump_stages(obj: Any) -> list[access.Stage]:
    """The stages to dump: the pipeline's, then each compiled plan that is not one of them."""
    st = access.stages(obj)
    for name, g in access.plan_graphs(obj):
        if not any(s.graph is not None and s.graph == g for s in st):
            st.append(access.Stage(f"plan_{name}", g, str(g), nodes_after=len(g.nodes)))
    return st


def dump(obj: Any, out_dir: str | os.PathLike, formats: Iterable[str] = ("txt", "dot", "svg")) -> list[str]:
    """Write one file per stage and format into `out_dir`, and `index.md`; return the paths written.

    DOT is always written with any picture format; SVG/PNG/PDF need Graphviz's `dot` (one warning
    says what to install when it is missing).
    """
    formats = tuple(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown dump format(s) {bad}; expected some of {list(FORMATS)}")
    if any(f != "txt" for f in formats) and not pydot_available():
        log.warning("pydot is not installed: writing the IR text only; for pictures, pip install 'graphc[viz]'")
        formats = tuple(f for f in formats if f == "txt")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    st = dump_stages(obj)
    width = max(2, len(str(len(st) - 1)))
    written: list[str] = []
    files: list[tuple[access.Stage, list[str]]] = []
    for k, s in enumerate(st):
        stem = os.path.join(out_dir, f"{k:0{width}d}_{_safe(s.name)}")
        mine = []
        if "txt" in formats:
            with open(stem + ".txt", "w", encoding="utf-8") as f:
                f.write(s.ir.rstrip("\n") + "\n")
            mine.append(stem + ".txt")
        if s.graph is not None:
            mine += write_graph(s.graph, stem, formats, title=f"{s.graph.name} — stage {k}: {s.name}",
                                fused=_fused_values(s.graph))
        written += mine
        files.append((s, mine))
    index = os.path.join(out_dir, "index.md")
    with open(index, "w", encoding="utf-8") as f:
        f.write(index_markdown(obj, files, formats))
    written.append(index)
    log.debug("dumped %d stages (%s) to %s", len(st), ", ".join(formats), out_dir)
    return written


def _title(obj: Any, st: list[access.Stage]) -> str:
    g = next((s.graph for s in reversed(st) if s.graph is not None), None)
    return f"{type(obj).__name__} {g.name}" if g is not None else type(obj).__name__


def index_markdown(obj: Any, files: list[tuple[access.Stage, list[str]]], formats: tuple[str, ...]) -> str:
    exts = [f for f in ("txt", "dot", *RENDER_FORMATS) if any(p.endswith("." + f) for _, ps in files for p in ps)]
    lines = [f"# graphc dump: {_title(obj, [s for s, _ in files])}", "",
             "Stages in pipeline order (each file is the graph after that stage).", ""]
    missing = [f for f in formats if f in RENDER_FORMATS and f not in exts]
    if missing and not graphviz_available():
        lines += [f"Note: {', '.join(missing)} not rendered: Graphviz's `dot` is not installed "
                  "(`apt-get install graphviz`); the .dot files open in any Graphviz viewer.", ""]
    lines.append("| # | stage | changed | nodes | " + " | ".join(exts) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(exts))
    for k, (s, paths) in enumerate(files):
        by_ext = {os.path.splitext(p)[1][1:]: os.path.basename(p) for p in paths}
        links = [f"[{e}]({by_ext[e]})" if e in by_ext else "" for e in exts]
        changed = "" if s.changed is None or k == 0 else ("yes" if s.changed else "no")
        nodes = "" if s.nodes_after is None else (f"{s.nodes_before} → {s.nodes_after}"
                                                  if s.nodes_before is not None and k > 0 else str(s.nodes_after))
        lines.append(f"| {k} | {s.name} | {changed} | {nodes} | " + " | ".join(links) + " |")
    for title, fn in (("Passes", reports.passes_report), ("Saved for backward", reports.saved_report),
                      ("Memory plan", reports.memory_plan), ("Fusion", reports.fusion_report)):
        try:
            text = fn(obj)
        except Exception as e:  # a report that cannot be made must not lose the dumps
            log.warning("dump: the %s report failed: %s: %s", title.lower(), type(e).__name__, e)
            text = f"(report failed: {type(e).__name__}: {e})"
        lines += ["", f"## {title}", "", "```text", text, "```"]
    return "\n".join(lines) + "\n"
