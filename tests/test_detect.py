"""Person detection at several scales: crop geometry, and a real photo found small in a large frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from diffusion_hpc.estimate.landmarks import MASK_ROTATIONS, MediaPipeDetector, coco17_from_mediapipe
from diffusion_hpc.geometry.boxes import crop_grid, crop_to_frame, frame_to_crop, square_window, window_box
from diffusion_hpc.segment import make_segmenter


def test_crop_maps_round_trip_and_match_cut_and_resize():
    rng = np.random.default_rng(0)
    points = rng.uniform(-50, 300, (20, 2))
    centre, side, size = np.array([120.3, 80.7]), 97.0, 256
    np.testing.assert_allclose(crop_to_frame(frame_to_crop(points, centre, side, size), centre, side, size), points, atol=1e-9)

    # an image whose pixels hold their own (x, y); cut a window, resize it: each crop pixel holds
    # the frame point crop_to_frame says it shows
    height, width = 200, 240
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    coords = np.stack([xx, yy], -1)
    window = square_window(centre, side)
    x0, y0, s = window
    cut = cv2.resize(coords[y0:y0 + s, x0:x0 + s], (size, size), interpolation=cv2.INTER_LINEAR)
    crop_px = np.array([[10.0, 20.0], [128.0, 128.0], [240.0, 200.0]])
    shown = cut[crop_px[:, 1].astype(int), crop_px[:, 0].astype(int)]
    np.testing.assert_allclose(crop_to_frame(crop_px, *window_box(window), size), shown, atol=0.01)


@pytest.mark.parametrize(("height", "width", "tiles"), [(2048, 2048, 3), (480, 640, 2), (1000, 300, 5)])
def test_crop_grid_covers_the_frame_and_holds_every_half_tile_box(height, width, tiles):
    windows = crop_grid(height, width, tiles, 0.5)
    side = windows[0][2]
    assert all(w[2] == side for w in windows)
    covered = np.zeros((height, width), bool)
    for x0, y0, s in windows:
        covered[max(y0, 0):y0 + s, max(x0, 0):x0 + s] = True
    assert covered.all()
    rng = np.random.default_rng(1)
    half = side // 2
    for _ in range(50):  # any box of half a side inside the frame lies wholly inside some window
        bx = rng.integers(0, max(width - half, 0) + 1)
        by = rng.integers(0, max(height - half, 0) + 1)
        assert any(x0 <= bx and bx + min(half, width) <= x0 + s and y0 <= by and by + min(half, height) <= y0 + s
                   for x0, y0, s in windows)


@pytest.fixture(scope="module")
def astronaut():
    """(photo (512, 512, 3), its detection on the whole photo) from a detector of its own."""
    photo = skimage.data.astronaut()
    found = MediaPipeDetector().detect(photo)
    assert found is not None
    return photo, found


class CountingPose:
    """MediaPipe's Pose with its ``process`` calls counted."""

    def __init__(self, pose) -> None:
        self.pose, self.calls = pose, 0

    def process(self, image):
        self.calls += 1
        return self.pose.process(image)


def counting_detector() -> tuple[MediaPipeDetector, CountingPose]:
    detector = MediaPipeDetector()
    counter = CountingPose(detector._create())
    detector._pose = counter
    return detector, counter


def test_a_whole_frame_person_costs_one_mediapipe_pass(astronaut):
    photo, reference = astronaut
    detector, counter = counting_detector()
    found = detector.detect(photo)
    assert counter.calls == 1 and found.passes == 1 and found.crop is None
    np.testing.assert_allclose(found.landmarks2d, reference.landmarks2d, atol=1e-6)  # the one pass as before
    assert found.landmarks2d.shape == (33, 3) and found.world.shape == (33, 3)
    assert found.mask.shape == photo.shape[:2] and found.mask.dtype == np.float32


def pasted_small(photo: np.ndarray, frame: int = 2048,
                 fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray, int]:
    """(image (frame, frame, 3), offset (x, y), side): the photo scaled to ``fraction`` of a grey
    frame's height and pasted at ``offset``; MediaPipe finds her only on the frame's tiles."""
    offset = np.array([1300, 420]) * frame // 2048
    side = int(round(fraction * frame))  # the astronaut fills her photo's height
    small = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    image = np.full((frame, frame, 3), 110, np.uint8)
    image[offset[1]:offset[1] + side, offset[0]:offset[0] + side] = small
    return image, offset, side


def test_a_real_photo_pasted_small_into_a_large_frame_is_found_where_it_is(astronaut):
    photo, reference = astronaut
    image, offset, side = pasted_small(photo)
    frame = image.shape[0]

    detector, counter = counting_detector()
    found = detector.detect(image)
    assert found is not None and found.crop is not None
    assert counter.calls == found.passes > 1

    # landmarks: those found on the photo itself, scaled and moved to where it was pasted
    scale = side / photo.shape[0]
    expected = (coco17_from_mediapipe(reference.landmarks2d)[:, :2] + 0.5) * scale - 0.5 + offset
    err = np.linalg.norm(coco17_from_mediapipe(found.landmarks2d)[:, :2] - expected, axis=1)
    seen = coco17_from_mediapipe(reference.landmarks2d)[:, 2] > 0.5
    # px in the 2048 frame, photo 307 px tall. The head (nose, eyes, ears) is pinned down by the
    # pixels; shoulders and elbows, where the bust photo cuts the body, move with what surrounds
    # the photo (its own edge or the grey frame), tens of px at any crop around it
    assert np.median(err[:5]) < 5.0 and err[:5].max() < 8.0, err[:5]
    assert seen.sum() >= 8 and err[seen].max() < 0.35 * side, err[seen]

    # the mask lands on the pasted photo: it matches the photo's own mask moved there
    assert found.mask.shape == (frame, frame) and found.mask.dtype == np.float32
    expected_mask = np.zeros((frame, frame), bool)
    expected_mask[offset[1]:offset[1] + side, offset[0]:offset[0] + side] = cv2.resize(
        reference.mask, (side, side), interpolation=cv2.INTER_AREA) > 0.5
    got_mask = found.mask > 0.5
    assert (got_mask & expected_mask).sum() / (got_mask | expected_mask).sum() > 0.8


def face_blurred(photo: np.ndarray, detection) -> np.ndarray:
    """The photo with a heavy blur over the detected person's face (a disc over nose, eyes, ears and
    mouth, 1.6 x their spread): what MediaPipe's face-keyed person detector misses."""
    face = detection.landmarks2d[:11, :2]
    centre = face.mean(0)
    radius = 1.6 * np.linalg.norm(face - centre, axis=1).max()
    yy, xx = np.mgrid[:photo.shape[0], :photo.shape[1]]
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius**2
    out = photo.copy()
    out[disc] = cv2.GaussianBlur(photo, (0, 0), 25)[disc]
    return out


def test_a_person_the_person_detector_misses_is_read_on_her_mask(astronaut):
    """MediaPipe's person detector keys on the face: with the astronaut's face blurred it finds no
    one in the whole photo nor in any tile. Given her person mask (as the pipeline holds the
    segmenter's), the landmark model reads her on the mask's box: her body landmarks where the
    unblurred photo has them, and her mask."""
    photo, reference = astronaut
    image = face_blurred(photo, reference)
    detector = MediaPipeDetector()
    assert detector.detect(image) is None  # the failure the mask path exists for

    person = reference.mask > 0.5
    found = detector.detect(image, person)
    assert found is not None and 3 <= found.passes <= 5  # the whole image, one to three regions, one more read
    # her shoulders (the body joints this bust shows) where the unblurred photo has them, within an
    # eighth of her height: the landmark model places the body from its region, and a mask's box
    # cut by the image's edge (her hips are below it) is not the region the detector would give
    # (measured 34 and 48 px of a 480 px person; 58 and 59 px on the unblurred photo)
    shoulders = coco17_from_mediapipe(found.landmarks2d)[5:7, :2]
    expected = coco17_from_mediapipe(reference.landmarks2d)[5:7, :2]
    height = np.ptp(np.nonzero(person)[0]) + 1
    assert np.linalg.norm(shoulders - expected, axis=1).max() < height / 8
    assert found.world.shape == (33, 3) and found.mask.shape == photo.shape[:2]
    got = found.mask > 0.5
    assert (got & person).sum() / (got | person).sum() > 0.7

    # a person the whole image shows on the mask costs the one pass, the mask changes nothing
    whole = detector.detect(photo, person)
    assert whole.passes == 1
    np.testing.assert_allclose(whole.landmarks2d, reference.landmarks2d, atol=1e-6)


def test_a_mask_where_no_one_is_gives_no_one_at_the_cost_of_its_own_readings(astronaut):
    """With a person mask, the detector reads the person on the mask or no one: a mask over the
    empty grey of a frame costs the whole-image pass and the landmark model's readings of the
    mask's box (no tile search: on 255 masked detections of renders over photos it found one person
    the mask path had missed, at 9-18 passes a miss) and gives None, though the frame's tiles hold
    the astronaut (found without the mask), someone other than the mask's person."""
    photo, _ = astronaut
    image, *_ = pasted_small(photo)
    elsewhere = MediaPipeDetector().detect(image)
    assert elsewhere is not None and elsewhere.crop is not None  # the tile search finds her
    empty = np.zeros(image.shape[:2], bool)
    empty[1200:1700, 300:550] = True  # a standing person's region of grey, far from her
    detector = MediaPipeDetector()
    assert detector.detect(image, empty) is None
    assert detector.passes <= 1 + len(MASK_ROTATIONS)


def test_a_real_person_is_found_on_the_segmenters_mask(astronaut):
    """The pipeline's masks are the segmenter's: with the astronaut's, the whole photo's reading in
    one pass; with her face blurred (MediaPipe's person detector misses her), the landmark model's
    reading on the mask, her shoulders where the unblurred photo has them."""
    photo, reference = astronaut
    segmenter = make_segmenter("mediapipe")
    found = MediaPipeDetector().detect(photo, segmenter.segment(photo[None]).person[0])
    assert found is not None and found.passes == 1
    np.testing.assert_allclose(found.landmarks2d, reference.landmarks2d, atol=1e-6)

    blurred = face_blurred(photo, reference)
    person = segmenter.segment(blurred[None]).person[0]
    found = MediaPipeDetector().detect(blurred, person)
    assert found is not None and found.passes <= 2 + len(MASK_ROTATIONS)  # whole image, regions, one more read
    shoulders = coco17_from_mediapipe(found.landmarks2d)[5:7, :2]
    expected = coco17_from_mediapipe(reference.landmarks2d)[5:7, :2]
    assert np.linalg.norm(shoulders - expected, axis=1).max() < (np.ptp(np.nonzero(person)[0]) + 1) / 8


def test_a_mask_of_the_wrong_shape_is_refused(astronaut):
    from diffusion_hpc.errors import InputError

    photo, _ = astronaut
    with pytest.raises(InputError, match=r"mask has shape \(10, 10\).*\(512, 512\)"):
        MediaPipeDetector().detect(photo, np.ones((10, 10), bool))
