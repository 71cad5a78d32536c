"""Run under `mpiexec -n 2` by tests/test_distributed.py (not collected by pytest itself).

    python distributed_job.py equivalence   # 2 ranks on half batches == 1 process on the whole batch
    python distributed_job.py fail          # rank 1 raises after two steps: the job must end, not hang
    python distributed_job.py kill          # rank 1 is killed (SIGKILL) after two steps: the same

Every check is an assert: a failure on any rank aborts the job (graphc.distributed's excepthook),
so the test sees a non-zero exit and this rank's traceback.
"""
import os
import signal
import sys
import time

import numpy as np

import graphc
import graphc.distributed as dist
import graphc.nn as nn
import graphc.nn.functional as F


class MLP(nn.Module):
    def __init__(self, p=0.0):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(12, 32), nn.Linear(32, 16), nn.Linear(16, 4)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        return self.l3(self.drop(F.relu(self.l2(F.relu(self.l1(x))))))


def data(dtype, n=16):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 12)).astype(dtype), rng.integers(0, 4, n)


def make(dtype, opt_kind, p=0.0):
    graphc.manual_seed(0)
    model = MLP(p).to(dtype)
    if opt_kind == "sgd":
        opt = graphc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        opt = graphc.optim.Adam(model.parameters(), lr=0.01)
    return model, opt


def weights(model):
    return np.concatenate([np.asarray(p, np.float64).ravel() for _, p in model.named_parameters()])


def equivalence():
    r, n = dist.rank(), dist.world_size()
    assert n == 2, n
    comm = dist._state["comm"]
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        for opt_kind in ("sgd", "adam"):
            x, y = data(dtype)
            half = len(x) // n
            xs, ys = x[r * half:(r + 1) * half], y[r * half:(r + 1) * half]
            # one process on the whole batch (every rank computes it; it makes no MPI call)
            ref, ref_opt = make(dtype, opt_kind)
            one = graphc.compile_train_step(ref, nn.CrossEntropyLoss(), ref_opt, x, y)
            for _ in range(10):
                one(x, y)
            # the data-parallel step; rank 1 starts from other weights: the first step broadcasts rank 0's
            model, opt = make(dtype, opt_kind)
            if r == 1:
                for _, p in model.named_parameters():
                    p[...] = 7.0
                opt.step_count = 5
            step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, xs, ys, distributed=True)
            assert "all_reduce(%comm.world" in step.ir("train_step_plan")
            for _ in range(10):
                step(xs, ys)
            got, want = weights(model), weights(ref)
            err = np.max(np.abs(got - want) / (1 + np.abs(want)))
            assert err <= tol, f"{dtype.__name__} {opt_kind}: 2 ranks differ from 1 process by {err:.3g} > {tol}"
            every = comm.allgather(np.asarray(weights(model)).tobytes())
            assert all(b == every[0] for b in every), f"{dtype.__name__} {opt_kind}: ranks' weights differ"
            if r == 0:
                print(f"equivalent {dtype.__name__} {opt_kind}: max rel err {err:.3g}, ranks bit-identical", flush=True)

    # interpret mode runs the same plan through the reference all_reduce (mpi4py)
    x, y = data(np.float64)
    xs, ys = x[r * 8:(r + 1) * 8], y[r * 8:(r + 1) * 8]
    out = []
    for mode in ("jit", "interpret"):
        model, opt = make(np.float64, "adam")
        step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, xs, ys, distributed=True, mode=mode)
        for _ in range(3):
            step(xs, ys)
        out.append(weights(model))
    assert np.allclose(out[0], out[1], rtol=1e-12, atol=1e-13), "interpret mode differs from jit"

    # dropout: the same data on both ranks, masks differ across ranks, reproducible under manual_seed;
    # rank 0 draws the masks a single process would
    losses = []
    for _ in range(2):
        model, opt = make(np.float64, "sgd", p=0.5)
        step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y, distributed=True)
        losses.append([step(x, y) for _ in range(3)])
    assert losses[0] == losses[1], "dropout is not reproducible under manual_seed"
    theirs = comm.allgather(losses[0])
    assert theirs[0] != theirs[1], "both ranks drew the same dropout masks"
    if r == 0:
        print("dropout masks differ across ranks and repeat under manual_seed", flush=True)
    print(f"rank {r} ok", flush=True)


def fail(kill=False):
    r = dist.rank()
    x, y = data(np.float64)
    model, opt = make(np.float64, "sgd")
    step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y, distributed=True)
    for k in range(1000):
        if r == 1 and k == 2:
            print(f"raising at {time.time():.3f}", flush=True)
            if kill:  # no Python left to report anything: the launcher must end the job
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("boom on rank 1")
        step(x, y)
    print("rank 0 was never stopped", flush=True)


if __name__ == "__main__":
    dist.init()
    {"equivalence": equivalence, "fail": fail, "kill": lambda: fail(kill=True)}[sys.argv[1]]()
