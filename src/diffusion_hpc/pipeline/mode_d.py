"""Mode D's head: body poses -> bodies placed in their camera (DESIGN §2, mode D).

    1. requests: every sample's pose, shape, camera and seeds, from (run seed, index) alone
    2. body forward in the canonical frame
    3. camera placement: orientation from the request, depth and offset so the body fits the image
       (the whole batch at once)
    4. the samples: logs (prompt, pose source) and the placed bodies, with their mesh and joints in
       the camera (the canonical forward moved rigidly: the tail needs no second forward)

The shared tail (:mod:`~diffusion_hpc.pipeline.tail`) takes it from there.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_hpc.body import transform_params
from diffusion_hpc.config import DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.geometry.camera import fit_translations
from diffusion_hpc.pipeline.requests import SampleRequest, make_request, pick_line, prompt_text
from diffusion_hpc.pipeline.samples import PlacedBodies, SampleLog, alive
from diffusion_hpc.pipeline.stages import Stages, StageTimer
from diffusion_hpc.poses import BUILTIN_SETS


def _shape(config: GenerateConfig, poses, request: SampleRequest) -> np.ndarray:
    """The body shape of a request: the pose file's own (phenotype for Anny, betas for SMPL), else drawn."""
    if poses.phenotype is not None and config.body_model == "anny":
        return np.asarray(poses.phenotype[request.pose_index], np.float32)
    if getattr(poses, "betas", None) is not None and config.body_model != "anny":
        return np.asarray(poses.betas[request.pose_index], np.float32)
    return request.shape


def hard_threshold_of_poses(config: GenerateConfig, prior) -> float:
    """The hard threshold for mode D's poses: the built-in sets scored by the shipped prior are its
    training corpus, scored in-sample (``corpus_hard_threshold``); any other pose is new to it."""
    return prior.corpus_hard_threshold if config.poses in BUILTIN_SETS and config.prior_path is None else prior.hard_threshold


def pose_scores(config: GenerateConfig, stages: Stages, body_pose) -> tuple[np.ndarray | None, float]:
    """((B,) prior scores of the poses, the hard threshold for them); (None, nan) without a prior."""
    if stages.prior is None:
        return None, float("nan")
    with torch.no_grad():
        scores = stages.prior.score(body_pose).numpy()
    return scores, hard_threshold_of_poses(config, stages.prior)


def place_bodies(config: GenerateConfig, stages: Stages, poses, prompt_lines: list[str], indices: range,
                 timer: StageTimer) -> tuple[list[SampleLog], PlacedBodies]:  # fmt: skip
    """Mode D: the samples ``indices`` placed in their camera.

    Returns:
        the logs of every sample of the batch, and the placed bodies of those not rejected
        (a body that cannot be fitted into the image fails with reason ``camera: ...``).
    """
    body = stages.body
    height, width = config.image_size
    # 1. requests
    sampler = lambda rng: body.sample_shape(rng, age_years=config.shape.age_years)  # noqa: E731
    requests = [make_request(config, i, len(poses), sampler, stages.canonical_to_camera) for i in indices]
    # 2. body forward in the canonical frame
    pose_rows = [r.pose_index for r in requests]
    params = {
        "global_orient": torch.as_tensor(np.stack([poses.global_orient[i] for i in pose_rows]), dtype=torch.float32),
        "body_pose": torch.as_tensor(np.stack([poses.body_pose[i] for i in pose_rows]), dtype=torch.float32),
        body.shape_key: torch.as_tensor(np.stack([_shape(config, poses, r) for r in requests]), dtype=torch.float32),
        "transl": torch.zeros(len(requests), 3),
    }
    with torch.no_grad():
        canonical = body(params)
    timer.lap("body")
    # 3. camera placement
    rotations = np.stack([r.rotation for r in requests])
    rotated = np.einsum("bij,bvj->bvi", rotations, canonical.vertices.numpy().astype(np.float64))
    translations, fitted = fit_translations(rotated, np.stack([r.K for r in requests]), width, height,
                                            np.array([r.fill for r in requests]),
                                            np.array([r.offset for r in requests], np.float64))  # fmt: skip
    translations[~fitted] = 0.0  # a failed sample is dropped: its placement is never used
    reasons = ["" if ok else "camera: could not fit the body in frame" for ok in fitted]
    cam = transform_params(body, params, torch.as_tensor(rotations, dtype=torch.float32),
                           torch.as_tensor(translations, dtype=torch.float32))  # fmt: skip
    timer.lap("camera")
    # 4. the samples
    scores, threshold = pose_scores(config, stages, params["body_pose"])
    diffusion = config.generator in DIFFUSION_GENERATORS
    names = poses.name
    logs = [SampleLog(index=r.index, seed=r.seed, render_seed=r.generator_seed, reason=reasons[b],
                      prompt=prompt_text(pick_line(prompt_lines, r.index), r.seed) if diffusion else "",
                      pose_source=f"{config.poses}:{names[r.pose_index] if names is not None else r.pose_index}")
            for b, r in enumerate(requests)]  # fmt: skip
    if scores is not None:
        for log, score in zip(logs, scores):
            log.scores["prior_score"] = float(score)
            log.scores["hard"] = float(score >= threshold)
    # the label's mesh and joints: the canonical forward moved rigidly (what a forward on the camera
    # parameters gives, to float precision), so the tail runs no second forward
    vertices = (rotated + translations[:, None]).astype(np.float32)
    joints = {name: np.einsum("bij,bkj->bki", rotations, j.numpy().astype(np.float64)) + translations[:, None]
              for name, j in canonical.joints.items()}  # fmt: skip
    placed = PlacedBodies(logs, {k: v.numpy() for k, v in cam.items()}, np.stack([r.K for r in requests]),
                          vertices=vertices, joints=joints)  # fmt: skip
    return logs, placed.take(alive(logs))
