"""graphc.utils: small helpers for training loops: a progress bar and a metrics log.

    from graphc.utils import MetricsLog, progress
    with MetricsLog("run/metrics.csv") as log:          # or .jsonl
        for step_no in (bar := progress(range(steps), desc="training")):
            loss = step(x, y)
            bar.set(loss=loss)                          # shown with steps/s
            log.log(step=step_no, loss=loss, lr=sched.get_last_lr()[0])

`progress` uses tqdm when it is installed (the `samples` extra) and a plain one-line bar
otherwise; both show the steps per second and the values given to `set`. `MetricsLog` writes
one row per `log()` call, flushed at once, so a crashed run keeps what it logged;
`read_metrics(path)` reads a log back (numbers as floats).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time


class progress:  # noqa: N801 (used like a function, as tqdm)
    """Iterate `iterable`, showing count, steps/s and the values last given to set()."""

    def __init__(self, iterable, total: int | None = None, desc: str = "", file=None, plain: bool = False):
        self.iterable, self.desc, self.file = iterable, desc, file or sys.stdout
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.values: dict = {}
        self._tqdm = None
        if not plain:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(iterable, total=self.total, desc=desc, ncols=100, file=self.file, unit="step")
            except ImportError:
                pass

    def set(self, **values) -> None:
        """Show these values (e.g. loss=0.12) next to the bar."""
        self.values.update(values)
        if self._tqdm is not None:
            self._tqdm.set_postfix({k: _fmt(v) for k, v in self.values.items()}, refresh=False)

    def __iter__(self):
        if self._tqdm is not None:
            yield from self._tqdm
            return
        start = last = time.perf_counter()
        n = 0
        for item in self.iterable:
            yield item
            n += 1
            now = time.perf_counter()
            if now - last > 0.2 or n == self.total:
                last = now
                self._line(n, n / max(now - start, 1e-9))
        self.file.write("\n")
        self.file.flush()

    def _line(self, n: int, rate: float) -> None:
        count = f"{n}/{self.total}" if self.total else str(n)
        extra = "".join(f" {k}={_fmt(v)}" for k, v in self.values.items())
        self.file.write(f"\r{self.desc + ': ' if self.desc else ''}{count} [{rate:,.1f} steps/s]{extra}")
        self.file.flush()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class MetricsLog:
    """One row per log(**values), as CSV (columns from the first row) or JSON lines (by the suffix)."""

    def __init__(self, path, append: bool = False):
        self.path = os.fspath(path)
        self.kind = "jsonl" if self.path.endswith((".jsonl", ".json")) else "csv"
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", newline="", encoding="utf-8")
        self._writer = None
        self._fields: list[str] | None = None

    def log(self, **values) -> None:
        values = {k: (float(v) if hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0 else v) for k, v in values.items()}
        if self.kind == "jsonl":
            self._file.write(json.dumps(values) + "\n")
        else:
            if self._writer is None:
                self._fields = list(values)
                self._writer = csv.DictWriter(self._file, fieldnames=self._fields)
                if self._file.tell() == 0:
                    self._writer.writeheader()
            unknown = sorted(set(values) - set(self._fields))
            if unknown:
                raise ValueError(f"MetricsLog {self.path}: columns {unknown} were not in the first row {self._fields}")
            self._writer.writerow(values)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path) -> list[dict]:
    """The rows of a MetricsLog file (CSV values that look like numbers become floats)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        if path.endswith((".jsonl", ".json")):
            return [json.loads(line) for line in f if line.strip()]
        rows = list(csv.DictReader(f))
    return [{k: _number(v) for k, v in r.items()} for r in rows]


def _number(v: str):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


__all__ = ["progress", "MetricsLog", "read_metrics"]
