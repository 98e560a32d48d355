"""Camera helpers: projection convention, full-body framing."""

import numpy as np
import pytest

from diffusion_hpc.geometry.camera import (
    fit_translation,
    intrinsics_from_fov,
    project,
    rotate_points,
)


def test_optical_axis_hits_the_image_centre():
    K = intrinsics_from_fov(50.0, 128, 96)
    uv = project(np.array([[0.0, 0.0, 2.0]]), K)
    assert np.allclose(uv, [[63.5, 47.5]])
    # vertical fov: a point at the top edge angle lands on row -0.5 (the image's top border)
    y = -2.0 * np.tan(np.deg2rad(25.0))
    assert np.allclose(project(np.array([[0.0, y, 2.0]]), K)[0, 1], -0.5)


OFFSETS = [(0.0, 0.0), (1.0, -1.0), (-1.0, 1.0)]


def _framed(pts: np.ndarray, fill: float, offset) -> tuple[np.ndarray, float]:
    """(uv, span): the points placed by ``fit_translation`` in a 160 x 120 image, and the share of
    the limiting side their box spans; fails unless every point is in frame."""
    K = intrinsics_from_fov(40.0, 160, 120)
    uv = project(pts + fit_translation(pts, K, 160, 120, fill, offset), K)
    assert uv.min() >= 0 and uv[:, 0].max() <= 159 and uv[:, 1].max() <= 119
    return uv, max(np.ptp(uv[:, 0]) / 159, np.ptp(uv[:, 1]) / 119)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("fill", [0.5, 0.95])
def test_fit_translation_spans_fill_when_nothing_forces_it_smaller(offset, fill):
    """A flat body (no depth relief) fits at any fill: its box spans exactly ``fill``."""
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(size=(5000, 2)) * [0.3, 0.8], np.zeros((5000, 1))], axis=1) + [2.0, -1.0, 5.0]
    _, span = _framed(pts, fill, offset)
    assert span == pytest.approx(fill, rel=1e-3)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("fill", [0.5, 0.95])
def test_fit_translation_keeps_everything_in_frame(offset, fill):
    """With depth relief the body stays in frame; the span is ``fill`` shrunk by whole 0.95 steps
    (within 2 %: moving the box off-axis changes its perspective size a little), and centred at
    these fills it needs no step."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5000, 3)) * [0.3, 0.8, 0.2] + [2.0, -1.0, 5.0]
    _, span = _framed(pts, fill, offset)
    steps = round(np.log(span / fill) / np.log(0.95))
    assert steps >= 0 and span == pytest.approx(fill * 0.95**steps, rel=0.02), (span, steps)
    if offset == (0.0, 0.0):
        assert steps == 0 and span == pytest.approx(fill, rel=1e-3)


@pytest.mark.parametrize("rotations, points", [((16, 3, 3), (16, 5000, 3)), ((4, 3, 3), (4, 17, 3)),
                                               ((3, 2, 3, 3), (3, 2, 700, 3)), ((3, 1, 3, 3), (3, 4, 700, 3))])  # fmt: skip
def test_rotate_points_is_the_einsum_bit_for_bit(rotations, points):
    """rotate_points replaced np.einsum in mode D's placement: the same float64 bits (so no dataset
    byte moves), for batches of meshes, joint sets, people of scenes and one rotation per scene."""
    rng = np.random.default_rng(0)
    r, p = rng.normal(size=rotations), rng.normal(size=points) * 3.0
    expected = np.einsum("...ij,...nj->...ni", r, p)
    got = rotate_points(r, p)
    assert got.shape == expected.shape and got.tobytes() == expected.tobytes()
