"""graphc.data: TensorDataset and DataLoader (batching, shuffling, reproducibility)."""
import numpy as np
import pytest
import torch
import torch.utils.data as tud

import graphc
from graphc.data import DataLoader, TensorDataset


def dataset(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int64)
    return x, y, TensorDataset(x, y)


def test_tensor_dataset():
    x, y, ds = dataset()
    assert len(ds) == 10
    xi, yi = ds[4]
    np.testing.assert_array_equal(xi, x[4])
    assert yi == 4 and yi.dtype == np.int64
    assert TensorDataset(torch.ones(3, 2), np.zeros(3))[1][0].tolist() == [1.0, 1.0]
    with pytest.raises(graphc.ShapeError, match=r"first dimensions are \[10, 9\]"):
        TensorDataset(x, y[:9])
    with pytest.raises(graphc.GraphcError, match="at least one array"):
        TensorDataset()
    with pytest.raises(graphc.ShapeError, match="scalar"):
        TensorDataset(np.float32(1))


@pytest.mark.parametrize("batch, drop_last, sizes", [(4, False, [4, 4, 2]), (4, True, [4, 4]), (5, False, [5, 5]),
                                                     (1, False, [1] * 10), (32, False, [10]), (32, True, [])])
def test_sequential_batches_match_torch(batch, drop_last, sizes):
    x, y, ds = dataset()
    loader = DataLoader(ds, batch_size=batch, drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(batches) == len(sizes)
    assert [len(b[0]) for b in batches] == sizes
    tl = tud.DataLoader(tud.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch, drop_last=drop_last)
    assert len(tl) == len(loader)
    for (bx, by), (tx, ty) in zip(batches, tl):
        np.testing.assert_array_equal(bx, tx.numpy())
        np.testing.assert_array_equal(by, ty.numpy())
        assert bx.dtype == np.float32 and by.dtype == np.int64


def test_batches_are_copies():
    x, y, ds = dataset()
    for loader in (DataLoader(ds, batch_size=3), DataLoader(ds, batch_size=3, shuffle=True)):
        bx, _ = next(iter(loader))
        bx[...] = -1
        assert (x >= 0).all()


def test_shuffle_covers_every_sample_once_and_reshuffles_each_epoch():
    x, y, ds = dataset(50)
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    epochs = []
    for _ in range(3):
        ys = []
        for bx, by in loader:
            np.testing.assert_array_equal(bx, x[by])  # rows stay aligned across arrays
            ys.append(by)
        ys = np.concatenate(ys)
        assert sorted(ys.tolist()) == list(range(50))
        epochs.append(ys)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(50))


def epoch_orders(loader, n=2):
    return [np.concatenate([by for _, by in loader]) for _ in range(n)]


def test_shuffle_is_reproducible_under_manual_seed():
    _, _, ds = dataset(40)
    graphc.manual_seed(11)
    a = epoch_orders(DataLoader(ds, batch_size=7, shuffle=True))
    graphc.manual_seed(11)
    b = epoch_orders(DataLoader(ds, batch_size=7, shuffle=True))
    graphc.manual_seed(12)
    c = epoch_orders(DataLoader(ds, batch_size=7, shuffle=True))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_own_seed_is_independent_of_the_global_generator():
    _, _, ds = dataset(40)
    graphc.manual_seed(1)
    a = epoch_orders(DataLoader(ds, batch_size=5, shuffle=True, seed=3))
    graphc.manual_seed(2)
    b = epoch_orders(DataLoader(ds, batch_size=5, shuffle=True, seed=3))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1])  # still reshuffles every epoch
    assert not np.array_equal(a[0], epoch_orders(DataLoader(ds, batch_size=5, shuffle=True, seed=4), 1)[0])


def test_generic_map_style_dataset_is_collated():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full(2, i * i, np.float64), i

    batches = list(DataLoader(Squares(), batch_size=2))
    assert len(batches) == 3
    bx, by = batches[1]
    np.testing.assert_array_equal(bx, [[4, 4], [9, 9]])
    np.testing.assert_array_equal(by, [2, 3])
    assert bx.shape == (2, 2) and by.shape == (2,)

    class Plain:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.ones(2) * i

    assert [b.tolist() for b in DataLoader(Plain(), batch_size=3)] == [[[0, 0], [1, 1], [2, 2]]]


def test_single_array_dataset_yields_one_tuples():
    x = np.arange(6.0).reshape(6, 1)
    (bx,) = next(iter(DataLoader(TensorDataset(x), batch_size=4)))
    assert bx.shape == (4, 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_invalid_batch_size(bad):
    with pytest.raises(graphc.GraphcError, match="batch_size should be a positive integer"):
        DataLoader(dataset()[2], batch_size=bad)


def test_repr_and_attributes():
    loader = DataLoader(dataset()[2], batch_size=4, shuffle=True, seed=1)
    assert loader.batch_size == 4 and loader.shuffle and not loader.drop_last
    assert repr(loader) == "DataLoader(TensorDataset(float32[10, 3], int64[10]), batch_size=4, shuffle=True, drop_last=False, seed=1)"
    assert graphc.data.DataLoader is DataLoader
