"""graphc.dump: one file per stage and format, in pipeline order, pictures that Graphviz renders."""
import logging
import os
import xml.etree.ElementTree as ET

import numpy as np
import pydot
import pytest

import graphc
import graphc.nn as nn
from graphc.inspect import access, dot as gdot
from graphc.ir import parse

from fixtures.graphs import train_step
from models import SimpleNet

needs_graphviz = pytest.mark.skipif(not gdot.graphviz_available(),
                                    reason="Graphviz's dot is not installed (apt-get install graphviz)")


def check_svg(path, must_contain=()):
    """Well-formed XML, an <svg> root, and the given words in its text."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path
    text = " ".join(root.itertext())
    for word in must_contain:
        assert word in text, f"{word} not in {path}"
    return text


def check_dot(path):
    """pydot reads the file back as one graph. pydot's parser takes ~2 s a stage picture, so a
    test reads one (its richest); Graphviz read every other one to render its SVG (render() keeps
    no SVG when `dot` fails, so a count of SVGs equal to the DOT files proves each one parsed)."""
    with open(path, encoding="utf-8") as f:
        graphs = pydot.graph_from_dot_data(f.read())
    assert graphs and len(graphs) == 1, path
    return graphs[0]


@needs_graphviz
def test_dump_of_a_hand_built_train_step(tmp_path):
    g = train_step()
    written = graphc.dump(g, tmp_path)
    assert [os.path.basename(p) for p in written] == ["00_graph.txt", "00_graph.dot", "00_graph.svg", "index.md"]
    assert parse(open(written[0]).read()) == g
    check_dot(written[1])
    text = check_svg(written[2], ["linear_relu", "linear_backward", "forward", "backward", "legend"])
    assert "mse_loss_backward" in text
    index = open(written[3]).read()
    for p in written[:3]:
        assert f"({os.path.basename(p)})" in index
    for section in ("## Passes", "## Saved for backward", "## Memory plan", "## Fusion"):
        assert section in index
    total = sum(g.types[v].nbytes for v in gdot.saved_values(g))
    assert f"{total:,} B" in index


@pytest.fixture
def plans():
    passes = pytest.importorskip("graphc.passes")
    g = graphc.trace(SimpleNet(), np.zeros((8, 10), np.float32))
    return passes.compile_pipeline(g, "inference")


def test_dump_files_sort_in_pipeline_order(tmp_path, plans):
    written = graphc.dump(plans, tmp_path, formats=("txt",))
    names = sorted(os.listdir(tmp_path))
    txt = [n for n in names if n.endswith(".txt")]
    stages = access.stages(plans)
    assert len(txt) == len(stages)
    assert txt[0] == "00_traced.txt"
    for k, (name, s) in enumerate(zip(txt, stages)):
        assert name == f"{k:02d}_{s.name}.txt"
        assert parse(open(tmp_path / name).read()) == s.graph  # each file is that stage's IR
    assert not any(n.endswith(".dot") for n in names)  # no picture asked for
    assert written[-1] == str(tmp_path / "index.md")


@needs_graphviz
def test_dump_of_a_pipeline_renders_every_stage(tmp_path, plans):
    written = graphc.dump(plans, tmp_path, formats=("dot", "svg"))
    svgs = [p for p in written if p.endswith(".svg")]
    dots = [p for p in written if p.endswith(".dot")]
    assert len(svgs) == len(dots) == len(plans.stages)
    check_dot(dots[-1])  # the final plan's; Graphviz parsed every one to render its SVG
    for p in svgs:
        check_svg(p)
    check_svg(svgs[-1], ["linear_relu"])  # the final plan has the fused node
    index = open(tmp_path / "index.md").read()
    assert index.count("](") == 2 * len(plans.stages)
    assert "fuse_linear_relu" in index


def test_dump_without_graphviz_writes_dot_and_says_what_to_install(tmp_path, plans, monkeypatch, caplog):
    monkeypatch.setattr(gdot.shutil, "which", lambda name: None)
    monkeypatch.setattr(gdot, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="graphc.inspect"):
        written = graphc.dump(plans, tmp_path)
    assert not any(p.endswith(".svg") for p in written)
    assert sum(p.endswith(".dot") for p in written) == len(plans.stages)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "apt-get install graphviz" in warnings[0]
    assert "apt-get install graphviz" in open(tmp_path / "index.md").read()


def test_dump_rejects_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown dump format"):
        graphc.dump(train_step(), tmp_path, formats=("txt", "jpeg"))


def test_dump_of_something_else_names_what_it_takes(tmp_path):
    with pytest.raises(graphc.GraphcError, match="expected a Graph, CompiledModule or TrainStep"):
        graphc.dump(object(), tmp_path)


# ------------------------------------------------------------------ the compiled train step (once it exists)


@needs_graphviz
def test_dump_of_simple_net_train_step(tmp_path, cache_dir):
    compiler = pytest.importorskip("graphc.compiler")
    optim = pytest.importorskip("graphc.optim")
    model = SimpleNet()
    x = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32)
    y = np.zeros((16, 1), np.float32)
    # the dump shows the pipeline's stages and the final plan, not native code: the interpreter runs it
    step = compiler.compile_train_step(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), x, y,
                                       mode="interpret")
    written = graphc.dump(step, tmp_path)
    stages = access.stages(step)
    svgs = sorted(p for p in written if p.endswith(".svg"))
    dots = sorted(p for p in written if p.endswith(".dot"))
    assert len(dots) >= len(stages) and len(svgs) == len(dots)
    check_dot(dots[len(stages) - 1])  # the train-step plan's; Graphviz parsed every one to render its SVG
    for p in svgs:
        check_svg(p)
    # after fusion every picture has the fused linear_relu; the final plan has the backward too
    fused_at = next(k for k, s in enumerate(stages) if any(n.op == "linear_relu" for n in s.graph.nodes))
    for p in svgs[fused_at:len(stages)]:
        check_svg(p, ["linear_relu"])
    check_svg(svgs[len(stages) - 1], ["linear_relu", "backward", "optimizer update"])
    index = open(tmp_path / "index.md").read()
    assert "## Saved for backward" in index and "no saved values" not in index


def test_dump_without_pydot_writes_text_and_says_so(tmp_path, monkeypatch, caplog):
    import importlib

    dump_module = importlib.import_module("graphc.inspect.dump")
    monkeypatch.setattr(dump_module, "pydot_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="graphc.inspect"):
        written = graphc.dump(train_step(), tmp_path)
    assert [os.path.basename(p) for p in written] == ["00_graph.txt", "index.md"]
    assert any("pip install 'graphc[viz]'" in r.getMessage() for r in caplog.records)
