"""Camera helpers: projection convention, full-body framing."""

import numpy as np
import pytest

from diffusion_hpc.geometry.camera import fit_translation, intrinsics_from_fov, project


def test_optical_axis_hits_the_image_centre():
    K = intrinsics_from_fov(50.0, 128, 96)
    uv = project(np.array([[0.0, 0.0, 2.0]]), K)
    assert np.allclose(uv, [[63.5, 47.5]])
    # vertical fov: a point at the top edge angle lands on row -0.5 (the image's top border)
    y = -2.0 * np.tan(np.deg2rad(25.0))
    assert np.allclose(project(np.array([[0.0, y, 2.0]]), K)[0, 1], -0.5)


@pytest.mark.parametrize("offset", [(0.0, 0.0), (1.0, -1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("fill", [0.5, 0.95])
def test_fit_translation_keeps_everything_in_frame(offset, fill):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5000, 3)) * [0.3, 0.8, 0.2] + [2.0, -1.0, 5.0]
    K = intrinsics_from_fov(40.0, 160, 120)
    t = fit_translation(pts, K, 160, 120, fill, offset)
    uv = project(pts + t, K)
    assert uv.min() >= 0 and uv[:, 0].max() <= 159 and uv[:, 1].max() <= 119
    span = max(np.ptp(uv[:, 0]) / 159, np.ptp(uv[:, 1]) / 119)
    assert span == pytest.approx(fill, abs=0.05) or span < fill
