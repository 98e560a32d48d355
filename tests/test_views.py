"""Several views of one person merged into one reading: the merge's definition, the mirror view's
left and right, the grey view's paint, and the estimator reading them on a real photo."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from diffusion_hpc.errors import InputError
from diffusion_hpc.estimate.landmarks import Detection, MediaPipeDetector, coco17_from_mediapipe
from diffusion_hpc.estimate.mediapipe_fit import MediaPipeFitter
from diffusion_hpc.estimate.views import (
    GREY_LEVEL,
    check_views,
    grey_outside,
    median_reading,
    mirror_image,
    mirrored_detection,
)
from test_detect import astronaut  # noqa: F401  (the photo and MediaPipe's reading of it: a fixture)


def reading(seed: int, passes: int = 1) -> Detection:
    rng = np.random.default_rng(seed)
    lm = np.concatenate([rng.uniform(0, 256, (33, 2)), rng.uniform(0, 1, (33, 1))], axis=1)
    return Detection(lm, rng.normal(size=(33, 3)), np.zeros((256, 256), np.float32), None, passes)


def test_the_merge_is_the_per_landmark_median_and_drops_a_gross_misreading():
    a, b = reading(0), reading(1, passes=3)
    c = replace(b, landmarks2d=b.landmarks2d.copy(), world=b.world + 0.01)
    c.landmarks2d[:, :2] += 1.0
    c.landmarks2d[15, :2] = [900.0, -400.0]  # one view reads a wrist on the background
    merged = median_reading([a, b, c])
    stacked = np.stack([a.landmarks2d, b.landmarks2d, c.landmarks2d])
    np.testing.assert_allclose(merged.landmarks2d[:, :2], np.median(stacked[..., :2], axis=0))
    np.testing.assert_allclose(merged.landmarks2d[:, 2], stacked[..., 2].mean(axis=0))
    np.testing.assert_allclose(merged.world, np.median(np.stack([a.world, b.world, c.world]), axis=0))
    # the misread wrist is outvoted: it lies between the other two readings' wrists
    lo, hi = np.minimum(a.landmarks2d[15, :2], b.landmarks2d[15, :2]), np.maximum(a.landmarks2d[15, :2], b.landmarks2d[15, :2] + 1)
    assert np.all(merged.landmarks2d[15, :2] >= lo) and np.all(merged.landmarks2d[15, :2] <= hi)
    assert merged.passes == 1 + 3 + 3 and merged.mask is a.mask
    # views that found no one are left out; none found: no one
    assert median_reading([None, b, None]).landmarks2d is b.landmarks2d
    np.testing.assert_allclose(median_reading([a, None, b]).landmarks2d[:, :2], (a.landmarks2d[:, :2] + b.landmarks2d[:, :2]) / 2)
    assert median_reading([None, None]) is None


def test_the_mirror_view_reads_her_left_as_her_left(astronaut):
    """MediaPipe on the mirrored photo, mapped back: her landmarks where the photo's own reading
    has them, left and right as there (a mirror view that forgot to exchange them would put her
    left shoulder on her right one, 200 px away)."""
    photo, reference = astronaut
    back = mirrored_detection(MediaPipeDetector().detect(mirror_image(photo)), photo.shape[1])
    got, want = coco17_from_mediapipe(back.landmarks2d), coco17_from_mediapipe(reference.landmarks2d)
    seen = want[:, 2] > 0.5
    assert seen.sum() >= 8  # the bust: face, shoulders, an elbow
    err = np.linalg.norm(got[seen, :2] - want[seen, :2], axis=1)
    assert np.median(err) < 8.0 and err.max() < 30.0, err
    shoulders = np.linalg.norm(want[6, :2] - want[5, :2])
    assert np.linalg.norm(got[5, :2] - want[5, :2]) < shoulders / 4  # left shoulder on her left
    # her world landmarks too: the left shoulder left of the right one as seen from the camera, as in the photo's reading
    assert np.sign(back.world[11, 0] - back.world[12, 0]) == np.sign(reference.world[11, 0] - reference.world[12, 0])
    assert back.mask.shape == photo.shape[:2]
    iou = ((back.mask > 0.5) & (reference.mask > 0.5)).sum() / ((back.mask > 0.5) | (reference.mask > 0.5)).sum()
    assert iou > 0.9
    assert mirrored_detection(None, 512) is None


def test_the_grey_view_keeps_the_person_and_a_thin_margin_and_greys_the_rest():
    image = np.random.default_rng(0).integers(0, 256, (200, 120, 3), dtype=np.uint8)
    mask = np.zeros((200, 120), np.float32)
    mask[50:150, 40:80] = 1.0  # a person 100 px high: the margin is 2 px
    out = grey_outside(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[50:150, 40:80], image[50:150, 40:80])
    np.testing.assert_array_equal(out[50:150, 38:40], image[50:150, 38:40])  # within the margin
    assert np.all(out[:45] == GREY_LEVEL) and np.all(out[:, :35] == GREY_LEVEL) and np.all(out[155:] == GREY_LEVEL)
    # probabilities: a mask 0.6 sure keeps three quarters of the image (0.5 + 0.1 / GREY_RAMP), and masks that
    # differ by float noise (two runtimes' readings) paint images a few levels apart, not pixels flipped to grey
    unsure = grey_outside(image, 0.6 * mask)
    np.testing.assert_allclose(unsure[50:150, 40:80], 0.75 * image[50:150, 40:80] + 0.25 * GREY_LEVEL, atol=0.5)
    soft = np.clip(cv2.GaussianBlur(mask, (0, 0), 3.0), 0, 1)
    noisy = np.clip(soft + np.random.default_rng(1).normal(0, 0.01, soft.shape).astype(np.float32), 0, 1)
    gap = np.abs(grey_outside(image, soft).astype(int) - grey_outside(image, noisy).astype(int))
    assert gap.max() <= 0.05 / 0.4 * 255 and (gap > 0).any()
    np.testing.assert_array_equal(grey_outside(image, np.zeros((200, 120))), image)
    with pytest.raises(InputError, match=r"mask \(10, 10\).*\(200, 120, 3\)"):
        grey_outside(image, np.ones((10, 10)))


def test_the_estimator_reads_every_view_and_merges_them(astronaut):
    """On the astronaut photo: three views cost a reading each (one MediaPipe pass each for a person
    filling the frame) and the merged landmarks lie where the single reading's are; the default, one
    view, is the single reading itself."""
    photo, reference = astronaut
    one = MediaPipeFitter().detect([photo])[0]
    np.testing.assert_allclose(one.landmarks2d, reference.landmarks2d, atol=1e-6)
    assert one.passes == 1
    est = MediaPipeFitter(views=["grey", "mirror", "image"])
    assert est.views == ("image", "mirror", "grey") and est.describe()["views"] == ["image", "mirror", "grey"]
    merged = est.detect([photo])[0]
    assert merged.passes == 3
    got, want = coco17_from_mediapipe(merged.landmarks2d), coco17_from_mediapipe(reference.landmarks2d)
    seen = want[:, 2] > 0.5
    assert np.median(np.linalg.norm(got[seen, :2] - want[seen, :2], axis=1)) < 8.0
    assert np.linalg.norm(got[5, :2] - want[5, :2]) < np.linalg.norm(want[6, :2] - want[5, :2]) / 4
    # an image without anyone: no view finds anyone, nothing is merged
    assert est.detect([np.full((256, 256, 3), 90, np.uint8)]) == [None]


@pytest.mark.parametrize("views", [["mirror"], ["image", "image"], ["image", "tilt"], []])
def test_views_other_than_distinct_known_ones_with_the_image_are_refused(views):
    with pytest.raises(InputError, match="views="):
        check_views(views)
    with pytest.raises(InputError, match="views="):
        MediaPipeFitter(views=views)
    assert check_views(["grey", "image"]) == ("image", "grey")
