"""graphc.data: torch.utils.data's TensorDataset and DataLoader over numpy arrays.

A DataLoader over a TensorDataset builds each batch with one fancy-indexing gather per array
(no per-sample Python loop); other map-style datasets are collated sample by sample.
Shuffling draws from graphc's global generator (`graphc.manual_seed` makes it reproducible),
or from the loader's own generator when `seed=` is given; every epoch reshuffles. A `sampler=`
(e.g. DistributedSampler, each rank's shard of a data-parallel job) chooses the order instead.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from . import random as _random
from .ir import GraphcError, ShapeError


def _as_array(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


class Dataset:
    """torch.utils.data.Dataset: subclass it with __getitem__(index) and __len__(); a DataLoader
    collates its samples (tuples column-wise, arrays and numbers stacked) into batches."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__")


class TensorDataset(Dataset):
    """Samples are the i-th rows of equally long arrays: `ds[i] == (a[i], b[i], ...)`."""

    def __init__(self, *arrays):
        if not arrays:
            raise GraphcError("TensorDataset needs at least one array")
        self.arrays = tuple(_as_array(a) for a in arrays)
        for k, a in enumerate(self.arrays):
            if a.ndim == 0:
                raise ShapeError(f"TensorDataset: array {k} is a scalar; arrays need a first (sample) dimension")
        sizes = [len(a) for a in self.arrays]
        if len(set(sizes)) != 1:
            raise ShapeError(f"TensorDataset: size mismatch between arrays: first dimensions are {sizes}")

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index) -> tuple:
        return tuple(a[index] for a in self.arrays)

    def __repr__(self):
        return f"TensorDataset({', '.join(f'{a.dtype}{list(a.shape)}' for a in self.arrays)})"


def collate(samples: list) -> Any:
    """Stack a list of samples into a batch: tuples column-wise, arrays and numbers with np.stack."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return tuple(collate([s[k] for s in samples]) for k in range(len(first)))
    if isinstance(first, dict):
        return {k: collate([s[k] for s in samples]) for k in first}
    return np.stack([_as_array(s) for s in samples])


class DataLoader:
    """Iterate over a dataset in batches: `for x, y in DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)`.

    Batches are new arrays (copies), never views of the dataset. len() is the number of batches.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None, sampler=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise GraphcError(f"batch_size should be a positive integer value, but got batch_size={batch_size!r}")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise GraphcError(f"DataLoader needs a map-style dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
        if sampler is not None and shuffle:
            raise GraphcError("DataLoader: sampler option is mutually exclusive with shuffle (the sampler chooses the order)")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self._generator = np.random.default_rng(seed) if seed is not None else None

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> np.ndarray:
        if self.sampler is not None:
            return np.fromiter(iter(self.sampler), dtype=np.int64)
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        gen = self._generator if self._generator is not None else _random.generator()
        return gen.permutation(n)

    def __iter__(self) -> Iterator[tuple]:
        order = self._order()  # drawn when the epoch starts, so each epoch reshuffles
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            if isinstance(self.dataset, TensorDataset):
                yield tuple(a[idx] for a in self.dataset.arrays)
            else:
                yield collate([self.dataset[int(i)] for i in idx])

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}" + (f", seed={self.seed}" if self.seed is not None else "") + ")")


class DistributedSampler:
    """torch.utils.data.DistributedSampler: rank `rank`'s share of the dataset's indices, for a
    data-parallel job of `num_replicas` processes (defaults: graphc.distributed's rank and world).

    Every rank gets len(self) indices, the same number: without drop_last the shuffled indices
    are padded by repeating their start up to a multiple of num_replicas; with drop_last the tail
    is dropped instead. Rank r takes every num_replicas-th index from r. The shuffle is a function
    of seed + epoch only, so all ranks agree on it: call set_epoch(epoch) before each epoch."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            from . import distributed

            num_replicas = distributed.world_size() if num_replicas is None else num_replicas
            rank = distributed.rank() if rank is None else rank
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise GraphcError(f"DistributedSampler: invalid rank {rank}, rank should be in the interval "
                              f"[0, {num_replicas - 1}] (num_replicas={num_replicas})")
        self.dataset, self.num_replicas, self.rank = dataset, int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas:
            self.num_samples = -(-(n - self.num_replicas) // self.num_replicas)
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (the same order on every rank)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            indices = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            indices = np.arange(n)
        if not self.drop_last:
            pad = self.total_size - n
            if pad:
                indices = np.concatenate([indices, np.resize(indices, pad)])  # repeats the start, as torch pads
        else:
            indices = indices[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.num_replicas].tolist())

    def __repr__(self):
        return (f"DistributedSampler(num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last})")
