"""The local engine: the run's shards one after another in this process (``--engine local``).

The loop itself is :meth:`diffusion_hpc.pipeline.generate.Generator.run` (plan -> ``run_shard`` per
pending shard -> ``finish``), so ``diffusion_hpc.pipeline.generate.generate`` and this engine are
one code path; the Ray engine drives the same three steps from many processes.
"""

from __future__ import annotations

from pathlib import Path

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.pipeline.generate import GenerateResult, Generator


def run_local(config: GenerateConfig, out: str | Path, resume: bool = False, progress: bool = True) -> GenerateResult:
    """Generate the run's shards (all, or ``config.part``'s) into ``out`` in this process."""
    return Generator(config, progress=progress).run(out, resume=resume)
