"""graphc.report: the HTML page's content, read as HTML (every stage, diff marks, links, no URLs)."""
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import graphc
import graphc.nn as nn
from graphc.inspect import access
from graphc.inspect.dot import graphviz_available
from graphc.inspect.html import build_html

from fixtures.graphs import train_step
from models import SimpleNet

needs_graphviz = pytest.mark.skipif(not graphviz_available(), reason="Graphviz's dot is not installed (apt-get install graphviz)")
VOID = {"meta", "br", "img", "input", "hr", "link", "col", "area", "base", "wbr", "source", "track"}
SVG_EMPTY = {"path", "polygon", "ellipse", "polyline", "line", "rect", "circle", "text", "title", "g", "a", "svg", "tspan"}


class Page(HTMLParser):
    """The page as a list of elements (tag, attrs, text inside), checking that tags nest properly."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.stack, self.elements, self.errors = [], [], []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {[t for t, _ in self.stack][-5:]}")

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": []}
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append((tag, el))

    def handle_startendtag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": []})

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1][0] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        for _, el in self.stack:
            el["text"].append(data)

    def find(self, tag=None, **attrs):
        out = []
        for el in self.elements:
            if tag and el["tag"] != tag:
                continue
            if all((el["attrs"].get(k.rstrip("_")) or "").split().__contains__(v) if k == "class_"
                   else el["attrs"].get(k) == v for k, v in attrs.items()):
                out.append(el)
        return out


def text_of(el):
    return "".join(el["text"])


@pytest.fixture(scope="module")
def step():
    """SimpleNet's train step, interpreted (the plans, records and generated code are the same)."""
    graphc.manual_seed(0)
    model = SimpleNet()
    x, y = np.zeros((64, 10), np.float32), np.zeros((64, 1), np.float32)
    return graphc.compile_train_step(model, nn.MSELoss(), graphc.optim.SGD(model.parameters(), lr=0.1), x, y,
                                     mode="interpret")


@pytest.fixture(scope="module")
def step_html(step):
    return build_html(step)


@pytest.fixture(scope="module")
def page(step_html):
    p = Page(step_html)
    assert not p.errors, p.errors[:5]
    return p


@pytest.fixture(scope="module")
def module_html():
    graphc.manual_seed(0)
    cm = graphc.compile(SimpleNet(), np.zeros((64, 10), np.float32), mode="interpret")
    return cm, build_html(cm)


def section(page, k):
    [s] = page.find("section", id=f"stage-{k}")
    return s


def stage_lines(html, k, kind):
    """The text of the IR lines of stage k's listing marked `kind` ("add", "del", or "" for unchanged)."""
    body = html[html.index(f'<section id="stage-{k}"'):]
    body = body[:body.index("</section>")]
    lines = re.findall(r'<div class="ln([^"]*)"[^>]*>(.*?)</div>', body)
    strip = lambda s: re.sub(r"<[^>]+>", "", s).replace("&gt;", ">").replace("&lt;", "<").replace("&quot;", '"')
    return [strip(t) for cls, t in lines if (kind in cls.split() if kind else not ({"add", "del"} & set(cls.split())))]


# ------------------------------------------------------------------ structure


def test_every_stage_has_a_section_and_a_nav_entry(step, page):
    stages = access.stages(step)
    assert [s.name for s in stages] == step.stages
    nav = {a["attrs"]["href"] for a in page.find("a") if a["attrs"].get("href", "").startswith("#stage-")}
    for k, s in enumerate(stages):
        sec = section(page, k)
        assert f"Stage {k}: {s.name}" in text_of(sec)
        assert f"#stage-{k}" in nav
    for sid in ("summary", "fusion", "kernels", "saved", "memory", "code"):
        assert page.find("section", id=sid), sid


def test_summary_says_what_was_compiled(step, page):
    [summary] = page.find("section", id="summary")
    text = text_of(summary)
    stages = access.stages(step)
    changed = sum(1 for s in stages[1:] if s.changed)
    peak = step.executables[next(iter(step.executables))].memory_plan.peak_bytes
    for words in ("TrainStep", "train_step", "%x: f32[64,10]", "%target: f32[64,1]", "4 tensors",
                  f"{len(stages)} ({changed} changed the graph)", "kernel calls", f"peak {peak:,} B", "interpreted"):
        assert words in text, words
    assert "fuse_linear_relu" in text and "build_train_step" in text


def test_unchanged_stages_point_to_the_stage_they_equal(step, page):
    # cse changes nothing: its section says so and links back instead of repeating the IR
    k = step.stages.index("cse")
    sec = text_of(section(page, k))
    assert "unchanged: the IR is the same as stage 0 traced" in sec


def test_diff_markers_are_on_the_lines_that_changed(step, step_html):
    k = step.stages.index("fuse_linear_relu")
    added, removed = stage_lines(step_html, k, "add"), stage_lines(step_html, k, "del")
    assert len(added) == 1 and "= linear_relu(%x, %linear1.weight, %linear1.bias)" in added[0]
    assert len(removed) == 2
    assert "%0: f32[64,20] = linear(%x" in removed[0] and "%1: f32[64,20] = relu(%0)" in removed[1]
    same = stage_lines(step_html, k, "")
    assert any("= dropout(%1, %seed)" in ln for ln in same)
    assert not any("linear_relu" in ln for ln in same)
    # the train step's stage adds the backward and the updates, and rewrites the return
    k = step.stages.index("build_train_step")
    added = "\n".join(stage_lines(step_html, k, "add"))
    for op in ("mse_loss_backward", "linear_backward", "sgd_update", "state %state.group0.step", "hyper %hyper.group0.lr"):
        assert op in added
    assert stage_lines(step_html, k, "del") == ["  return %4"]
    assert "+17 −1 lines" in step_html  # 13, and 4 hyper inputs (lr, momentum, dampening, weight_decay)


def test_traced_stage_has_no_diff_marks(step_html):
    assert stage_lines(step_html, 0, "add") == stage_lines(step_html, 0, "del") == []
    assert any("graph SimpleNet {" in ln for ln in stage_lines(step_html, 0, ""))


def test_every_internal_link_resolves_and_ids_are_unique(page):
    ids = [el["attrs"]["id"] for el in page.elements if "id" in el["attrs"]]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})[:10]
    hrefs = [el["attrs"]["href"] for el in page.elements if "href" in el["attrs"]]
    assert len(hrefs) > 50
    broken = [h for h in hrefs if not h.startswith("#") or h[1:] not in set(ids)]
    assert not broken, broken[:10]


def test_no_external_urls_or_resources(step_html, page):
    assert "http:" not in step_html and "https:" not in step_html
    assert not re.search(r"@import|url\(", step_html)
    assert not [el for el in page.elements if "src" in el["attrs"]]
    assert [el["tag"] for el in page.elements if el["tag"] in ("link", "iframe", "object", "embed")] == []


# ------------------------------------------------------------------ links between things


def value_def(page, k, v):
    return page.find(id=f"s{k}-v-{v}")


def test_grad_of_links_both_ways(step, step_html):
    k = step.stages.index("build_train_step")  # the plan stage equals it, so the listing is there
    # the backward node of %1 links to %1's definition ...
    m = re.search(r'<var class=d id="s%d-v-11">%%11</var>.*?grad of <a class="v g" href="#(s%d-v-1)"' % (k, k), step_html)
    assert m, "no grad-of link from %11 to %1"
    # ... and %1's line links back to its gradient node
    line = re.search(r'<var class=d id="s%d-v-1">%%1</var>.*?</div>' % k, step_html).group()
    assert f'gradient: <a class="v" href="#s{k}-v-11" data-v="11">%11</a>' in line


def test_grad_of_links_across_the_forward_and_backward_plans(module_html):
    cm, html = module_html
    fwd, bwd = cm.stages.index("forward_plan"), cm.stages.index("backward_plan")
    # backward_plan: %4.. = linear_backward(...)  # grad of %3: %3 lives in the forward plan
    assert f'grad of <a class="v g" href="#s{fwd}-v-3"' in html
    line = re.search(r'<var class=d id="s%d-v-3">%%3</var>.*?</div>' % fwd, html).group()
    assert f'href="#s{bwd}-v-4"' in line


def test_kernel_calls_link_to_their_ir_nodes_and_back(step, page, step_html):
    from graphc.inspect.html import _page
    from graphc.inspect.html_code import plan_calls

    model = _page(step)
    [(plan, exe)] = model.executables.items()  # the stage whose graph the executable runs
    assert model.stages[plan].graph == exe.graph
    listing = model.shown[plan]  # the stage whose listing stands for it
    want = plan_calls(exe.source.text)
    calls = [el for el in page.elements if re.fullmatch(f"code-{plan}-\\d+", el["attrs"].get("id", ""))]
    assert len(calls) == len(want) >= 8  # the plan's kernel calls, as generated
    first = calls[0]
    assert want[0].kernels[0] in text_of(first) and want[0].values[:2] == ["1", "2"]
    # the call's IR values link to their definitions in the plan's listing
    assert f'href="#s{listing}-v-1"' in step_html and f'href="#s{listing}-v-2"' in step_html
    line = re.search(r'<var class=d id="s%d-v-2">%%2</var>.*?</div>' % listing, step_html).group()
    assert f'href="#code-{plan}-0">kernel 0</a>' in line


def test_fusion_records_with_their_stage(step, page):
    [fusion] = page.find("section", id="fusion")
    text = text_of(fusion)
    recs = access.fusion_records(step)
    fused = sum(1 for r in recs if r.fused)
    assert f"Fused ({fused})" in text and f"Not fused ({len(recs) - fused})" in text and "linear+relu" in text
    assert "linear_relu(%x, %linear1.weight, %linear1.bias)" in text


def test_saved_values_ledger(module_html):
    cm, html = module_html
    p = Page(html)
    [saved] = p.find("section", id="saved")
    text = text_of(saved)
    assert "%1" in text and "f32[64,20]" in text and "5,120" in text and "relu mask" in text
    assert "1 saved values, 5,120 B" in text


def test_memory_plan_as_a_timeline(step, page):
    svgs = page.find("svg", class_="mem")
    assert len(svgs) == 1
    bars = [el for el in page.find("rect") if "v" in el["attrs"].get("class", "").split()]
    mp = step.executables["train_step_plan"].memory_plan
    assert len(bars) == sum(len(b.values) for b in mp.buffers)
    assert "peak 17,664 B" in text_of(svgs[0])  # (the dropout mask, bool[64,20], kept from the forward; no weight-gradient
    # buffers: each addmm is a loop nest that writes the update in place, no alpha/beta scratch)


@needs_graphviz
def test_pictures_are_inline_svg_marked_with_their_values(step, page):
    shown = [k for k in range(len(step.stages)) if not text_of(section(page, k)).count("unchanged: the IR")]
    pics = page.find("svg", class_="graph")
    assert len(pics) == len(shown)
    boxes = [el for el in page.elements if el["tag"] == "g" and "node" in el["attrs"].get("class", "").split()
             and el["attrs"].get("data-defs")]
    assert any(b["attrs"]["data-defs"] == "1" for b in boxes)


def test_big_graphs_leave_pictures_out_with_a_note(step):
    html = build_html(step, max_picture_nodes=3)
    assert '<svg class="graph"' not in html
    assert "picture left out: 15 nodes is over the limit of 3" in html


def test_report_of_a_bare_graph(tmp_path):
    path = graphc.report(train_step(), tmp_path / "g.html")
    html = open(path, encoding="utf-8").read()
    p = Page(html)
    assert not p.errors
    assert p.find("section", id="stage-0")
    assert "no generated plans" in html
    assert "%10" in html and "linear_backward" in html


def test_report_writes_the_file(step, tmp_path):
    path = graphc.report(step, tmp_path / "sub" / "r.html")
    assert path == str(tmp_path / "sub" / "r.html")
    assert open(path, encoding="utf-8").read().startswith("<!DOCTYPE html>")


def test_cli_writes_a_report(tmp_path, cache_dir):
    model = Path(__file__).resolve().parent / "fixtures" / "simple_net.py"
    out = tmp_path / "r.html"
    p = subprocess.run([sys.executable, "-m", "graphc", "report", f"{model}:SimpleNet", "--input", "8x10", "-o", out],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, GRAPHC_CHECK="0"))
    assert p.returncode == 0, p.stderr
    assert f"wrote {out}" in p.stdout
    html = out.read_text(encoding="utf-8")
    assert "forward_plan" in html and "remove_dropout" in html


def test_cli_report_help():
    p = subprocess.run([sys.executable, "-m", "graphc", "report", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("usage: graphc report")
    for opt in ("--input", "--train", "--loss", "--optim", "-o"):
        assert opt in p.stdout


def test_plan_calls_reads_the_ir_comments_codegen_writes():
    from graphc.inspect.html_code import plan_calls

    source = '''"""doc"""
def plan(x, table):
    # storage: views
    v1 = x
    # %1: f32[4] = relu(%x)  # m.py:3
    k_relu(x, v1)
    # %2: f32[4] = pow(%1, %1)
    k_first(v1, v2)
    k_second(v2)
    # %3: f32[4] = linear(%2, %w)
    # %4: f32[4] = relu(%3)  # m.py:5  (fused: one pass)
    k_linear_relu(v2, w, v4)
    # %5: f32[4,2] = gather(%w, %ids)
    if kernel3(w, ids, v5) != 0: raise ValueError("index out of range")
    # outputs that are inputs, then updates that could not be written in place
    k_copy(a, b)
    k_copy(c, d)


def make_runner(plan):
    k_not_a_plan_call()
'''
    calls = plan_calls(source)
    assert [c.kernels for c in calls] == [["relu"], ["first", "second"], ["linear_relu"], ["kernel3"], ["copy"], ["copy"]]
    assert [c.values for c in calls] == [["1"], ["2"], ["3", "4"], ["5"], [], []]
    assert calls[2].note == "fused: one pass" and calls[2].ir[1] == "%4: f32[4] = relu(%3)  # m.py:5"
    assert (calls[1].first, calls[1].line) == (6, 8)


def test_generated_kernel_functions_link_to_their_calls_and_back():
    from graphc.inspect.html_code import plan_calls, source_html

    source = '''"""doc"""
def kernel3(a, out):
    for i in range(a.size):
        out[i] = a[i] * 2.0


def plan(x, table):
    # kernel3: kernel {kind=elementwise} over 2 nodes:
    #   %1: f32[4] = relu(%x)
    #   %2: f32[4] = mul(%1, %1)
    kernel3(x, v2)
'''
    calls = plan_calls(source)
    assert [c.kernels for c in calls] == [["kernel3"]] and calls[0].values == ["1", "2"]
    html = source_html(source, calls, 5, lambda v: f"s5-v-{v}")
    p = Page(html)
    assert not p.errors
    assert p.find(id="code-5-fn-kernel3") and p.find(id="code-5-0")
    assert 'href="#code-5-fn-kernel3">code of kernel3</a>' in html
    assert 'href="#code-5-0">called as kernel 0</a>' in html
    assert 'href="#s5-v-1" data-v="1">%1</a>' in html and "#   </span>" in html


def test_plans_cut_from_one_graph_diff_against_it(module_html):
    cm, html = module_html
    joint = cm.stages.index("forward_plan") - 1
    for plan in ("forward_plan", "backward_plan"):
        k = cm.stages.index(plan)
        body = html[html.index(f'<section id="stage-{k}"'):]
        assert f'diff against <a href="#stage-{joint}">{joint} {cm.stages[joint]}</a>' in body[:3000], plan


def test_kernel_stage_nodes_with_members_and_code(tmp_path):
    """A plan of the kernel stage (nodes with a `body`, as passes/kernels.py makes them): the Kernels
    section lists each kernel node and its members."""
    from graphc.ir import Graph, Input, Node, Output

    g = train_step()
    first, second = g.nodes[0], g.nodes[1]  # linear_relu, dropout
    outs = (*first.outputs, *second.outputs)  # %0 is read outside too (the backward's mask)
    body = Graph("kernel", tuple(Input(v, g.types[v]) for v in (*first.inputs, "seed")), (first, second),
                 tuple(Output(o) for o in outs))
    kern = Node("kernel", (*first.inputs, "seed"), outs, (*first.types, *second.types), (("kind", "elementwise"),))
    object.__setattr__(kern, "body", body)  # the field the kernel stage adds to Node
    g2 = g.replace(nodes=(kern, *g.nodes[2:]))
    from graphc.ir.text import format_node
    from graphc.passes.manager import FusionRecord

    g2.meta["fusion_records"] = [FusionRecord("kernels", "elementwise", (format_node(g.nodes[2]),), reason="a GEMM starts a kernel")]
    html = build_html(g2)
    p = Page(html)
    assert not p.errors, p.errors[:3]
    [sec] = p.find("section", id="kernels")
    text = text_of(sec)
    assert "1 kernel nodes group 2 nodes" in text
    assert "= kernel elementwise" in text and "= linear_relu" in text and "= dropout" in text
    assert "Not fused into one kernel (1)" in text and "a GEMM starts a kernel" in text


def test_without_graphviz_the_page_says_what_to_install(step, monkeypatch):
    from graphc.inspect import html_svg

    monkeypatch.setattr(html_svg.shutil, "which", lambda name: None)
    html = build_html(step)
    assert '<svg class="graph"' not in html and '<svg class="mem"' in html
    assert "no picture: Graphviz&#x27;s `dot` is not installed (apt-get install graphviz)" in html
