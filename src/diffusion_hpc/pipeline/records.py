"""The end of the tail: sample records (accepted samples) and manifest rows (every sample).

Every row of a diffusion run records what ran (``sampler``, see :func:`what_ran`) and which
weights (``backbone``, :mod:`~diffusion_hpc.generate.identity`); ``run.json`` holds the run's part
once (:func:`run_sampler`). Cost: ``unet_evals`` is the sample's share of its guide's start image
plus its own regenerations (see :mod:`~diffusion_hpc.pipeline.guided`); ControlNet evaluations are
in ``scores.controlnet_evals``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from diffusion_hpc.config import DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.data.schema import PersonLabel, SampleRecord
from diffusion_hpc.data.seeds import sample_key
from diffusion_hpc.data.writer import ManifestRow
from diffusion_hpc.generate.base import SamplerSettings
from diffusion_hpc.pipeline.labels import add_label_models
from diffusion_hpc.pipeline.samples import Generated, Labels, SampleLog, Verification
from diffusion_hpc.pipeline.stages import Stages


def run_sampler(start: Optional[SamplerSettings], regen: Optional[SamplerSettings]) -> Optional[dict]:
    """The sampler of a run as it ran (None for the render baseline).

    Keys: ``preset``, ``scheduler``, ``guidance``; the start image's ``txt2img_steps`` and
    ``txt2img_guidance_embedded`` (None outside mode T); the regeneration's ``steps``,
    ``strength``, ``guidance_embedded`` (the UNet takes the scale as an input: one pass per
    step), ``controlnet_scale`` (None for depth2img), ``blur_prob``, ``timestep_spacing`` and
    ``eta`` (TCD's; else None); ``device`` and ``dtype`` the diffusion models ran on and in (the
    start image's generator runs on the same placement).
    """
    if regen is None:
        return None
    return {
        "preset": regen.preset, "scheduler": regen.scheduler, "guidance": regen.guidance,
        "txt2img_steps": None if start is None else start.steps,
        "txt2img_guidance_embedded": None if start is None else start.guidance_embedded,
        "steps": regen.steps, "strength": regen.strength, "guidance_embedded": regen.guidance_embedded,
        "controlnet_scale": regen.controlnet_scale, "blur_prob": regen.blur_prob,
        "timestep_spacing": regen.timestep_spacing, "eta": regen.eta,
        "device": regen.device, "dtype": regen.dtype,
    }  # fmt: skip


def what_ran(sampler: dict, log: SampleLog) -> dict:
    """A row's ``sampler``: the run's sampler (:func:`run_sampler`) and what ran for this sample:
    ``txt2img_steps_run`` (its start image's steps; None outside mode T), ``steps_run`` (steps of
    its last regeneration, 0 if none ran), ``regenerations`` (1 + the cycles it reached), ``blur``
    and ``blur_radius`` (None without blur).

    UNet evaluations: ``unet_evals`` = its share of ``txt2img_steps_run`` x the txt2img guidance
    factor, plus ``regenerations`` x ``steps_run`` x the regeneration's guidance factor
    (:func:`~diffusion_hpc.generate.base.guidance_factor` of ``guidance`` and ``guidance_embedded``).
    """
    mode_t = sampler["txt2img_steps"] is not None
    return {**sampler, "txt2img_steps_run": log.txt2img_steps_run if mode_t else None, "steps_run": log.steps_run,
            "regenerations": log.regenerations, "blur": log.blur_radius > 0,
            "blur_radius": log.blur_radius if log.blur_radius > 0 else None}  # fmt: skip


def row_estimator(identity: Optional[dict]) -> Optional[dict]:
    """A row's ``estimator``: the ``name`` of the run's mesh estimator (the one that labelled the
    start images, or checked the sample) and, for a regressor, its checkpoint's ``fingerprint``;
    None when no estimator ran. ``run.json`` holds its whole identity (architecture, file name)."""
    if identity is None:
        return None
    return {k: identity[k] for k in ("name", "fingerprint") if identity.get(k) is not None}


def _json_scores(scores: dict) -> dict:
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in scores.items()}  # JSON null


#: a sample's scores that describe its person when it holds one (its pose's prior score)
PERSON_SCORES = ("prior_score", "hard")


def person_labels(config: GenerateConfig, labels: Labels, log: SampleLog, i: int, persons: list[int]) -> list[PersonLabel]:
    """The persons ``persons`` (rows of ``labels``' person arrays) of sample ``i`` (its batch position),
    each with its scores: the head's (pose source, prior score; a one-person sample's are its
    sample's), ``mask_area`` (share of the image its visible pixels cover), ``visible_keypoints``
    and ``distance_m`` (its pelvis depth)."""
    people, instance = labels.bodies.people, labels.render.instance[i]
    out = []
    for p, n in enumerate(persons):
        keypoints = labels.keypoints2d[n]
        head = people[n].scores if people is not None else {k: log.scores[k] for k in PERSON_SCORES if k in log.scores}
        scores = dict(head, mask_area=float((instance == p).mean()), visible_keypoints=int((keypoints[:, 2] == 2).sum()),
                      distance_m=float(labels.joints3d["h36m17"][n, 0, 2]))  # fmt: skip
        out.append(PersonLabel(
            body_model=config.body_model, params={k: v[n] for k, v in labels.bodies.params.items()},
            joints3d={k: v[n] for k, v in labels.joints3d.items()}, keypoints2d=keypoints, scores=_json_scores(scores),
            pose_source=people[n].pose_source if people is not None else log.pose_source,
            visible_fraction=float(labels.visible_fraction[n]) if labels.visible_fraction is not None else 1.0,
        ))  # fmt: skip
    return out


def records_and_rows(config: GenerateConfig, stages: Stages, logs: list[SampleLog], final: Generated,
                     verification: Optional[Verification], timings: dict[str, float]
                     ) -> tuple[list[SampleRecord], list[ManifestRow]]:  # fmt: skip
    """The records of the accepted samples (in index order) and the manifest rows of all ``logs``.

    Args:
        logs: every sample of the batch; final: the samples that reached the end of the tail
            (those without a reason are accepted); verification: aligned with ``final``.
    """
    sampler = run_sampler(stages.start_sampler, stages.sampler)
    estimator = row_estimator(stages.estimator_identity)
    position = {log.index: i for i, log in enumerate(final.logs)}
    labels = final.labels
    owner = labels.bodies.owners
    members = [[] for _ in final.logs]  # each sample's persons, in order
    for n, i in enumerate(owner.tolist()):
        members[i].append(n)
    records, rows = [], []
    for log in logs:
        scores = dict(log.scores)
        i = None if log.reason else position[log.index]  # every sample alive at the end reached it
        persons: list[PersonLabel] = []
        if i is not None:
            persons = person_labels(config, labels, log, i, members[i])
            scores.update(mask_area=float(labels.render.mask[i].mean()),
                          visible_keypoints=sum(p.scores["visible_keypoints"] for p in persons),
                          distance_m=min(p.scores["distance_m"] for p in persons))  # fmt: skip
        if config.generator in DIFFUSION_GENERATORS:
            scores["controlnet_evals"] = int(log.controlnet_evals)
        scores = _json_scores(scores)
        evals = int(log.unet_evals) if float(log.unet_evals).is_integer() else round(log.unet_evals, 4)
        ran = {"sampler": what_ran(sampler, log), "backbone": stages.backbone} if sampler is not None else {}
        ran["estimator"] = estimator
        key = sample_key(log.index)
        if i is None:
            rows.append(ManifestRow(key, log.index, 0, log.seed, "failed", reason=log.reason, scores=scores,
                                    unet_evals=evals, timings=timings, **ran))  # fmt: skip
            continue
        records.append(SampleRecord(
            key=key, index=log.index, seed=log.seed, image=final.images[i], mask=labels.render.mask[i],
            depth=labels.render.depth[i], K=labels.bodies.K[i], mode=config.mode, persons=persons,
            instance=labels.render.instance[i], prompt=log.prompt, generator=config.generator, scores=scores,
            unet_evals=evals, timings=timings, image_mask=None if verification is None else verification.image_masks[i],
        ))  # fmt: skip
        rows.append(ManifestRow(key, log.index, 0, log.seed, "ok", scores=scores, unet_evals=evals, timings=timings,
                                **ran))  # fmt: skip
    add_label_models(config, records, timings)  # --label-models: the other body models fitted to each body
    rows.sort(key=lambda row: row.index)
    return records, rows
