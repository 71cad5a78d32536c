"""`graphc.report(obj, "report.html")`: a compilation on one self-contained page to click through.

    step = graphc.compile_train_step(model, loss_fn, opt, x, y)
    graphc.report(step, "report.html")       # open it in any browser, offline

The page holds a summary (model, inputs, stages with node counts and time per pass, kernels,
peak bytes, compile and cache times); each stage's IR with its diff against the stage it was made
from drawn in, and its Graphviz picture; the fusion records; the kernels each plan calls, with
the IR nodes they cover; the saved-values ledger; each plan's memory plan as a timeline; and the
generated plan source, each kernel call linked to its IR nodes and back. Backward nodes link to
the forward node they are the gradient of (`# grad of %N`), and the forward node links back.

It reads only what the compiled object and the passes recorded (stages, records, ledger,
executables), like the text reports; one HTML file with inline CSS, SVG and a little script, no
network access needed. Stages whose IR did not change are listed with a link to the stage they
equal; pictures of graphs above `max_picture_nodes` nodes are left out with a note.
"""
from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field as dfield
from html import escape
from typing import Any

from graphc.ir import Graph, Node
from graphc.ir.text import format_node

from . import access, reports
from .access import field
from .dump import _fused_values, dump_stages
from .html_assets import CSS, ERROR_HOOK, JS
from .html_code import Call, call_id, plan_calls, source_html
from .html_ir import _GRAD_OF, colour_line, defined_values, ir_listing, split_comment, value_id, value_span
from .html_svg import MAX_PICTURE_NODES, PictureSkipped, graph_svg, memory_svg

log = logging.getLogger("graphc.inspect")
FOLD_LINES = 150  # listings longer than this open folded to their changes
FIT_WIDTH = 2000  # pictures up to this wide (pt) open fitted to the page; wider ones at full size, to scroll


def report(obj: Any, path: str | os.PathLike = "report.html", *, max_picture_nodes: int = MAX_PICTURE_NODES) -> str:
    """Write the HTML report of `obj` (a CompiledModule, TrainStep, pipeline result or Graph) to
    `path`; return the path."""
    text = build_html(obj, max_picture_nodes=max_picture_nodes)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    log.debug("report of %d bytes written to %s", len(text), path)
    return path


@dataclass
class _Page:
    """What the sections share: the stages, which listing each shows, and the links between them."""

    obj: Any
    stages: list[access.Stage]
    base: list[int | None]  # the stage each one is diffed against
    shown: list[int]  # the stage whose listing stands for each (itself, or the equal one it points to)
    defs: list[set[str]]  # values defined in each stage's IR text
    executables: dict[int, Any]  # stage index -> executable (plans with generated code)
    calls: dict[int, list[Call]] = dfield(default_factory=dict)
    backlinks: dict[str, list[tuple[str, str]]] = dfield(default_factory=dict)  # anchor -> [(href, value)]
    codelinks: dict[str, list[str]] = dfield(default_factory=dict)  # anchor -> [call anchors]
    taken: set[str] = dfield(default_factory=set)

    def anchor(self, k: int, v: str) -> str | None:
        """The anchor of `v`'s definition as stage k shows it (None if k does not define it)."""
        j = self.shown[k]
        return value_id(j, v) if v in self.defs[j] else None

    def resolver(self, k: int, earlier: bool = True):
        """value -> anchor: its definition in stage k, else (a backward plan's `grad of` a forward
        value) in the nearest earlier stage that defines it."""
        def resolve(v: str) -> str | None:
            a = self.anchor(k, v)
            if a is None and earlier:
                a = next((self.anchor(j, v) for j in range(k - 1, -1, -1) if self.anchor(j, v)), None)
            return a
        return resolve

    def stage_index(self, name: str) -> int | None:
        return next((k for k, s in enumerate(self.stages) if s.name == name), None)


def build_html(obj: Any, *, max_picture_nodes: int = MAX_PICTURE_NODES) -> str:
    t0 = time.perf_counter()
    page = _page(obj)
    body = [_summary(page), _stages(page, max_picture_nodes), _fusion(page), _kernels(page), _saved(page),
            _memory(page), _code(page)]
    title = _title(page)
    built = f"built in {time.perf_counter() - t0:.2f} s"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{escape(title)}</title>"
            f"<script>{ERROR_HOOK}</script><style>{CSS}</style></head><body>"
            f"{_nav(page, title)}<main>{''.join(body)}<p class=\"meta\">graphc report, {built}.</p></main>"
            f"<div id=\"status\"></div><script>{JS}</script></body></html>\n")


# ------------------------------------------------------------------ the page model


def _page(obj: Any) -> _Page:
    stages = dump_stages(obj)
    exes = _executables(obj)
    index = {s.name: k for k, s in enumerate(stages)}
    executables = {}
    for name, exe in exes.items():
        k = _exe_stage(stages, index, name, exe)
        if k is not None:
            executables[k] = exe
    base = [_base(stages, k) for k in range(len(stages))]
    defs = [{v for ln in s.ir.splitlines() for v in defined_values(ln)} for s in stages]
    shown = []
    for k, s in enumerate(stages):
        b = base[k]
        same = b is not None and s.ir == stages[b].ir
        shown.append(shown[b] if same else k)
    page = _Page(obj, stages, base, shown, defs, executables)
    for k, exe in executables.items():
        text = field(field(exe, "source"), "text")
        if isinstance(text, str):
            page.calls[k] = plan_calls(text)
            for c in page.calls[k]:
                for v in c.values:
                    a = page.anchor(k, v)
                    if a:
                        page.codelinks.setdefault(a, []).append(call_id(k, c.index))
    for k, s in enumerate(stages):  # gradient nodes, linked from the forward value they differentiate
        if shown[k] != k:
            continue
        resolve = page.resolver(k)
        for ln in s.ir.splitlines():
            code, comment = split_comment(ln)
            m = _GRAD_OF.match(comment or "")
            vals = defined_values(code)
            target = resolve(m.group(2)) if m and vals else None
            if target:
                page.backlinks.setdefault(target, []).append((value_id(k, vals[0]), vals[0]))
    return page


def _exe_stage(stages: list[access.Stage], index: dict[str, int], name: str, exe: Any) -> int | None:
    """The stage whose graph an executable runs (the last one equal to it), else the one it is named after."""
    g = field(exe, "graph")
    if isinstance(g, Graph):
        j = next((j for j in range(len(stages) - 1, -1, -1) if stages[j].graph is not None and stages[j].graph == g), None)
        if j is not None:
            return j
    return index.get(name)


def _executables(obj: Any) -> dict[str, Any]:
    exes = field(obj, "executables") if not isinstance(obj, Graph) else None
    if isinstance(exes, dict):
        return dict(exes)
    return {}


def _base(stages: list[access.Stage], k: int) -> int | None:
    """The stage stage k was made from, to diff against: the nearest earlier stage of the same graph
    (by name) whose node count is the one stage k started from; so a forward and a backward plan
    cut from one joint graph both diff against it, and each plan's later stages against that plan."""
    if k == 0:
        return None
    s = stages[k]
    name = s.graph.name if s.graph is not None else None

    def fits(j: int, same_name: bool) -> bool:
        t = stages[j]
        counts = s.nodes_before is None or t.nodes_after == s.nodes_before
        return counts and (not same_name or (t.graph is not None and t.graph.name == name))

    for same_name in (True, False):
        j = next((j for j in range(k - 1, -1, -1) if fits(j, same_name)), None)
        if j is not None:
            return j
    return k - 1


def _title(page: _Page) -> str:
    g = next((s.graph for s in reversed(page.stages) if s.graph is not None), None)
    name = g.name.split(".")[0] if g is not None else "?"
    return f"graphc report: {type(page.obj).__name__} {name}"


def _stage_href(k: int) -> str:
    return f"stage-{k}"


def _stage_link(page: _Page, k: int) -> str:
    return f'<a href="#{_stage_href(k)}">{k} {escape(page.stages[k].name)}</a>'


# ------------------------------------------------------------------ navigation and summary


def _nav(page: _Page, title: str) -> str:
    out = [f"<nav><h1>{escape(title)}</h1>", '<a href="#summary">Summary</a>', '<div class="grp">stages</div>']
    for k, s in enumerate(page.stages):
        n = "" if s.nodes_after is None else f'<span class="n">{s.nodes_after}</span>'
        cls = ' class="same"' if page.shown[k] != k else ""
        out.append(f'<a href="#{_stage_href(k)}"{cls} title="{escape(s.name)}">{n}{k} {escape(s.name)}</a>')
    out.append('<div class="grp">reports</div>')
    for sid, label in (("fusion", "Fusion"), ("kernels", "Kernels"), ("saved", "Saved for backward"),
                       ("memory", "Memory plans"), ("code", "Generated code")):
        out.append(f'<a href="#{sid}">{label}</a>')
    out.append("</nav>")
    return "".join(out)


def _summary(page: _Page) -> str:
    first = page.stages[0].graph if page.stages else None
    facts: list[tuple[str, str]] = [("object", escape(type(page.obj).__name__))]
    mode = field(access.plans_of(page.obj) or {}, "mode")
    if mode:
        facts.append(("mode", escape(str(mode))))
    if first is not None:
        sig = ", ".join(f"%{i.name}: {i.type}" for i in first.inputs if i.kind == "input")
        facts.append(("graph", escape(first.name)))
        facts.append(("inputs", escape(sig or "(none)")))
        params = [i for i in first.inputs if i.kind == "param"]
        if params:
            facts.append(("parameters", f"{len(params)} tensors, {sum(i.type.size for i in params):,} values, "
                                        f"{escape(reports.fmt_bytes(sum(i.type.nbytes for i in params)))}"))
    total = sum(s.seconds or 0.0 for s in page.stages[1:])
    changed = sum(1 for k, s in enumerate(page.stages) if k and s.changed)
    facts.append(("stages", f"{len(page.stages)} ({changed} changed the graph), {total * 1e3:.1f} ms in passes"))
    for k, exe in page.executables.items():
        name = page.stages[k].name
        calls = page.calls.get(k, [])
        mp = field(exe, "memory_plan")
        peak = reports.peak_bytes(mp) if mp is not None else None
        parts = [f'<a href="#kernels-{k}">{len(calls)} kernel calls</a>']
        if peak is not None:
            parts.append(f'<a href="#memory-{k}">peak {escape(reports.fmt_bytes(peak))}</a>')
        info = field(exe, "compile_info")
        if info is not None:
            parts.append(escape(_compile_text(info)))
        facts.append((f"plan {escape(name)}", "; ".join(parts)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    rows = []
    for k, s in enumerate(page.stages):
        nodes = "" if s.nodes_after is None else (f"{s.nodes_before} → {s.nodes_after}"
                                                  if k and s.nodes_before is not None else str(s.nodes_after))
        mark = "" if k == 0 or s.changed is None else ("yes" if s.changed else "no")
        ms = "" if k == 0 or s.seconds is None else f"{s.seconds * 1e3:.2f}"
        notes = escape("; ".join(s.notes))
        rows.append(f"<tr><td class=r>{k}</td><td>{_stage_link(page, k)}</td><td>{mark}</td><td class=r>{nodes}</td>"
                    f"<td class=r>{ms}</td><td>{notes}</td></tr>")
    table = ("<table><tr><th>#</th><th>stage</th><th>changed</th><th>nodes</th><th>ms</th><th>notes</th></tr>"
             + "".join(rows) + "</table>")
    return (f'<section id="summary"><h2>Summary</h2><dl class="facts">{dl}</dl><h3>Stages</h3>{table}'
            '<p class="meta">Click a value name (<span class="v">%3</span>) to highlight its definition and uses in '
            "that stage's IR and picture; links jump between a backward node and the forward node it differentiates "
            "and between IR nodes and the kernel calls that compute them.</p></section>")


def _compile_text(info: Any) -> str:
    """CompileInfo without the cache path (a local detail)."""
    status, secs, cg = field(info, "status"), field(info, "seconds"), field(info, "codegen_seconds")
    if status is None or secs is None:
        return str(info)
    what = {"compiled": "compiled", "cached": "loaded from the disk cache", "reused": "reused (loaded earlier)",
            "interpreted": "interpreted", "python": "plain Python"}.get(status, status)
    return f"{what} in {secs * 1e3:.1f} ms (codegen {(cg or 0) * 1e3:.1f} ms)"


# ------------------------------------------------------------------ stages


def _stages(page: _Page, max_nodes: int) -> str:
    pictures = _pictures(page, max_nodes)
    out = []
    for k, s in enumerate(page.stages):
        head = _stage_head(page, k)
        if page.shown[k] != k:
            j = page.shown[k]
            more = " (its kernels are linked there)" if k in page.executables else ""
            out.append(f'<section id="{_stage_href(k)}" class="stage">{head}<p class="note">unchanged: the IR is the '
                       f"same as stage {_stage_link(page, j)}{more}.</p></section>")
            continue
        b = page.base[k]
        resolve = page.resolver(k)
        listing = ir_listing(k, s.ir, page.stages[b].ir if b is not None else None, resolve=resolve,
                             extras=lambda vals, k=k: _extras(page, k, vals), taken=page.taken)
        fold = listing.added + listing.removed and s.ir.count("\n") > FOLD_LINES
        diff = ("" if b is None else f' <span class="meta">diff against {_stage_link(page, b)}: '
                f"+{listing.added} −{listing.removed} lines</span>")
        pic = pictures.get(k)
        fit = bool(pic and pic.startswith("<svg") and _svg_width(pic) <= FIT_WIDTH)
        tools = ('<div class="tools"><button data-toggle="only-changes"' + (' class="on"' if fold else "") +
                 '>changes only</button><button data-toggle="no-del">hide removed lines</button>'
                 '<button data-toggle="fit"' + (' class="on"' if fit else "") + '>fit picture</button>' + diff + "</div>")
        pic_html = (f'<div class="pic">{pic}</div>' if pic and pic.startswith("<svg")
                    else f'<p class="note">{escape(pic or "no picture")}</p>')
        cls = "stage scope togglable" + (" only-changes" if fold else "") + (" fit" if fit else "")
        out.append(f'<section id="{_stage_href(k)}" class="{cls}" data-title="stage {k} {escape(s.name)}">{head}'
                   f"{tools}{listing.html}{pic_html}</section>")
    return "".join(out)


def _svg_width(svg: str) -> float:
    m = re.search(r'width="([\d.]+)pt"', svg[:300])
    return float(m.group(1)) if m else 0.0


def _stage_head(page: _Page, k: int) -> str:
    s = page.stages[k]
    bits = []
    if s.nodes_after is not None:
        bits.append(f"{s.nodes_before} → {s.nodes_after} nodes" if k and s.nodes_before is not None
                    else f"{s.nodes_after} nodes")
    if k and s.changed is not None:
        bits.append("changed the graph" if s.changed else "no change")
    if k and s.seconds is not None:
        bits.append(f"{s.seconds * 1e3:.2f} ms")
    if k in page.executables:
        bits.append(f'<a href="#code-{k}">generated code</a>')
    notes = "".join(f"<li>{escape(n)}</li>" for n in s.notes)
    return (f"<h2>Stage {k}: {escape(s.name)}</h2><div class=\"meta\">{' · '.join(bits)}</div>"
            + (f'<ul class="note">{notes}</ul>' if notes else ""))


def _extras(page: _Page, k: int, vals: list[str]) -> str:
    bits = []
    for v in vals:
        a = value_id(k, v)
        for href, g in page.backlinks.get(a, ()):
            bits.append(f'gradient: <a class="v" href="#{escape(href)}" data-v="{escape(g)}">%{escape(g)}</a>')
        for c in page.codelinks.get(a, ()):
            bits.append(f'<a href="#{c}">kernel {c.rsplit("-", 1)[1]}</a>')
    return f'<span class="x">{" · ".join(dict.fromkeys(bits))}</span>' if bits else ""


def _pictures(page: _Page, max_nodes: int) -> dict[int, str]:
    """Stage index -> inline SVG, or the note saying why there is none; rendered two at a time."""
    todo = [k for k, s in enumerate(page.stages) if page.shown[k] == k and s.graph is not None]

    def one(k: int) -> str:
        g = page.stages[k].graph
        try:
            return graph_svg(g, f"s{k}-", f"{g.name} — stage {k}: {page.stages[k].name}", _fused_values(g), max_nodes)
        except PictureSkipped as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(todo, pool.map(one, todo)))


# ------------------------------------------------------------------ fusion and kernels


def _fusion(page: _Page) -> str:
    recs = access.fusion_records(page.obj)
    if recs is None:
        return (f'<section id="fusion"><h2>Fusion</h2><pre>{escape(reports.fusion_report(page.obj))}</pre></section>')
    done = [r for r in recs if reports._is_fused_record(r)]
    left = [r for r in recs if not reports._is_fused_record(r)]
    out = ['<section id="fusion" class="scope" data-title="fusion"><h2>Fusion</h2>',
           f"<h3>Fused ({len(done)})</h3>"]
    for r in done:
        k = page.stage_index(str(field(r, "pass_name", default="")))
        before = page.resolver(page.base[k] if k is not None and page.base[k] is not None else 0, earlier=False)
        after = page.resolver(k, earlier=False) if k is not None else None
        where = f" in {_stage_link(page, k)}" if k is not None else ""
        nodes = "".join(f'<div class="ln del">{colour_line(n, link=before)}</div>' for n in field(r, "nodes", default=()) or ())
        result = field(r, "result", default="")
        out.append(f"<p><b>{escape(str(field(r, 'pattern', default='?')))}</b>{where}</p>"
                   f'<div class="ir">{nodes}<div class="ln add">{colour_line(str(result), link=after)}</div></div>')
    if not done:
        out.append('<p class="note">(none)</p>')
    out.append(f"<h3>Not fused ({len(left)})</h3>")
    for r in left:
        k = page.stage_index(str(field(r, "pass_name", default="")))
        where = f" in {_stage_link(page, k)}" if k is not None else ""
        nodes = "".join(f'<div class="ln">{colour_line(n)}</div>' for n in field(r, "nodes", default=()) or ())
        out.append(f"<p><b>{escape(str(field(r, 'pattern', default='?')))}</b>{where}: "
                   f"{escape(str(field(r, 'reason', default='(no reason given)')))}</p>"
                   + (f'<div class="ir">{nodes}</div>' if nodes else ""))
    if not left:
        out.append('<p class="note">(none)</p>')
    out.append("</section>")
    return "".join(out)


def _kernels(page: _Page) -> str:
    out = ['<section id="kernels" class="scope" data-title="kernels"><h2>Kernels</h2>']
    if not page.calls:
        out.append('<p class="note">no generated plans: compile the model (graphc.compile / '
                   "graphc.compile_train_step) to see its kernels</p>")
    for k, calls in page.calls.items():
        resolve = page.resolver(k, earlier=False)
        out.append(f'<h3 id="kernels-{k}">{escape(page.stages[k].name)}: {len(calls)} kernel calls</h3>'
                   "<table><tr><th>#</th><th>kernel</th><th>covers (IR nodes)</th><th>note</th></tr>")
        for c in calls:
            covers = "<br>".join(_node_ref(ln, resolve) for ln in c.ir) or '<span class="note">(no IR node: a copy '\
                                                                          "of outputs or updates)</span>"
            out.append(f'<tr><td class=r><a href="#{call_id(k, c.index)}">{c.index}</a></td><td>{escape(c.kernel)}</td>'
                       f"<td>{covers}</td><td>{escape(c.note)}</td></tr>")
        out.append("</table>")
        out.append(_kernel_nodes(page, k, calls))
    if not page.calls and page.stages:  # a bare graph of the kernel stage: its kernel nodes still show
        out.append(_kernel_nodes(page, page.shown[len(page.stages) - 1], []))
    refused = [r for r in access.fusion_records(page.obj) or () if "kernel" in str(field(r, "pass_name", default=""))
               and not reports._is_fused_record(r)]
    if refused:
        out.append(f"<h3>Not fused into one kernel ({len(refused)})</h3><table><tr><th>stage</th><th>nodes</th>"
                   "<th>why not</th></tr>")
        for r in refused:
            j = page.stage_index(str(field(r, "pass_name", default="")))
            before = page.resolver(page.base[j], earlier=False) if j is not None and page.base[j] is not None else None
            nodes = "<br>".join(_node_ref(n, before) if before else escape(n) for n in field(r, "nodes", default=()) or ())
            out.append(f"<tr><td>{_stage_link(page, j) if j is not None else ''}</td><td>{nodes}</td>"
                       f"<td>{escape(str(field(r, 'reason', default='')))}</td></tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def _kernel_nodes(page: _Page, k: int, calls: list[Call]) -> str:
    """The plan's kernel-stage nodes (nodes with a body): kind, members, what stays inside, and the
    code generated for each."""
    g = page.stages[k].graph
    nodes = [n for n in (g.nodes if g is not None else ()) if getattr(n, "body", None) is not None]
    if not nodes:
        return ""
    resolve = page.resolver(k, earlier=False)
    rows = []
    for n in nodes:
        members = list(n.body.nodes)
        inside = [o for m in members for o in m.outputs if o not in n.outputs]
        call = next((c for c in calls if set(n.outputs) <= set(c.values)), None)
        code = f'<a href="#{call_id(k, call.index)}">kernel {call.index}</a>' if call else ""
        refs = "<br>".join(_node_ref(format_node(m), resolve) for m in members)
        rows.append(f"<tr><td>{_node_ref(format_node(n), resolve)} <span class=a>{escape(str(n.attr.get('kind', '')))}"
                    f"</span></td><td>{refs}</td><td>{', '.join('%' + escape(v) for v in inside) or '-'}</td>"
                    f"<td>{code}</td></tr>")
    return (f"<p>{len(nodes)} kernel nodes group {sum(len(n.body.nodes) for n in nodes)} nodes of this plan:</p>"
            "<table><tr><th>kernel node</th><th>members</th><th>values that stay inside</th><th>code</th></tr>"
            + "".join(rows) + "</table>")


def _node_ref(line: str, resolve) -> str:
    """`%1, %2 = op` for an IR line, each value linked to its definition."""
    vals = defined_values(line)
    op = re.search(r"=\s*(\w+)\(", line)
    refs = ", ".join(value_span(v, href=resolve(v)) if resolve(v) else value_span(v) for v in vals)
    return f"{refs} = <span class=\"op\">{escape(op.group(1) if op else '?')}</span>"


# ------------------------------------------------------------------ saved values, memory, code


def _plan_stage(page: _Page, prefix: str) -> int:
    k = next((k for k in page.executables if page.stages[k].name.startswith(prefix)), None)
    return k if k is not None else len(page.stages) - 1


def _saved(page: _Page) -> str:
    entries = reports.saved_entries(page.obj)
    out = ['<section id="saved" class="scope" data-title="saved values"><h2>Saved for backward</h2>']
    if not entries:
        out.append('<p class="note">no saved values: nothing is kept between forward and backward</p></section>')
        return "".join(out)
    fwd = page.resolver(_plan_stage(page, "forward_plan"), earlier=False)
    bwd = page.resolver(_plan_stage(page, "backward_plan"), earlier=False)
    if isinstance(entries[0], reports.DerivedSaved):
        out.append('<p class="note">read off the graph: forward values that its backward nodes use (a one-graph '
                   "train step keeps them live until then)</p>")
    out.append("<table><tr><th>value</th><th>type</th><th class=r>bytes</th><th>producer</th>"
               "<th>users in backward</th><th>why saved</th></tr>")
    total = 0
    for e in entries:
        v = str(field(e, "value", default="?"))
        nbytes = int(field(e, "nbytes", default=0) or 0)
        total += nbytes
        prod = field(e, "producer")
        prod_line = format_node(prod) if isinstance(prod, Node) else str(prod)
        users = [format_node(u) if isinstance(u, Node) else str(u) for u in field(e, "users", default=()) or ()]
        out.append(f"<tr><td>{value_span(v, href=fwd(v)) if fwd(v) else value_span(v)}</td>"
                   f"<td>{escape(str(field(e, 'type', default='?')))}</td><td class=r>{nbytes:,}</td>"
                   f"<td>{_node_ref(prod_line, fwd) if '=' in prod_line else escape(prod_line)}</td>"
                   f"<td>{'<br>'.join(_node_ref(u, bwd) for u in users) or '-'}</td>"
                   f"<td>{escape(str(field(e, 'reason', default='')))}</td></tr>")
    out.append(f"</table><p>{len(entries)} saved values, {escape(reports.fmt_bytes(total))} in all</p></section>")
    return "".join(out)


def _memory(page: _Page) -> str:
    out = ['<section id="memory"><h2>Memory plans</h2>']
    plans = [(k, field(exe, "memory_plan")) for k, exe in page.executables.items()]
    plans = [(k, mp) for k, mp in plans if mp is not None]
    if not plans:
        out.append('<p class="note">no memory plan: compile the model first</p>')
    for k, mp in plans:
        name = page.stages[k].name
        text = str(mp).rstrip()
        first, _, rest = text.partition("\n")
        svg = memory_svg(mp, page.stages[k].graph, page.shown[k])
        out.append(f'<div class="scope" data-title="memory plan {escape(name)}"><h3 id="memory-{k}">{escape(name)}</h3>'
                   f"<p>{escape(first)}</p><div class=\"pic\">{svg}</div>"
                   f'<details><summary>the plan as text</summary><div class="src"><div class="ln">{escape(rest)}</div>'
                   "</div></details></div>")
    out.append("</section>")
    return "".join(out)


def _code(page: _Page) -> str:
    out = ['<section id="code"><h2>Generated code</h2>']
    if not page.executables:
        out.append('<p class="note">no generated plans: compile the model first</p>')
    for k, exe in page.executables.items():
        text = field(field(exe, "source"), "text")
        if not isinstance(text, str):
            continue
        info = field(exe, "compile_info")
        out.append(f'<div class="scope" data-title="code of {escape(page.stages[k].name)}">'
                   f'<h3 id="code-{k}">{escape(page.stages[k].name)}</h3>'
                   f'<p class="meta">one numba function per plan; {escape(_compile_text(info)) if info else ""}; '
                   f"each kernel call sits under the IR lines it computes (links go to {_stage_link(page, k)})</p>"
                   f"{source_html(text, page.calls.get(k, []), k, page.resolver(k, earlier=False))}</div>")
    out.append("</section>")
    return "".join(out)
