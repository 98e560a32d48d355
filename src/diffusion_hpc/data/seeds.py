"""Per-sample seeds and shard assignment.

Every sample is reproducible from (run seed, sample index) alone: its random generator is derived
from both with numpy's ``SeedSequence`` (independent streams, no dependence on order, batch or
machine). Every stream a dataset draws from is derived here: samples, guides (modes T and R),
their augmentation, the diffusion stages, the prompt template, the other people of a mode-D scene
(``--people``), each ``--cycles`` pass and each round of ``dhpc cycle``. Shards hold fixed, contiguous index ranges, so a resumed or distributed run regenerates
exactly the samples of the shards it (re)does.
"""

from __future__ import annotations

import numpy as np

#: spawn-key word of the guide stream ("GUID"), so guide seeds never equal sample seeds
GUIDE_STREAM = 0x47554944
#: sub-stream of a guide seed: its pose augmentation ("AUG0")
AUGMENT_STREAM = 0x41554730
#: sub-stream of a sample seed: its prompt template ("PROM"), separate from the image's noise
PROMPT_STREAM = 0x50524F4D
#: sub-stream of a sample seed: the other people of its scene ("PEOP"), so a sample's own draws
#: (and its image with one person) are the same whatever ``--people`` allows
PEOPLE_STREAM = 0x50454F50
#: stage ids mixed into a sample seed, so the stages of one sample draw independent noise
STAGE_TXT2IMG = 1
STAGE_REGEN = 2
STAGE_BLUR = 3
#: spawn-key word of a sample's cycle streams ("CYCL"): cycle c regenerates from cycle_seed(seed, c)
CYCLE_STREAM = 0x4359434C
#: spawn-key words of a round's streams ("LGEN", "LTRN"): its generate seed and its training seed
GENERATE_STREAM = 0x4C47454E
TRAIN_STREAM = 0x4C54524E


def seed63(sequence: np.random.SeedSequence) -> int:
    """A 63-bit integer seed drawn from ``sequence`` (two 32-bit words)."""
    words = sequence.generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def sample_seed(run_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded with ``run_seed``."""
    return seed63(np.random.SeedSequence(entropy=int(run_seed), spawn_key=(int(index),)))


def guide_seed(run_seed: int, guide: int) -> int:
    """A 63-bit seed for guide ``guide`` of modes T and R (its start image, prompt template and augmentation).

    Drawn from a stream separate from :func:`sample_seed`, so guide g and sample g do not share
    noise. All k variants of a guide read it, so resuming or sharding a run remakes the same start
    image for each of them.
    """
    return seed63(np.random.SeedSequence(entropy=int(run_seed), spawn_key=(GUIDE_STREAM, int(guide))))


def augment_seed(run_seed: int, guide: int, person: int = 0) -> int:
    """Seed of the pose augmentation of person ``person`` of guide ``guide`` (its k-1 variants); the
    first person's stream is the guide's own, as in a one-person start image."""
    if person == 0:
        return seed63(np.random.SeedSequence([guide_seed(run_seed, guide), AUGMENT_STREAM]))
    return seed63(np.random.SeedSequence([guide_seed(run_seed, guide), AUGMENT_STREAM, int(person)]))


def stage_seed(seed: int, stage: int) -> int:
    """A 63-bit seed for one stage (``STAGE_*``) of a sample, independent of its other stages' streams."""
    return seed63(np.random.SeedSequence([int(seed), int(stage)]))


def cycle_seed(seed: int, number: int) -> int:
    """The seed of cycle ``number`` (1, 2, ...) of the sample seeded ``seed``: an independent stream
    per cycle, so a cycle's regeneration does not repeat the noise of the first (cycle 0 is the
    sample's own ``seed``). The image generator derives its stage streams from it as from any seed."""
    if number == 0:
        return int(seed)
    return seed63(np.random.SeedSequence([int(seed), CYCLE_STREAM, int(number)]))


def round_seed(seed: int, round_number: int, stream: int) -> int:
    """A 31-bit seed for step ``stream`` (:data:`GENERATE_STREAM`, :data:`TRAIN_STREAM`) of round
    ``round_number`` of a loop seeded ``seed``: each round draws other noise and another data order,
    the same on every rerun. (31 bits: Lightning's ``seed_everything`` takes at most 2**32 - 1.)"""
    words = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(stream), int(round_number))).generate_state(1)
    return int(words[0]) & 0x7FFFFFFF


def prompt_rng(seed: int) -> np.random.Generator:
    """The generator that picks the prompt template of the sample or guide seeded ``seed``.

    A guide's seed (:func:`guide_seed`) picks its start image's template; each sample's own seed
    (:func:`sample_seed`, whose index holds the variant: guide * k + variant) picks the template of
    its regeneration, so the k variants of a guide draw theirs independently.
    """
    return np.random.default_rng([int(seed), PROMPT_STREAM])


def people_rng(seed: int) -> np.random.Generator:
    """The generator of the scene of the sample seeded ``seed`` (:func:`sample_seed`): how many people
    it holds, the other people's poses, shapes and turns, and where everyone stands (mode D
    ``--people``). Separate from the sample's own stream, so the first person, the camera and the
    image generator's seed are drawn as in a one-person run."""
    return np.random.default_rng([int(seed), PEOPLE_STREAM])


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
