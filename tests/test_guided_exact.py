"""Modes T and R do less CPU work for the same answers: the head's interpenetration check of a
several-people variant voxelises only the people whose boxes may meet, and decides as testing every
pair; the people of one image share the detector's whole-image pass and tile search."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from diffusion_hpc.geometry.scene import VOXEL_M, solid_occupancy
from diffusion_hpc.pipeline.guided import SOLID_REACH_M, interpenetrating
from diffusion_hpc.pipeline.stages import pose_bodies

from test_detect import counting_detector
from test_multiperson_guided import two_people

pytestmark = pytest.mark.usefixtures("one_thread")


def every_pair(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """The check without the box test: every person voxelised, every pair tested."""
    solids = [solid_occupancy(v, faces) for v in vertices]
    return any(solids[p].contains(vertices[q]).any() for p in range(len(vertices)) for q in range(p + 1, len(vertices)))


@pytest.fixture
def voxelised(monkeypatch) -> list:
    """Appended to on every solid the check builds."""
    built: list = []
    monkeypatch.setattr("diffusion_hpc.pipeline.guided.solid_occupancy", lambda v, f: built.append(1) or solid_occupancy(v, f))
    return built


def test_interpenetration_of_posed_people_answers_as_testing_every_pair(anny_body, voxelised):
    rng = np.random.default_rng(0)
    n = 12
    pose = {"global_orient": np.tile(np.array([np.pi, 0, 0], np.float32), (n, 1)),
            "body_pose": rng.normal(0, 0.25, (n, anny_body.num_body_joints, 3)).astype(np.float32),
            anny_body.shape_key: np.full((n, anny_body.shape_dim), anny_body.neutral_shape_value, np.float32),
            "transl": np.zeros((n, 3), np.float32)}  # fmt: skip
    vertices, _ = pose_bodies(SimpleNamespace(body=anny_body), pose)
    faces = anny_body.faces.numpy()
    answers = []
    # copies of one posed person side by side, their boxes from deeply overlapping to a metre apart
    for i, gap in enumerate([-0.5, -0.3, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 1.0, 1.0]):
        people = 2 + i % 2
        mesh = vertices[i % n]
        shift = np.array([np.ptp(mesh[:, 0]) + gap, 0.01 * i, 0.02 * (i % 3)], np.float32)
        scene = np.stack([mesh + p * shift for p in range(people)])
        voxelised.clear()
        fast = interpenetrating(scene, faces)
        assert fast == every_pair(scene, faces), (gap, people)
        if gap > SOLID_REACH_M:  # decided from the boxes alone, nothing voxelised
            assert not voxelised
        answers.append(fast)
    assert any(answers) and not all(answers)  # both answers were tested


def test_a_solid_reaching_past_its_box_is_still_found(voxelised):
    """A person's voxelised solid reaches a voxel or two past its vertices' box: meshes whose boxes do
    not overlap may still touch there, and the box test must not skip them (cubes whose corners line up)."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32) * 0.5
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])  # fmt: skip
    touching = 0
    for axis in range(3):
        for sign in (1, -1):
            for gap in np.arange(0.0, SOLID_REACH_M + 2 * VOXEL_M, VOXEL_M / 4):
                offset = np.zeros(3, np.float32)
                offset[axis] = sign * (0.5 + gap)
                scene = np.stack([corners, corners + offset])
                expected = every_pair(scene, faces)
                assert interpenetrating(scene, faces) == expected, (axis, sign, gap)
                touching += bool(expected and gap > 0)
    assert touching  # some boxes apart still touched through the solid's reach


def test_people_of_one_image_share_its_whole_image_pass_and_search():
    """Verification reads each person of a final image on its own region: the detector runs its
    whole-image pass and its tile search once per image, and every person's reading is the one a
    detector of its own gives (MediaPipe in static-image mode reads an image the same way twice)."""
    from diffusion_hpc.estimate.landmarks import MediaPipeDetector

    rng = np.random.default_rng(0)
    pair = two_people(256)
    noise = rng.integers(0, 256, (256, 256, 3), np.uint8)  # no one: the whole tile search runs
    left, right = np.zeros((2, 256, 256), bool)
    left[64:192, 8:120], right[64:192, 136:248] = True, True
    shared, counter = counting_detector()
    read = 0
    for image in (pair, noise):
        alone_calls = 0
        for mask in (left, right, None):
            alone, alone_counter = counting_detector()
            expected = alone.detect(image, mask)
            alone_calls += alone_counter.calls
            found = shared.detect(image, mask)
            assert (found is None) == (expected is None)
            if found is not None:
                np.testing.assert_array_equal(found.landmarks2d, expected.landmarks2d)
                np.testing.assert_array_equal(found.world, expected.world)
                assert found.crop == expected.crop
                read += 1
        assert counter.calls < alone_calls  # the whole-image pass (and the search) ran once
        counter.calls = 0
    assert read >= 2  # both people of the pair were read
    assert MediaPipeDetector().detect(noise) is None
