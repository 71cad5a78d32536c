"""benchmarks/roofline.py: the step's GEMM FLOPs (what bench_train_step.py's roofline lines divide)
and the FMA-peak loop it times (runs, and its FLOP count is what it executes)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from roofline import FLOPS_PER_ITER, FmaPeak, _gemm_calls, gemm_flops  # noqa: E402


def test_gemm_flops_of_l_and_of_its_calls():
    f = gemm_flops((784, 2048, 2048, 10), 512)
    assert f["forward"] == f["weight grads"] == 2 * 512 * (784 * 2048 + 2048 * 2048 + 2048 * 10)
    assert f["input grads"] == 2 * 512 * (2048 * 2048 + 2048 * 10)  # none for the model's input
    assert f["total"] == 16_236_150_784
    assert sum(2 * m * n * k for _, m, n, k, _, _ in _gemm_calls((784, 2048, 2048, 10), 512)) == f["total"]


def test_fma_peak_runs_on_one_and_two_threads():
    for threads in (1, 2):
        FmaPeak(threads).run(10 * FLOPS_PER_ITER * threads)
