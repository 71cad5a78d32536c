"""An MLP on scikit-learn's bundled handwritten digits (8x8 images, 1797 samples; no download).

    python samples/digits.py [--epochs 40] [--out digits_out]
    mpiexec -n 2 python samples/digits.py --distributed    # data parallel: each rank takes half of each batch

Cross-entropy, Adam, a shuffled DataLoader and a progress bar; saves loss/accuracy curves as a
PNG and the trained weights as .npz (no pickle), then reloads them and checks the score.
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
from graphc.utils import MetricsLog

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # digits_common, when imported from elsewhere
from digits_common import epoch_bar, evaluator, load_digits_split, load_state, plot_curves, save_state, show  # noqa: E402


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        x = self.dropout(self.relu(self.fc1(x)))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description="Train an MLP on scikit-learn's digits with graphc.")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default="digits_out")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over the ranks of mpiexec: each rank steps on batch-size/ranks samples")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    ranks, main_rank = 1, True
    if args.distributed:
        import graphc.distributed as dist

        dist.init()
        ranks, main_rank = dist.world_size(), dist.is_main()
        if args.batch_size % ranks:
            raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {ranks} ranks")

    t0 = time.perf_counter()
    graphc.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = DigitsMLP()
    opt = graphc.optim.Adam(model.parameters(), lr=args.lr)
    data = TensorDataset(x_train, y_train)
    if args.distributed:  # the same global batch of batch-size samples, split across the ranks
        from graphc.data import DistributedSampler

        b = args.batch_size // ranks
        sampler = DistributedSampler(data, shuffle=True, seed=0, drop_last=True)
        loader = DataLoader(data, batch_size=b, sampler=sampler, drop_last=True)
        step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x_train[:b], y_train[:b], distributed=True)
    else:
        sampler = None
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
        step = graphc.compile_train_step(model, nn.CrossEntropyLoss(), opt, x_train[: args.batch_size],
                                         y_train[: args.batch_size])

    epochs = epoch_bar(args.epochs, disable=not main_rank)
    test_accuracy = evaluator(model, x_test, y_test)
    losses, accs = [], []
    for epoch in epochs:
        if sampler is not None:
            sampler.set_epoch(epoch)
        loss = float(np.mean([step(xb, yb) for xb, yb in loader]))
        losses.append(float(dist.all_reduce_mean(loss)) if args.distributed else loss)
        accs.append(test_accuracy())  # every rank holds the same weights
        show(epochs, losses[-1], accs[-1])
    seconds = time.perf_counter() - t0
    if not main_rank:  # rank 0 reports and saves
        return accs[-1]
    on = f" on {ranks} ranks" if args.distributed else ""
    print(f"test accuracy {100 * accs[-1]:.2f}% after {args.epochs} epochs in {seconds:.1f} s{on}")

    png = os.path.join(args.out, "digits_curves.png")
    if plot_curves(losses, accs, png):
        print(f"curves saved to {png}")
    with MetricsLog(os.path.join(args.out, "digits_metrics.jsonl")) as metrics:  # the curves' numbers, beside them
        for k, (loss, acc) in enumerate(zip(losses, accs), 1):
            metrics.log(epoch=k, train_loss=loss, test_accuracy=acc)
    print(f"metrics written to {metrics.path}")
    weights = os.path.join(args.out, "digits_mlp.npz")
    save_state(model, weights)
    reloaded = load_state(DigitsMLP(), weights)
    acc_reloaded = evaluator(reloaded, x_test, y_test)()
    print(f"weights saved to {weights}; reloaded model scores {100 * acc_reloaded:.2f}%")
    if acc_reloaded != accs[-1]:
        raise SystemExit(f"reloaded model scores {acc_reloaded} but the trained one scored {accs[-1]}")
    return accs[-1]


if __name__ == "__main__":
    main()
