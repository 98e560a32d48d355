"""Label verification (DESIGN §6): does the final image still show the label's body?

After regeneration the estimator runs on the final image and the segmenter gives its person mask:

- ``pck_agreement``: share of the label's visible COCO-17 keypoints (visibility 2) whose
  re-estimated position lies within 0.1 x the person-box size (the longer side of the bounding box
  of the rendered silhouette) of the projected ground truth; 0 when no person is found in the
  final image; NaN when the label has no visible keypoint.
- ``mask_iou``: IoU of the segmenter's person mask of the final image and the rendered silhouette.

The re-estimated keypoints come from the estimator (``GenerateConfig.verify_by``). With the MediaPipe
estimator the default is ``label-box``: MediaPipe's landmark model alone
(:meth:`~diffusion_hpc.estimate.landmarks.MediaPipeDetector.read_on_label`), without its person
detector, on the region the label's own joints give (as the detector's region: centred between the
hips, 1.25 x the body's extent, turned along hips -> shoulders); a region where the model's presence
score or mean visibility is low reads "no person". ``landmarks`` reads the detector's COCO-17
landmarks on the whole image (detector + landmark model, the default before ``label-box``:
:meth:`~diffusion_hpc.estimate.mediapipe_fit.MediaPipeFitter.read_keypoints`), ``estimate`` the
projection of the whole estimate's body (the MediaPipe fit, about 32 CPU ms a person more with the fit
compiled, or a regressor's body, the only choice with a regressor). ``keypoint-model`` reads each person with
a top-down keypoint model (:mod:`~diffusion_hpc.estimate.keypoint_model`, a transformers ViTPose
checkpoint) on the box of its label's silhouette, with any estimator; tested with tiny random models
only, so its scores are not comparable with the tables below yet. A ``label-box`` pass costs 19-20.5
CPU ms against 30-33 for the whole graph, at 128 and at 256 px alike.

``scripts/bench_verify.py --n 64`` (128 renders with known labels at 256 px, half over real photos; PCK of each reading against the render's own label, another render's label as it is,
another render's pose moved onto this person's box, and the own label with left and right
exchanged; mean PCK / share >= 0.5, read on the whole image as for one person):

=====================  ===============  ===============  ===============  ===============
seed, reading          right label      other's label    other's pose     left/right
                                                         moved here       exchanged
=====================  ===============  ===============  ===============  ===============
2024, landmarks        0.826 / 82.8 %   0.044 / 0.8 %    0.266 / 24.2 %   0.428 / 39.1 %
2024, estimate (fit)   0.820 / 82.0 %   0.043 / 0.8 %    0.270 / 24.2 %   0.406 / 35.9 %
2025, landmarks        0.767 / 78.9 %   0.038 / 1.6 %    0.263 / 21.1 %   0.385 / 28.9 %
2025, estimate (fit)   0.763 / 78.1 %   0.038 / 1.6 %    0.270 / 27.3 %   0.368 / 28.9 %
=====================  ===============  ===============  ===============  ===============

The share of renders whose right label scores above the wrong one (ties half), landmarks / fit: seed
2024 0.934 / 0.922 (other's label), 0.930 / 0.922 (pose moved here), 0.871 / 0.867 (left/right);
seed 2025 0.914 / 0.910, 0.906 / 0.895, 0.852 / 0.848. Read on the label's silhouette (a person of
a several-people sample) the same picture: 2024 right 0.921 / 0.919, left/right exchanged 0.483 /
0.456 mean PCK; 2025 0.881 / 0.886 and 0.448 / 0.420. The fit's keypoints lie a median 1.3-1.4 px
from the landmarks (90th percentile 2.6-2.9 px), and the two readings decide a 0.5 threshold
differently on 0-9 of 128 renders per label kind. Where they differ most, a label with left and
right exchanged scores a little higher on the landmarks (0.02-0.03 mean PCK): the fit's left/right
decision sometimes corrects MediaPipe's labels of a back view; neither reading can reject such a
label on a side view, where left and right joints nearly coincide in the image.

``label-box`` on the same renders (read on the whole image; label-box reads each kind of label where that
label says):

=====================  ===============  ===============  ===============  ===============
seed, reading          right label      other's label    other's pose     left/right
                                                         moved here       exchanged
=====================  ===============  ===============  ===============  ===============
2024, landmarks        0.826 / 82.8 %   0.044 / 0.8 %    0.266 / 24.2 %   0.428 / 39.1 %
2024, label-box        0.953 / 96.1 %   0.058 / 0.0 %    0.326 / 32.0 %   0.500 / 45.3 %
2025, landmarks        0.767 / 78.9 %   0.038 / 1.6 %    0.263 / 21.1 %   0.385 / 28.9 %
2025, label-box        0.929 / 96.1 %   0.055 / 2.3 %    0.298 / 25.8 %   0.461 / 36.7 %
=====================  ===============  ===============  ===============  ===============

Right labels are found and read far better (person found 89.8 -> 99.2 % and 89.1 -> 97.7 %), and a
right label outscores the wrong one more often (landmarks -> label-box, 2024: 0.934 -> 0.996,
0.930 -> 0.977, 0.871 -> 0.922; 2025: 0.914 -> 0.988, 0.906 -> 0.980, 0.852 -> 0.941). Wrong labels
also score higher (a pose moved onto the person +0.035-0.06 mean PCK, left/right exchanged
+0.07-0.08): read where the label says, the model finds the person there and the joints the wrong
label has right count. So ``label-box`` scores are not ``landmarks`` scores: a ``--min-agreement``
0.1 higher keeps more right labels and about as many or fewer wrong ones (table). Share
passing a ``--min-agreement`` t (``bench_verify.py``; right / another pose moved here / left-right
exchanged; another render's label passes 0-2.3 % at 0.5 and 0-0.8 % from 0.6 for both readings):

=========  ===========================  ===========================  ===========================
seed, t    landmarks at t               label-box at t               label-box at t + 0.1
=========  ===========================  ===========================  ===========================
2024, 0.5  82.8 / 24.2 / 39.1 %         96.1 / 32.0 / 45.3 %         96.1 / 17.2 / 31.2 %
2024, 0.6  81.2 / 11.7 / 23.4 %         96.1 / 17.2 / 31.2 %         93.8 /  9.4 / 22.7 %
2024, 0.7  81.2 /  5.5 / 15.6 %         93.8 /  9.4 / 22.7 %         93.0 /  3.9 / 16.4 %
2024, 0.8  81.2 /  2.3 / 12.5 %         93.0 /  3.9 / 16.4 %         90.6 /  0.0 /  9.4 %
2025, 0.5  78.9 / 21.1 / 28.9 %         96.1 / 25.8 / 36.7 %         92.2 / 17.2 / 25.8 %
2025, 0.6  75.0 / 14.1 / 21.9 %         92.2 / 17.2 / 25.8 %         91.4 /  9.4 / 16.4 %
2025, 0.7  74.2 /  7.8 / 13.3 %         91.4 /  9.4 / 16.4 %         89.1 /  2.3 / 12.5 %
2025, 0.8  73.4 /  2.3 /  8.6 %         89.1 /  2.3 / 12.5 %         88.3 /  0.0 / 10.2 %
=========  ===========================  ===========================  ===========================

At t + 0.1 label-box keeps 9-16 points more right labels than landmarks at t and lets fewer labels
with another pose through in every row; of the mirrored labels fewer in six rows of eight, 0.8 and
1.6 points more in the other two (2024 at 0.7, 2025 at 0.8). With one pass a person a third cheaper
that makes it the default. A reading on the label's silhouette box
(clipped to the image, upright) failed on a bust photo at 128 px (right labels 0.5-0.6 against
>= 0.8), and a second pass on the region the first reading's landmarks give changed nothing of note
(2024 right 0.945 against 0.953): neither is used.

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
