"""Generation quality (DESIGN §2): FID / KID, human-only H-FID / H-KID, and manifest statistics.

Conventions (clean-fid's "clean" mode with pytorch-fid's network and normalisation):

- images are (H, W, 3) uint8 RGB; each channel is resized to 299 x 299 with PIL bicubic on float32
  (no re-quantisation), clipped to [0, 255], divided by 255 and fed to the FID Inception-v3
  (:mod:`diffusion_hpc.eval.inception`, ``2 x - 1`` inside), giving (N, 2048) pool3 features;
- FID: Fréchet distance of the feature Gaussians, ``scipy.linalg.sqrtm`` with pytorch-fid's
  numerics (eps offset if the root is not finite, imaginary residue up to 1e-3 dropped);
- KID: unbiased MMD² with the cubic polynomial kernel ``(x·y / d + 1)^3`` over ``subsets`` random
  subsets of ``min(subset_size, n_real, n_gen)`` samples each (without replacement, seeded); mean,
  std over subsets and the sample counts are reported, since small sets give noisy or negative KID;
- H-FID / H-KID: the same on images whose non-person pixels are set to 0 *before* resizing;
  datasets use their stored masks, image folders the segmenter (``make_segmenter``). Images where
  the segmenter finds no person are left out of the H-metrics (their count is reported).

Multi-person datasets (schema v2): the image metrics are image-level (H-metrics keep the union of all
persons); the report's ``persons`` section (:func:`person_stats`) is per person: people per image,
occluded share, each person's scores (``prior_score`` and the hard share, ``mask_area``,
``visible_keypoints``, ...) and its ``visible_fraction``. The manifest's ``scores`` stay per image (in
a multi-person run ``prior_score`` is the image's hardest person's).

Sources are a Diffusion-HPC dataset directory (has ``config.yaml``) or a folder of images (png,
jpg, jpeg, bmp, webp, tif, tiff; searched recursively, sorted by path; other files are ignored).
Image folders are checked up front (:func:`check_source`): before the Inception network loads,
every image file a folder source will read (the first ``limit``) passes
:func:`~diffusion_hpc.runtime.images.check_image_file`; a corrupt, truncated, oversized or
non-image file (an image suffix on something else) is refused with one line naming it, never
skipped. Importing this module imports neither torch nor PIL; they load on first use.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from diffusion_hpc.config.quality import QualityConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.eval.inception import find_weights, load_inception
from diffusion_hpc.eval.report import write_report
from diffusion_hpc.prior import get_prior
from diffusion_hpc.prior.vposer import HARD_THRESHOLD as VPOSER_HARD_THRESHOLD
from diffusion_hpc.runtime.device import resolve_placement
from diffusion_hpc.runtime.images import check_image_file, image_files, load_image
from diffusion_hpc.segment import make_segmenter

INPUT_SIZE = 299
THUMB = 96  # sample-grid thumbnail side, pixels


# --------------------------------------------------------------------------------------------
# images


def resize_clean(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid resize: (H, W, 3) uint8 -> (size, size, 3) float32 in [0, 255].

    Each channel goes through PIL bicubic resampling in float mode ('F'), no quantisation after.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    out = np.empty((size, size, 3), np.float32)
    for c in range(3):
        channel = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
        out[:, :, c] = np.asarray(channel.resize((size, size), resample=Image.BICUBIC), np.float32)
    return np.clip(out, 0.0, 255.0, out=out)


def mask_background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8, (H, W) bool -> copy of ``image`` with non-person pixels set to 0."""
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    return np.where(mask[..., None], image, np.uint8(0)).astype(np.uint8)


def _thumb(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side', 3) uint8 thumbnail keeping the aspect ratio (height = side)."""
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * side / h)), side), Image.BILINEAR))


# --------------------------------------------------------------------------------------------
# sources


def source_kind(path: str | os.PathLike) -> str:
    """``"dataset"`` (a dir with ``config.yaml``) or ``"folder"`` (a dir of images); ``InputError`` otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; pass a Diffusion-HPC dataset directory or a folder of images")
    if not p.is_dir():
        raise InputError(f"{p} is a file; pass a Diffusion-HPC dataset directory or a folder of images")
    if (p / "config.yaml").is_file():
        return "dataset"
    return "folder"


def check_source(path: str | os.PathLike, what: str, limit: Optional[int] = None) -> str:
    """The kind of source ``path`` is (:func:`source_kind`), after checking, for an image folder, every
    image file it will read (the first ``limit``, in :func:`iter_source`'s order) without decoding
    (:func:`~diffusion_hpc.runtime.images.check_image_file`: header, pixel limit, truncation).

    Args:
        what: how errors name the source's files (e.g. ``"--real image"``).

    Raises:
        InputError: ``path`` is no source, or one of its image files is corrupt, truncated, too large
            or not an image; the message names the file.
    """
    kind = source_kind(path)
    if kind == "folder":
        for f in image_files(path, recursive=True, what=f"{what} folder")[:limit]:
            check_image_file(f, what)
    return kind


def person_scores(sample: dict) -> list[dict]:
    """One ``{"scores", "visible_fraction"}`` per person of a decoded sample
    (:func:`~diffusion_hpc.data.schema.persons_of`). A lone person without scores of its own
    (schema v1, a one-person run) has the sample's; ``visible_fraction`` defaults to 1.0."""
    people = persons_of(sample)
    image_scores = sample.get("scores") or {}
    return [{"scores": dict(p.get("scores") or (image_scores if len(people) == 1 else {})),
             "visible_fraction": float(p.get("visible_fraction", 1.0))} for p in people]


def iter_source(path: str | os.PathLike, limit: Optional[int] = None
                ) -> Iterator[tuple[str, np.ndarray, Optional[np.ndarray], Optional[list[dict]]]]:
    """(key, image (H, W, 3) uint8, mask (H, W) bool or None, persons or None) of a dataset or image
    folder, at most ``limit``. A dataset sample's mask is the union of its persons; ``persons`` is
    its :func:`person_scores` (None for image folders)."""
    kind = source_kind(path)
    count = 0
    if kind == "dataset":
        for sample in open_dataset(path):
            if limit is not None and count >= limit:
                return
            yield str(sample.get("key", count)), sample["image"], np.asarray(sample["mask"], bool), person_scores(sample)
            count += 1
    else:
        for f in image_files(path, recursive=True, what="real image folder"):
            if limit is not None and count >= limit:
                return
            yield str(f.relative_to(path)), load_image(f), None, None
            count += 1


@dataclass
class SourceFeatures:
    """Features of one image source.

    Attributes:
        name, path, kind: label, directory, ``"dataset"`` or ``"folder"``.
        features: (N, 2048) float64 whole-image features.
        human: (M, 2048) float64 human-only features (M <= N; None unless requested).
        no_person: images left out of ``human`` because the segmenter found no person.
        mask_source: ``"dataset"`` (stored masks), the segmenter's name, or ``""``.
        samples: up to a few (thumbnail, human-only thumbnail or None) pairs for the sample grid.
        manifest: the dataset's manifest rows (None for folders); config: its config dict;
        prior: its run.json's record of the pose prior that scored it (None when not recorded).
        persons: per image read, its :func:`person_scores` (None for folders).
    """

    name: str
    path: str
    kind: str
    features: np.ndarray
    human: Optional[np.ndarray] = None
    no_person: int = 0
    mask_source: str = ""
    samples: list = field(default_factory=list)
    manifest: Optional[list] = None
    config: Optional[dict] = None
    prior: Optional[dict] = None
    persons: Optional[list] = None

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_human(self) -> int:
        return 0 if self.human is None else int(self.human.shape[0])


class _Batcher:
    """Accumulates resized images; runs the network every ``batch_size`` images."""

    def __init__(self, model, batch_size: int) -> None:
        self.model, self.batch_size = model, max(1, int(batch_size))
        self.pending: list[np.ndarray] = []
        self.out: list[np.ndarray] = []

    def add(self, resized: np.ndarray) -> None:
        self.pending.append(resized)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.out.append(features_of_resized(self.model, np.stack(self.pending)))
            self.pending = []

    def result(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.out) if self.out else np.zeros((0, 2048))


def features_of_resized(model, batch: np.ndarray) -> np.ndarray:
    """(B, 299, 299, 3) float32 in [0, 255] -> (B, 2048) float64 features of ``model``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).permute(0, 3, 1, 2) / 255.0
    weight = next(model.parameters())
    with torch.inference_mode():
        return model(x.to(device=weight.device, dtype=weight.dtype)).double().cpu().numpy()


def image_features(model, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """(N, 2048) float64 features of (H, W, 3) uint8 images (clean-fid resize, batched)."""
    batcher = _Batcher(model, batch_size)
    for image in images:
        batcher.add(resize_clean(image))
    return batcher.result()


def _as_segmenter(segmenter):
    if segmenter is None or isinstance(segmenter, str):
        return make_segmenter(segmenter or "mediapipe")
    if not hasattr(segmenter, "segment"):
        raise TypeError(f"segmenter must be a spec string or have .segment(images), got {type(segmenter).__name__}")
    return segmenter


def source_features(
    path: str | os.PathLike,
    model,
    *,
    human_only: bool = True,
    segmenter=None,
    limit: Optional[int] = None,
    batch_size: int = 32,
    n_samples: int = 8,
    name: Optional[str] = None,
) -> SourceFeatures:
    """Whole-image (and human-only) features of a dataset or image folder, in one streaming pass.

    Datasets use their stored masks; folders are segmented with ``segmenter`` (a spec for
    :func:`~diffusion_hpc.segment.make_segmenter` or an object with ``segment``), made only if needed.
    """
    kind = source_kind(path)
    full, human = _Batcher(model, batch_size), _Batcher(model, batch_size)
    seg = None
    no_person = 0
    samples: list = []
    mask_source = ""
    persons: list[list[dict]] = []
    for key, image, mask, people in iter_source(path, limit):
        if people is not None:
            persons.append(people)
        full.add(resize_clean(image))
        masked = None
        if human_only:
            if mask is None:
                if seg is None:
                    seg = _as_segmenter(segmenter)
                result = seg.segment(image[None])
                mask = np.asarray(result.person[0], bool) if bool(result.person_found[0]) else None
                mask_source = getattr(seg, "name", type(seg).__name__)
            else:
                mask_source = "dataset"
            if mask is None or not mask.any():
                no_person += 1
            else:
                masked = mask_background(image, mask)
                human.add(resize_clean(masked))
        if len(samples) < n_samples:
            samples.append((key, _thumb(image), None if masked is None else _thumb(masked)))
    features = full.result()
    if features.shape[0] == 0:
        raise InputError(f"{path} holds no accepted samples; nothing to score")
    manifest = config = prior = None
    if kind == "dataset":
        ds = open_dataset(path)
        manifest, config, prior = ds.manifest(), ds.config, ds.run_record.get("prior")
    return SourceFeatures(
        name=name or Path(path).name, path=str(path), kind=kind, features=features,
        human=human.result() if human_only else None, no_person=no_person, mask_source=mask_source,
        samples=samples, manifest=manifest, config=config, prior=prior, persons=persons if kind == "dataset" else None,
    )


# --------------------------------------------------------------------------------------------
# metrics


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,), covariance (D, D) (``np.cov``, N - 1 normalisation); N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs (N, D) features with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2): (D,), (D, D) each -> float.

    ``|mu1 - mu2|² + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2))`` with pytorch-fid's numerics: if the root
    is not finite, ``eps`` is added to both diagonals; an imaginary residue on the root's diagonal
    above 1e-3 raises ``ValueError``, a smaller one is dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature statistics differ in shape: {mu1.shape}/{mu2.shape}, {sigma1.shape}/{sigma2.shape}")
    import warnings

    diff = mu1 - mu2
    with warnings.catch_warnings():  # N < D makes the product singular; expected, noted in the report
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: sqrtm has an imaginary component {m:.3g}; the covariances are ill-conditioned "
                             "(too few samples for the feature dimension?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray, method: str = "auto") -> float:
    """FID of two (N, D), (M, D) feature sets (N, M >= 2).

    ``method``: ``"sqrtm"`` (:func:`frechet_distance` on the D x D covariances, the standard
    numerics), ``"lowrank"`` (:func:`frechet_distance_lowrank`, exact and much faster when
    min(N, M) < D) or ``"auto"`` (low-rank when min(N, M) < D, else sqrtm).
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if method not in ("auto", "sqrtm", "lowrank"):
        raise ValueError(f"FID method {method!r} is not one of auto, sqrtm, lowrank")
    if method == "lowrank" or (method == "auto" and min(len(f1), len(f2)) < f1.shape[-1]):
        return frechet_distance_lowrank(f1, f2)
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def frechet_distance_lowrank(features1: np.ndarray, features2: np.ndarray) -> float:
    """The same Fréchet distance as :func:`frechet_distance` of the features' ``np.cov`` statistics,
    computed without D x D matrices: (N, D), (M, D) -> float.

    With centred features X1, X2 and S_i = X_iᵀ X_i / (n_i - 1), the non-zero eigenvalues of S1 S2 are
    the squared singular values of X2 X1ᵀ / sqrt((n1 - 1)(n2 - 1)), so tr sqrtm(S1 S2) is that
    matrix's nuclear norm: exact, O(N M D), and free of sqrtm's trouble with the singular products
    that N < D samples give (where scipy's sqrtm of a 2048 x 2048 product takes minutes on 2 cores).
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"FID needs (N, D) and (M, D) features with N, M >= 2, got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    x1, x2 = f1 - mu1, f2 - mu2
    n1, n2 = len(f1) - 1, len(f2) - 1
    tr1, tr2 = float((x1 * x1).sum() / n1), float((x2 * x2).sum() / n2)
    cross = np.linalg.svd(x2 @ x1.T / np.sqrt(n1 * n2), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff.dot(diff) + tr1 + tr2 - 2 * cross)


def kid_subset_values(features1: np.ndarray, features2: np.ndarray, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> np.ndarray:
    """(subsets,) unbiased MMD² estimates, cubic polynomial kernel ``(x·y / D + 1)^3``.

    Each subset draws ``m = min(subset_size, N, M)`` rows of each set without replacement; the
    estimate is ``[Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m - 1)) - 2 Σ_{i,j} k(x_i, y_j) / m²``.
    """
    x_all, y_all = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"KID needs (N, D) and (M, D) features, got {x_all.shape} and {y_all.shape}")
    m = min(int(subset_size), x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {x_all.shape[0]} and {y_all.shape[0]}")
    if subsets < 1:
        raise ValueError(f"kid_subsets must be >= 1, got {subsets}")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(int(subsets))
    for s in range(int(subsets)):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values[s] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    return values


def kid_from_features(features1: np.ndarray, features2: np.ndarray, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> dict:
    """KID of two feature sets: ``{"mean", "std", "subsets", "subset_size", "n1", "n2"}``."""
    values = kid_subset_values(features1, features2, subsets, subset_size, seed)
    return {
        "mean": float(values.mean()), "std": float(values.std()), "subsets": int(len(values)),
        "subset_size": int(min(subset_size, len(features1), len(features2))),
        "n1": int(len(features1)), "n2": int(len(features2)),
    }


def fid_kid(real: np.ndarray, gen: np.ndarray, kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0, fid_method: str = "auto") -> dict:
    """FID and KID of (N, D) real and (M, D) generated features, NaN (with a note) when too few samples."""
    out: dict[str, Any] = {"n_real": int(len(real)), "n_generated": int(len(gen))}
    notes = []
    try:
        out["fid"] = fid_from_features(real, gen, fid_method)
    except ValueError as exc:
        out["fid"], _ = float("nan"), notes.append(f"FID: {exc}")
    try:
        kid = kid_from_features(real, gen, kid_subsets, kid_subset_size, seed)
        out.update(kid_mean=kid["mean"], kid_std=kid["std"], kid_subsets=kid["subsets"],
                   kid_subset_size=kid["subset_size"])
    except ValueError as exc:
        out.update(kid_mean=float("nan"), kid_std=float("nan"), kid_subsets=0, kid_subset_size=0)
        notes.append(f"KID: {exc}")
    if min(len(real), len(gen)) < 2048:
        notes.append(f"FID from {min(len(real), len(gen))} < 2048 samples: biased upward and sample-size dependent; "
                     "compare only at equal sample counts")
    out["notes"] = notes
    return out


# --------------------------------------------------------------------------------------------
# manifest statistics


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0}
    q = np.quantile(v, [0.05, 0.5, 0.95])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "q05": float(q[0]), "median": float(q[1]), "q95": float(q[2]), "max": float(v.max())}


def _is_number(v) -> bool:
    """A finite int / float score (not a bool, not None / NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _histogram(values: np.ndarray, bins: int = 20, range_=None) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(v, bins=bins, range=range_)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def dataset_hard_threshold(config: dict, prior: Optional[dict] = None) -> tuple[float, str]:
    """(threshold, source) of the pose prior a dataset was made with.

    From the dataset's own record when it has one (``prior``: run.json's ``prior``, with the
    threshold the run used, ``hard_threshold_used``, or the prior's ``hard_threshold``), so a later
    version's prior never relabels an older dataset; else from its ``config.yaml`` as the pipeline
    chooses the prior: Anny scores with the shipped prior (``prior_path`` null) or the prior file
    ``prior_path`` names; SMPL / SMPL-X with VPoser, whose threshold is fixed (30).

    Raises:
        InputError: no record, and the prior file the config names is not there.
    """
    if prior and prior.get("hard_threshold") is not None:
        used = prior.get("hard_threshold_used")
        threshold = float(used if used is not None else prior["hard_threshold"])
        sha = (prior.get("sha256") or "")[:12] or "unknown"
        return threshold, f"the dataset's recorded prior (run.json: {prior.get('name')}, sha256 {sha})"
    body_model, prior_path = config.get("body_model", "anny"), config.get("prior_path")
    if body_model != "anny":
        return VPOSER_HARD_THRESHOLD, f"VPoser's threshold (the dataset's body_model {body_model})"
    if prior_path is None:
        return get_prior("anny").hard_threshold, "the shipped Anny prior's threshold (the dataset's prior_path is null)"
    try:
        return get_prior("anny", prior_path).hard_threshold, f"the threshold of the dataset's prior {prior_path}"
    except MissingModelError:
        raise InputError(f"the dataset was scored with the pose prior {prior_path} (config prior_path), which is not "
                         "there; put the file back or pass the threshold with --hard-threshold") from None


def hard_flags(rows: list[dict], hard_threshold: Optional[float] = None, config: Optional[dict] = None,
               prior: Optional[dict] = None) -> tuple[np.ndarray, Optional[float], str]:
    """(hard (N,) bool, threshold, source) for accepted rows with a finite ``prior_score``.

    A row is hard by ``hard_threshold`` when given (score >= it); else by its recorded ``hard``
    flag (modes T and R record the generating prior's verdict per guided sample); rows without one
    by the threshold of the dataset's prior (:func:`dataset_hard_threshold` of ``config`` and the
    recorded ``prior``). ``threshold`` is the
    one used or, with flags only, the dataset prior's (None when its file is not there).
    """
    scores = np.array([float(r["scores"]["prior_score"]) for r in rows])
    if hard_threshold is not None:
        return scores >= hard_threshold, float(hard_threshold), "argument"
    recorded = [r["scores"].get("hard") for r in rows]
    flagged = np.array([f is not None for f in recorded], bool)
    if flagged.all():  # the threshold only labels the histogram: a missing prior file is no error
        source, threshold = "recorded per sample (manifest 'hard' flags)", None
        if config is None and not prior:
            source += "; the prior's threshold is unknown (no dataset config)"
        else:
            try:
                threshold = dataset_hard_threshold(config, prior)[0]
            except InputError as exc:
                source += f"; the prior's threshold is unknown ({exc})"
        return np.array([bool(f) for f in recorded]), threshold, source
    if config is None and not prior:
        raise InputError(f"{int((~flagged).sum())} of {len(rows)} rows have a prior score but no recorded 'hard' flag "
                         "and no dataset config names their prior: pass hard_threshold")
    threshold, source = dataset_hard_threshold(config, prior)
    hard = np.where(flagged, [bool(f) for f in recorded], scores >= threshold)
    if flagged.any():
        source = f"recorded per sample for {int(flagged.sum())} of {len(rows)}; {source} for the rest"
    return hard, threshold, source


def manifest_stats(rows: list[dict], hard_threshold: Optional[float] = None, config: Optional[dict] = None,
                   bins: int = 20, prior: Optional[dict] = None) -> dict:
    """Statistics of a dataset's manifest rows (dicts with ``status``, ``reason``, ``scores``, ``unet_evals``).

    Returns counts and share dropped with reasons (the text before the first ':'), UNet evaluations
    (all attempts / accepted sample, and mean over accepted rows), a summary of every numeric score
    of accepted rows, the prior-score histogram with the hard share (:func:`hard_flags`: the
    argument's threshold, else each row's recorded ``hard`` flag, else the threshold of the prior
    the dataset ``config`` names; ``hard_threshold_source`` says which), and distributions of the
    label-agreement scores (``pck_agreement``, ``mask_iou``) when present.
    """
    rows = list(rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    reasons = Counter((r.get("reason") or "unknown").split(":")[0].strip() or "unknown" for r in failed)
    total_unet = sum(int(r.get("unet_evals") or 0) for r in rows)
    out: dict[str, Any] = {
        "rows": len(rows), "accepted": len(ok), "dropped": len(failed),
        "dropped_share": len(failed) / len(rows) if rows else float("nan"),
        "drop_reasons": dict(reasons.most_common()),
        "drop_reason_share": {k: v / len(rows) for k, v in reasons.most_common()},
        "unet_evals_total": total_unet,
        "unet_evals_per_accepted": total_unet / len(ok) if ok else float("nan"),
        "unet_evals_accepted_mean": float(np.mean([int(r.get("unet_evals") or 0) for r in ok])) if ok else float("nan"),
    }
    score_values = _score_sections(out, ok, hard_threshold, config, bins, prior)
    agreement = {}
    for k in ("pck_agreement", "mask_iou"):
        if k in score_values:
            agreement[k] = dict(_summary(np.array(score_values[k])),
                                histogram=_histogram(np.array(score_values[k]), 10, (0.0, 1.0)))
    if agreement:
        out["label_agreement"] = agreement
    return out


def person_stats(persons: list[list[dict]], hard_threshold: Optional[float] = None, config: Optional[dict] = None,
                 bins: int = 20, prior: Optional[dict] = None) -> dict:
    """Per-person statistics of a dataset: ``persons`` holds, per accepted image, one
    :func:`person_scores` entry per person.

    Returns ``images``, ``persons``, ``per_image`` ({persons in an image: images}), ``persons_per_image``
    (mean), ``occluded`` and ``occluded_share`` (persons with ``visible_fraction`` < 1),
    ``visible_fraction`` (summary), ``scores`` (a summary of every numeric per-person score) and, when
    persons carry a ``prior_score``, ``prior_score`` (histogram and hard share over persons, decided as
    :func:`hard_flags` decides it for rows).
    """
    people = [p for image in persons for p in image]
    per_image = Counter(len(image) for image in persons)
    visible = np.array([p["visible_fraction"] for p in people], np.float64)
    out: dict[str, Any] = {
        "images": len(persons), "persons": len(people), "per_image": dict(sorted(per_image.items())),
        "persons_per_image": len(people) / len(persons) if persons else float("nan"),
        "occluded": int((visible < 1.0).sum()),
        "occluded_share": float((visible < 1.0).mean()) if people else float("nan"),
        "visible_fraction": _summary(visible),
    }
    _score_sections(out, people, hard_threshold, config, bins, prior)
    return out


def _score_sections(out: dict, entries: list[dict], hard_threshold: Optional[float], config: Optional[dict],
                    bins: int, prior: Optional[dict]) -> dict[str, list[float]]:
    """Fill ``out["scores"]`` (a summary of every numeric score of ``entries``: manifest rows or
    persons, each with ``scores``) and, when they carry a ``prior_score``, ``out["prior_score"]``
    (histogram and hard share, :func:`hard_flags`); returns the score values by name."""
    values: dict[str, list[float]] = {}
    for entry in entries:
        for k, v in (entry.get("scores") or {}).items():
            if _is_number(v):
                values.setdefault(k, []).append(float(v))
    out["scores"] = {k: _summary(np.array(v)) for k, v in sorted(values.items())}
    scored = [e for e in entries if _is_number((e.get("scores") or {}).get("prior_score"))]
    if scored:
        hard, thr, src = hard_flags(scored, hard_threshold, config, prior)
        score = np.array([float(e["scores"]["prior_score"]) for e in scored])
        share = float(hard.mean())
        out["prior_score"] = {"histogram": _histogram(score, bins), "hard_threshold": thr, "hard_threshold_source": src,
                              "hard_share": share, "easy_share": 1.0 - share, "n": int(score.size)}
    return values


# --------------------------------------------------------------------------------------------
# comparison and the CLI entry point


def compare(real: SourceFeatures, generated: list[SourceFeatures], *, kid_subsets: int = 100,
            kid_subset_size: int = 1000, seed: int = 0, hard_threshold: Optional[float] = None,
            fid_method: str = "auto") -> list[dict]:
    """One row per generated set against ``real``: FID, KID ± std, H-FID, H-KID ± std, counts, cost and,
    for datasets, the persons (count, per image, occluded share, hard share over persons)."""
    rows = []
    for g in generated:
        whole = fid_kid(real.features, g.features, kid_subsets, kid_subset_size, seed, fid_method)
        row: dict[str, Any] = {"name": g.name, "path": g.path, "n_real": whole["n_real"], "n_generated": whole["n_generated"],
                               "fid": whole["fid"], "kid_mean": whole["kid_mean"], "kid_std": whole["kid_std"],
                               "kid_subsets": whole["kid_subsets"], "kid_subset_size": whole["kid_subset_size"]}
        notes = list(whole["notes"])
        if real.human is not None and g.human is not None:
            h = fid_kid(real.human, g.human, kid_subsets, kid_subset_size, seed, fid_method)
            row.update(n_real_human=h["n_real"], n_generated_human=h["n_generated"], h_fid=h["fid"],
                       h_kid_mean=h["kid_mean"], h_kid_std=h["kid_std"], h_kid_subset_size=h["kid_subset_size"])
            notes += [f"H-{n}" for n in h["notes"] if not n.startswith("FID from")]
        if g.manifest is not None:
            m = manifest_stats(g.manifest, hard_threshold, g.config, prior=g.prior)
            row.update(dropped_share=m["dropped_share"], unet_evals_per_accepted=m["unet_evals_per_accepted"])
            if "prior_score" in m:
                row["hard_share"] = m["prior_score"]["hard_share"]
        if g.persons is not None:
            people = person_stats(g.persons, hard_threshold, g.config, prior=g.prior)
            row.update(persons=people["persons"], persons_per_image=people["persons_per_image"],
                       occluded_share=people["occluded_share"])
            if "prior_score" in people:
                row["hard_share_persons"] = people["prior_score"]["hard_share"]
        row["notes"] = notes
        rows.append(row)
    return rows


def _names(paths: list[str]) -> list[str]:
    """Short unique labels: the directory names, or the full paths where names collide."""
    base = [Path(p).name or str(p) for p in paths]
    return [b if base.count(b) == 1 else str(p) for b, p in zip(base, paths)]


def quality(config: QualityConfig, *, segmenter=None) -> dict:
    """Python API of ``dhpc quality``: score generated datasets against one real set and write
    ``quality.json`` and ``quality.html`` into ``config.out``.

    Example::

        from diffusion_hpc.config import QualityConfig
        from diffusion_hpc.eval.quality import quality

        report = quality(QualityConfig(real="photos/", generated=["runs/d1", "runs/t"], out="report/"))
        report["comparison"][0]["fid"]

    Args:
        config: sources, report folder and settings (see :class:`~diffusion_hpc.config.QualityConfig`;
            ``fid_weights`` falls back to ``$DHPC_FID_WEIGHTS``, else ``cache_dir()/fid/``).
        segmenter: a segmenter object (:mod:`diffusion_hpc.segment`) used for real image folders
            instead of the one ``config.segmenter`` names.

    Returns:
        The report dict (also in ``out/quality.json``), with ``comparison`` (one row per generated set),
        ``sources``, ``manifest`` (per generated dataset, per image), ``persons`` (per generated dataset,
        per person: :func:`person_stats`), ``settings`` and ``files``.
    """

    real, generated, out_dir, human_only, weights = (config.real, list(config.generated), config.out,
                                                     config.human_only, config.fid_weights)
    kid_subsets, kid_subset_size, batch_size, limit = (config.kid_subsets, config.kid_subset_size,
                                                       config.batch_size, config.limit)
    hard_threshold, seed, device, fid_method = config.hard_threshold, config.seed, config.device, config.fid_method
    segmenter = config.segmenter if segmenter is None else segmenter
    placement = resolve_placement(device, config.dtype, diffusion=False)  # an unavailable device fails first
    weights_path = find_weights(weights)  # fail fast, before any image is read
    if batch_size < 1 or kid_subsets < 1 or kid_subset_size < 2:
        raise InputError(f"quality: batch_size {batch_size} must be >= 1, kid_subsets {kid_subsets} >= 1, "
                         f"kid_subset_size {kid_subset_size} >= 2")
    # every source, and every image file a folder source will read, checked before the network loads
    check_source(real, "--real image", limit)
    for g in generated:
        check_source(g, "--generated image", limit)
    model = load_inception(weights_path, device=placement)
    names = _names([str(real), *map(str, generated)])
    needs_seg = human_only and any(source_kind(p) == "folder" for p in [real, *generated])
    seg = _as_segmenter(segmenter) if needs_seg else None
    common = dict(model=model, human_only=human_only, limit=limit, batch_size=batch_size, segmenter=seg)
    try:
        real_f = source_features(real, name=names[0], **common)
        gen_f = [source_features(g, name=n, **common) for g, n in zip(generated, names[1:])]
    finally:
        if seg is not None and (segmenter is None or isinstance(segmenter, str)) and hasattr(seg, "close"):
            seg.close()
    table = compare(real_f, gen_f, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
                    hard_threshold=hard_threshold, fid_method=fid_method)
    result = {
        "settings": {"weights": str(weights_path), "resize": "PIL bicubic (float, per channel) to 299",
                     "normalisation": "x / 255 * 2 - 1 (pytorch-fid)", "human_only": bool(human_only),
                     "kid_subsets": int(kid_subsets), "kid_subset_size": int(kid_subset_size),
                     "kid_kernel": "(x.y / 2048 + 1)^3", "limit": limit, "seed": int(seed), **placement.names,
                     "fid_method": fid_method + (" (low-rank trace when N < 2048, else scipy sqrtm)" if fid_method == "auto" else "")},
        "sources": {s.name: {"path": s.path, "kind": s.kind, "n": s.n, "n_human": s.n_human,
                             "no_person": s.no_person, "mask_source": s.mask_source}
                    for s in [real_f, *gen_f]},
        "real": real_f.name,
        "comparison": table,
        "manifest": {g.name: manifest_stats(g.manifest, hard_threshold, g.config, prior=g.prior)
                     for g in gen_f if g.manifest is not None},
        "persons": {g.name: person_stats(g.persons, hard_threshold, g.config, prior=g.prior)
                    for g in gen_f if g.persons is not None},
    }

    samples = {s.name: s.samples for s in [real_f, *gen_f]}
    result["files"] = write_report(result, out_dir, samples)
    return result
