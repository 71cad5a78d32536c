"""graphc's global random state: parameter initialisation, Dropout seeds and DataLoader shuffling.

`manual_seed(n)` makes all three reproducible, as `torch.manual_seed` does.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()
# Dropout seeds are drawn from the generator a block at a time (one raw draw each cost a small
# compiled train step ~0.14 us of its ~3.5; a pop from this list ~0.02 us). `seeds` holds the
# block's unused seeds, the next one last; generator() first puts the generator back where
# drawing them one at a time would have left it, so every other use sees the same numbers.
# A block used up without such a rewind doubles the next one (a steady loop draws 1024 at a
# time, ~0.05 us a seed instead of ~0.17 at 64); a rewind starts again at SEED_BLOCK (a loop
# that also draws other numbers every step rewinds every step: it draws small blocks).
SEED_BLOCK = 64
MAX_SEED_BLOCK = 1024
seeds: list[int] = []
_before: dict | None = None  # the bit generator's state before the block was drawn
_block = 0                   # the size of the block `seeds` came from
_next_block = SEED_BLOCK
# XORed into every Dropout seed: 0, except on ranks > 0 of a data-parallel job (graphc.distributed),
# so each rank draws other masks from the same, reproducible, generator state
_salt = 0


def set_seed_salt(salt: int) -> None:
    global _salt
    _settle()
    _salt = int(salt)


def manual_seed(seed: int) -> None:
    global _generator
    _generator = np.random.default_rng(seed)
    seeds.clear()


def generator() -> np.random.Generator:
    _settle()
    return _generator


def _settle() -> None:
    """Rewind the generator to just after the seeds already handed out."""
    global _next_block
    if seeds:
        _next_block = SEED_BLOCK
        bg = _generator.bit_generator
        used = _block - len(seeds)
        seeds.clear()
        bg.state = _before
        if used:
            bg.random_raw(used)


def next_seed() -> int:
    """A fresh 63-bit seed for one Dropout call (eager) or one compiled step.

    The top 63 bits of one raw draw: as uniform as integers(0, 2**63 - 1) and ~8x cheaper
    (a compiled small train step costs a few microseconds in all)."""
    if not seeds:
        global _before, _block, _next_block
        bg = _generator.bit_generator
        _before = bg.state
        _block = _next_block
        _next_block = min(2 * _block, MAX_SEED_BLOCK)
        seeds.extend(((bg.random_raw(_block) >> np.uint64(1)) ^ np.uint64(_salt)).tolist()[::-1])
    return seeds.pop()


def get_state() -> dict:
    """The global generator's state (plain values: `graphc.save` stores it), as torch.get_rng_state.
    set_state() of it makes initialisation, Dropout masks and shuffling continue exactly as they
    would have, so a resumed run matches one that never stopped."""
    _settle()
    return {"bit_generator": type(_generator.bit_generator).__name__, "state": _generator.bit_generator.state}


def set_state(state: dict) -> None:
    """Restore a state from get_state() (checked before anything changes)."""
    from .ir import GraphcError

    if not isinstance(state, dict) or "bit_generator" not in state or "state" not in state:
        raise GraphcError(f"graphc.random.set_state expects what get_state() returned, got {type(state).__name__}")
    kind = getattr(np.random, str(state["bit_generator"]), None)
    if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
        raise GraphcError(f"graphc.random.set_state: unknown bit generator {state['bit_generator']!r}")
    bg = kind()
    try:
        bg.state = state["state"]
    except (TypeError, ValueError, KeyError) as e:
        raise GraphcError(f"graphc.random.set_state: invalid {state['bit_generator']} state ({e})") from None
    global _generator
    _generator = np.random.Generator(bg)
    seeds.clear()
