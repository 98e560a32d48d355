"""Mode D's head: body poses -> bodies placed in their camera (DESIGN §2, mode D).

    1. requests: every sample's pose, shape, camera and seeds, from (run seed, index) alone; with
       ``--people``, the other people of its scene from the sample's people stream
    2. body forward in the canonical frame (every person of the batch at once)
    3. camera placement (the whole batch at once): a one-person sample's orientation comes from its
       request, depth and offset so the body fits the image; a scene of several people stands them on
       one ground plane without interpenetrating (:func:`~diffusion_hpc.geometry.scene.compose_scene`:
       seeded spots on a ground area that grows with the scene's people, redraws on collision, a
       person with no free spot left out) and one camera frames the group
    4. the samples: logs (prompt, pose sources, prior scores, placement draws) and the placed
       bodies, with their meshes and joints in the camera (the canonical forward moved rigidly: the
       tail needs no second forward)

The shared tail (:mod:`~diffusion_hpc.pipeline.tail`) takes it from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion_hpc.body import transform_params
from diffusion_hpc.body.scene import upright_rotations
from diffusion_hpc.config import DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.geometry.camera import fit_translations, rotate_points
from diffusion_hpc.geometry.scene import compose_scene, group_layout
from diffusion_hpc.pipeline.requests import SampleRequest, make_request, pick_line, prompt_text
from diffusion_hpc.pipeline.samples import PersonLog, PlacedBodies, SampleLog, alive, by_sample
from diffusion_hpc.pipeline.stages import Stages, StageTimer
from diffusion_hpc.poses import BUILTIN_SETS


def _shape(config: GenerateConfig, poses, pose_index: int, drawn: np.ndarray) -> np.ndarray:
    """The body shape of a person: the pose file's own (phenotype for Anny, betas for SMPL), else drawn."""
    if poses.phenotype is not None and config.body_model == "anny":
        return np.asarray(poses.phenotype[pose_index], np.float32)
    if getattr(poses, "betas", None) is not None and config.body_model != "anny":
        return np.asarray(poses.betas[pose_index], np.float32)
    return drawn


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


def _people_of(requests: list[SampleRequest]) -> tuple[np.ndarray, list, list, np.ndarray]:
    """Every person of the batch in sample order: owner (N,), pose rows, drawn shapes, yaws (N,)."""
    owner = np.repeat(np.arange(len(requests)), [r.people for r in requests])
    rows = [row for r in requests for row in [r.pose_index] + [o.pose_index for o in r.others]]
    shapes = [shape for r in requests for shape in [r.shape] + [o.shape for o in r.others]]
    yaws = np.array([yaw for r in requests for yaw in [r.yaw] + [o.yaw for o in r.others]], np.float64)
    return owner, rows, shapes, yaws


@dataclass
class Placement:
    """Where the N persons of a batch of B samples stand (mode D step 3).

    Attributes:
        rotations: (N, 3, 3) canonical frame -> camera orientation; translations: (N, 3), so a
            person's camera-frame points are ``rotations @ x + translations`` of its canonical forward.
        vertices: (N, V, 3) float32 and joints: name -> (N, J, 3) float64, camera frame.
        placed: (N,) bool, False for a person left out of a crowded scene (no free spot).
        fitted: (B,) bool, the sample's body or group fits the image.
        draws, rejected: (B,) placement draws per sample and those rejected for interpenetration
            (a lone person: one draw, none rejected).
    """

    rotations: np.ndarray
    translations: np.ndarray
    vertices: np.ndarray
    joints: dict[str, np.ndarray]
    placed: np.ndarray
    fitted: np.ndarray
    draws: np.ndarray
    rejected: np.ndarray


def place_people(stages: Stages, requests: list[SampleRequest], owner: np.ndarray, yaws: np.ndarray, canonical,
                 width: int, height: int) -> Placement:  # fmt: skip
    """Step 3 of mode D: every person of the batch in its camera. A sample's own person is oriented as its
    request says (``rotation``), the other people of its scene turned by their yaws in its ``view``.

    A one-person sample is fitted into the image alone (:func:`fit_translations`: its ``fill`` and
    ``offset``); a scene of several people is stood on one ground plane at seeded spots without
    interpenetration, on a ground area that grows with its people count
    (:func:`~diffusion_hpc.geometry.scene.group_layout`: the same area per person for 2, 3 or 4), and
    framed as a group (:func:`~diffusion_hpc.geometry.scene.compose_scene`). The
    meshes and joints are the canonical forward moved rigidly (what a forward on the camera parameters
    gives, to float precision), so the tail runs no second forward.

    Args:
        owner: (N,) each person's sample (sorted; a sample's own person first); yaws: (N,) radians;
        canonical: the body model's output on every person in the canonical frame.
    """
    B = len(requests)
    first = np.searchsorted(owner, np.arange(B))  # (B,) each sample's own person
    K = np.stack([r.K for r in requests])
    fill, offset = np.array([r.fill for r in requests]), np.array([r.offset for r in requests], np.float64)
    turns = upright_rotations(stages.canonical_to_camera, yaws)  # (N, 3, 3) canonical -> upright group frame
    rotations = np.stack([requests[b].rotation if n == first[b] else requests[b].view @ turns[n]
                          for n, b in enumerate(owner)])  # fmt: skip
    verts = canonical.vertices.numpy().astype(np.float64)
    joints = {name: j.numpy().astype(np.float64) for name, j in canonical.joints.items()}
    out = Placement(rotations, np.zeros((len(owner), 3)), np.zeros(verts.shape, np.float32),
                    {name: np.zeros(j.shape) for name, j in joints.items()}, np.ones(len(owner), bool),
                    np.zeros(B, bool), np.ones(B, np.int64), np.zeros(B, np.int64))  # fmt: skip
    alone = np.flatnonzero([r.people == 1 for r in requests])
    if len(alone):
        rows = first[alone]
        rotated = rotate_points(rotations[rows], verts[rows])
        t, out.fitted[alone] = fit_translations(rotated, K[alone], width, height, fill[alone], offset[alone])
        t[~out.fitted[alone]] = 0.0  # a failed sample is dropped: its placement is never used
        out.translations[rows] = t
        out.vertices[rows] = rotated + t[:, None]
        for name, j in joints.items():
            out.joints[name][rows] = rotate_points(rotations[rows], j[rows]) + t[:, None]
    groups = np.flatnonzero([r.people > 1 for r in requests])
    if len(groups):
        members = np.flatnonzero(np.isin(owner, groups))  # persons of the group scenes, in sample order
        scene_of = np.searchsorted(groups, owner[members])
        upright = lambda x: by_sample(rotate_points(turns[members], x[members]), scene_of, len(groups))  # noqa: E731
        vertices, present, slot = upright(verts)
        views = np.stack([requests[b].view for b in groups])
        scene = compose_scene(vertices, {name: upright(j)[0] for name, j in joints.items()}, stages.faces,
                              [np.random.default_rng(requests[b].layout_seed) for b in groups], views, K[groups],
                              width, height, fill[groups], offset[groups], present,
                              **group_layout(present.sum(1)))  # fmt: skip
        out.fitted[groups] = scene.ok
        out.draws[groups], out.rejected[groups] = scene.placement.draws, scene.placement.rejected
        # a person's point x goes to view @ (turn @ x + stand) + camera: rotation view @ turn, translation below
        stand = scene.placement.translations[scene_of, slot]  # (M, 3) in the group frame
        out.translations[members] = np.einsum("nij,nj->ni", views[scene_of], stand) + scene.translation[scene_of]
        out.vertices[members] = scene.vertices[scene_of, slot]
        for name in joints:
            out.joints[name][members] = scene.joints[name][scene_of, slot]
        out.placed[members] = scene.people[scene_of, slot]
    return out


def place_bodies(config: GenerateConfig, stages: Stages, poses, prompt_lines: list[str], indices: range,
                 timer: StageTimer) -> tuple[list[SampleLog], PlacedBodies]:  # fmt: skip
    """Mode D: the samples ``indices`` placed in their camera.

    Returns:
        the logs of every sample of the batch, and the placed bodies of those not rejected (a body or
        group that cannot be fitted into the image fails with reason ``camera: ...``). A multi-person
        run (``--people`` above 1) hands on every placed person with its sample (``owner``), its pose
        source and prior score (``people``); a one-person run one body per sample, as before.
    """
    body = stages.body
    height, width = config.image_size
    multi = config.people_range()[1] > 1
    # 1. requests
    sampler = lambda rng: body.sample_shape(rng, age_years=config.shape.age_years)  # noqa: E731
    requests = [make_request(config, i, len(poses), sampler, stages.canonical_to_camera) for i in indices]
    owner, pose_rows, drawn, yaws = _people_of(requests)
    # 2. body forward in the canonical frame
    params = {
        "global_orient": torch.as_tensor(np.stack([poses.global_orient[i] for i in pose_rows]), dtype=torch.float32),
        "body_pose": torch.as_tensor(np.stack([poses.body_pose[i] for i in pose_rows]), dtype=torch.float32),
        body.shape_key: torch.as_tensor(np.stack([_shape(config, poses, i, d) for i, d in zip(pose_rows, drawn)]),
                                        dtype=torch.float32),
        "transl": torch.zeros(len(pose_rows), 3),
    }  # fmt: skip
    with torch.no_grad():
        canonical = body(params)
    timer.lap("body")
    # 3. camera placement: one person -> fit_translations; several -> ground plane, overlap test, group camera
    where = place_people(stages, requests, owner, yaws, canonical, width, height)
    reasons = ["" if ok else f"camera: could not fit the {'body' if r.people == 1 else 'group'} in frame"
               for ok, r in zip(where.fitted, requests)]  # fmt: skip
    keep = np.flatnonzero(where.placed)
    params = {k: v[keep] for k, v in params.items()}
    cam = transform_params(body, params, torch.as_tensor(where.rotations[keep], dtype=torch.float32),
                           torch.as_tensor(where.translations[keep], dtype=torch.float32))  # fmt: skip
    timer.lap("camera")
    # 4. the samples
    owner, pose_rows = owner[keep], [pose_rows[n] for n in keep]
    scores, threshold = pose_scores(config, stages, params["body_pose"])
    diffusion = config.generator in DIFFUSION_GENERATORS
    names = poses.name
    source = lambda row: f"{config.poses}:{names[row] if names is not None else row}"  # noqa: E731
    logs = [SampleLog(index=r.index, seed=r.seed, render_seed=r.generator_seed, reason=reasons[b],
                      prompt=prompt_text(pick_line(prompt_lines, r.index), r.seed) if diffusion else "",
                      pose_source=source(r.pose_index))
            for b, r in enumerate(requests)]  # fmt: skip
    people = [PersonLog(source(row)) for row in pose_rows] if multi else None
    if scores is not None:
        for n, score in enumerate(scores):
            person = {"prior_score": float(score), "hard": float(score >= threshold)}
            if people is not None:
                people[n].scores.update(person)
            sample = logs[owner[n]].scores  # the image's: its hardest pose
            sample.update({k: max(v, sample.get(k, v)) for k, v in person.items()})
    if multi:
        counts = np.bincount(owner, minlength=len(requests))
        for b, log in enumerate(logs):
            log.scores.update(people=int(counts[b]), placement_draws=int(where.draws[b]),
                              rejected_draws=int(where.rejected[b]))  # fmt: skip
    bodies = PlacedBodies(logs, {k: v.numpy() for k, v in cam.items()}, np.stack([r.K for r in requests]),
                          vertices=where.vertices[keep], joints={name: j[keep] for name, j in where.joints.items()},
                          owner=owner if multi else None, people=people)  # fmt: skip
    return logs, bodies.take(alive(logs))
