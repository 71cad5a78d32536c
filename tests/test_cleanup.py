"""Clean-up passes, lit style: IR text in -> one pass -> the printed IR out, compared exactly.

Every case is also run through the checked pass manager, so the reference interpreter confirms
that the rewrite keeps the results (or, for remove_dropout, gives the p=0 results).
"""
from textwrap import dedent

import numpy as np
import pytest

from graphc.ir import interpret, parse
from graphc.passes import PassManager, get_pass

# (pass, IR before, IR after); "after" None means the pass must leave the graph unchanged.
CASES = {
    # ---------------------------------------------------------------- dce
    "dce_removes_unused_chain_keeps_inputs": ("dce", """
        graph t {
          input %x: f32[2]
          input %unused: f32[2]
          %0: f32[2] = exp(%x)
          %1: f32[2] = log(%0)
          %2: f32[2] = neg(%x)
          return %2
        }""", """
        graph t {
          input %x: f32[2]
          input %unused: f32[2]
          %2: f32[2] = neg(%x)
          return %2
        }"""),
    "dce_keeps_multi_output_node_with_one_used_output": ("dce", """
        graph t {
          input %gy: f32[4,3]
          input %x: f32[4,2]
          input %w: f32[3,2]
          %0: f32[4,2], %1: f32[3,2], %2: f32[3] = linear_backward(%gy, %x, %w)
          %3: f32[3,2] = neg(%1)
          return %3
        }""", None),
    "dce_nothing_dead": ("dce", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          return %0, %x
        }""", None),
    # ---------------------------------------------------------------- cse
    "cse_merges_and_rewires_users": ("cse", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          %1: f32[2] = exp(%x)
          %2: f32[2] = add(%0, %1)
          return %2
        }""", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          %2: f32[2] = add(%0, %0)
          return %2
        }"""),
    "cse_chains_collapse_in_one_walk": ("cse", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          %1: f32[2] = exp(%x)
          %2: f32[2] = neg(%0)
          %3: f32[2] = neg(%1)
          return %2, %3 as other
        }""", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          %2: f32[2] = neg(%0)
          return %2, %2 as other
        }"""),
    "cse_different_attrs_stay": ("cse", """
        graph t {
          input %x: f32[2,3]
          %0: f32[3] = sum(%x) {dims=[0]}
          %1: f32[2] = sum(%x) {dims=[1]}
          %2: f32[] = full() {shape=[], value=0.0}
          %3: f32[] = full() {shape=[], value=-0.0}
          return %0, %1, %2, %3
        }""", None),
    "cse_merges_equal_constants": ("cse", """
        graph t {
          input %x: f32[2]
          %0: f32[] = full() {shape=[], value=2.0}
          %1: f32[2] = mul(%x, %0)
          %2: f32[] = full() {shape=[], value=2.0}
          %3: f32[2] = mul(%1, %2)
          return %3
        }""", """
        graph t {
          input %x: f32[2]
          %0: f32[] = full() {shape=[], value=2.0}
          %1: f32[2] = mul(%x, %0)
          %3: f32[2] = mul(%1, %0)
          return %3
        }"""),
    # dropout is a pure function of (x, seed, stream, p): same stream -> same value; another stream stays.
    "cse_dropout_same_stream_merges_other_stream_stays": ("cse", """
        graph t {
          input %x: f32[8]
          rng %seed: i64[]
          %0: f32[8] = dropout(%x, %seed) {p=0.5}
          %1: f32[8] = dropout(%x, %seed) {p=0.5}
          %2: f32[8] = dropout(%x, %seed) {p=0.5, stream=1}
          %3: f32[8] = add(%0, %1)
          %4: f32[8] = add(%3, %2)
          return %4
        }""", """
        graph t {
          input %x: f32[8]
          rng %seed: i64[]
          %0: f32[8] = dropout(%x, %seed) {p=0.5}
          %2: f32[8] = dropout(%x, %seed) {p=0.5, stream=1}
          %3: f32[8] = add(%0, %0)
          %4: f32[8] = add(%3, %2)
          return %4
        }"""),
    "cse_multi_output_node": ("cse", """
        graph t {
          input %gy: f32[4,3]
          input %x: f32[4,2]
          input %w: f32[3,2]
          %0: f32[3,2], %1: f32[3] = linear_backward(%gy, %x, %w) {input_grad=false}
          %2: f32[3,2], %3: f32[3] = linear_backward(%gy, %x, %w) {input_grad=false}
          return %0, %3
        }""", """
        graph t {
          input %gy: f32[4,3]
          input %x: f32[4,2]
          input %w: f32[3,2]
          %0: f32[3,2], %1: f32[3] = linear_backward(%gy, %x, %w) {input_grad=false}
          return %0, %1
        }"""),
    # ---------------------------------------------------------------- fold_constants
    "fold_chain_of_constants": ("fold_constants", """
        graph t {
          input %x: f32[2]
          %0: f32[] = full() {shape=[], value=2.0}
          %1: f32[] = full() {shape=[], value=3.0}
          %2: f32[] = mul(%0, %1)  # m.py:1
          %3: f32[] = full() {shape=[], value=1.0}
          %4: f32[] = add(%2, %3)  # m.py:2
          %5: f32[2] = mul(%x, %4)
          return %5
        }""", """
        graph t {
          input %x: f32[2]
          %0: f32[] = full() {shape=[], value=2.0}
          %1: f32[] = full() {shape=[], value=3.0}
          %2: f32[] = full() {shape=[], value=6.0}  # m.py:1
          %3: f32[] = full() {shape=[], value=1.0}
          %4: f32[] = full() {shape=[], value=7.0}  # m.py:2
          %5: f32[2] = mul(%x, %4)
          return %5
        }"""),
    "fold_broadcast_and_reduction": ("fold_constants", """
        graph t {
          %0: f64[] = full() {dtype="f64", shape=[], value=1.5}
          %1: f64[2,3] = full() {dtype="f64", shape=[2,3], value=2.0}
          %2: f64[2,3] = add(%0, %1)
          %3: f64[3] = sum(%2) {dims=[0]}
          return %3
        }""", """
        graph t {
          %0: f64[] = full() {dtype="f64", shape=[], value=1.5}
          %1: f64[2,3] = full() {dtype="f64", shape=[2,3], value=2.0}
          %2: f64[2,3] = full() {dtype="f64", shape=[2,3], value=3.5}
          %3: f64[3] = full() {dtype="f64", shape=[3], value=7.0}
          return %3
        }"""),
    # non-constant operands, non-finite results and rng-dependent ops are never folded
    "fold_leaves_non_constant_and_nan": ("fold_constants", """
        graph t {
          input %x: f32[]
          %0: f32[] = full() {shape=[], value=-1.0}
          %1: f32[] = add(%x, %0)
          %2: f32[] = log(%0)
          return %1, %2
        }""", None),
    # ---------------------------------------------------------------- simplify
    "simplify_units": ("simplify", """
        graph t {
          input %x: f32[4,3]
          %0: f32[] = full() {shape=[], value=1.0}
          %1: f32[] = full() {shape=[], value=0.0}
          %2: f32[4,3] = mul(%x, %0)
          %3: f32[4,3] = mul(%0, %2)
          %4: f32[4,3] = add(%3, %1)
          %5: f32[4,3] = add(%1, %4)
          %6: f32[4,3] = sub(%5, %1)
          %7: f32[4,3] = div(%6, %0)
          %8: f32[4,3] = exp(%7)
          return %8
        }""", """
        graph t {
          input %x: f32[4,3]
          %0: f32[] = full() {shape=[], value=1.0}
          %1: f32[] = full() {shape=[], value=0.0}
          %8: f32[4,3] = exp(%x)
          return %8
        }"""),
    # 0 - x, 1 / x and x + 0 that broadcasts x up to a larger shape are not identities
    "simplify_keeps_non_identities": ("simplify", """
        graph t {
          input %x: f32[3]
          %0: f32[] = full() {shape=[], value=0.0}
          %1: f32[2,3] = full() {shape=[2,3], value=0.0}
          %2: f32[] = full() {shape=[], value=1.0}
          %3: f32[3] = sub(%0, %x)
          %4: f32[2,3] = add(%x, %1)
          %5: f32[3] = div(%2, %x)
          %6: f32[3] = mul(%x, %0)
          return %3, %4, %5, %6
        }""", None),
    "simplify_neg_neg_and_outputs": ("simplify", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          %1: f32[2] = neg(%0)
          %2: f32[2] = neg(%1)
          %3: f32[2] = neg(%2)
          %4: f32[2] = neg(%3)
          return %4 as out, %2
        }""", """
        graph t {
          input %x: f32[2]
          %0: f32[2] = exp(%x)
          %1: f32[2] = neg(%0)
          %3: f32[2] = neg(%0)
          return %0 as out, %0
        }"""),
    "simplify_transpose_compose_and_cancel": ("simplify", """
        graph t {
          input %x: f32[2,3,4]
          %0: f32[3,4,2] = transpose(%x) {perm=[1,2,0]}
          %1: f32[4,2,3] = transpose(%0) {perm=[1,2,0]}
          %2: f32[2,3,4] = transpose(%1) {perm=[1,2,0]}
          %3: f32[2,3,4] = transpose(%x) {perm=[0,1,2]}
          %4: f32[2,3,4] = add(%2, %3)
          return %4, %1
        }""", """
        graph t {
          input %x: f32[2,3,4]
          %0: f32[3,4,2] = transpose(%x) {perm=[1,2,0]}
          %1: f32[4,2,3] = transpose(%x) {perm=[2,0,1]}
          %4: f32[2,3,4] = add(%x, %x)
          return %4, %1
        }"""),
    "simplify_reshapes": ("simplify", """
        graph t {
          input %x: f32[4,3]
          %0: f32[4,3] = reshape(%x) {shape=[4,3]}
          %1: f32[12] = reshape(%0) {shape=[12]}
          %2: f32[2,6] = reshape(%1) {shape=[2,6]}
          %3: f32[4,3] = reshape(%2) {shape=[4,3]}
          %4: f32[4,3] = exp(%3)
          return %4, %2
        }""", """
        graph t {
          input %x: f32[4,3]
          %1: f32[12] = reshape(%x) {shape=[12]}
          %2: f32[2,6] = reshape(%x) {shape=[2,6]}
          %4: f32[4,3] = exp(%x)
          return %4, %2
        }"""),
    # ---------------------------------------------------------------- remove_dropout
    "remove_dropout_keeps_seed_input": ("remove_dropout", """
        graph t {
          input %x: f32[4,3]
          rng %seed: i64[]
          %0: f32[4,3] = relu(%x)
          %1: f32[4,3] = dropout(%0, %seed) {p=0.5}
          %2: f32[4,3] = dropout(%1, %seed) {p=0.25, stream=1}
          return %2
        }""", """
        graph t {
          input %x: f32[4,3]
          rng %seed: i64[]
          %0: f32[4,3] = relu(%x)
          return %0
        }"""),
}


def ir(text: str) -> str:
    return dedent(text).strip()


def run(name: str, before: str):
    return get_pass(name).fn(parse(ir(before)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pass_text(case):
    name, before, after = CASES[case]
    out, changed = run(name, before)
    expected = ir(before) if after is None else ir(after)
    assert str(out) == expected
    assert changed == (after is not None)
    assert parse(str(out)) == out


@pytest.mark.parametrize("case", sorted(CASES))
def test_pass_checked(case):
    """The checked manager runs the interpreter before and after: the rewrite keeps the results."""
    name, before, after = CASES[case]
    result = PassManager([name], check=True).run(parse(ir(before)))
    assert result.snapshots[-1].changed == (after is not None)


def test_cleanups_are_idempotent():
    for name, before, after in CASES.values():
        out, _ = run(name, before)
        again, changed = get_pass(name).fn(out)
        assert not changed and again == out, name


def test_simplify_then_dce_leaves_nothing_but_the_value():
    out, _ = run("simplify", CASES["simplify_units"][1])
    out, changed = get_pass("dce").fn(out)
    assert changed
    assert str(out) == ir("""
        graph t {
          input %x: f32[4,3]
          %8: f32[4,3] = exp(%x)
          return %8
        }""")


def test_remove_dropout_matches_p_zero_and_differs_from_training():
    g = parse(ir(CASES["remove_dropout_keeps_seed_input"][1]))
    out, _ = get_pass("remove_dropout").fn(g)
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    seed = np.asarray(7, dtype=np.int64)
    (train,) = interpret(g, [x, seed])
    (evald,) = interpret(out, [x, seed])
    np.testing.assert_array_equal(evald, np.maximum(x, 0))
    assert not np.array_equal(train, evald)  # the pass did change semantics: checked mode needs its oracle


def test_dce_notes_name_the_removed_nodes():
    result = PassManager(["dce"], check=True).run(parse(ir(CASES["dce_removes_unused_chain_keeps_inputs"][1])))
    assert result.snapshots[-1].notes == ("removed 2 dead node(s): %0 (exp), %1 (log)",)
