"""Per-sample seeds and shard assignment.

Every sample is reproducible from (run seed, sample index) alone: its random generator is derived
from both with numpy's ``SeedSequence`` (independent streams, no dependence on order, batch or
machine). Shards hold fixed, contiguous index ranges, so a resumed or distributed run regenerates
exactly the samples of the shards it (re)does.
"""

from __future__ import annotations

import numpy as np


def sample_seed(run_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded with ``run_seed``."""
    words = np.random.SeedSequence(entropy=int(run_seed), spawn_key=(int(index),)).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def sample_rng(run_seed: int, index: int) -> np.random.Generator:
    """The random generator of sample ``index``."""
    return np.random.default_rng(sample_seed(run_seed, index))


def shard_ranges(n: int, shard_size: int) -> list[range]:
    """Index ranges of the shards of an ``n``-sample run: shard s holds [s*S, min((s+1)*S, n))."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [range(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def shard_name(shard: int) -> str:
    """File stem of shard ``shard``."""
    return f"shard-{shard:06d}"


def sample_key(index: int) -> str:
    """WebDataset key of sample ``index`` (no dots: WebDataset splits keys at the first dot)."""
    return f"{index:09d}"
