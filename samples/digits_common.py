"""What the two digits samples share (samples/digits.py, samples/digits_cnn.py): the data split,
the compiled eval-mode scorer, weights saved and reloaded as .npz, the epoch bar and the curves.

Both samples import it as a sibling module (a script's own folder is on sys.path); installed,
it is graphc.samples.digits_common.
"""
from __future__ import annotations

import sys

import numpy as np

import graphc


def load_digits_split(seed: int = 0):
    """scikit-learn's 8x8 digits as float32 in [0, 1]: a seeded 80/20 train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    return x[idx[n_test:]], y[idx[n_test:]], x[idx[:n_test]], y[idx[:n_test]]


def evaluator(model, x, y):
    """Compile the model once in eval mode (no Dropout, BatchNorm's running statistics); the
    returned scorer reads the live weights on every call."""
    was_training = model.training
    predict = graphc.compile(model.eval(), x)
    model.train(was_training)
    return lambda: float((predict(x).argmax(axis=1) == y).mean())


def save_state(model, path: str) -> None:
    """state_dict() (weights and persistent buffers) as .npz: arrays only, no pickle."""
    np.savez(path, **model.state_dict())


def load_state(model, path: str):
    with np.load(path, allow_pickle=False) as f:
        model.load_state_dict({k: f[k] for k in f.files})
    return model


def epoch_bar(epochs: int, disable: bool = False):
    """range(epochs) under a tqdm bar when tqdm is installed (the samples extra)."""
    try:
        from tqdm import tqdm

        return tqdm(range(epochs), desc="training", ncols=80, file=sys.stdout, disable=disable)
    except ImportError:
        return range(epochs)


def show(bar, loss: float, acc: float) -> None:
    """The epoch's loss and test accuracy next to the bar."""
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%")


def plot_curves(losses, accs, path: str) -> bool:
    """Train loss and test accuracy per epoch, side by side, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install graphc[samples]); no figure written")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(range(1, len(losses) + 1), losses)
    a.set(xlabel="epoch", ylabel="train loss (cross-entropy)", title="loss")
    b.plot(range(1, len(accs) + 1), [100 * v for v in accs])
    b.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

