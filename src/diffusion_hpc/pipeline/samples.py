"""What the stages of a batch hand to each other: one small typed output per stage.

A batch's samples travel as :class:`SampleLog` entries (who each sample is, why it failed, what it
cost and scored, what ran), one per sample index, whatever becomes of it. The data of the
samples still alive travels batch first, aligned with their logs:

    mode head  -> PlacedBodies  bodies in their camera (+ StartImages in modes T, R)
    label      -> Labels        the mesh rendered in its camera: the label (renders included)
    generator  -> Generated     the image made for each label
    verify     -> Verification  re-estimate and person mask of each final image

``take(rows)`` keeps the samples at ``rows`` (positions in the batch), so a stage that rejects
samples hands on the survivors only; their logs keep the reason. A ``take`` that keeps every sample
returns the same object: a batch's render buffers are never copied when nothing was dropped.

Persons: a sample may hold several people (mode D ``--people``). Per-person data (body parameters,
meshes, joints, keypoints) travels flattened, N persons in sample order, with ``owner`` (N,) the
batch position of each person's sample; ``owner`` None means one person per sample (person i is
sample i's), as in modes T, R, cycles and one-person mode D. Per-sample data (K, start images,
renders, images) stays batch first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from diffusion_hpc.render.base import RenderOutput


@dataclass
class SampleLog:
    """One sample index on its way through a batch; its manifest row is written from it.

    Attributes:
        index: sample index in the run; seed: its seed (diffusion stages draw from it).
        prompt: the prompt of its image ("" for the render baseline).
        pose_source: where its pose comes from (pose file entry, guide image, txt2img prompt + variant).
        render_seed: the render baseline's seed (mode D).
        reason: why the sample failed ("" while it is alive).
        scores: per-sample scores (prior score, fit error, verification, ...).
        unet_evals: UNet evaluations spent on it (its share of its guide's start image included).
        controlnet_evals: ControlNet evaluations spent on it.
        txt2img_steps_run: denoising steps of its start image (mode T; None when the start
            generator does not say).
        steps_run: denoising steps of its last regeneration (0: not regenerated).
        regenerations: how many times it was regenerated (1 + the cycles it reached).
        blur_radius: radius of the blur augmentation of its last regeneration (0: no blur).
    """

    index: int
    seed: int
    prompt: str = ""
    pose_source: str = ""
    render_seed: int = 0
    reason: str = ""
    scores: dict = field(default_factory=dict)
    unet_evals: float = 0.0
    controlnet_evals: int = 0
    txt2img_steps_run: Optional[int] = 0
    steps_run: int = 0
    regenerations: int = 0
    blur_radius: float = 0.0


def alive(logs: Sequence[SampleLog]) -> list[int]:
    """Positions of the samples that have not failed."""
    return [i for i, log in enumerate(logs) if not log.reason]


def everyone(rows: Sequence[int], count: int) -> bool:
    """True when ``rows`` are all ``count`` positions in order (a ``take`` that keeps everything)."""
    return list(rows) == list(range(count))


def _take_dict(values: dict[str, np.ndarray], rows: Sequence[int]) -> dict[str, np.ndarray]:
    return {k: v[list(rows)] for k, v in values.items()}


@dataclass
class PersonLog:
    """One person of a multi-person sample: where its pose comes from and its scores (prior score, ...)."""

    pose_source: str = ""
    scores: dict = field(default_factory=dict)


def owner_rows(owner: Optional[np.ndarray], count: int) -> np.ndarray:
    """(N,) batch position of each person's sample (``owner``; None: one person per sample of ``count``)."""
    return np.arange(count) if owner is None else np.asarray(owner, np.int64)


def slots_of(owner: np.ndarray) -> np.ndarray:
    """(N,) each person's number in its sample, from ``owner`` (N,) sorted sample positions."""
    owner = np.asarray(owner, np.int64)
    return np.arange(len(owner)) - np.searchsorted(owner, owner)


def by_sample(values: np.ndarray, owner: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Persons laid out per sample: (count, P, ...) ``values`` (N, ...) of the persons of ``count``
    samples (``owner`` (N,) sorted sample positions), zero-padded to the widest sample's P; present
    (count, P) bool; slot (N,) each person's number in its sample."""
    owner = np.asarray(owner, np.int64)
    slot = slots_of(owner)
    width = int(slot.max()) + 1 if len(slot) else 1
    out = np.zeros((count, width) + values.shape[1:], values.dtype)
    out[owner, slot] = values
    present = np.zeros((count, width), bool)
    present[owner, slot] = True
    return out, present, slot


def persons_of_rows(owner: Optional[np.ndarray], rows: Sequence[int]) -> tuple[list[int], Optional[np.ndarray]]:
    """The persons of the samples at ``rows`` (their positions, in sample order) and their owners
    after the take (positions in ``rows``); ``owner`` None (one person per sample): (rows, None)."""
    rows = list(rows)
    if owner is None:
        return rows, None
    where = {r: i for i, r in enumerate(rows)}
    keep = sorted((n for n in range(len(owner)) if int(owner[n]) in where), key=lambda n: (where[int(owner[n])], n))
    return keep, np.array([where[int(owner[n])] for n in keep], np.int64)


@dataclass
class StartImages:
    """The start images of B samples and their masks (modes T, R; a cycle's output images).

    Attributes:
        images: (B, H, W, 3) uint8; person: (B, H, W) bool person mask (segmenter);
        occluders: (B, H, W) bool non-person objects in front of the person.
    """

    images: np.ndarray
    person: np.ndarray
    occluders: np.ndarray

    def take(self, rows: Sequence[int]) -> "StartImages":
        rows = list(rows)
        return StartImages(self.images[rows], self.person[rows], self.occluders[rows])


@dataclass
class PlacedBodies:
    """Bodies placed in their camera: what every mode's head hands to the shared tail.

    Attributes:
        logs: the B samples.
        params: body-model parameters in the camera frame, (N, ...) each: one row per person.
        K: (B, 3, 3) float64 intrinsics of each sample (pixels of the saved image).
        start: the start images (modes T, R; cycles); None when the image starts from noise or
            from the render (mode D).
        vertices, joints: the body model's output on ``params`` when the head has it already (mode D:
            its canonical forward moved rigidly into the camera; (N, V, 3) float32 and joint-set
            name -> (N, J, 3) float64), so the label needs no second forward; else None.
        owner: (N,) int batch position of each person's sample (persons in sample order); None: one
            person per sample (N = B).
        people: (N) each person's pose source and scores when a sample holds several (mode D
            ``--people``); None: a person's are its sample's (``logs``).
    """

    logs: list[SampleLog]
    params: dict[str, np.ndarray]
    K: np.ndarray
    start: Optional[StartImages] = None
    vertices: Optional[np.ndarray] = None
    joints: Optional[dict[str, np.ndarray]] = None
    owner: Optional[np.ndarray] = None
    people: Optional[list[PersonLog]] = None

    def __len__(self) -> int:
        return len(self.logs)

    @property
    def owners(self) -> np.ndarray:
        """(N,) batch position of each person's sample."""
        return owner_rows(self.owner, len(self.logs))

    def take(self, rows: Sequence[int]) -> "PlacedBodies":
        rows = list(rows)
        persons, owner = persons_of_rows(self.owner, rows)
        return PlacedBodies([self.logs[i] for i in rows], _take_dict(self.params, persons), self.K[rows],
                            None if self.start is None else self.start.take(rows),
                            None if self.vertices is None else self.vertices[persons],
                            None if self.joints is None else _take_dict(self.joints, persons), owner,
                            None if self.people is None else [self.people[n] for n in persons])  # fmt: skip


@dataclass
class Labels:
    """The label of B samples: their placed bodies' meshes, rendered together in their camera.

    Attributes:
        bodies: the placed bodies (``params`` as the body model ran them: float32).
        joints3d: joint-set name -> (N, J, 3) float64 camera-frame joints in metres, per person.
        keypoints2d: (N, 17, 3) COCO-17 u, v pixels and visibility (0 out, 1 hidden by any body, 2
            visible), per person.
        render: the render of each sample's people (depth = nearest surface, mask = union, face ids
            into the combined mesh, ``instance`` person per pixel: the sample's own person number,
            -1 background), (B, ...).
        visible_fraction: (N,) share of each person's own silhouette visible in ``instance``.
        slots: people per combined mesh of ``render`` (its face ids run over ``slots`` x F faces).
    """

    bodies: PlacedBodies
    joints3d: dict[str, np.ndarray]
    keypoints2d: np.ndarray
    render: RenderOutput
    visible_fraction: Optional[np.ndarray] = None
    slots: int = 1

    @property
    def logs(self) -> list[SampleLog]:
        return self.bodies.logs

    def __len__(self) -> int:
        return len(self.bodies)

    def take(self, rows: Sequence[int]) -> "Labels":
        rows = list(rows)
        if everyone(rows, len(self)):  # nobody dropped: the same buffers, no copy of the renders
            return self
        persons, _ = persons_of_rows(self.bodies.owner, rows)
        fraction = None if self.visible_fraction is None else self.visible_fraction[persons]
        return Labels(self.bodies.take(rows), _take_dict(self.joints3d, persons), self.keypoints2d[persons],
                      self.render.take(rows), fraction, self.slots)  # fmt: skip


@dataclass
class Generated:
    """B labelled samples and the image the generator made for each.

    Attributes:
        labels: the labels the images were made for.
        images: (B, H, W, 3) uint8.
    """

    labels: Labels
    images: np.ndarray

    @property
    def logs(self) -> list[SampleLog]:
        return self.labels.logs

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: Sequence[int]) -> "Generated":
        rows = list(rows)
        if everyone(rows, len(self)):
            return self
        return Generated(self.labels.take(rows), self.images[rows])


@dataclass
class Verification:
    """Label verification of B final images (DESIGN §6).

    Attributes:
        pck_agreement: (B,) PCK of the re-estimated keypoints against the label's (NaN: no
            visible label keypoint).
        mask_iou: (B,) IoU of the final image's person mask and the label silhouette.
        person_found: (B,) bool, the estimator found a person in the final image.
        image_masks: (B, H, W) bool person masks of the final images (segmenter).
    """

    pck_agreement: np.ndarray
    mask_iou: np.ndarray
    person_found: np.ndarray
    image_masks: np.ndarray
