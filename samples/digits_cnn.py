"""A small CNN on scikit-learn's bundled 8x8 handwritten digits (no download).

    python samples/digits_cnn.py [--epochs 14] [--out digits_cnn_out]

Two conv-BatchNorm-ReLU layers, max pooling, Dropout and a linear head; cross-entropy, Adam, a
shuffled DataLoader and a progress bar. BatchNorm's running statistics are updated by every
compiled train step and used by the compiled eval model. Saves the loss/accuracy curves as a
PNG and the weights and buffers (state_dict) as .npz (no pickle), reloads them into a fresh
model and checks that it scores the same.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import graphc
import graphc.nn as nn
from graphc.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # digits_common, when imported from elsewhere
from digits_common import epoch_bar, evaluator, load_digits_split, load_state, plot_curves, save_state, show  # noqa: E402


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2))                                   # 64 x 4 x 4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                                  nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


def images(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description="Train a small CNN on scikit-learn's digits with graphc.")
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default="digits_cnn_out")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter()
    graphc.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    x_train, x_test = images(x_train), images(x_test)
    model = DigitsCNN()
    opt = graphc.optim.Adam(model.parameters(), lr=args.lr)
    step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x_train[: args.batch_size], y_train[: args.batch_size])
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True, drop_last=True)
    test_accuracy = evaluator(model, x_test, y_test)
    print(f"compiled in {time.perf_counter() - t0:.1f} s")

    epochs = epoch_bar(args.epochs)
    losses, accs = [], []
    for _ in epochs:
        losses.append(float(np.mean([step(xb, yb) for xb, yb in loader])))
        accs.append(test_accuracy())
        show(epochs, losses[-1], accs[-1])
    seconds = time.perf_counter() - t0
    print("test accuracy by epoch: " + " ".join(f"{100 * a:.1f}" for a in accs))
    print(f"test accuracy {100 * accs[-1]:.2f}% after {args.epochs} epochs in {seconds:.1f} s")

    png = os.path.join(args.out, "digits_cnn_curves.png")
    if plot_curves(losses, accs, png):
        print(f"curves saved to {png}")
    path = os.path.join(args.out, "digits_cnn.npz")
    save_state(model, path)
    reloaded = load_state(DigitsCNN(), path)
    acc_reloaded = evaluator(reloaded, x_test, y_test)()
    print(f"weights and BatchNorm statistics saved to {path}; reloaded model scores {100 * acc_reloaded:.2f}%")
    if acc_reloaded != accs[-1]:
        raise SystemExit(f"reloaded model scores {acc_reloaded} but the trained one scored {accs[-1]}")
    return accs[-1]


if __name__ == "__main__":
    main()
