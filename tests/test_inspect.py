"""Pictures and reports, checked against the graphs they describe.

The hand-written train step (tests/fixtures/graphs.py) stands in for the pipeline's output, so
these run whatever state the compiler is in; tests of compiled objects skip until it exists.
"""
import logging
import re
from dataclasses import dataclass

import numpy as np
import pydot
import pytest

import graphc
import graphc.nn as nn
import graphc.nn.functional as F
from graphc.inspect import access, dot as gdot, reports
from graphc.ir import GraphcError, parse

from fixtures.graphs import BACKWARD, backward, long_names_graph, train_step
from models import SimpleNet


def parsed(g, **kw):
    """The picture of g, written as DOT text and read back by pydot (so we test what is written)."""
    (d,) = pydot.graph_from_dot_data(gdot.to_dot(g, **kw).to_string())
    return d


def all_nodes(d):
    out = {}
    for n in d.get_nodes():
        out[n.get_name()] = n
    for s in d.get_subgraphs():
        out.update(all_nodes(s))
    return out


def all_edges(d):
    out = list(d.get_edges())
    for s in d.get_subgraphs():
        out += all_edges(s)
    return out


def unquote(v):
    if isinstance(v, str) and v.startswith('"'):
        return v[1:-1].replace('\\"', '"').replace("\\n", "\n")
    return v


def vertex_of(g, value):
    """The DOT id to_dot gives the input or node defining `value`."""
    for k, i in enumerate(g.inputs):
        if i.name == value:
            return f"in{k}"
    for k, n in enumerate(g.nodes):
        if value in n.outputs:
            return f"n{k}"
    raise KeyError(value)


# ------------------------------------------------------------------ pictures


def test_every_node_shows_its_op_and_output_types():
    g = train_step()
    nodes = all_nodes(parsed(g))
    for k, n in enumerate(g.nodes):
        label = unquote(nodes[f"n{k}"].get("label"))
        if n.op == "full":
            assert f"{n.attr['value']:g}" in label
            continue
        assert label.splitlines()[0].split()[0] == n.op
        for o, t in zip(n.outputs, n.types):
            assert f"%{o}: {t}" in label
    for k, i in enumerate(g.inputs):
        label = unquote(nodes[f"in{k}"].get("label"))
        assert i.kind in label and str(i.type) in label


def test_kinds_are_told_apart_by_shape_and_colour():
    g = train_step()
    nodes = all_nodes(parsed(g))

    def look(vid):
        n = nodes[vid]
        return n.get("shape"), unquote(n.get("fillcolor"))

    x, w, state, seed = (vertex_of(g, v) for v in ("x", "linear1.weight", "state.momentum.linear1.weight", "seed"))
    fused = vertex_of(g, "0")  # linear_relu
    activation = vertex_of(g, "2")  # linear
    gradient = vertex_of(g, "5")  # mse_loss_backward
    update = vertex_of(g, "17")  # sub in the optimizer update
    kinds = [look(v) for v in (x, w, state, seed, fused, activation, gradient, update)]
    assert len(set(kinds)) == len(kinds), kinds
    assert look(w) == (gdot.STYLES["param"].shape, gdot.STYLES["param"].fill)
    assert look(fused)[0] == gdot.STYLES["fused"].shape
    # the fused backward is a fused op too
    assert look(vertex_of(g, "10"))[0] == gdot.STYLES["fused"].shape
    # saved activations get the saved border; values that are not saved do not
    for v in ("0", "1", "2"):
        assert nodes[vertex_of(g, v)].get("peripheries") == "2"
    for v in ("3", "5", "17"):
        assert nodes[vertex_of(g, v)].get("peripheries") is None


def test_saved_and_grad_inputs_of_a_backward_plan():
    g = backward()
    nodes = all_nodes(parsed(g))
    saved = nodes[vertex_of(g, "0")]
    grad = nodes[vertex_of(g, "grad.out")]
    assert (saved.get("shape"), saved.get("peripheries")) == (gdot.STYLES["saved"].shape, "2")
    assert grad.get("shape") == gdot.STYLES["grad"].shape
    # grad_of points at %2, which lives in the forward plan: no dangling edge
    assert all(e.get_destination() in nodes for e in all_edges(parsed(g)))


def test_forward_backward_and_optimizer_sit_in_separate_clusters():
    g = train_step()
    d = parsed(g)
    clusters = {s.get_name(): s for s in d.get_subgraphs()}
    members = {name: set(all_nodes(c)) for name, c in clusters.items() if name != "cluster_legend"}
    assert set(members) == {"cluster_forward", "cluster_backward", "cluster_optimizer"}
    phase = gdot.phases(g)
    for k, n in enumerate(g.nodes):
        assert f"n{k}" in members[f"cluster_{phase[n.outputs[0]]}"]
    assert {gdot.phases(g)[v] for v in ("0", "1", "2", "3")} == {"forward"}
    assert {gdot.phases(g)[v] for v in ("4", "5", "6", "9", "10")} == {"backward"}
    assert {gdot.phases(g)[v] for v in ("12", "13", "14", "15", "16", "17")} == {"optimizer"}


def test_a_forward_graph_has_no_clusters_but_a_legend():
    g = graphc.trace(SimpleNet(), np.zeros((4, 10), np.float32))
    d = parsed(g)
    assert [s.get_name() for s in d.get_subgraphs()] == ["cluster_legend"]
    assert d.get("rankdir") == "LR"


def test_backward_nodes_link_back_to_what_they_differentiate():
    g = train_step()
    edges = all_edges(parsed(g))
    dashed = {(e.get_source(), e.get_destination()) for e in edges if e.get("style") == "dashed"
              and not e.get_source().startswith("legend")}
    want = {(vertex_of(g, n.outputs[0]), vertex_of(g, n.grad_of)) for n in g.nodes if n.grad_of}
    assert dashed == want
    assert len(want) == sum(1 for n in g.nodes if n.grad_of)


def test_edges_carry_the_tensor_types():
    g = train_step()
    edges = [e for e in all_edges(parsed(g)) if e.get("style") is None]
    by_pair = {(e.get_source(), e.get_destination()): unquote(e.get("label")) for e in edges}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            label = by_pair[(vertex_of(g, i), f"n{k}")]
            assert str(g.types[i]) in label
    # a value of a multi-output node is named on its edge
    assert by_pair[(vertex_of(g, "6"), vertex_of(g, "9"))] == "%6 f32[8,20]"


def test_legend_lists_the_kinds_drawn():
    d = parsed(train_step())
    legend = next(s for s in d.get_subgraphs() if s.get_name() == "cluster_legend")
    labels = {unquote(n.get("label")) for n in all_nodes(legend).values()}
    for key in ("input", "param", "state", "saved", "activation", "gradient", "fused", "optimizer", "output"):
        assert gdot.STYLES[key].legend in labels
    # a forward-only graph does not explain kinds it does not draw
    d = parsed(graphc.trace(SimpleNet(), np.zeros((4, 10), np.float32)))
    legend = next(s for s in d.get_subgraphs() if s.get_name() == "cluster_legend")
    labels = {unquote(n.get("label")) for n in all_nodes(legend).values()}
    assert gdot.STYLES["gradient"].legend not in labels and gdot.STYLES["param"].legend in labels


@pytest.mark.parametrize("name", [
    "encoder.layers.29.feed_forward.projection.weight",
    "a" * 80,
    "state.adam.exp_avg_sq.encoder.layers.3.attention.query.weight",
    "x",
])
def test_long_names_are_shortened(name):
    s = gdot.shorten(name, 28)
    assert len(s) <= 28
    if len(name) <= 28:
        assert s == name
    else:
        assert s != name
        assert name.split(".")[-1][:4] in s  # the end of a name says what it is


def test_shortened_layer_names_stay_distinct_and_tooltips_keep_the_full_name():
    g = long_names_graph(30)
    nodes = all_nodes(parsed(g))
    labels = [unquote(nodes[f"in{k}"].get("label")) for k in range(1, len(g.inputs))]
    assert len(set(labels)) == len(labels)
    assert all(len(line) <= 40 for lab in labels for line in lab.splitlines())
    tips = {unquote(nodes[f"in{k}"].get("tooltip")) for k in range(1, len(g.inputs))}
    assert "param %encoder.layers.29.feed_forward.projection.weight: f32[8,8]" in tips


# ------------------------------------------------------------------ saved values


def test_saved_values_of_the_joint_graph():
    g = train_step()
    assert gdot.saved_values(g) == ["0", "1", "2"]
    assert gdot.saved_values(backward()) == ["0", "1"]
    assert gdot.saved_values(graphc.trace(SimpleNet(), np.zeros((4, 10), np.float32))) == []


def test_saved_report_adds_up_and_names_backward_users():
    g = train_step()
    entries = reports.saved_entries(g)
    phase = gdot.phases(g)
    assert [e.value for e in entries] == gdot.saved_values(g)
    for e in entries:
        assert e.nbytes == g.types[e.value].nbytes
        assert e.users and all(phase[u.outputs[0]] == "backward" for u in e.users)
    text = reports.saved_report(g)
    total = sum(g.types[v].nbytes for v in gdot.saved_values(g))
    assert f"{total:,} B" in text
    assert "%0 = linear_relu" in text and "%10 = linear_backward" in text
    assert text.startswith("(read off the graph")
    assert len(text.splitlines()) == 1 + 2 + len(entries) + 2 + len(entries)
    assert text.count("read by backward") == len(entries)


def test_saved_report_without_saved_values():
    g = graphc.trace(SimpleNet().eval(), np.zeros((4, 10), np.float32))
    assert reports.saved_report(g).startswith("no saved values")


# ------------------------------------------------------------------ stages, diffs, passes, fusion


@pytest.fixture
def pipeline():
    passes = pytest.importorskip("graphc.passes")
    g = graphc.trace(SimpleNet(), np.zeros((4, 10), np.float32))
    return passes.compile_pipeline(g, "inference")


def test_stages_read_the_pipeline_in_order(pipeline):
    st = access.stages(pipeline)
    assert [s.name for s in st] == [s.name for s in pipeline.stages]
    assert st[0].name == "traced"
    for s, snap in zip(st, pipeline.stages):
        assert s.ir == str(snap.graph) and parse(s.ir) == snap.graph


def test_find_stage_by_name_index_and_prefix(pipeline):
    names = [s.name for s in pipeline.stages]
    assert access.find_stage(pipeline, names[1]).name == names[1]
    assert access.find_stage(pipeline, -1).name == names[-1]
    assert access.find_stage(pipeline, "0").name == names[0]
    assert access.find_stage(pipeline, "fuse_l").name == "fuse_linear_relu"
    with pytest.raises(GraphcError, match="ambiguous"):
        access.find_stage(pipeline, "fuse")
    with pytest.raises(GraphcError, match="does not exist; stages: traced"):
        access.find_stage(pipeline, "nope")
    with pytest.raises(GraphcError, match="no stage number 99"):
        access.find_stage(pipeline, 99)


def test_diff_shows_what_a_pass_did(pipeline):
    text = reports.diff(pipeline, "remove_dropout", "fuse_linear_relu")
    lines = text.splitlines()
    assert lines[0] == "--- remove_dropout" and lines[1] == "+++ fuse_linear_relu"
    removed = [ln for ln in lines if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
    assert any("= relu(" in ln for ln in removed) and any("= linear_relu(" in ln for ln in added)
    assert "same IR" in reports.diff(pipeline, "cse", "dce")


def test_passes_report_has_one_row_per_stage(pipeline):
    text = reports.passes_report(pipeline)
    rows = text.splitlines()[2:-1]
    assert len(rows) == len(pipeline.stages)
    for k, snap in enumerate(pipeline.stages[1:], 1):
        row = rows[k]
        assert snap.name in row
        assert f"{snap.nodes_before} -> {snap.nodes_after}" in row
        assert ("yes" if snap.changed else "no") in row.split()
    changed = sum(s.changed for s in pipeline.stages[1:])
    assert f"{changed} changed the graph" in text.splitlines()[-1]


class WithLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SimpleNet()

    def forward(self, x, y):
        return F.mse_loss(self.net(x), y)


@pytest.fixture
def training_plans():
    passes = pytest.importorskip("graphc.passes")
    g = graphc.trace(WithLoss(), np.zeros((8, 10), np.float32), np.zeros((8, 1), np.float32))
    return passes.compile_pipeline(g, "training")


def test_pipeline_ledger_report_matches_the_backward_plan(training_plans):
    led = training_plans.ledger
    assert led
    bwd = training_plans.backward
    text = reports.saved_report(training_plans)
    assert f"{sum(e.nbytes for e in led):,} B" in text
    for e in led:
        assert e.nbytes == bwd.types[e.value].nbytes == e.type.nbytes
        assert bwd.input_by_name[e.value].kind == "saved"
        assert bwd.users[e.value], f"%{e.value} is saved but no backward node reads it"
        assert f"%{e.value}" in text and e.reason in text
    # the picture of the backward plan marks exactly the ledger's values as saved inputs
    nodes = all_nodes(parsed(bwd))
    marked = {i.name for k, i in enumerate(bwd.inputs) if nodes[f"in{k}"].get("peripheries") == "2"}
    assert marked == {e.value for e in led}
    # forward ops in a backward plan are recomputations: in their own cluster, never marked saved
    assert not any(nodes[f"n{k}"].get("peripheries") for k in range(len(bwd.nodes)))
    recomputed = [k for k, n in enumerate(bwd.nodes) if gdot.phases(bwd)[n.outputs[0]] == "forward" and n.inputs]
    if recomputed:
        d = parsed(bwd)
        cluster = next(c for c in d.get_subgraphs() if c.get_name() == "cluster_forward")
        assert unquote(cluster.get("label")) == "recomputed forward"


def test_train_step_plan_picture_has_three_phases():
    passes = pytest.importorskip("graphc.passes")
    from graphc.passes.train_step import OptimizerSpec

    g = graphc.trace(WithLoss(), np.zeros((8, 10), np.float32), np.zeros((8, 1), np.float32))
    plans = passes.compile_pipeline(g, "train_step", optimizer=OptimizerSpec("adam"))
    step = plans.stage("train_step_plan").graph  # the plan before the kernel stage groups it
    phase = gdot.phases(step)
    for n in step.nodes:
        want = ("optimizer" if n.op == "adam_update" else "backward" if n.grad_of else None)
        if want:
            assert phase[n.outputs[0]] == want, n
    assert phase[next(n for n in step.nodes if n.op == "linear_relu").outputs[0]] == "forward"
    d = parsed(step)
    assert {s.get_name() for s in d.get_subgraphs()} == {"cluster_forward", "cluster_backward", "cluster_optimizer",
                                                        "cluster_legend"}
    nodes = all_nodes(d)
    for k, i in enumerate(step.inputs):
        if i.kind == "state":
            assert nodes[f"in{k}"].get("shape") == gdot.STYLES["state"].shape


def test_fusion_report_shows_fused_and_refused_candidates():
    passes = pytest.importorskip("graphc.passes")

    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            y = self.a(x)
            return self.b(F.relu(y) + y).relu()  # a: relu(y) cannot fuse (y used twice); b: fuses

    plans = passes.compile_pipeline(graphc.trace(TwoUsers(), np.zeros((2, 4), np.float32)))
    text = reports.fusion_report(plans)
    fused, refused = text.split("\nnot fused (")
    assert fused.startswith("fused (2):") and "[linear+relu]" in fused and "linear_relu(" in fused
    assert "[kernel:gemm]" in fused  # the kernel stage: linear a + relu + add in one kernel
    assert "also used by" in refused


def test_fusion_report_of_a_bare_graph_lists_fused_ops():
    text = reports.fusion_report(train_step())
    assert "= linear_relu" in text and "= linear_backward" in text


# ------------------------------------------------------------------ memory plans


@dataclass
class _Buf:
    index: int
    nbytes: int
    start: int
    end: int
    values: tuple


@dataclass
class _Plan:
    buffers: list
    peak_bytes: int


def test_memory_plan_formats_buffers_lifetimes_and_sharing():
    plan = _Plan([_Buf(0, 640, 0, 3, ("0", "6")), _Buf(1, 32, 2, 4, ("2",))], peak_bytes=672)

    class Exe:
        memory_plan = plan

    class Compiled:
        executables = {"train_step": Exe()}

    text = reports.memory_plan(Compiled())
    assert "== train_step ==" in text
    assert re.search(r"^0\s+640\s+\[0, 3\]\s+2\s+%0, %6$", text, re.M)
    assert "2 buffers (1 shared by several values)" in text and "peak 672 B" in text


def test_memory_plan_of_a_graph_says_to_compile():
    assert reports.memory_plan(train_step()).startswith("no memory plan")


# ------------------------------------------------------------------ compiled objects (once the compiler exists)


@pytest.fixture
def compiled_step(cache_dir):
    compiler = pytest.importorskip("graphc.compiler")
    optim = pytest.importorskip("graphc.optim")
    model = SimpleNet()
    x = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32)
    y = np.zeros((16, 1), np.float32)
    return compiler.compile_train_step(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), x, y)


def test_compiled_saved_ledger_matches_the_graph(compiled_step):
    entries = reports.saved_entries(compiled_step)
    assert entries, "a train step keeps activations between forward and backward"
    total = 0
    for e in entries:
        t = access.field(e, "type")
        nbytes = access.field(e, "nbytes")
        assert nbytes == t.nbytes
        total += nbytes
        assert access.field(e, "users"), f"saved value %{e.value} has no user in backward"
    assert f"{total:,} B" in reports.saved_report(compiled_step)


def test_compiled_memory_peak_covers_the_largest_buffer(compiled_step):
    plans = access.memory_plans(compiled_step)
    if not plans:
        pytest.skip("the compiled object exposes no memory plans yet")
    for name, plan in plans:
        rows = reports.buffer_rows(plan)
        peak = reports.peak_bytes(plan)
        assert rows and peak is not None, name
        assert peak >= max(int(r[1].replace(",", "")) for r in rows)
    assert "peak" in reports.memory_plan(compiled_step)


def test_compiled_reports_run(compiled_step):
    assert "traced" in reports.passes_report(compiled_step)
    assert "linear_relu" in reports.fusion_report(compiled_step)
    names = [s.name for s in access.stages(compiled_step)]
    assert reports.diff(compiled_step, names[0], names[-1]).startswith(f"--- {names[0]}")


# ------------------------------------------------------------------ rendering


def test_missing_graphviz_warns_once_and_keeps_the_dot(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gdot.shutil, "which", lambda name: None)
    monkeypatch.setattr(gdot, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="graphc.inspect"):
        a = gdot.write_graph(train_step(), str(tmp_path / "a"), ("dot", "svg"))
        b = gdot.write_graph(backward(), str(tmp_path / "b"), ("svg", "png"))
    assert a == [str(tmp_path / "a.dot")] and b == [str(tmp_path / "b.dot")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "apt-get install graphviz" in warnings[0].getMessage()
    assert pydot.graph_from_dot_file(str(tmp_path / "b.dot"))


@pytest.mark.skipif(not gdot.graphviz_available(), reason="Graphviz's dot is not installed")
def test_render_svg(tmp_path):
    import xml.etree.ElementTree as ET

    paths = gdot.write_graph(parse(BACKWARD), str(tmp_path / "bwd"), ("svg",))
    assert paths == [str(tmp_path / "bwd.dot"), str(tmp_path / "bwd.svg")]
    root = ET.parse(paths[1]).getroot()
    assert root.tag.endswith("svg")
    assert "linear_backward" in "".join(root.itertext())


def test_compiled_module_reports_use_the_partition_ledger(cache_dir):
    compiler = pytest.importorskip("graphc.compiler")
    cm = compiler.compile(SimpleNet(), np.zeros((8, 10), np.float32))  # training mode: forward + backward plans
    led = cm.plans.ledger
    assert led
    text = cm.saved_report()
    assert not text.startswith("(read off")
    assert f"{sum(e.nbytes for e in led):,} B" in text
    mem = cm.memory_plan()
    for name, plan in access.memory_plans(cm):
        assert f"== {name} ==" in mem
        assert reports.peak_bytes(plan) >= max(b.nbytes for b in plan.buffers)
    assert [s.name for s in access.stages(cm)] == cm.stages


def test_pictures_are_deterministic():
    g1 = graphc.trace(SimpleNet(), np.zeros((4, 10), np.float32))
    g2 = graphc.trace(SimpleNet(), np.zeros((4, 10), np.float32))
    assert gdot.to_dot(g1).to_string() == gdot.to_dot(g2).to_string()
    assert gdot.to_dot(train_step()).to_string() == gdot.to_dot(parse(str(train_step()))).to_string()
