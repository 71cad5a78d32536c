"""Pictures for the report, as inline SVG: each stage's graph (the dumps' Graphviz picture) and
each plan's memory plan as a timeline of buffer lifetimes and bytes.

Graph pictures are the same `to_dot` pictures `graphc.dump` writes, rendered by Graphviz's
`dot` and cleaned for inlining: no XML prolog, ids prefixed per stage (one page holds many
pictures), the tooltip as each box's title, and each box marked with the values it defines and
reads (`data-defs`, `data-uses`) so clicking a value highlights its boxes too.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from html import escape
from typing import Any

from graphc.ir import Graph

from .access import field
from .dot import to_dot
from .html_ir import value_id

MAX_PICTURE_NODES = 400  # above this, dot takes long and the picture is too big to read
_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_TITLE_TIP = re.compile(r'<title>[^<]*</title>(\s*)<g id="(a_[^"]+)"><a xlink:title="([^"]*)">')
_NODE = re.compile(r'<g id="([^"]+)" class="node">(\s*)<title>([^<]*)</title>')


class PictureSkipped(Exception):
    """Why a stage has no picture (a note for the reader)."""


def vertex_values(g: Graph) -> dict[str, tuple[list[str], list[str]]]:
    """DOT vertex id -> (values it defines, values it reads), with the vertex names to_dot uses
    (`in<k>` inputs, `n<k>` nodes, `out<k>` outputs)."""
    out = {f"in{k}": ([i.name], []) for k, i in enumerate(g.inputs)}
    out.update({f"n{k}": (list(n.outputs), list(dict.fromkeys(n.inputs))) for k, n in enumerate(g.nodes)})
    out.update({f"out{k}": ([], [o.value]) for k, o in enumerate(g.outputs)})
    return out


def graph_svg(g: Graph, prefix: str, title: str, fused: set[str] = frozenset(),
              max_nodes: int = MAX_PICTURE_NODES) -> str:
    """The stage's picture as inline SVG; PictureSkipped says why when there is none."""
    if len(g.nodes) > max_nodes:
        raise PictureSkipped(f"picture left out: {len(g.nodes)} nodes is over the limit of {max_nodes} "
                             "(graphc.report(..., max_picture_nodes=N) raises it; graphc.dump draws every stage)")
    exe = shutil.which("dot")
    if exe is None:
        raise PictureSkipped("no picture: Graphviz's `dot` is not installed (apt-get install graphviz)")
    try:
        dot_text = to_dot(g, title=title, fused=fused).to_string()
    except ImportError as e:
        raise PictureSkipped(f"no picture: {e}") from None
    proc = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or "<svg" not in proc.stdout:
        raise PictureSkipped(f"no picture: Graphviz failed ({proc.stderr.strip()[-200:] or proc.returncode})")
    return clean_svg(proc.stdout, prefix, vertex_values(g))


def clean_svg(svg: str, prefix: str, vertices: dict[str, tuple[list[str], list[str]]]) -> str:
    svg = _COMMENT.sub("", _PROLOG.sub("", svg, count=1))
    svg = _XMLNS.sub("", svg)

    def mark(m: re.Match) -> str:
        defs, uses = vertices.get(m.group(3), ((), ()))
        return (f'<g id="{m.group(1)}" class="node" data-defs="{escape(" ".join(defs))}" '
                f'data-uses="{escape(" ".join(uses))}">{m.group(2)}<title>{m.group(3)}</title>')

    svg = _NODE.sub(mark, svg)  # the title graphviz writes is the vertex name: mark the box first
    svg = _TITLE_TIP.sub(lambda m: f"<title>{m.group(3)}</title>{m.group(1)}<g><a>", svg)
    svg = re.sub(r'\bid="', f'id="{prefix}', svg)
    return svg.replace("<svg ", '<svg class="graph" ', 1)


# ------------------------------------------------------------------ memory timeline

ROW, LABEL_W, PAD = 18, 210, 6
ROLE_FILL = {"temp": "#9fc5e8", "output": "#f6b26b", "const": "#cccccc"}


def memory_svg(plan: Any, g: Graph | None, stage: int) -> str:
    """A timeline: one row per buffer, one bar per value living in it (from its first to its last
    use, in node indices), coloured by the buffer's role; below, the bytes live at each node
    against the plan's arena bytes (its peak). Bars link to the value's definition in `stage`."""
    buffers = list(field(plan, "buffers", default=()) or ())
    n = int(field(plan, "n_nodes", default=0) or 0)
    if not buffers:
        return ""
    span = max(n, max((e for b in buffers for _, e in (field(b, "lifetimes", default=()) or ())), default=0)) + 1
    width = max(720, min(1400, 16 * span))
    step = width / span

    def x(t: float) -> float:
        return LABEL_W + t * step

    rows = []
    for r, b in enumerate(buffers):
        y = PAD + 20 + r * ROW
        nbytes = int(field(b, "nbytes", default=0) or 0)
        role = str(field(b, "role", default="temp"))
        label = f"{field(b, 'name', default=f'b{r}')} {field(b, 'dtype', default='')} {nbytes:,} B {role}"
        rows.append(f'<text class="lab" x="{LABEL_W - 6}" y="{y + ROW - 5}" text-anchor="end">{escape(label)}</text>')
        rows.append(f'<line class="row" x1="{LABEL_W}" x2="{LABEL_W + width}" y1="{y + ROW}" y2="{y + ROW}"/>')
        for v, (s, e) in zip(field(b, "values", default=()) or (), field(b, "lifetimes", default=()) or ()):
            base = v.split(".scratch")[0]
            tip = f"%{v} in {field(b, 'name', default='')}: nodes [{s}, {e}], {nbytes:,} B buffer ({role})"
            w = max(step * (e - s + 1) - 1, 2)
            text = (f'<text class="bar" x="{x(s) + 3:.1f}" y="{y + ROW - 5}">%{escape(v)}</text>'
                    if w > 8 * (len(v) + 1) else "")
            rect = (f'<rect class="v" data-v="{escape(base)}" x="{x(s):.1f}" y="{y + 2}" width="{w:.1f}" '
                    f'height="{ROW - 4}" rx="2" fill="{ROLE_FILL.get(role, "#b6d7a8")}"><title>{escape(tip)}</title></rect>')
            defined = g is not None and (base in g.types)
            rows.append(f'<a href="#{value_id(stage, base)}">{rect}{text}</a>' if defined else rect + text)
    top = PAD + 20 + len(buffers) * ROW
    axis = _axis(g, n, x, top, step)
    live, peak, chart_h = _live_bytes(plan, span), int(field(plan, "peak_bytes", default=0) or 0), 70
    base_y = top + 40 + chart_h
    hi = max(max(live, default=0), peak, 1)
    pts = " ".join(f"{x(t):.1f},{base_y - chart_h * v / hi:.1f} {x(t + 1):.1f},{base_y - chart_h * v / hi:.1f}"
                   for t, v in enumerate(live))
    chart = [f'<polyline class="live" points="{x(0):.1f},{base_y} {pts} {x(span):.1f},{base_y}"/>',
             f'<line class="peak" x1="{LABEL_W}" x2="{LABEL_W + width}" y1="{base_y - chart_h * peak / hi:.1f}" '
             f'y2="{base_y - chart_h * peak / hi:.1f}"><title>arena bytes (peak): {peak:,} B</title></line>',
             f'<text class="lab" x="{LABEL_W - 6}" y="{base_y - chart_h + 10}" text-anchor="end">'
             f'peak {peak:,} B</text>',
             f'<text class="lab" x="{LABEL_W - 6}" y="{base_y - 2}" text-anchor="end">bytes of live values</text>',
             f'<line class="row" x1="{LABEL_W}" x2="{LABEL_W + width}" y1="{base_y}" y2="{base_y}"/>']
    height = base_y + PAD + 4
    head = (f'<text class="lab" x="{LABEL_W - 6}" y="{PAD + 12}" text-anchor="end">buffer dtype bytes role</text>'
            f'<text class="lab" x="{LABEL_W}" y="{PAD + 12}">node index → (bars: values live in the buffer, '
            f'first to last use)</text>')
    return (f'<svg class="mem" width="{LABEL_W + width + PAD}" height="{height}" '
            f'viewBox="0 0 {LABEL_W + width + PAD} {height}">{head}{"".join(rows)}{axis}{"".join(chart)}</svg>')


def _axis(g: Graph | None, n: int, x, y: float, step: float) -> str:
    every = max(1, int(40 // step) + (1 if 40 % step else 0))
    out = [f'<line class="row" x1="{x(0)}" x2="{x(n + 1)}" y1="{y}" y2="{y}"/>']
    for t in range(0, n + 1, every):
        label = str(t)
        tip = "end of the plan" if t == n else (f"node {t}: %{g.nodes[t].outputs[0]} = {g.nodes[t].op}"
                                                 if g is not None and t < len(g.nodes) else f"node {t}")
        out.append(f'<text class="tick" x="{x(t) + step / 2:.1f}" y="{y + 14}" text-anchor="middle">{label}'
                   f'<title>{escape(tip)}</title></text>')
    return "".join(out)


def _live_bytes(plan: Any, span: int) -> list[int]:
    """Bytes held by live values at each node index (each value counted for its own size)."""
    live = [0] * span
    slots = field(plan, "slots", default={}) or {}
    scratch = field(plan, "scratch", default={}) or {}
    every = list(slots.values()) + [s for ss in scratch.values() for s in ss]
    for s in every:
        if field(s, "buffer") is None:
            continue
        t = field(s, "type")
        nbytes = int(getattr(t, "nbytes", 0) or 0)
        for k in range(max(0, int(field(s, "start", default=0))), min(span, int(field(s, "end", default=0)) + 1)):
            live[k] += nbytes
    return live
