"""Instance segmentation with a transformers universal-segmentation checkpoint (Mask2Former, MaskFormer,
OneFormer) loaded from disk (``local_files_only=True``).

Person mask = union of ``person`` instances with score >= ``score_threshold`` (the original used Mask
R-CNN on COCO with 0.5). Occluders = the other instances above the threshold that overlap the
bounding box of the person mask, minus person pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion_hpc.errors import ConfigError
from diffusion_hpc.runtime.device import resolve_device
from diffusion_hpc.segment.base import MIN_PERSON_HEIGHT, Segmentation, as_batch, number_people


def person_label_ids(id2label: dict) -> list[int]:
    """Label ids whose name is ``person`` (COCO) or ``human`` / ``people`` (other label sets)."""
    names = {"person", "human", "people", "pedestrian"}
    return [int(i) for i, n in id2label.items() if str(n).strip().lower() in names]


def masks_from_instances(instance_masks: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                         person_ids, score_threshold: float = 0.5, min_height: float = MIN_PERSON_HEIGHT):  # fmt: skip
    """Combine instances of one image into person, occluder and person-number masks.

    Args:
        instance_masks: (N, H, W) bool per instance.
        labels: (N,) int label ids.
        scores: (N,) float instance scores.
        person_ids: label ids that count as person.

    Returns:
        (person (H, W) bool, occluders (H, W) bool, best person score or 0, people (H, W) int16: the
        person instances numbered by :func:`~diffusion_hpc.segment.base.number_people`).
    """
    n, h, w = instance_masks.shape if len(instance_masks) else (0, 0, 0)
    keep = scores >= score_threshold
    is_person = np.isin(labels, list(person_ids)) & keep
    if n == 0 or not is_person.any():
        shape = instance_masks.shape[1:] if n else (0, 0)
        return np.zeros(shape, bool), np.zeros(shape, bool), 0.0, np.full(shape, -1, np.int16)
    person = instance_masks[is_person].any(axis=0)
    rows, cols = np.nonzero(person)
    box = np.zeros_like(person)
    box[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1] = True
    others = keep & ~is_person
    occ = np.zeros_like(person)
    for m in instance_masks[others]:
        if (m & box).any():
            occ |= m
    people = number_people(instance_masks[is_person], min_height)
    return person, occ & ~person, float(scores[is_person].max()), people


class InstanceSegmenter:
    """Person + occluder masks from a transformers universal-segmentation model.

    Args:
        path: local checkpoint directory (config.json, weights, preprocessor_config.json).
        score_threshold: instance score threshold (0.5).
        min_height: share of the image height a person instance must span to get a person number.
        device: ``--device`` name (``auto``, ``cpu``, ``cuda:N``...) or a ``torch.device``; the model
            is moved there once and runs in float32; masks come back to the CPU as numpy.
    """

    def __init__(self, path: str | Path, score_threshold: float = 0.5, device="cpu", min_height: float = MIN_PERSON_HEIGHT):
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        self.path = Path(path)
        self.name = f"instance:{self.path.name}"
        self.score_threshold = float(score_threshold)
        self.min_height = float(min_height)
        self.device = resolve_device(str(device))
        self.processor = AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModelForUniversalSegmentation.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval().to(self.device)
        self.person_ids = person_label_ids(self.model.config.id2label)
        if not self.person_ids:
            raise ConfigError(f"segmenter {self.path} has no 'person' label in its id2label; pass a COCO-trained "
                              "instance or panoptic segmentation checkpoint")  # fmt: skip

    def segment(self, images: np.ndarray) -> Segmentation:
        import torch

        images = as_batch(images)
        b, h, w = images.shape[:3]
        inputs = self.processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        results = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.score_threshold, target_sizes=[(h, w)] * b
        )
        person = np.zeros((b, h, w), bool)
        occ = np.zeros((b, h, w), bool)
        scores = np.zeros(b, np.float32)
        people = np.full((b, h, w), -1, np.int16)
        for i, res in enumerate(results):
            seg = res["segmentation"].cpu().numpy()
            info = res["segments_info"]
            if not info:
                continue
            masks = np.stack([seg == s["id"] for s in info])
            labels = np.array([s["label_id"] for s in info])
            sc = np.array([s["score"] for s in info], np.float32)
            person[i], occ[i], scores[i], people[i] = masks_from_instances(masks, labels, sc, self.person_ids,
                                                                           self.score_threshold, self.min_height)  # fmt: skip
        return Segmentation(person, occ, person.reshape(b, -1).any(axis=1), scores,
                            {"backend": self.name, "threshold": self.score_threshold}, people)  # fmt: skip
