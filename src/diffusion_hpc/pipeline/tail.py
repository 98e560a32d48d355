"""The tail every mode shares (DESIGN §2 steps 5-8):

    1. label: body forward on the placed bodies (unless the head ran it: mode D), render depth /
       silhouette, project keypoints
    2. image: the image generator on the labels (render baseline, or depth-conditioned regeneration
       SDEdit style from the start image when there is one)
    3. cycles (optional): re-estimate the body in the output image, label that estimate, regenerate
       from the output image with fresh noise (:func:`cycle_seed`: the sample's seed and the cycle's
       number, so every cycle draws its own noise and a rerun draws the same)
    4. verify (optional): re-estimate and segment the final image against its label
    5. records: accepted samples and every sample's manifest row (:mod:`~diffusion_hpc.pipeline.records`)

Labels: the label of a sample is its own mesh and camera; the image is made to fit the mesh. The
saved ``mask`` is the rendered silhouette of the label mesh and ``depth`` its rendered depth; the
segmenter's person mask of the final image is summarised as ``scores.mask_iou``. After a cycle the
label is the mesh estimated in that cycle (the one the final image was conditioned on).
"""

from __future__ import annotations

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.schema import SampleRecord
from diffusion_hpc.data.seeds import cycle_seed
from diffusion_hpc.data.writer import ManifestRow
from diffusion_hpc.generate.base import GenerationBatch
from diffusion_hpc.geometry.camera import project
from diffusion_hpc.pipeline.guided import estimate_found
from diffusion_hpc.pipeline.records import records_and_rows
from diffusion_hpc.pipeline.samples import (
    Generated,
    Labels,
    PlacedBodies,
    SampleLog,
    StartImages,
    Verification,
    alive,
)
from diffusion_hpc.pipeline.stages import Stages, StageTimer
from diffusion_hpc.pipeline.verify import mask_iou, pck_agreement
from diffusion_hpc.render.base import RenderOutput


def keypoint_visibility(uv: np.ndarray, z: np.ndarray, depth: np.ndarray, tolerance: float = 0.12) -> np.ndarray:
    """COCO visibility of projected joints: 0 outside the image, 1 hidden by the body, 2 visible.

    A joint inside the image is visible when the rendered surface at its pixel is not nearer than
    the joint by more than ``tolerance`` metres (joints lie inside the body, a few cm below its skin).

    Args:
        uv: (J, 2) pixels; z: (J,) joint depths; depth: (H, W) rendered depth (0 = background).
    """
    height, width = depth.shape
    col = np.round(uv[:, 0]).astype(int)
    row = np.round(uv[:, 1]).astype(int)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (z > 0)
    vis = np.zeros(len(uv), dtype=np.float64)
    surface = depth[row.clip(0, height - 1), col.clip(0, width - 1)]
    hidden = (surface > 0) & (surface < z - tolerance)
    vis[inside] = np.where(hidden[inside], 1.0, 2.0)
    return vis


def _empty_labels(bodies: PlacedBodies, size: tuple[int, int]) -> Labels:
    h, w = size
    render = RenderOutput(np.zeros((0, h, w), np.float32), np.zeros((0, h, w), bool),
                          np.zeros((0, h, w, 3), np.float32), np.zeros((0, h, w), np.int32))  # fmt: skip
    return Labels(bodies, {}, np.zeros((0, 17, 3)), render)


def label(stages: Stages, bodies: PlacedBodies, size: tuple[int, int], timer: StageTimer) -> Labels:
    """Step 1: the label of each placed body; a mesh outside the image fails its sample."""
    import torch

    if not len(bodies):
        return _empty_labels(bodies, size)
    params = {key: np.asarray(v, np.float32) for key, v in bodies.params.items()}  # as the body model runs them
    if bodies.vertices is not None:  # the head ran the body model already (mode D)
        vertices, joints3d = bodies.vertices, bodies.joints
    else:
        with torch.no_grad():
            out = stages.body({key: torch.as_tensor(v) for key, v in params.items()})
        vertices = out.vertices.numpy().astype(np.float32)
        joints3d = {name: j.numpy().astype(np.float64) for name, j in out.joints.items()}
        timer.lap("body")
    # depth and face ids only: a pixel's normal is its face's (RenderOutput.face_normals)
    render = stages.renderer.render(vertices, stages.faces, bodies.K.astype(np.float32), tuple(size),
                                    normals=False)  # fmt: skip
    timer.lap("render")
    keypoints = []
    for b, log in enumerate(bodies.logs):
        coco = joints3d["coco17"][b]
        uv = project(coco, bodies.K[b])
        keypoints.append(np.concatenate([uv, keypoint_visibility(uv, coco[:, 2], render.depth[b])[:, None]], axis=1))
        if not render.mask[b].any():
            log.reason = "render: the mesh is outside the image"
    ran = PlacedBodies(bodies.logs, params, bodies.K, bodies.start)
    return Labels(ran, joints3d, np.stack(keypoints), render)


def make_images(stages: Stages, labels: Labels, timer: StageTimer, stage: str, cycle_number: int = 0) -> Generated:
    """Step 2: the image generator on the labels: the render baseline (its image is the shaded
    render), or depth-conditioned diffusion (from the start image when there is one); in cycle
    ``cycle_number`` > 0 each sample draws from :func:`cycle_seed` of its seed."""
    logs = labels.logs
    if not len(labels):
        size = labels.render.mask.shape[1:]
        return Generated(labels, np.zeros((0,) + tuple(size) + (3,), np.uint8))
    if stages.face_part is not None:
        batch = GenerationBatch(seeds=[log.render_seed for log in logs], render=labels.render,
                                face_part=stages.face_part)  # fmt: skip
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


def cycle(stages: Stages, previous: Generated, number: int, size: tuple[int, int], timer: StageTimer) -> Generated:
    """Step 3: one more estimate -> label -> regenerate pass on the output images; returns the survivors."""
    if not len(previous):
        return previous
    seg = stages.segmenter.segment(previous.images)
    estimates = estimate_found(stages.estimator, previous.images, seg.person_found, seg.person)
    timer.lap("cycle_estimate")
    for i, log in enumerate(previous.logs):
        if i not in estimates:
            log.reason = f"cycle {number}: segment: no person found"
        elif not estimates[i].ok:
            log.reason = f"cycle {number}: estimate: {estimates[i].reason}"
    rows = alive(previous.logs)
    params = [{k: np.asarray(v, np.float32) for k, v in estimates[i].params.items()} for i in rows]
    bodies = PlacedBodies(
        [previous.logs[i] for i in rows],
        {key: np.stack([p[key] for p in params]) for key in params[0]} if params else {},
        np.stack([np.asarray(estimates[i].K, np.float64) for i in rows]) if rows else np.zeros((0, 3, 3)),
        StartImages(previous.images, seg.person, seg.occluders).take(rows),
    )  # fmt: skip
    labels = label(stages, bodies, size, timer)
    return make_images(stages, labels.take(alive(labels.logs)), timer, "regenerate", cycle_number=number)


def verify(stages: Stages, final: Generated, min_agreement: float | None, timer: StageTimer) -> Verification:
    """Step 4: re-estimate and segment the final images; a sample below ``min_agreement`` drifted."""
    seg = stages.segmenter.segment(final.images)
    estimates = stages.estimator.estimate(list(final.images))
    masks = final.labels.render.mask
    pck = np.array([pck_agreement(est.keypoints2d if est.ok else None, final.labels.keypoints2d[i], masks[i])
                    for i, est in enumerate(estimates)], np.float64)  # fmt: skip
    iou = np.array([mask_iou(seg.person[i], masks[i]) for i in range(len(final))], np.float64)
    found = np.array([est.ok for est in estimates], bool)
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
        final = cycle(stages, final, number, size, timer)
    # 4. label verification
    verification = verify(stages, final, config.min_agreement, timer) if config.verify and len(final) else None
    # 5. records and manifest rows
    return records_and_rows(config, stages, logs, final, verification, timer.per_sample(len(logs)))
