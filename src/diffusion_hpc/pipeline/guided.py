"""The head of modes T and R: guides -> bodies placed in their start image's camera (DESIGN §2).

    1. start images: T: text-to-image, one per guide; R: the user's images
    2. masks of the start images (person, occluders)
    3. body estimate in the start image's camera
    4. prior score of the estimated pose (-> hard-only filter)
    5. k variants per kept guide: the estimate and k-1 augmented poses

Indexing: sample ``index`` is variant ``index % k`` of guide ``index // k``; a guide's start image,
prompt and augmentation come from :func:`~diffusion_hpc.data.seeds.guide_seed`, every sample's
regeneration from :func:`~diffusion_hpc.data.seeds.sample_seed`. A sample's ``unet_evals`` starts
with its share of its guide's start image (guide cost / the guide's number of samples in the run,
so shares add up exactly). The shared tail (:mod:`~diffusion_hpc.pipeline.tail`) takes it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.seeds import augment_seed, guide_seed, sample_seed
from diffusion_hpc.estimate import Estimate
from diffusion_hpc.estimate.base import estimate_with_masks
from diffusion_hpc.generate.base import GenerationBatch
from diffusion_hpc.pipeline.inputs import GuideImages
from diffusion_hpc.pipeline.requests import pick_line, prompt_text, variant_prompt, variants_in_run
from diffusion_hpc.pipeline.samples import PlacedBodies, SampleLog, StartImages, alive
from diffusion_hpc.pipeline.stages import Stages, StageTimer
from diffusion_hpc.prior.augment import augment_poses


@dataclass
class Guides:
    """Step 1's output: the start image of each guide of the batch.

    Attributes:
        indices: the G guide indices; prompts: their prompts; sources: where each image came from.
        images: (G, H, W, 3) uint8 start images.
        unet_evals: (G,) UNet evaluations spent on each (0 for the user's images).
        steps_run: denoising steps of each start image (mode T), None when not reported; 0 in mode R.
    """

    indices: list[int]
    prompts: list[str]
    sources: list[str]
    images: np.ndarray
    unet_evals: np.ndarray
    steps_run: Optional[int]


def start_images(config: GenerateConfig, stages: Stages, guide_images: Optional[GuideImages],
                 prompt_lines: list[str], guides: list[int], timer: StageTimer) -> Guides:  # fmt: skip
    """Step 1: mode T makes the start images from text; mode R reads the user's."""
    seeds = [guide_seed(config.seed, g) for g in guides]
    prompts = [prompt_text(pick_line(prompt_lines, g), s) for g, s in zip(guides, seeds)]
    if config.mode == "T":
        result = stages.start.generate(GenerationBatch(seeds=seeds, prompts=prompts, size=tuple(config.image_size)))
        timer.count_unet(result)
        out = Guides(guides, prompts, [f"txt2img:{p}" for p in prompts], result.images,
                     result.unet_evals.astype(np.float64), result.ran.steps_run if result.ran else None)  # fmt: skip
    else:
        out = Guides(guides, prompts, [f"guide:{guide_images.path(g).name}" for g in guides],
                     np.stack([guide_images.load(g) for g in guides]), np.zeros(len(guides)), 0)  # fmt: skip
    timer.lap("start")
    return out


def estimate_found(estimator, images: np.ndarray, person_found: np.ndarray,
                   person: np.ndarray | None = None) -> dict[int, Estimate]:
    """The estimator on the images where the segmenter found a person, in one batch; position -> estimate.

    An image without a person fails its samples whatever the estimator says, so it is not estimated
    (a start image without a person would cost the estimator's detection, or a whole fit when its
    detector sees someone the segmenter did not). An estimator that uses person masks (the MediaPipe
    fit) gets the segmenter's, so landmarks lying on the background do not drag the body.

    Args:
        images: (B, H, W, 3) uint8; person_found: (B,) bool and person: (B, H, W) bool (or None), the segmenter's.
    """
    found = [i for i in range(len(images)) if person_found[i]]
    if not found:
        return {}
    masks = None if person is None else [person[i] for i in found]
    return dict(zip(found, estimate_with_masks(estimator, [images[i] for i in found], masks), strict=True))


def place_guided(config: GenerateConfig, stages: Stages, guide_images: Optional[GuideImages], prompt_lines: list[str],
                 guides: list[int], timer: StageTimer) -> tuple[list[SampleLog], PlacedBodies]:  # fmt: skip
    """Modes T, R: the k variants of each guide of the batch, placed in the start image's camera.

    Returns:
        the logs of every sample of the batch (a guide without a person, without a fit or with an
        easy pose under ``hard_only`` fails all its samples), and the placed bodies of the others,
        each with its guide's start image and masks.
    """
    cfg, st = config, stages
    k, n = cfg.k, cfg.n
    # 1. start images
    g = start_images(cfg, st, guide_images, prompt_lines, guides, timer)
    # 2. masks of the start images
    seg = st.segmenter.segment(g.images)
    timer.lap("segment")
    # 3. body estimate in the start image's camera (only where the segmenter found a person)
    estimates = estimate_found(st.estimator, g.images, seg.person_found, seg.person)
    timer.lap("estimate")
    # 4. prior score of the estimated pose; optional hard-pose filter
    reasons = ["segment: no person found" if i not in estimates else "" if estimates[i].ok
               else f"estimate: {estimates[i].reason}" for i in range(len(guides))]  # fmt: skip
    ok = [i for i, r in enumerate(reasons) if not r]
    prior_scores = np.full(len(guides), np.nan)
    if ok:
        import torch

        pose = torch.as_tensor(np.stack([estimates[i].params["body_pose"] for i in ok]), dtype=torch.float32)
        with torch.no_grad():
            prior_scores[ok] = st.prior.score(pose).numpy()
    for i in ok:
        if cfg.hard_only and not prior_scores[i] >= st.prior.hard_threshold:
            reasons[i] = "filter: easy pose"
    timer.lap("prior")
    # 5. k variants per kept guide (each guide from its own augmentation stream)
    shape_key = st.body.shape_key
    logs: list[SampleLog] = []
    of_guide: list[int] = []  # the guide (position in the batch) of each sample
    params: list[dict] = []
    Ks: list[np.ndarray] = []
    for i, guide in enumerate(guides):
        count = variants_in_run(guide, k, n)
        variants = None
        if not reasons[i]:
            p = estimates[i].params
            variants = augment_poses(st.prior, p["body_pose"][None], p["global_orient"][None], p[shape_key][None],
                                     k=k, generator=augment_seed(cfg.seed, guide), body_model=cfg.body_model)
        for v in range(count):
            index = guide * k + v
            log = SampleLog(index=index, seed=sample_seed(cfg.seed, index),
                            prompt=variant_prompt(pick_line(prompt_lines, guide), cfg.seed, index),
                            pose_source=f"{g.sources[i]}#variant{v}", unet_evals=float(g.unet_evals[i] / max(count, 1)),
                            reason=reasons[i], txt2img_steps_run=g.steps_run)  # fmt: skip
            log.scores["guide_prior_score"] = float(prior_scores[i])  # the estimate's (the hard-only filter's)
            if variants is not None:  # each variant's own pose: its score and flag
                log.scores["prior_score"] = float(variants.scores[0, v])
                log.scores["hard"] = float(variants.hard[0, v])
            else:  # a dropped guide: its estimate's score (NaN when there was none), flagged when known
                log.scores["prior_score"] = float(prior_scores[i])
                if not np.isnan(prior_scores[i]):
                    log.scores["hard"] = float(prior_scores[i] >= st.prior.hard_threshold)
            if variants is not None:
                est = estimates[i]
                Ks.append(np.asarray(est.K, np.float64))
                params.append({"global_orient": variants.global_orient[0, v], "body_pose": variants.body_pose[0, v],
                               shape_key: variants.shape[0, v], "transl": np.asarray(est.params["transl"], np.float32)})
                log.scores["fit_error_px"] = float(est.fit_error_px)
                of_guide.append(i)
            logs.append(log)
    timer.lap("augment")
    kept = [logs[r] for r in alive(logs)]
    starts = StartImages(g.images, seg.person, seg.occluders).take(of_guide)
    stacked = {key: np.stack([p[key] for p in params]) for key in params[0]} if params else {}
    return logs, PlacedBodies(kept, stacked, np.stack(Ks) if Ks else np.zeros((0, 3, 3)), starts)
