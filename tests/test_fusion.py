"""Fusion passes, lit style (IR text in -> pass -> printed IR out), plus their notes and records."""
from textwrap import dedent

import numpy as np
import pytest

from graphc.ir import interpret, parse
from graphc.passes import PassManager, get_pass


def ir(text: str) -> str:
    return dedent(text).strip()


def run(name: str, text: str):
    return get_pass(name).fn(parse(ir(text)))


LINEAR_RELU = """
    graph t {
      input %x: f32[4,3]
      param %w: f32[5,3]
      param %b: f32[5]
      %0: f32[4,5] = linear(%x, %w, %b)  # m.py:1
      %1: f32[4,5] = relu(%0)  # m.py:2
      %2: f32[4,5] = exp(%1)
      return %2
    }"""


def test_linear_relu_fused_keeps_relu_name_and_linear_loc():
    out, changed = run("fuse_linear_relu", LINEAR_RELU)
    assert changed
    assert str(out) == ir("""
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          param %b: f32[5]
          %1: f32[4,5] = linear_relu(%x, %w, %b)  # m.py:1
          %2: f32[4,5] = exp(%1)
          return %2
        }""")


def test_linear_relu_without_bias():
    out, changed = run("fuse_linear_relu", """
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          %0: f32[4,5] = linear(%x, %w)
          %1: f32[4,5] = relu(%0)
          return %1
        }""")
    assert changed
    assert "%1: f32[4,5] = linear_relu(%x, %w)" in str(out)


def test_linear_relu_not_fused_when_linear_has_another_user():
    text = """
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          param %b: f32[5]
          %0: f32[4,5] = linear(%x, %w, %b)
          %1: f32[4,5] = relu(%0)
          %2: f32[4,5] = add(%1, %0)
          return %2
        }"""
    out, changed = run("fuse_linear_relu", text)
    assert not changed and str(out) == ir(text)
    result = PassManager(["fuse_linear_relu"], check=True).run(parse(ir(text)))
    assert result.snapshots[-1].notes == (
        "%0 = linear(%x, %w, %b) not fused with %1 (relu): its output is also used by %2 (add)",)
    (rec,) = result.fusion_records
    assert not rec.fused and rec.pattern == "linear+relu"
    assert rec.nodes == ("%0: f32[4,5] = linear(%x, %w, %b)", "%1: f32[4,5] = relu(%0)")


def test_linear_relu_not_fused_when_linear_is_a_graph_output():
    text = """
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          %0: f32[4,5] = linear(%x, %w)
          %1: f32[4,5] = relu(%0)
          return %1, %0 as pre
        }"""
    result = PassManager(["fuse_linear_relu"], check=True).run(parse(ir(text)))
    assert str(result.graph) == ir(text)
    assert result.snapshots[-1].notes == ("%0 = linear(%x, %w) not fused with %1 (relu): its output is a graph output",)


def test_two_linear_relu_pairs_and_the_fusion_report():
    text = """
        graph t {
          input %x: f32[4,3]
          param %w1: f32[5,3]
          param %w2: f32[2,5]
          %0: f32[4,5] = linear(%x, %w1)
          %1: f32[4,5] = relu(%0)
          %2: f32[4,2] = linear(%1, %w2)
          %3: f32[4,2] = relu(%2)
          return %3
        }"""
    result = PassManager(["fuse_linear_relu"], check=True).run(parse(ir(text)))
    assert str(result.graph) == ir("""
        graph t {
          input %x: f32[4,3]
          param %w1: f32[5,3]
          param %w2: f32[2,5]
          %1: f32[4,5] = linear_relu(%x, %w1)
          %3: f32[4,2] = linear_relu(%1, %w2)
          return %3
        }""")
    assert [(r.fused, r.result) for r in result.fusion_records] == [
        (True, "%1: f32[4,5] = linear_relu(%x, %w1)"), (True, "%3: f32[4,2] = linear_relu(%1, %w2)")]
    assert str(result.fusion_records[0]).startswith("fuse_linear_relu: fused %0: f32[4,5] = linear(%x, %w1) ; %1")


CROSS_ENTROPY = """
    graph t {
      input %x: f32[4,3]
      input %y: i64[4]
      %0: f32[4,3] = log_softmax(%x) {dim=1}  # m.py:7
      %1: f32[] = nll_loss(%0, %y) {reduction="sum"}  # m.py:7
      return %1 as loss
    }"""


def test_cross_entropy_fused_with_reduction():
    out, changed = run("fuse_cross_entropy", CROSS_ENTROPY)
    assert changed
    assert str(out) == ir("""
        graph t {
          input %x: f32[4,3]
          input %y: i64[4]
          %1: f32[] = cross_entropy(%x, %y) {reduction="sum"}  # m.py:7
          return %1 as loss
        }""")


def test_cross_entropy_fused_result_matches_unfused():
    g = parse(ir(CROSS_ENTROPY))
    out, _ = get_pass("fuse_cross_entropy").fn(g)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 3)) * 10).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int64)
    np.testing.assert_allclose(interpret(out, [x, y])[0], interpret(g, [x, y])[0], rtol=1e-6)


def test_cross_entropy_not_fused_when_log_probs_are_also_returned():
    text = """
        graph t {
          input %x: f32[4,3]
          input %y: i64[4]
          %0: f32[4,3] = log_softmax(%x) {dim=1}
          %1: f32[] = nll_loss(%0, %y)
          return %1 as loss, %0 as logp
        }"""
    result = PassManager(["fuse_cross_entropy"], check=True).run(parse(ir(text)))
    assert not result.snapshots[-1].changed
    assert result.snapshots[-1].notes == (
        "%0 = log_softmax(%x) not fused with %1 (nll_loss): its output is a graph output",)


def test_cross_entropy_not_fused_over_the_wrong_dim():
    text = """
        graph t {
          input %x: f32[4,3]
          input %y: i64[4]
          %0: f32[4,3] = log_softmax(%x) {dim=0}
          %1: f32[] = nll_loss(%0, %y)
          return %1
        }"""
    result = PassManager(["fuse_cross_entropy"], check=True).run(parse(ir(text)))
    assert str(result.graph) == ir(text)
    (rec,) = result.fusion_records
    assert rec.reason == ("%0 = log_softmax(%x) not fused with %1 (nll_loss): log_softmax is over dim 0, "
                          "cross_entropy needs dim=1 (the class dim)")


def test_canonicalize_linear_from_matmul_transpose_plus_bias():
    text = """
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          param %b: f32[5]
          %0: f32[3,5] = transpose(%w) {perm=[1,0]}  # m.py:3
          %1: f32[4,5] = matmul(%x, %0)  # m.py:3
          %2: f32[4,5] = add(%1, %b)  # m.py:3
          %3: f32[4,5] = relu(%2)  # m.py:4
          return %3
        }"""
    result = PassManager(["canonicalize_linear", "fuse_linear_relu", "dce"], check=True).run(parse(ir(text)))
    assert str(result["canonicalize_linear"].graph) == ir("""
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          param %b: f32[5]
          %0: f32[3,5] = transpose(%w) {perm=[1,0]}  # m.py:3
          %1: f32[4,5] = linear(%x, %w)  # m.py:3
          %2: f32[4,5] = linear(%x, %w, %b)  # m.py:3
          %3: f32[4,5] = relu(%2)  # m.py:4
          return %3
        }""")
    assert str(result.graph) == ir("""
        graph t {
          input %x: f32[4,3]
          param %w: f32[5,3]
          param %b: f32[5]
          %3: f32[4,5] = linear_relu(%x, %w, %b)  # m.py:3
          return %3
        }""")


@pytest.mark.parametrize("text", [
    # the product is used twice: folding the bias in would compute it twice
    """
    graph t {
      input %x: f32[4,3]
      param %w: f32[5,3]
      param %b: f32[5]
      %0: f32[4,5] = linear(%x, %w)
      %1: f32[4,5] = add(%0, %b)
      %2: f32[4,5] = mul(%0, %1)
      return %2
    }""",
    # a [4,5] addend is not a bias
    """
    graph t {
      input %x: f32[4,3]
      param %w: f32[5,3]
      input %c: f32[4,5]
      %0: f32[4,5] = linear(%x, %w)
      %1: f32[4,5] = add(%0, %c)
      return %1
    }""",
    # x @ w without a transpose is a different layout
    """
    graph t {
      input %x: f32[4,3]
      param %w: f32[3,5]
      %0: f32[4,5] = matmul(%x, %w)
      return %0
    }""",
])
def test_canonicalize_linear_leaves_other_shapes(text):
    out, changed = run("canonicalize_linear", text)
    assert not changed and str(out) == ir(text)
