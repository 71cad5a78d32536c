"""The seed's SimpleNet, end to end: trace, passes, fused IR, training with SGD, dumps and a report.

    python samples/simple_net.py [--epochs 30] [--out simple_net_dumps]

SGD without momentum is exactly the seed's gradient descent, w <- w - alpha * grad J(w).
The regression task is synthetic and made here, so nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import graphc
import graphc.nn as nn
from graphc.data import DataLoader, TensorDataset
from graphc.utils import MetricsLog, progress


class SimpleNet(nn.Module):
    def __init__(self):
        super(SimpleNet, self).__init__()
        self.linear1 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.linear2 = nn.Linear(20, 1)

    def forward(self, x):
        x = self.linear1(x)
        x = self.relu(x)
        x = self.dropout(x)
        x = self.linear2(x)
        return x


def make_regression(n: int, seed: int = 0):
    """y = a smooth nonlinear function of 10 features, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10)).astype(np.float32)
    w = rng.standard_normal(10).astype(np.float32) / 3
    y = np.tanh(x @ w) + 0.3 * np.maximum(x[:, :1], 0)[:, 0] + 0.05 * rng.standard_normal(n)
    return x, y.astype(np.float32)[:, None]


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description="Train the seed's SimpleNet with graphc.")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default="simple_net_dumps", help="folder for the IR/DOT/SVG dumps and report.html")
    args = ap.parse_args(argv)

    graphc.manual_seed(0)
    x, y = make_regression(2048 + 512, seed=0)
    x_train, y_train, x_test, y_test = x[:2048], y[:2048], x[2048:], y[2048:]
    model = SimpleNet()
    loss_fn = nn.MSELoss()
    opt = graphc.optim.SGD(model.parameters(), lr=args.lr)  # w <- w - lr * grad

    step = graphc.compile_train_step(model, loss_fn, opt, x_train[: args.batch_size], y_train[: args.batch_size])
    print("== traced IR (forward + loss) ==")
    print(step.ir("traced"))
    print("\n== train-step plan: fused forward, backward and SGD update in one graph ==")
    print(step.ir(step.stages[-1]))
    print(f"\n(stages: {', '.join(step.stages)})")

    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True, drop_last=True)
    out = os.path.abspath(args.out)
    metrics = MetricsLog(os.path.join(out, "metrics.csv"))  # one row per epoch, next to the dumps
    bar = progress(range(args.epochs * len(loader)), desc="training")
    batches = (batch for _ in range(args.epochs) for batch in loader)
    first = last = None
    losses = []
    for k, (xb, yb) in zip(bar, batches):
        losses.append(step(xb, yb))
        if (k + 1) % len(loader) == 0:  # end of an epoch
            last = float(np.mean(losses))
            first = last if first is None else first
            losses = []
            bar.set(loss=last)
            metrics.log(epoch=(k + 1) // len(loader), step=k + 1, train_loss=last, lr=opt.param_groups[0]["lr"])
    metrics.close()
    print(f"train loss: first epoch {first:.4f} -> last epoch {last:.4f} (per epoch in {metrics.path})")

    model.eval()
    predict = graphc.compile(model, x_test)
    eval_loss = float(np.mean((predict(x_test) - y_test) ** 2))
    print(f"eval MSE on {len(x_test)} held-out samples: {eval_loss:.4f} (predicting the mean gives {float(np.var(y_test)):.4f})")

    graphc.dump(step, out)
    print(f"dumps of every stage written to {out}/ (index.md lists them)")
    page = graphc.report(step, os.path.join(out, "report.html"))
    print(f"the compile report, one page to open in a browser: {page}")
    return eval_loss


if __name__ == "__main__":
    main()
