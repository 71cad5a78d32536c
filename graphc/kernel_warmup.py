"""Warm-up: compile the runtime's library kernels once, as an install step.

A plan calls two kinds of native code: the kernels generated for it (its fused loops, compiled
per plan and kept in graphc's cache) and the runtime's library kernels (convolution, batched
GEMM, softmax, optimizer updates, ...: runtime/*.py, numba functions compiled per argument type
and kept in numba's cache next to their source). On a new install neither exists, so the first
model a user compiles pays for every library kernel it touches (about 12 of LeNet's 16 CPU
seconds, 22 of the GPT's 37). `graphc warmup` pays that once: it compiles and runs one train
step and one eval forward of a few small models that together reach every library kernel
family (MLPs with each loss and optimizer in f32 and f64, a CNN with BatchNorm and both pools,
a nanoGPT block with AdamW and gradient clipping, the eager autograd loop). Their own plans go
to a temporary folder: only numba's cache of the library keeps what they compiled.

    graphc warmup            # or: python -m graphc warmup; graphc.warmup() from Python
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager

import numpy as np

FAMILIES = ("mlp", "mlp64", "cnn", "gpt", "eager")


@contextmanager
def _plans_in(folder: str):
    """GRAPHC_CACHE_DIR pointed at `folder` for the duration (the user's plan cache untouched)."""
    old = os.environ.get("GRAPHC_CACHE_DIR")
    os.environ["GRAPHC_CACHE_DIR"] = folder
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = old


def _mlp(dtype: str) -> None:
    import graphc
    import graphc.nn as nn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(dtype)
    for act, drop, loss, opt in ((nn.ReLU, 0.5, "mse", "sgd"), (nn.Tanh, 0.0, "ce", "sgd_momentum"),
                                 (nn.Sigmoid, 0.2, "ce", "adam"), (nn.GELU, 0.0, "mse", "adamw")):
        model = nn.Sequential(nn.Linear(6, 5), act(), nn.Dropout(drop), nn.Linear(5, 3))
        if dtype == "float64":
            model = model.double()
        y = rng.integers(0, 3, 8) if loss == "ce" else rng.standard_normal((8, 3)).astype(dtype)
        crit = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
        params = model.parameters()
        o = {"sgd": lambda: graphc.optim.SGD(params, lr=0.1),
             "sgd_momentum": lambda: graphc.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
             "adam": lambda: graphc.optim.Adam(params, lr=1e-3, weight_decay=1e-4),
             "adamw": lambda: graphc.optim.AdamW(params, lr=1e-3)}[opt]()
        step = graphc.compile_train_step(model, crit, o, x, y)
        step(x, y)
        model.eval()
        graphc.compile(model, x)(x)


def _cnn() -> None:
    import graphc
    import graphc.nn as nn

    rng = np.random.default_rng(0)
    for shape, layers in (
            ((4, 1, 28, 28), lambda: [nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(400, 10)]),
            ((4, 3, 8, 8), lambda: [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                    nn.Linear(8, 10)])):
        model = nn.Sequential(*layers())
        x = rng.standard_normal(shape).astype("float32")
        y = rng.integers(0, 10, shape[0])
        opt = graphc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x, y)
        step(x, y)
        model.eval()
        graphc.compile(model, x)(x)


def _gpt() -> None:
    import graphc
    from graphc.samples.char_gpt import GPTConfig, gpt_classes

    config = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8)
    model = gpt_classes(graphc)(config)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, (2, 8))
    tgt = rng.integers(0, 16, (2, 8))
    cm = graphc.compile(model, idx, tgt)
    opt = graphc.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    cm(idx, tgt)
    cm.backward()
    graphc.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    graphc.compile_train_step(model, None, opt, idx, tgt, clip_grad_norm=1.0)(idx, tgt)  # the one-plan step
    model.eval()
    graphc.compile(model, idx)(idx)


def _eager() -> None:
    import graphc
    import graphc.nn as nn

    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 1))
    opt = graphc.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.MSELoss()
    x = graphc.randn(8, 6)
    y = graphc.randn(8, 1)
    for _ in range(3):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()


RUN = {"mlp": lambda: _mlp("float32"), "mlp64": lambda: _mlp("float64"), "cnn": _cnn, "gpt": _gpt, "eager": _eager}


def warmup(families=FAMILIES, verbose: bool = True) -> dict[str, float]:
    """Compile the library kernels that the given model families reach into numba's cache.
    Returns the seconds each family took (the second run of a warm install takes ~1 s each)."""
    unknown = set(families) - set(RUN)
    if unknown:
        raise ValueError(f"graphc.warmup: unknown families {sorted(unknown)}; expected some of {list(FAMILIES)}")
    took: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="graphc-warmup-") as plans, _plans_in(plans):
        for name in families:
            t0 = time.perf_counter()
            RUN[name]()
            took[name] = time.perf_counter() - t0
            if verbose:
                print(f"graphc warmup: {name:6s} {took[name]:6.1f} s", flush=True)
    return took
