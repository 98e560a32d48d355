"""Label verification (DESIGN §6): does the final image still show the label's body?

After regeneration the estimator runs on the final image and the segmenter gives its person mask:

- ``pck_agreement``: share of the label's visible COCO-17 keypoints (visibility 2) whose
  re-estimated position lies within 0.1 x the person-box size (the longer side of the bounding box
  of the rendered silhouette) of the projected ground truth; 0 when no person is found in the
  final image; NaN when the label has no visible keypoint.
- ``mask_iou``: IoU of the segmenter's person mask of the final image and the rendered silhouette.

Pure numpy functions; the pipeline calls the estimator and the segmenter.
"""

from __future__ import annotations

import numpy as np

from diffusion_hpc.geometry.boxes import mask_extent

#: PCK threshold as a share of the person-box size (as the SMART protocol's 0.1 x crop size)
PCK_ALPHA = 0.1


def pck_agreement(estimated: np.ndarray | None, truth: np.ndarray, silhouette: np.ndarray,
                  alpha: float = PCK_ALPHA) -> float:  # fmt: skip
    """PCK of re-estimated vs ground-truth COCO-17 keypoints over the truth's visible joints.

    Args:
        estimated: (17, >=2) re-estimated keypoints in pixels, or None when the estimator found no person.
        truth: (17, 3) ground-truth keypoints (u, v, COCO visibility).
        silhouette: (H, W) bool rendered silhouette of the label mesh (gives the person-box size).
    """
    visible = truth[:, 2] == 2
    if not visible.any():
        return float("nan")
    if estimated is None:
        return 0.0
    threshold = alpha * max(mask_extent(silhouette), 1.0)
    dist = np.linalg.norm(np.asarray(estimated)[visible, :2] - truth[visible, :2], axis=1)
    return float((dist <= threshold).mean())


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (NaN when both are empty)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return float("nan")
    return float(np.logical_and(a, b).sum() / union)
