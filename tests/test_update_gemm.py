"""passes/update_gemm.py, IR in / IR out: a plain SGD update of a weight-gradient GEMM becomes one
addmm that writes the new weight; everything else stays as it was. Then the numbers and the memory."""
import numpy as np
import pytest

from graphc.ir import interpret, parse
from graphc.passes.update_gemm import fuse_update_gemm
from graphc.runtime import Executable

HEAD = """graph step {
  input %dz: f32[8,5]
  input %x: f32[8,3]
  param %w: f32[5,3]
  hyper %lr: f64[]
  hyper %mom: f64[]
  hyper %damp: f64[]
  hyper %wd: f64[]
"""


def _graph(update: str, outputs: str = "%w2 as update:w") -> str:
    return HEAD + f"""  %t: f32[5,8] = transpose(%dz) {{perm=[1,0]}}
  %dw: f32[5,3] = matmul(%t, %x)
  %w2: f32[5,3] = {update}
  return {outputs}
}}"""


PLAIN = "sgd_update(%w, %dw, %lr, %mom, %damp, %wd)"


def _ops(g):
    return [n.op for n in g.nodes]


def test_plain_sgd_of_a_weight_gradient_becomes_one_addmm():
    g = fuse_update_gemm(parse(_graph(PLAIN)).verify())
    assert _ops(g) == ["addmm"]
    n = g.nodes[0]
    assert n.inputs == ("w", "dz", "x", "lr") and n.outputs == ("w2",)
    assert n.attr["trans_a"] is True and n.attr["trans_b"] is False and n.attr["alpha"] == -1.0 and n.attr["beta"] == 1.0
    assert parse(str(g)).verify() is not None  # the result prints and parses back


@pytest.mark.parametrize("update,outputs,why", [
    ("sgd_update(%w, %dw, %lr, %mom, %damp, %wd) {weight_decay=true}", "%w2 as update:w", "weight decay reads w"),
    ("sgd_update(%w, %dw, %lr, %mom, %damp, %wd) {weight_decay=false}", "%w2 as update:w, %dw as grad:w",
     "the gradient is also an output"),
])
def test_other_updates_stay(update, outputs, why):
    g = parse(_graph(update, outputs)).verify()
    assert _ops(fuse_update_gemm(g)) == ["transpose", "matmul", "sgd_update"], why


def test_a_transpose_with_another_reader_stays_a_copy_and_the_gemm_still_fuses():
    text = _graph(PLAIN, "%w2 as update:w, %t as out").replace("return %w2 as update:w, %t as out",
                                                                   "return %w2 as update:w, %t as t")
    g = fuse_update_gemm(parse(text).verify())
    assert _ops(g) == ["transpose", "addmm"]
    assert g.nodes[1].inputs[1] == "t" and g.nodes[1].attr["trans_a"] is False


def test_numbers_match_the_unfused_update_and_the_weight_is_updated_in_place():
    before = parse(_graph(PLAIN)).verify()
    after = fuse_update_gemm(before)
    r = np.random.default_rng(0)
    args = [r.standard_normal((8, 5)).astype(np.float32), r.standard_normal((8, 3)).astype(np.float32),
            r.standard_normal((5, 3)).astype(np.float32), *(np.array(v) for v in (0.1, 0.0, 0.0, 0.0))]
    want = interpret(before, args)[0]
    np.testing.assert_allclose(interpret(after, args)[0], want, rtol=1e-6, atol=1e-7)
    w = args[2].copy()
    exe = Executable(after, bound={"w": w, "lr": args[3], "mom": args[4], "damp": args[5], "wd": args[6]}, mode="jit")
    exe(*args[:2])
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7)  # the bound weight itself holds the update
    assert "written in place into %w" in str(exe.memory_plan)
