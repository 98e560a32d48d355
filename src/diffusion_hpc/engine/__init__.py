"""Engines: runners that drive the pipeline's shards (DESIGN §5, the layer above ``pipeline``).

Both engines make the same dataset, byte for byte, for the same config: a shard is one unit
(:meth:`~diffusion_hpc.pipeline.generate.Generator.run_shard`) whose samples depend only on the
run seed and their indices, with the batch composition fixed by the config.

- ``local`` (:mod:`~diffusion_hpc.engine.local`): shards one after another in this process.
- ``ray`` (:mod:`~diffusion_hpc.engine.ray_engine`): one Ray actor per worker loads the models once
  and makes whole shards; each worker commits its shards into the shared output folder; a shard
  whose worker died is made again by a fresh worker; the driver consolidates the manifest.

Parts for job arrays (``part: I/N``) work with either engine; :mod:`diffusion_hpc.data.merge`
joins them.
"""

from __future__ import annotations

from pathlib import Path

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.engine.local import run_local
from diffusion_hpc.engine.ray_engine import run_ray
from diffusion_hpc.pipeline.generate import GenerateResult, run_config

__all__ = ["generate", "run_local", "run_ray"]


def generate(config: GenerateConfig, out: str | Path, resume: bool = False, progress: bool = True) -> GenerateResult:
    """Python API of ``dhpc generate``: the run of ``config`` on its engine (``config.engine``); a resume
    continues options whose default changed as the dataset recorded them (:func:`run_config`)."""
    config = run_config(config, out, resume)
    if config.engine == "ray":
        return run_ray(config, out, resume=resume, progress=progress)
    return run_local(config, out, resume=resume, progress=progress)
