"""Counter-based random numbers for Dropout: element i of a mask is a pure function of
(seed, stream, i). The numpy reference and the numba kernels compute the same bits, so the
interpreter, the JIT and eager mode draw identical masks for the same seed."""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wraps modulo 2**64, as the numba kernel does)."""
    z = x + GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, stream: int) -> np.uint64:
    """The per-(seed, stream) key that element counters are added to."""
    s = np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    k = splitmix64(s ^ np.array([int(stream) * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return k[0]


def uniform(seed: int, stream: int, n: int) -> np.ndarray:
    """n float64 numbers in [0, 1): the top 53 bits of splitmix64(key + i)."""
    z = splitmix64(np.arange(n, dtype=np.uint64) + stream_key(seed, stream))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
