"""The label-model stage of a run (``--label-models anny,smpl``): the body of every person of each
accepted sample fitted with the other body models before its record is written (:mod:`diffusion_hpc.data.convert`).

The converters are created once per process, on first use (the target model and its prior load
then), and fit on the CPU in float32 like the run's body model.
"""

from __future__ import annotations

import time

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.convert import LabelConverter
from diffusion_hpc.data.schema import SampleRecord

_CONVERTERS: dict[tuple, LabelConverter] = {}


def converter_for(config: GenerateConfig, model: str) -> LabelConverter:
    """The process's converter from the run's body model to ``model`` (created once)."""
    key = (config.body_model, model, str(config.smpl_path))
    if key not in _CONVERTERS:
        _CONVERTERS[key] = LabelConverter(config.body_model, model, config.smpl_path)
    return _CONVERTERS[key]


def add_label_models(config: GenerateConfig, records: list[SampleRecord], timings: dict[str, float]) -> None:
    """Set ``person.labels[model]`` of every person of every record (:meth:`SampleRecord.people`) for
    each of ``config.extra_label_models()``, one batched fit per model over all the batch's persons;
    ``timings["labels"]`` (the batch's per-sample timings, shared by its records and rows) gets the
    fit's seconds per accepted sample."""
    models = config.extra_label_models()
    people = [person for record in records for person in record.people()]
    if not models or not people:
        return
    start = time.perf_counter()
    params = {k: np.stack([np.asarray(p.params[k], np.float32) for p in people]) for k in people[0].params}
    for model in models:
        for person, label in zip(people, converter_for(config, model)(params)):
            person.labels[model] = label
    timings["labels"] = (time.perf_counter() - start) / len(records)
