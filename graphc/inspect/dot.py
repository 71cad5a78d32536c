"""Pictures of graphs: a pydot DOT graph per IR graph, rendered by Graphviz's `dot` when installed.

What a reader needs to see at a glance: which boxes are parameters, data, optimizer state,
saved activations, gradients and fused kernels (shape + colour, explained by a legend), which
half of a train step a node belongs to (forward / backward / optimizer clusters), and which
forward node a backward node differentiates (a dashed edge, from Node.grad_of).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from graphc.ir import Graph, Node
from graphc.ir.graph import members
from graphc.ir.text import format_attrs

from .roles import FUSED_OPS, _tagged, is_backward, is_fused, phases, saved_values  # noqa: F401  (re-exported)

log = logging.getLogger("graphc.inspect")

INSTALL_HINT = "apt-get install graphviz"
RENDER_FORMATS = ("svg", "png", "pdf")


@dataclass(frozen=True)
class Style:
    legend: str
    shape: str
    fill: str
    style: str = "filled"


# One entry per kind of box; the legend is drawn from this table, in this order.
STYLES: dict[str, Style] = {
    "input": Style("input (data)", "invhouse", "#cfe2f3"),
    "param": Style("parameter", "cylinder", "#fff2cc"),
    "state": Style("optimizer state", "box3d", "#d9d2e9"),
    "hyper": Style("hyperparameter", "octagon", "#ead1dc"),
    "rng": Style("random seed", "diamond", "#eeeeee"),
    "saved": Style("saved for backward", "box", "#fce5cd", "filled,bold"),
    "grad": Style("gradient input", "cds", "#f4cccc"),
    "comm": Style("communicator (MPI)", "doubleoctagon", "#ead1dc"),
    "activation": Style("activation (forward op)", "box", "#ffffff", "rounded,filled"),
    "gradient": Style("gradient (backward op)", "box", "#f4cccc", "filled"),
    "fused": Style("fused op", "component", "#d9ead3"),
    "optimizer": Style("optimizer update", "hexagon", "#d0e0e3"),
    "collective": Style("all-reduce across ranks", "doubleoctagon", "#ead1dc"),
    "constant": Style("constant", "plain", "#ffffff", ""),
    "output": Style("graph output", "note", "#f3f3f3"),
}
SAVED_BORDER = {"peripheries": "2", "color": "#e69138", "penwidth": "2"}
PHASE_TITLES = {"forward": "forward", "backward": "backward", "optimizer": "optimizer update"}

# ------------------------------------------------------------------ labels


def shorten(name: str, limit: int = 32) -> str:
    """A readable short form of a long dotted name: from the left, middle parts shrink to their
    first letter and trailing digits (`linear1` -> `l1`; numbers stay whole, they tell layers
    apart), the last two parts stay whole; if that is not enough, an ellipsis cuts the middle.
    A `kind:` prefix (`update:`, `grad:`) is kept."""
    if len(name) <= limit:
        return name
    prefix, sep, rest = name.rpartition(":")
    if sep and len(prefix) < limit // 2:
        return prefix + sep + shorten(rest, limit - len(prefix) - 1)
    parts = name.split(".")
    for k in range(max(0, len(parts) - 2)):
        m = re.fullmatch(r"([^\d]?)[^\d]*(\d*)", parts[k])
        if m and not parts[k].isdigit():
            parts[k] = m.group(1) + m.group(2)
        if len(".".join(parts)) <= limit:
            return ".".join(parts)
    short = ".".join(parts)
    if len(short) <= limit:
        return short
    keep = limit - 1
    return short[: keep // 2] + "…" + short[len(short) - (keep - keep // 2):]


def _node_label(n: Node, limit: int) -> str:
    attrs = format_attrs(n).strip()
    head = n.op + (" " + attrs if attrs and len(attrs) <= 32 else "")
    outs = [f"%{shorten(o, limit)}: {t}" for o, t in zip(n.outputs, n.types)]
    return "\n".join([head, *outs])


def _constant_label(n: Node) -> str:
    v = n.attr.get("value")
    shape = n.attr.get("shape", ())
    return f"{v:g}" if not shape else f"{v:g} {n.types[0]}"


# ------------------------------------------------------------------ the picture


def _pydot():
    """pydot, imported on first use: reports and text dumps work without it."""
    try:
        import pydot
    except ImportError:
        raise ImportError("drawing graphs needs pydot: pip install 'graphc[viz]' (or pip install pydot)") from None
    return pydot


def pydot_available() -> bool:
    try:
        _pydot()
    except ImportError:
        return False
    return True


def to_dot(g: Graph, *, title: str | None = None, fused: frozenset[str] | set[str] = frozenset(),
           legend: bool = True, name_limit: int = 32, edge_labels: bool = True) -> pydot.Dot:
    """The picture of `g` as a pydot graph (left to right, clusters per phase when there are several).

    `fused`: extra output values to draw as fused ops (beyond FUSED_OPS). A kernel of the kernel
    stage is drawn as a cluster of its member nodes.
    """
    pydot = _pydot()
    kernel_of: dict[str, tuple[int, str]] = {}  # member output -> (kernel index, kind)
    for k, n in enumerate(g.nodes):
        if n.body is not None:
            for m in n.body.nodes:
                for o in m.outputs:
                    kernel_of[o] = (k, n.attr["kind"])
    if kernel_of:
        g = g.replace(nodes=tuple(members(g)))
    kernel_clusters: dict[int, object] = {}
    dot = pydot.Dot("graphc", graph_type="digraph", rankdir="LR", newrank="true", compound="true",
                    fontname="Helvetica", fontsize="12", nodesep="0.25", ranksep="0.45",
                    label=_q(title or g.name), labelloc="t")
    dot.set_node_defaults(fontname="Helvetica", fontsize="10")
    dot.set_edge_defaults(fontname="Helvetica", fontsize="8", color="#555555")

    phase = phases(g)
    present = sorted(set(phase.values()), key=list(PHASE_TITLES).index)
    clusters = {}
    if len(present) > 1:
        # in a backward plan (saved/grad inputs), forward ops are recomputations
        recomputed = any(i.kind in ("saved", "grad") for i in g.inputs)
        for p in present:
            title = "recomputed forward" if p == "forward" and recomputed else PHASE_TITLES[p]
            c = pydot.Cluster(p, label=_q(title), style="rounded,dashed", color="#999999", fontsize="11")
            clusters[p] = c
    saved = set(saved_values(g))
    used: list[str] = []  # style keys in first-use order, for the legend

    vertex: dict[str, str] = {}  # value name -> DOT vertex id
    for k, inp in enumerate(g.inputs):
        vid = f"in{k}"
        key = inp.kind if inp.kind in STYLES else "input"
        label = f"{inp.kind} %{shorten(inp.name, name_limit)}\n{inp.type}"
        extra = SAVED_BORDER if inp.kind == "saved" else {}
        dot.add_node(_vertex(vid, key, label, tooltip=f"{inp.kind} %{inp.name}: {inp.type}", **extra))
        _use(used, key)
        vertex[inp.name] = vid

    for k, n in enumerate(g.nodes):
        vid = f"n{k}"
        p = phase[n.outputs[0]]
        if not n.inputs and n.op == "full":
            key, label = "constant", _constant_label(n)
        elif is_fused(n) or any(o in fused for o in n.outputs):
            key, label = "fused", _node_label(n, name_limit)
        elif _tagged(n, "collective"):
            key, label = "collective", _node_label(n, name_limit)
        elif p == "optimizer":
            key, label = "optimizer", _node_label(n, name_limit)
        elif p == "backward":
            key, label = "gradient", _node_label(n, name_limit)
        else:
            key, label = "activation", _node_label(n, name_limit)
        is_saved = any(o in saved for o in n.outputs)
        if is_saved:
            _use(used, "saved")
        tip = f"{n.op} -> " + ", ".join(f"%{o}: {t}" for o, t in zip(n.outputs, n.types))
        if n.loc:
            tip += f"  ({n.loc})"
        node = _vertex(vid, key, label, tooltip=tip, **(SAVED_BORDER if is_saved else {}))
        kern = kernel_of.get(n.outputs[0])
        if kern is not None:
            if kern[0] not in kernel_clusters:
                c = pydot.Cluster(f"kernel{kern[0]}", label=_q(f"kernel {kern[0]} ({kern[1]})"), style="rounded,filled",
                                  color="#6aa84f", fillcolor="#f3f9ef", fontsize="10")
                kernel_clusters[kern[0]] = c
                (clusters.get(p) or dot).add_subgraph(c)
            kernel_clusters[kern[0]].add_node(node)
        else:
            (clusters.get(p) or dot).add_node(node)
        _use(used, key)
        for o in n.outputs:
            vertex[o] = vid
        for i in dict.fromkeys(n.inputs):
            if i in vertex:
                t = g.types[i]
                prod = g.producer(i)
                text = f"%{shorten(i, name_limit)} {t}" if prod is not None and len(prod.outputs) > 1 else str(t)
                dot.add_edge(pydot.Edge(vertex[i], vid, **({"label": _q(text)} if edge_labels else {}),
                                        tooltip=_q(f"%{i}: {t}")))
        if n.grad_of is not None and n.grad_of in vertex and vertex[n.grad_of] != vid:
            dot.add_edge(pydot.Edge(vid, vertex[n.grad_of], style="dashed", color="#cc4125", constraint="false",
                                    arrowhead="empty", tooltip=_q(f"grad of %{n.grad_of}")))

    for c in clusters.values():
        dot.add_subgraph(c)

    for k, o in enumerate(g.outputs):
        vid = f"out{k}"
        text = o.label or "output"
        dot.add_node(_vertex(vid, "output", shorten(text, name_limit + 8), tooltip=f"return %{o.value} as {text}"))
        _use(used, "output")
        if o.value in vertex:
            dot.add_edge(pydot.Edge(vertex[o.value], vid, **({"label": _q(str(g.types[o.value]))} if edge_labels else {})))

    if legend:
        dot.add_subgraph(_legend(used, has_grad_links=any(n.grad_of for n in g.nodes)))
    return dot


def _q(text: str) -> str:
    """Quote a label for pydot (it quotes only some strings itself; labels with `:` need it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _use(used: list[str], key: str) -> None:
    if key not in used:
        used.append(key)


def _vertex(vid: str, key: str, label: str, tooltip: str = "", **extra) -> pydot.Node:
    pydot = _pydot()
    s = STYLES[key]
    attrs = {"label": _q(label), "shape": s.shape, "tooltip": _q(tooltip or label)}
    if s.style:
        attrs["style"] = _q(s.style)
        attrs["fillcolor"] = _q(s.fill)
    attrs.update(extra)
    if "color" in attrs:
        attrs["color"] = _q(attrs["color"])
    return pydot.Node(vid, **attrs)


def _legend(used: list[str], has_grad_links: bool) -> pydot.Cluster:
    """One sample box per kind used in the picture, stacked in a column (same rank in LR layout)."""
    pydot = _pydot()
    c = pydot.Cluster("legend", label="legend", style="rounded", color="#bbbbbb", fontsize="10")
    column = pydot.Subgraph("legend_column", rank="same")
    for k in (k for k in STYLES if k in used):
        extra = SAVED_BORDER if k == "saved" else {}
        column.add_node(_vertex(f"legend_{k}", k, STYLES[k].legend, fontsize="9", height="0.3", **extra))
    c.add_subgraph(column)
    if has_grad_links:
        c.add_node(pydot.Node("legend_grad_of_a", label=_q("backward op"), shape="box", fontsize="9"))
        c.add_node(pydot.Node("legend_grad_of_b", label=_q("forward op"), shape="box", fontsize="9"))
        c.add_edge(pydot.Edge("legend_grad_of_a", "legend_grad_of_b", style="dashed", color=_q("#cc4125"),
                              arrowhead="empty", label=_q("grad of")))
    return c


# ------------------------------------------------------------------ files


_warned = False


def graphviz_available() -> bool:
    return shutil.which("dot") is not None


def write_dot(dot: pydot.Dot, path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(dot.to_string())
    return path


def render(dot_path: str, fmt: str, out_path: str | None = None) -> str | None:
    """Render a .dot file with Graphviz; None (after one warning per process) when `dot` is missing."""
    global _warned
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"cannot render format {fmt!r}; expected one of {RENDER_FORMATS}")
    exe = shutil.which("dot")
    if exe is None:
        if not _warned:
            log.warning("Graphviz's `dot` was not found: wrote DOT files only; to render %s, install Graphviz (%s)",
                        fmt.upper(), INSTALL_HINT)
            _warned = True
        return None
    out_path = out_path or os.path.splitext(dot_path)[0] + "." + fmt
    proc = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", out_path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        log.warning("Graphviz failed to render %s: %s", dot_path, proc.stderr.strip().splitlines()[-1:] or proc.returncode)
        return None
    return out_path


def write_graph(g: Graph, stem: str, formats=("dot", "svg"), **to_dot_args) -> list[str]:
    """Write `stem.dot` (always, when any picture is asked for) and rendered `stem.<fmt>`; return the paths."""
    pictures = [f for f in formats if f in ("dot", *RENDER_FORMATS)]
    if not pictures:
        return []
    dot_path = write_dot(to_dot(g, **to_dot_args), stem + ".dot")
    written = [dot_path]  # DOT is always written: it is the picture when Graphviz is missing
    for fmt in pictures:
        if fmt != "dot":
            out = render(dot_path, fmt)
            if out:
                written.append(out)
    return written
