"""Data-parallel training (graphc.distributed): the all_reduce node, its pass and kernel, and real
2-rank jobs under mpiexec (tests/distributed_job.py), as CI runs them."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import graphc
import graphc.distributed as dist
import graphc.nn as nn
from graphc.ir import GraphcError, interpret, parse
from graphc.passes.distributed import DistributedSpec, all_reduce_gradients, gradient_buckets

HERE = os.path.dirname(os.path.abspath(__file__))


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def batch(n=12, dtype=np.float64):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6)).astype(dtype), rng.integers(0, 3, n)


# ---- a world of one: no launcher, no MPI


def test_world_of_one_without_a_launcher():
    dist.init()
    dist.init()  # idempotent
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    dist.barrier()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    m = dist.all_reduce_mean(x)
    assert m is not x and m.dtype == np.float32 and np.array_equal(m, x)
    model = mlp()
    before = [p.copy() for p in model.parameters()]
    dist.broadcast_parameters(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.parameters()))


def test_import_graphc_does_not_import_mpi4py():
    code = ("import sys, graphc, graphc.nn, graphc.data, graphc.optim, graphc.distributed; "
            "graphc.distributed.init(); print('mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in dist._LAUNCHER_VARS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False"]


def test_distributed_step_of_one_rank_is_the_plain_step():
    x, y = batch()
    results = []
    for distributed in (False, True):
        graphc.manual_seed(0)
        model = mlp().double()
        opt = graphc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y, distributed=distributed)
        losses = [step(x, y) for _ in range(3)]
        results.append((losses, [p.copy() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    ir = step.ir("train_step_plan")
    assert "comm %comm.world: i64[8]" in ir
    assert re.search(r"= all_reduce\(%comm\.world, %\d+, %\d+, %\d+, %\d+, %\d+, %\d+\) \{ranks=1\}  # backward, grads: 4.weight, "
                     r"4.bias, 2.weight, 2.bias, 0.weight, 0.bias", ir), ir
    assert "all_reduce_gradients" in step.stages
    assert "bucket 0: 6 gradient(s)" in step.passes_report()
    from graphc.inspect.dot import to_dot

    dot = str(to_dot(step.graph("train_step_plan")))  # the pictures draw the communicator and the all-reduce
    assert "communicator (MPI)" in dot and "all-reduce across ranks" in dot and "all_reduce {ranks=1}" in dot


def _train_step_graph(model, x, y):
    opt = graphc.optim.Adam(model.parameters(), lr=1e-3)
    plans = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y).plans
    return plans.stage("train_step_plan").graph  # all-reduces go in before the kernel stage, as in the pipeline


def test_buckets_follow_the_backward_and_the_cap():
    x, y = batch()
    g = _train_step_graph(mlp().double(), x, y)
    # f64 grads of 0.weight 768 B, 2.weight 1024 B, 4.weight 192 B: a bucket closes once it holds >= 800 B
    buckets = gradient_buckets(g, bucket_bytes=800)
    assert [b.params for b in buckets] == [("4.weight", "4.bias", "2.weight"), ("2.bias", "0.weight"), ("0.bias",)]
    d = all_reduce_gradients(g, DistributedSpec(ranks=2, bucket_bytes=800))
    nodes = [n for n in d.nodes if n.op == "all_reduce"]
    assert [n.attr["bucket"] for n in nodes] == [0, 1, 2] and all(n.attr["ranks"] == 2 for n in nodes)
    # each bucket sits right after its last gradient, before anything else reads it
    where = {o: k for k, n in enumerate(d.nodes) for o in n.outputs}
    for n in nodes:
        ready = max(where[v] for v in n.inputs[1:])
        assert all(m.op == "all_reduce" for m in d.nodes[ready + 1:where[n.outputs[0]]])
    # every update reads an all-reduced gradient
    reduced = {o for n in nodes for o in n.outputs}
    assert all(n.inputs[1] in reduced for n in d.nodes if n.op == "adam_update")
    assert parse(str(d)) == d


def test_reference_all_reduce_needs_a_process_group():
    g = parse("""
graph t {
  comm %w: i64[8]
  input %a: f64[2]
  %0: f64[2] = all_reduce(%w, %a) {ranks=2}
  return %0
}""")
    with pytest.raises(GraphcError, match=r"all_reduce over 2 ranks: this process has no process group.*mpiexec -n 2"):
        interpret(g, [np.zeros(8, np.int64), np.ones(2)])
    with pytest.raises(GraphcError, match=r"first input must be the communicator, i64\[8\]"):
        parse("graph t {\n  input %a: f64[2]\n  %0: f64[2] = all_reduce(%a, %a) {ranks=2}\n  return %0\n}")


# ---- real jobs: mpiexec -n 2


def _mpiexec():
    pytest.importorskip("mpi4py")
    exe = dist.mpiexec()
    if exe is None:
        pytest.skip("no mpiexec (pip install 'graphc[mpi]')")
    return exe


def run_job(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in dist._LAUNCHER_VARS}
    t0 = time.time()
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, os.path.join(HERE, "distributed_job.py"), *args],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE)
    return r, time.time()


def test_two_ranks_on_half_batches_equal_one_process_on_the_whole_batch():
    r, _ = run_job("equivalence")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for dtype in ("float64", "float32"):
        for opt in ("sgd", "adam"):
            assert f"equivalent {dtype} {opt}" in out and "ranks bit-identical" in out, out[-4000:]
    assert "dropout masks differ across ranks" in out
    assert "rank 0 ok" in out and "rank 1 ok" in out


def test_a_failing_rank_ends_the_job_with_its_message():
    r, end = run_job("fail", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    assert "graphc.distributed: rank 1 of 2 failed" in out and "ValueError: boom on rank 1" in out, out[-4000:]
    assert "rank 0 was never stopped" not in out
    raised = float(re.search(r"raising at (\S+)", out).group(1))
    assert end - raised < 20, f"the job took {end - raised:.1f} s to end after the failure"


# ---- DistributedSampler: torch's semantics


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (2, 3, False), (12, 4, False),
                                                  (12, 4, True), (7, 2, True), (1, 4, False)])
def test_distributed_sampler_matches_torch_without_shuffle(n, replicas, drop_last):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DistributedSampler as TorchSampler

    for r in range(replicas):
        ours = graphc.data.DistributedSampler(range(n), num_replicas=replicas, rank=r, shuffle=False, drop_last=drop_last)
        theirs = TorchSampler(range(n), num_replicas=replicas, rank=r, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)
    del torch


def test_distributed_sampler_shards_one_shuffle_per_epoch():
    x = np.arange(11, dtype=np.float32)[:, None]
    shards = {}
    for epoch in (0, 1):
        per_rank = []
        for r in range(3):
            s = graphc.data.DistributedSampler(x, num_replicas=3, rank=r, shuffle=True, seed=5)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert len(s) == 4
        seen = sorted(i for p in per_rank for i in p)
        assert set(seen) == set(range(11)) and len(seen) == 12  # one index repeated to pad 11 to 12
        shards[epoch] = per_rank
    assert shards[0] != shards[1]  # set_epoch reshuffles, the same way on every rank
    loader = graphc.data.DataLoader(graphc.data.TensorDataset(x), batch_size=2,
                                    sampler=graphc.data.DistributedSampler(x, num_replicas=3, rank=1, seed=5))
    assert len(loader) == 2 and [float(v) for (b,) in loader for v in b[:, 0]] == [float(i) for i in shards[0][1]]
    with pytest.raises(GraphcError, match="mutually exclusive with shuffle"):
        graphc.data.DataLoader(graphc.data.TensorDataset(x), sampler=[0, 1], shuffle=True)
    with pytest.raises(GraphcError, match=r"invalid rank 3, rank should be in the interval \[0, 2\]"):
        graphc.data.DistributedSampler(x, num_replicas=3, rank=3)
    assert len(graphc.data.DistributedSampler(x)) == 11  # a world of one by default


def test_a_killed_rank_ends_the_job():
    r, end = run_job("kill", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    assert "rank 0 was never stopped" not in out
    raised = float(re.search(r"raising at (\S+)", out).group(1))
    assert end - raised < 20, f"the job took {end - raised:.1f} s to end after the kill"


def test_digits_sample_data_parallel(tmp_path):
    pytest.importorskip("sklearn")
    env = {k: v for k, v in os.environ.items() if k not in dist._LAUNCHER_VARS}
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, os.path.join(HERE, "..", "samples", "digits.py"),
                        "--distributed", "--epochs", "12", "--out", str(tmp_path)],
                       cwd=tmp_path, env=dict(env, MPLBACKEND="Agg"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    acc = float(r.stdout.split("test accuracy ")[1].split("%")[0])
    assert acc >= 93.0 and "on 2 ranks" in r.stdout, r.stdout  # the bar of the one-process run (test_samples)
    assert r.stdout.count("test accuracy") == 1  # rank 0 reports
