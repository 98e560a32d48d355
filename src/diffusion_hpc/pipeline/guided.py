"""The head of modes T and R: guides -> bodies placed in their start image's camera (DESIGN §2).

    1. start images: T: text-to-image, one per guide; R: the user's images
    2. masks of the start images (person, occluders), split into people
    3. body estimate of each person in the start image's camera
    4. prior score of the estimated poses (-> hard-only filter)
    5. k variants per kept guide: the estimates and k-1 augmented poses of each person
    6. a variant whose people interpenetrate (where the estimates do not) is dropped

Indexing: sample ``index`` is variant ``index % k`` of guide ``index // k``; a guide's start image,
prompt and augmentation come from :func:`~diffusion_hpc.data.seeds.guide_seed`, every sample's
regeneration from :func:`~diffusion_hpc.data.seeds.sample_seed`. A sample's ``unet_evals`` starts
with its share of its guide's start image (guide cost / the guide's number of samples in the run,
so shares add up exactly). The shared tail (:mod:`~diffusion_hpc.pipeline.tail`) takes it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.seeds import augment_seed, guide_seed, sample_seed
from diffusion_hpc.estimate import Estimate
from diffusion_hpc.estimate.base import KeypointReading, keypoints_of, rebase_estimate
from diffusion_hpc.generate.base import GenerationBatch
from diffusion_hpc.geometry.boxes import mask_box, mask_edges
from diffusion_hpc.geometry.scene import VOXEL_M, Occupancy, bounds, solid_occupancy
from diffusion_hpc.pipeline.inputs import GuideImages
from diffusion_hpc.pipeline.requests import pick_line, prompt_text, variant_prompt, variants_in_run
from diffusion_hpc.pipeline.samples import PersonLog, PlacedBodies, SampleLog, StartImages, alive
from diffusion_hpc.pipeline.stages import Stages, StageTimer, pose_bodies
from diffusion_hpc.prior.augment import augment_poses
from diffusion_hpc.segment import Segmentation


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
    """Step 1: mode T makes the start images from text, a batch's guides (``guides_per_batch``) a call;
    mode R reads the user's."""
    seeds = [guide_seed(config.seed, g) for g in guides]
    prompts = [prompt_text(pick_line(prompt_lines, g), s) for g, s in zip(guides, seeds)]
    if config.mode == "T":
        per, size = config.guides_per_batch, tuple(config.image_size)
        results = [stages.start.generate(GenerationBatch(seeds=seeds[i:i + per], prompts=prompts[i:i + per], size=size))
                   for i in range(0, len(guides), per)]  # fmt: skip
        for result in results:
            timer.count_unet(result)
        ran = results[0].ran
        out = Guides(guides, prompts, [f"txt2img:{p}" for p in prompts], np.concatenate([r.images for r in results]),
                     np.concatenate([r.unet_evals for r in results]).astype(np.float64),
                     ran.steps_run if ran else None)  # fmt: skip
    else:
        out = Guides(guides, prompts, [f"guide:{guide_images.path(g).name}" for g in guides],
                     np.stack([guide_images.load(g) for g in guides]), np.zeros(len(guides)), 0)  # fmt: skip
    timer.lap("start")
    return out


def estimate_regions(estimator, images: Sequence[np.ndarray], regions: Sequence[Optional[np.ndarray]]) -> list[Estimate]:
    """The estimator on one person region per image: its mask to an estimator that uses masks, its box
    to one that takes boxes (:attr:`~diffusion_hpc.estimate.base.MeshEstimator.uses_boxes`); a region
    None (or an estimator that takes neither) reads the most prominent person of the whole image.

    Args:
        images: (H, W, 3) uint8; regions: per image an (H, W) bool person mask or None.
    """
    if getattr(estimator, "uses_masks", False):
        return estimator.estimate(list(images), masks=list(regions))
    if getattr(estimator, "uses_boxes", False) and any(r is not None for r in regions):
        return estimator.estimate(list(images), boxes=[None if r is None else mask_box(r) for r in regions])
    return estimator.estimate(list(images))


def read_regions(estimator, images: Sequence[np.ndarray], regions: Sequence[Optional[np.ndarray]],
                 by: str = "estimate", labels: Sequence[np.ndarray] | None = None) -> list[KeypointReading]:
    """Each person's COCO-17 2D keypoints on one person region per image (as :func:`estimate_regions`
    reads them): ``by`` ``"landmarks"``, the estimator's own reading without a body
    (:meth:`~diffusion_hpc.estimate.base.MeshEstimator.read_keypoints`: the MediaPipe detector's
    landmarks, without the fit); ``"label-box"``, the same landmarks read by the landmark model alone
    on the region of each image's label (``labels``: (17, >=2) COCO-17 joints in px, where the person
    should be), without the person detector (``regions`` unused); ``"estimate"``, the keypoints of
    its whole estimate.

    Raises:
        ValueError: ``by`` is ``"landmarks"`` and the estimator cannot read keypoints without an
            estimate (:attr:`~diffusion_hpc.estimate.base.MeshEstimator.reads_keypoints`), or ``by`` is unknown.
    """
    if by == "estimate":
        return keypoints_of(estimate_regions(estimator, images, regions))
    if by not in ("landmarks", "label-box"):
        raise ValueError(f"by must be 'landmarks', 'label-box' or 'estimate', got {by!r}")
    if not getattr(estimator, "reads_keypoints", False):
        raise ValueError(f"verify_by {by}: estimator {getattr(estimator, 'name', estimator)!r} reads keypoints "
                         "only through its estimate; pass verify_by='estimate'")
    if by == "label-box":
        if labels is None:
            raise ValueError("by 'label-box' reads each person on its label's region: pass labels, one (17, 2+) "
                             "COCO-17 array per image")
        return estimator.read_keypoints(list(images), labels=list(labels))
    return estimator.read_keypoints(list(images), masks=list(regions))


def read_label_boxes(model, images: Sequence[np.ndarray], silhouettes: Sequence[np.ndarray],
                     owner: np.ndarray) -> list[KeypointReading]:  # fmt: skip
    """Each person's COCO-17 2D keypoints read by a top-down keypoint model
    (:class:`~diffusion_hpc.estimate.keypoint_model.KeypointModel`) on the box of its label's silhouette,
    as a top-down evaluation reads people on their ground-truth boxes; all people in one call.

    Args:
        images: M (H, W, 3) uint8 images; silhouettes: N (H, W) bool, person n's rendered silhouette in
            image ``owner[n]``. A person with an empty silhouette (wholly out of the image) reads
            "no person found" without the model.
    """
    boxes = [mask_edges(s) for s in silhouettes]
    seen = [n for n, b in enumerate(boxes) if b is not None]
    out = [KeypointReading(False, "the label's silhouette is empty")] * len(boxes)
    if seen:
        read = model.read_on_boxes(list(images), np.stack([boxes[n] for n in seen]), np.asarray(owner)[seen])
        for n, reading in zip(seen, read):
            out[n] = reading
    return out


#: the colour the other people of an image are painted when one person is estimated
OTHERS_GREY = 128


def without_others(image: np.ndarray, instances: np.ndarray, person: int) -> np.ndarray:
    """(H, W, 3) a copy of ``image`` whose pixels of people other than ``person`` (``instances`` (H, W)
    person numbers, -1 none) are :data:`OTHERS_GREY`."""
    out = image.copy()
    out[(instances >= 0) & (instances != person)] = OTHERS_GREY
    return out


def estimate_people(estimator, images: np.ndarray, seg: Segmentation, most: int = 1) -> dict[int, list[Estimate]]:
    """The estimator on every person the segmenter found (the ``most`` largest of each image), in one
    batch; image position -> its people's estimates, in person-number order, all in one camera.

    An image without a person fails its samples whatever the estimator says, so it is not estimated
    (a start image without a person would cost the estimator's detection, or a whole fit when its
    detector sees someone the segmenter did not). Each person is read on its own region:

    - an estimator that uses person masks (the MediaPipe fit) gets the person's mask (its instance;
      the whole person mask when the segmenter does not split people), so landmarks of the others or
      of the background do not drag the body;
    - a regressor that takes boxes (:attr:`~diffusion_hpc.estimate.base.MeshEstimator.uses_boxes`)
      gets the person's box when its image holds several people (labelled or not), and the whole
      image as before when it holds one;
    - any other estimator finds the most prominent person of the whole image: one per image.

    In an image of several people, each person is read on a copy whose other people are painted
    grey (:func:`without_others`), so a detector that looks at the whole image first cannot take
    someone else for the person on the region, and a person's estimate does not depend on how many
    of the others are labelled (``most``).

    The people of one image are then put in the camera of its first (largest) person
    (:func:`~diffusion_hpc.estimate.base.rebase_estimate`: a regressor's focal follows each box).

    Args:
        images: (B, H, W, 3) uint8; seg: the segmenter's output on them; most: people per image at most.
    """
    counts = [min(seg.people(i), most) if seg.person_found[i] else 0 for i in range(len(images))]
    uses_masks = getattr(estimator, "uses_masks", False)
    if not (uses_masks or getattr(estimator, "uses_boxes", False)):
        counts = [min(c, 1) for c in counts]
    jobs = [(i, p) for i, count in enumerate(counts) for p in range(count)]
    if not jobs:
        return {}
    crowded = [seg.people(i) > 1 for i in range(len(images))]  # a person is read without the others, labelled or not
    masks = [seg.person[i] if seg.instances is None else seg.instances[i] == p for i, p in jobs]
    inputs = [without_others(images[i], seg.instances[i], p) if crowded[i] else images[i] for i, p in jobs]
    estimates = estimate_regions(estimator, inputs,
                                 [m if uses_masks or crowded[i] else None for (i, _), m in zip(jobs, masks)])  # fmt: skip
    out: dict[int, list[Estimate]] = {}
    for (i, _), est in zip(jobs, estimates, strict=True):
        out.setdefault(i, []).append(est)
    for i, people in out.items():
        first = next((e for e in people if e.ok), None)
        if first is not None:
            out[i] = [rebase_estimate(e, first.K) if e.ok else e for e in people]
    return out


def score_estimates(prior, estimates: Sequence[Estimate]) -> np.ndarray:
    """(N,) the pose prior's score of each ok estimate's ``body_pose`` (one batch; empty for none)."""
    import torch

    if not estimates:
        return np.zeros(0)
    pose = torch.as_tensor(np.stack([e.params["body_pose"] for e in estimates]), dtype=torch.float32)
    with torch.no_grad():
        return prior.score(pose).numpy()


def guide_reasons(config: GenerateConfig, seg: Segmentation, estimates: dict[int, list[Estimate]]) -> list[str]:
    """Why each start image fails all its samples ("" when it has people to label): no person found,
    none tall enough (``min_person_height``), no estimate, fewer labelled people than ``--people``'s MIN."""
    fewest = config.people_range()[0]
    reasons = []
    for i in range(len(seg.person)):
        people = [e for e in estimates.get(i, []) if e.ok]
        if not seg.person_found[i]:
            reasons.append("segment: no person found")
        elif seg.people(i) == 0:
            reasons.append(f"segment: no person spans {config.min_person_height:.0%} of the image height")
        elif not people:
            reasons.append(f"estimate: {estimates[i][0].reason}")
        elif len(people) < fewest:
            reasons.append(f"estimate: {len(people)} of the people found fitted, --people needs {fewest}")
        else:
            reasons.append("")
    return reasons


def place_guided(config: GenerateConfig, stages: Stages, guide_images: Optional[GuideImages], prompt_lines: list[str],
                 guides: list[int], timer: StageTimer) -> tuple[list[SampleLog], PlacedBodies]:  # fmt: skip
    """Modes T, R: the k variants of each guide of the batch, placed in the start image's camera.

    Every person found in a start image and fitted is labelled (the largest ``--people`` MAX); variant
    v of a guide holds variant v of each of its people, each augmented from its own stream
    (:func:`~diffusion_hpc.data.seeds.augment_seed` of the person), where the estimate put them. A
    sample's ``prior_score``, ``hard`` and ``fit_error_px`` are its people's highest (its hardest pose,
    its worst fit), ``people`` how many it labels; each person keeps its own (``people`` logs).

    Returns:
        the logs of every sample of the batch (a guide without a person, without a fit or with only
        easy poses under ``hard_only`` fails all its samples), and the placed bodies of the others,
        each with its guide's start image and masks.
    """
    cfg, st = config, stages
    k, n = cfg.k, cfg.n
    # 1. start images
    g = start_images(cfg, st, guide_images, prompt_lines, guides, timer)
    # 2. masks of the start images, split into people
    seg = st.segmenter.segment(g.images)
    timer.lap("segment")
    # 3. body estimate of each person in the start image's camera
    estimates = estimate_people(st.estimator, g.images, seg, cfg.people_range()[1])
    timer.lap("estimate")
    # 4. prior score of the estimated poses; optional hard-pose filter (a guide counts when any person is hard)
    reasons = guide_reasons(cfg, seg, estimates)
    people = {i: [e for e in estimates[i] if e.ok] for i, r in enumerate(reasons) if not r}
    flat = iter(score_estimates(st.prior, [e for i in people for e in people[i]]))
    guide_scores = {i: np.array([next(flat) for _ in people[i]]) for i in people}  # each kept guide's people's
    prior_scores = np.array([guide_scores[i].max() if i in guide_scores else np.nan for i in range(len(guides))])
    for i in people:
        if cfg.hard_only and not prior_scores[i] >= st.prior.hard_threshold:
            reasons[i] = "filter: easy pose"
    timer.lap("prior")
    # 5. k variants per kept guide: variant v of each of its people (each person from its own augmentation stream)
    shape_key, threshold = st.body.shape_key, st.prior.hard_threshold
    logs: list[SampleLog] = []
    of_guide: list[int] = []  # the guide (position in the batch) of each placed sample
    params: list[dict] = []  # one per placed person, in sample order
    owner: list[int] = []
    persons: list[PersonLog] = []
    Ks: list[np.ndarray] = []
    for i, guide in enumerate(guides):
        count = variants_in_run(guide, k, n)
        variants = []
        if not reasons[i]:
            variants = [augment_poses(st.prior, e.params["body_pose"][None], e.params["global_orient"][None],
                                      e.params[shape_key][None], k=k, generator=augment_seed(cfg.seed, guide, p),
                                      body_model=cfg.body_model) for p, e in enumerate(people[i])]  # fmt: skip
        for v in range(count):
            index = guide * k + v
            log = SampleLog(index=index, seed=sample_seed(cfg.seed, index),
                            prompt=variant_prompt(pick_line(prompt_lines, guide), cfg.seed, index),
                            pose_source=f"{g.sources[i]}#variant{v}", unet_evals=float(g.unet_evals[i] / max(count, 1)),
                            reason=reasons[i], txt2img_steps_run=g.steps_run)  # fmt: skip
            log.scores["guide_prior_score"] = float(prior_scores[i])  # the estimates' (the hard-only filter's)
            if not variants:  # a dropped guide: its estimates' score (NaN when there was none), flagged when known
                log.scores["prior_score"] = float(prior_scores[i])
                if not np.isnan(prior_scores[i]):
                    log.scores["hard"] = float(prior_scores[i] >= threshold)
                logs.append(log)
                continue
            several = len(variants) > 1
            for p, (est, var) in enumerate(zip(people[i], variants)):
                persons.append(PersonLog(f"{log.pose_source}#person{p}" if several else log.pose_source,
                                         {"prior_score": float(var.scores[0, v]), "hard": float(var.hard[0, v]),
                                          "fit_error_px": float(est.fit_error_px)}))  # fmt: skip
                params.append({"global_orient": var.global_orient[0, v], "body_pose": var.body_pose[0, v],
                               shape_key: var.shape[0, v], "transl": np.asarray(est.params["transl"], np.float32)})
                owner.append(len(of_guide))
            # the sample's: its hardest pose, its worst fit
            mine = persons[len(persons) - len(variants):]
            for key in ("prior_score", "hard", "fit_error_px"):
                log.scores[key] = max(person.scores[key] for person in mine)
            log.scores.update(people=len(variants), people_found=seg.people(i))
            Ks.append(np.asarray(people[i][0].K, np.float64))
            of_guide.append(i)
            logs.append(log)
    kept = [logs[r] for r in alive(logs)]
    starts = StartImages(g.images, seg.person, seg.occluders).take(of_guide)
    stacked = {key: np.stack([q[key] for q in params]) for key in params[0]} if params else {}
    bodies = PlacedBodies(kept, stacked, np.stack(Ks) if Ks else np.zeros((0, 3, 3)), starts,
                          owner=np.array(owner, np.int64), people=persons)  # fmt: skip
    # 6. a variant whose people interpenetrate where its guide's estimates do not is dropped (the
    #    meshes this needs are the label's: the tail does not pose the bodies again)
    if (np.bincount(bodies.owners, minlength=len(bodies)) > 1).any():
        bodies.vertices, bodies.joints = pose_bodies(st, stacked)
        drop_interpenetrating(bodies, of_guide, st.faces)
    timer.lap("augment")
    return logs, bodies.take(alive(bodies.logs))


def split_by_batches(logs: list[SampleLog], bodies: PlacedBodies, timer: StageTimer, batches: Sequence[Sequence[int]],
                     k: int) -> list[tuple[list[SampleLog], PlacedBodies, StageTimer]]:  # fmt: skip
    """The head of several batches (:func:`place_guided` of their guides together), batch by batch: each
    batch's sample logs, placed bodies and a clock holding its share of the head's time (by samples).

    Args:
        logs, bodies, timer: :func:`place_guided`'s output for the guides of ``batches``, and its clock.
        batches: each batch's guides, in order; ``k``: samples per guide (sample ``i`` is of guide ``i // k``).
    """
    out = []
    for guides in batches:
        mine = set(guides)
        batch_logs = [log for log in logs if log.index // k in mine]
        rows = [r for r, log in enumerate(bodies.logs) if log.index // k in mine]
        out.append((batch_logs, bodies.take(rows), timer.share(len(batch_logs) / max(len(logs), 1))))
    return out


#: how far past its vertices' box a person's voxelised solid may reach (quantisation and the one-voxel
#: dilation reach two voxels; one more for rounding): meshes whose boxes are further apart cannot meet
SOLID_REACH_M = 3 * VOXEL_M


def interpenetrating(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether any two of P meshes (P, V, 3) interpenetrate: a vertex of one in the voxelised solid of
    another (:func:`~diffusion_hpc.geometry.scene.solid_occupancy`, the test mode D places people with).

    A pair whose boxes lie more than :data:`SOLID_REACH_M` apart cannot touch, so it is decided without
    voxelising (as mode D's placement prefilters its draws); a solid is built only for a pair that may
    meet. Same answer as testing every pair."""
    lo, hi = bounds(vertices)  # (P, 3) each
    solids: dict[int, Occupancy] = {}
    for p in range(len(vertices)):
        for q in range(p + 1, len(vertices)):
            if (lo[q] > hi[p] + SOLID_REACH_M).any() or (hi[q] < lo[p] - SOLID_REACH_M).any():
                continue
            if p not in solids:
                solids[p] = solid_occupancy(vertices[p], faces)
            if solids[p].contains(vertices[q]).any():
                return True
    return False


def drop_interpenetrating(bodies: PlacedBodies, of_guide: list[int], faces: np.ndarray) -> None:
    """Fail (``reason``) each sample of ``bodies`` (posed: ``vertices`` set) holding several people that
    interpenetrate while the estimates of its guide (variant 0, the sample ``of_guide`` meets first) do
    not: the augmentation turned or bent someone into a neighbour. Estimates that touch (people in
    contact) are kept."""
    owner = bodies.owners
    crowded = np.bincount(owner, minlength=len(bodies)) > 1
    first: dict[int, bool] = {}  # guide -> its estimates interpenetrate
    for b in np.flatnonzero(crowded):
        collides = interpenetrating(bodies.vertices[owner == b], np.asarray(faces))
        guide = of_guide[b]
        if guide not in first:  # variant 0: the guide's estimates
            first[guide] = collides
        elif collides and not first[guide]:
            bodies.logs[b].reason = "augment: the variant's people interpenetrate"
