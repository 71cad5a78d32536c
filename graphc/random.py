"""graphc's global random state: parameter initialisation, Dropout seeds and DataLoader shuffling.

`manual_seed(n)` makes all three reproducible, as `torch.manual_seed` does.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()
# the generator's raw draw as a bound method: a compiled step draws its seed as `raw() >> 1`
# (the same value as next_seed(), one Python call less); kept in step with _generator
raw = _generator.bit_generator.random_raw


def manual_seed(seed: int) -> None:
    global _generator, raw
    _generator = np.random.default_rng(seed)
    raw = _generator.bit_generator.random_raw


def generator() -> np.random.Generator:
    return _generator


def next_seed() -> int:
    """A fresh 63-bit seed for one Dropout call (eager) or one compiled step.

    The top 63 bits of one raw draw: as uniform as integers(0, 2**63 - 1) and ~8x cheaper
    (a compiled small train step costs a few microseconds in all)."""
    return _generator.bit_generator.random_raw() >> 1
