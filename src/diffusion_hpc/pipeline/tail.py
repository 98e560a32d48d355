"""The tail every mode shares (DESIGN §2 steps 5-8):

    1. label: body forward on the placed bodies (unless the head ran it: mode D), render depth /
       silhouette, project keypoints
    2. image: the image generator on the labels (render baseline, or depth-conditioned regeneration
       SDEdit style from the start image when there is one)
    3. cycles (optional): re-estimate the body in the output image, label that estimate, regenerate
       from the output image with fresh noise (:func:`cycle_seed`: the sample's seed and the cycle's
       number, so every cycle draws its own noise and a rerun draws the same)
    4. verify (optional): re-read the people's 2D keypoints (``verify_by``) and segment the final
       image against its label
    5. records: accepted samples and every sample's manifest row (:mod:`~diffusion_hpc.pipeline.records`)

Labels: the label of a sample is its own meshes and camera; the image is made to fit them. The
people of a sample are rendered together (:func:`~diffusion_hpc.render.scene.render_scene`): the
saved ``depth`` is the nearest surface of any of them, ``mask`` their union and ``instance`` whose
surface each pixel shows; a joint is visible when no body (its own beyond a few cm of skin, or
another person's) is in front of it (:func:`~diffusion_hpc.geometry.scene.scene_keypoints`). The
segmenter's person mask of the final image is summarised as ``scores.mask_iou``. After a cycle the
label is the mesh estimated in that cycle (the one the final image was conditioned on).
"""

from __future__ import annotations

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.schema import SampleRecord
from diffusion_hpc.data.seeds import cycle_seed
from diffusion_hpc.data.writer import ManifestRow
from diffusion_hpc.generate.base import GenerationBatch, GenerationResult
from diffusion_hpc.geometry.scene import scene_keypoints
from diffusion_hpc.pipeline.guided import estimate_people, read_label_boxes, read_regions, score_estimates
from diffusion_hpc.pipeline.records import records_and_rows
from diffusion_hpc.pipeline.samples import (
    Generated,
    Labels,
    PersonLog,
    PlacedBodies,
    SampleLog,
    StartImages,
    Verification,
    alive,
    by_sample,
    slots_of,
)
from diffusion_hpc.pipeline.stages import Stages, StageTimer, pose_bodies
from diffusion_hpc.pipeline.verify import mask_iou, pck_agreement
from diffusion_hpc.render.base import RenderOutput
from diffusion_hpc.render.scene import render_scene, visible_fractions


def _empty_labels(bodies: PlacedBodies, size: tuple[int, int]) -> Labels:
    h, w = size
    render = RenderOutput(np.zeros((0, h, w), np.float32), np.zeros((0, h, w), bool),
                          np.zeros((0, h, w, 3), np.float32), np.zeros((0, h, w), np.int32))  # fmt: skip
    return Labels(bodies, {}, np.zeros((0, 17, 3)), render)


def label(stages: Stages, bodies: PlacedBodies, size: tuple[int, int], timer: StageTimer) -> Labels:
    """Step 1: the label of each sample: its people rendered together in its camera, their keypoints
    with visibility and the share of each person left visible; a sample whose meshes all lie
    outside the image fails."""
    if not len(bodies):
        return _empty_labels(bodies, size)
    params = {key: np.asarray(v, np.float32) for key, v in bodies.params.items()}  # as the body model runs them
    if bodies.vertices is not None:  # the head ran the body model already (mode D; T, R with several people)
        vertices, joints3d = bodies.vertices, bodies.joints
    else:
        vertices, joints3d = pose_bodies(stages, params)
        timer.lap("body")
    owner, count = bodies.owners, len(bodies)
    scene_vertices, present, slot = by_sample(vertices, owner, count)
    K = bodies.K.astype(np.float32)
    # depth and face ids only: a pixel's normal is its face's (RenderOutput.face_normals)
    render = render_scene(stages.renderer, scene_vertices, stages.faces, K, tuple(size),
                          None if present.all() else present, normals=False)  # fmt: skip
    fraction = np.ones(len(owner))
    crowded = np.flatnonzero(np.bincount(owner, minlength=count)[owner] > 1)
    if len(crowded):  # how much of each person's silhouette the others leave visible
        fraction[crowded] = visible_fractions(stages.renderer, vertices[crowded], stages.faces, K[owner[crowded]],
                                              render.instance, owner[crowded], slot[crowded])  # fmt: skip
    timer.lap("render")
    coco = by_sample(joints3d["coco17"], owner, count)[0]
    keypoints = scene_keypoints(coco, bodies.K, render.depth, render.instance)[owner, slot]
    for b, log in enumerate(bodies.logs):
        if not render.mask[b].any():
            log.reason = "render: the mesh is outside the image"
    ran = PlacedBodies(bodies.logs, params, bodies.K, bodies.start, owner=bodies.owner, people=bodies.people)
    return Labels(ran, joints3d, keypoints, render, fraction, slots=present.shape[1])


def shade_people(stages: Stages, labels: Labels) -> GenerationResult:
    """The render baseline's images of the labels. The combined mesh of a sample's P people repeats the
    body's faces P times, and so does its body-part map: samples are shaded in groups of equal P, so
    a sample's image depends on its own people only, not on the widest sample of its batch."""
    seeds = [log.render_seed for log in labels.logs]
    if labels.slots == 1:
        return stages.image_generator.generate(GenerationBatch(seeds=seeds, render=labels.render,
                                                               face_part=stages.face_part))  # fmt: skip
    counts = np.bincount(labels.bodies.owners, minlength=len(labels))
    images = np.empty(labels.render.mask.shape + (3,), np.uint8)
    for people in np.unique(counts):
        rows = np.flatnonzero(counts == people).tolist()
        batch = GenerationBatch(seeds=[seeds[i] for i in rows], render=labels.render.take(rows),
                                face_part=np.tile(stages.face_part, int(people)))  # fmt: skip
        images[rows] = stages.image_generator.generate(batch).images
    return GenerationResult(images, np.zeros(len(labels), np.int64))


def make_images(stages: Stages, labels: Labels, timer: StageTimer, stage: str, cycle_number: int = 0) -> Generated:
    """Step 2: the image generator on the labels: the render baseline (its image is the shaded
    render), or depth-conditioned diffusion (from the start image when there is one); in cycle
    ``cycle_number`` > 0 each sample draws from :func:`cycle_seed` of its seed."""
    logs = labels.logs
    if not len(labels):
        size = labels.render.mask.shape[1:]
        return Generated(labels, np.zeros((0,) + tuple(size) + (3,), np.uint8))
    if stages.face_part is not None:
        result = shade_people(stages, labels)
    else:
        start = labels.bodies.start
        batch = GenerationBatch(
            seeds=[cycle_seed(log.seed, cycle_number) for log in logs], prompts=[log.prompt for log in logs],
            start_images=None if start is None else start.images, person_masks=None if start is None else start.person,
            occluder_masks=None if start is None else start.occluders,
            depth=labels.render.depth, silhouettes=labels.render.mask,
        )  # fmt: skip
        result = stages.image_generator.generate(batch)
    timer.count_unet(result)
    for b, log in enumerate(logs):
        log.unet_evals += float(result.unet_evals[b])
        if result.controlnet_evals is not None:
            log.controlnet_evals += int(result.controlnet_evals[b])
        if result.ran is not None:
            log.regenerations += 1
            log.steps_run = result.ran.steps_run
            log.blur_radius = 0.0 if result.ran.blur_radius is None else float(result.ran.blur_radius[b])
    timer.lap(stage)
    return Generated(labels, result.images)


def cycle(stages: Stages, previous: Generated, number: int, size: tuple[int, int], timer: StageTimer,
          most: int = 1) -> Generated:  # fmt: skip
    """Step 3: one more estimate -> label -> regenerate pass on the output images (each person the
    segmenter finds, the ``most`` largest); returns the survivors."""
    if not len(previous):
        return previous
    seg = stages.segmenter.segment(previous.images)
    estimates = estimate_people(stages.estimator, previous.images, seg, most)
    timer.lap("cycle_estimate")
    for i, log in enumerate(previous.logs):
        if i not in estimates:
            log.reason = f"cycle {number}: segment: no person found"
        elif not any(e.ok for e in estimates[i]):
            log.reason = f"cycle {number}: estimate: {estimates[i][0].reason}"
    rows = alive(previous.logs)
    groups = [[e for e in estimates[i] if e.ok] for i in rows]
    found = [e for group in groups for e in group]
    persons = []
    for i, group in zip(rows, groups):
        log = previous.logs[i]
        log.scores["people"] = len(group)
        persons += [PersonLog(f"{log.pose_source}#person{p}" if len(group) > 1 else log.pose_source,
                              {"fit_error_px": float(e.fit_error_px)}) for p, e in enumerate(group)]  # fmt: skip
    if found and stages.prior is not None:
        for person, score in zip(persons, score_estimates(stages.prior, found)):
            person.scores = {"prior_score": float(score), "hard": float(score >= stages.prior.hard_threshold),
                             **person.scores}  # fmt: skip
    params = [{k: np.asarray(v, np.float32) for k, v in e.params.items()} for e in found]
    bodies = PlacedBodies(
        [previous.logs[i] for i in rows],
        {key: np.stack([q[key] for q in params]) for key in params[0]} if params else {},
        np.stack([np.asarray(group[0].K, np.float64) for group in groups]) if rows else np.zeros((0, 3, 3)),
        StartImages(previous.images, seg.person, seg.occluders).take(rows),
        owner=np.repeat(np.arange(len(rows)), [len(group) for group in groups]), people=persons,
    )  # fmt: skip
    labels = label(stages, bodies, size, timer)
    return make_images(stages, labels.take(alive(labels.logs)), timer, "regenerate", cycle_number=number)


def verify(stages: Stages, final: Generated, min_agreement: float | None, timer: StageTimer,
           by: str = "estimate") -> Verification:  # fmt: skip
    """Step 4: re-read each person's 2D keypoints in the final images and segment them; a sample below
    ``min_agreement`` drifted.

    ``by`` (``GenerateConfig.verify_by``): ``"landmarks"``, the estimator's detector alone (the MediaPipe
    landmarks, without the body fit), ``"label-box"`` (the landmark model alone on the box each
    person's label joints give, without MediaPipe's person detector), or ``"estimate"``, the
    keypoints of its whole estimate (:func:`~diffusion_hpc.pipeline.guided.read_regions`), or
    ``"keypoint-model"``, a top-down keypoint model on the box of each person's label silhouette
    (:func:`~diffusion_hpc.pipeline.guided.read_label_boxes`, all people of the batch in one call). Except
    with ``"label-box"`` and ``"keypoint-model"``, a one-person sample is read on its whole image (the
    estimator's most prominent person) and in a sample of several people each person on its own region of the
    label; the sample's ``pck_agreement`` is its least agreeing person's and each person of a
    several-people sample records its own. ``mask_iou`` compares the union of the final image's people with
    the label's."""
    seg = stages.segmenter.segment(final.images)
    labels = final.labels
    masks, owner = labels.render.mask, labels.bodies.owners
    slot = slots_of(owner)
    alone = np.bincount(owner, minlength=len(final))[owner] == 1
    silhouettes = [masks[i] if labels.slots == 1 else labels.render.instance[i] == p for i, p in zip(owner, slot)]
    if by == "keypoint-model":
        estimates = read_label_boxes(stages.keypoint_model, final.images, silhouettes, owner)
    else:
        regions = [None if alone[n] else silhouettes[n] for n in range(len(owner))]  # several people: each on its own
        estimates = read_regions(stages.estimator, [final.images[i] for i in owner], regions, by, list(labels.keypoints2d))
    pck = np.full(len(final), np.nan)
    found = np.ones(len(final), bool)
    people = labels.bodies.people
    for n, (i, p) in enumerate(zip(owner.tolist(), slot.tolist())):
        est = estimates[n]
        value = pck_agreement(est.keypoints2d if est.ok else None, labels.keypoints2d[n], silhouettes[n])
        pck[i] = value if np.isnan(pck[i]) else np.fmin(pck[i], value)  # NaN (no visible keypoint) only when no person has one
        found[i] &= est.ok
        if people is not None and not alone[n]:
            people[n].scores.update(pck_agreement=float(value), person_found=float(est.ok))
    iou = np.array([mask_iou(seg.person[i], masks[i]) for i in range(len(final))], np.float64)
    for i, log in enumerate(final.logs):
        log.scores.update(pck_agreement=float(pck[i]), mask_iou=float(iou[i]), person_found=float(found[i]))
        if min_agreement is not None and not pck[i] >= min_agreement:
            log.reason = "verify: drifted"
    timer.lap("verify")
    return Verification(pck, iou, found, np.asarray(seg.person))


def finish(config: GenerateConfig, stages: Stages, logs: list[SampleLog], bodies: PlacedBodies,
           timer: StageTimer) -> tuple[list[SampleRecord], list[ManifestRow]]:  # fmt: skip
    """The tail of every mode on a batch's placed bodies; ``logs`` holds every sample of the batch."""
    size = tuple(config.image_size)
    # 1. label
    labels = label(stages, bodies, size, timer)
    # 2. the image generator: render baseline (mode D) or depth-conditioned diffusion
    stage = "generate" if config.mode == "D" else "regenerate"
    final = make_images(stages, labels.take(alive(labels.logs)), timer, stage)
    # 3. optional cycles on the output image
    for number in range(1, config.cycles + 1):
        final = cycle(stages, final, number, size, timer, config.people_range()[1])
    # 4. label verification
    verification = None
    if config.verify and len(final):
        verification = verify(stages, final, config.min_agreement, timer, config.verify_by)
    # 5. records and manifest rows
    return records_and_rows(config, stages, logs, final, verification, timer.per_sample(len(logs)))
