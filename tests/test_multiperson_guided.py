"""Modes T and R with several people in a start image: the segmenter splits its person mask into people,
each person found is estimated on its own region and labelled, variant v of a guide holds variant v
of each of its people where the estimate put them, and verification reads each person on its region.

Real photos: a start image holding scikit-image's astronaut and matplotlib's Grace Hopper side by side
(the real-image path; no photo of two people ships in the wheels).
"""

from __future__ import annotations

from pathlib import Path

import diffusers  # noqa: F401  (hard dependencies: a broken install fails the suite, never skips it)
import matplotlib
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.config.generate import MAX_PEOPLE
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.estimate.base import Estimate, rebase_estimate
from diffusion_hpc.geometry.camera import project
from diffusion_hpc.pipeline.generate import generate
from diffusion_hpc.segment import make_segmenter
from diffusion_hpc.segment.base import number_people, split_people

from conftest import manifest_rows

SIZE = 256  # MediaPipe reads people of about 100 px; the tiny backbone regenerates at any size

pytestmark = pytest.mark.usefixtures("one_thread")


def two_people(size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: the astronaut (left) and Grace Hopper (right), each half the image high, a
    grey gap between them."""
    import cv2

    half, gap = size // 2, size // 16
    astronaut = cv2.resize(skimage.data.astronaut(), (half, half), interpolation=cv2.INTER_AREA)
    hopper = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    hopper = cv2.resize(hopper, (round(hopper.shape[1] * half / hopper.shape[0]), half), interpolation=cv2.INTER_AREA)
    canvas = np.full((size, size, 3), 200, np.uint8)
    top = size // 4
    canvas[top: top + half, : half - gap] = astronaut[:, gap:]
    width = min(hopper.shape[1], half - gap)
    canvas[top: top + half, half + gap: half + gap + width] = hopper[:, :width]
    return canvas


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    Image.fromarray(two_people()).save(folder / "pair.png")
    return folder


def r_config(backbone, guides, **kw) -> GenerateConfig:
    base = dict(mode="R", guides=guides, backbone=str(backbone), image_size=(SIZE, SIZE), n=2, k=2, seed=5,
                batch_size=2, preset="turbo")  # fmt: skip
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_backbone, guides):
    out = tmp_path_factory.mktemp("r") / "d"
    result = generate(r_config(tiny_backbone, guides), out, progress=False)
    assert result.accepted == 2, manifest_rows(out)
    return out


# --- splitting a person mask into people -----------------------------------------------------------


def test_people_are_numbered_by_size_and_small_regions_get_no_number():
    mask = np.zeros((100, 100), bool)
    mask[10:40, 5:20] = True  # 30 rows, 450 px
    mask[20:90, 50:80] = True  # 70 rows, 2100 px: the largest is person 0
    mask[95:99, 90:95] = True  # 4 rows < 10 % of the height: no person number
    people = split_people(mask)
    assert set(np.unique(people)) == {-1, 0, 1}
    assert (people[20:90, 50:80] == 0).all() and (people[10:40, 5:20] == 1).all() and (people[95:99, 90:95] == -1).all()
    assert np.array_equal(people >= 0, mask & ~(np.arange(100)[:, None] >= 95))
    mask[30:35, 20:50] = True  # a bridge: touching people are one region (an instance segmenter splits them)
    assert set(np.unique(split_people(mask))) == {-1, 0}
    # instances that overlap: the larger keeps the shared pixels
    a, b = np.zeros((2, 50, 50), bool)
    a[0:40, 0:30], b[10:50, 20:35] = True, True
    numbered = number_people(np.stack([b, a]))
    assert (numbered[a] == 0).all() and (numbered[b & ~a] == 1).all()


def test_the_mediapipe_segmenter_finds_both_people_of_a_real_photo_pair():
    seg = make_segmenter("mediapipe").segment(two_people())
    assert seg.people(0) == 2
    left, right = (seg.instances[0] == p for p in range(2))
    columns = [np.nonzero(m.any(axis=0))[0] for m in (left, right)]
    halves = sorted(c.mean() < SIZE / 2 for c in columns)
    assert halves == [False, True]  # one person per half
    assert np.array_equal(seg.instances[0] >= 0, seg.person[0] & (seg.instances[0] >= 0))


# --- a regressor's people in one camera ---------------------------------------------------------------


def test_rebase_keeps_the_root_pixel_and_the_apparent_size():
    rng = np.random.default_rng(0)
    joints = rng.normal(0, [0.2, 0.5, 0.1], (17, 3)) + [0.4, -0.2, 6.0]  # a body's extent: 1.5 m high, 0.3 m deep
    K_box = np.array([[900.0, 0, 300], [0, 900.0, 180], [0, 0, 1]])
    K_image = np.array([[600.0, 0, 256], [0, 600.0, 256], [0, 0, 1]])
    est = Estimate(ok=True, params={"transl": np.array([0.4, -0.2, 6.0], np.float32)}, K=K_box,
                   joints3d={"h36m17": joints, "coco17": joints}, keypoints2d=np.c_[project(joints, K_box), np.ones(17)])
    moved = rebase_estimate(est, K_image)
    assert np.array_equal(moved.K, K_image)
    before, after = project(joints, K_box), project(moved.joints3d["coco17"], K_image)
    assert np.abs(after[0] - before[0]).max() < 1e-6  # the root lands on the same pixel
    height = np.ptp(before[:, 1])
    assert np.abs(after - before).max() < 0.05 * height  # the body within its depth extent / distance
    spread = lambda uv: np.linalg.norm(uv - uv.mean(0), axis=1).mean()  # noqa: E731
    assert spread(after) == pytest.approx(spread(before), rel=0.02)
    assert np.abs(moved.keypoints2d[:, :2] - after).max() < 1e-6
    delta = moved.params["transl"] - est.params["transl"]
    assert np.allclose(moved.joints3d["h36m17"] - joints, delta, atol=1e-5)


# --- mode R end to end --------------------------------------------------------------------------------


def test_every_person_of_a_start_image_gets_a_label_on_its_person(pair_run, anny_body):
    """Both people are labelled in every sample; per person 2D = projection of 3D, 3D = body forward; each
    person's label lies on its own person of the start image; the variants keep where each person stands."""
    seg = make_segmenter("mediapipe").segment(two_people())
    samples = list(open_dataset(pair_run))
    assert len(samples) == 2
    transl = []
    for sample in samples:
        persons = persons_of(sample)
        assert len(persons) == 2 and sample["scores"]["people"] == 2 and sample["scores"]["people_found"] == 2
        masks = np.stack([p["mask"] for p in persons])
        assert (masks.sum(0) <= 1).all() and np.array_equal(masks.any(0), sample["mask"])
        assert np.array_equal(sample["mask"], sample["depth"] > 0)
        for p, person in enumerate(persons):
            params = {k: torch.as_tensor(v)[None] for k, v in person["params"].items()}
            with torch.no_grad():
                out = anny_body(params)
            for name, joints in person["joints3d"].items():
                assert np.abs(out.joints[name][0].numpy() - joints).max() <= 1e-3, name
            assert np.abs(project(person["joints3d"]["coco17"], sample["K"]) - person["keypoints2d"][:, :2]).max() <= 0.5
            # its label covers its own person of the start image more than the other one, and stands on
            # its side of the image (the selfie mask leaks onto the grey below both photos, where the
            # fitted legs of the two busts go: the regions alone do not separate them)
            own, other = seg.instances[0] == p, seg.instances[0] == 1 - p
            assert (person["mask"] & own).sum() > (person["mask"] & other).sum()
            side = lambda m: np.nonzero(m)[1].mean() < SIZE / 2  # noqa: E731
            assert side(person["mask"]) == side(own)
            assert person["pose_source"].endswith(f"#variant{sample['index'] % 2}#person{p}")
            assert {"prior_score", "hard", "fit_error_px", "pck_agreement", "person_found"} <= set(person["scores"])
        assert sample["scores"]["prior_score"] == max(p["scores"]["prior_score"] for p in persons)
        finite = [p["scores"]["pck_agreement"] for p in persons if p["scores"]["pck_agreement"] is not None]
        if finite:  # the sample agrees as well as its least agreeing person
            assert sample["scores"]["pck_agreement"] == pytest.approx(min(finite))
        transl.append(np.stack([p["params"]["transl"] for p in persons]))
    # variant 1 of the guide holds both people where the estimate (variant 0) put them, in other poses
    assert np.array_equal(transl[0], transl[1])
    poses = [[p["params"]["body_pose"] for p in persons_of(s)] for s in samples]
    assert all(not np.array_equal(a, b) for a, b in zip(*poses))


def test_people_one_labels_the_largest_person_as_the_multi_person_run_does(pair_run, tiny_backbone, guides, tmp_path):
    """``--people 1`` labels the largest person only; it is the same person, with the same variants (its
    own augmentation stream), as person 0 of the run that labels everyone (the others painted grey in both)."""
    result = generate(r_config(tiny_backbone, guides, people="1", verify=False), tmp_path / "one", progress=False)
    assert result.accepted == 2
    for alone, crowd in zip(open_dataset(tmp_path / "one"), open_dataset(pair_run)):
        (person,) = persons_of(alone)
        first = persons_of(crowd)[0]
        for key, value in first["params"].items():
            np.testing.assert_allclose(person["params"][key], value, atol=1e-4, err_msg=key)  # the batched fit's rounding


def test_too_few_people_rejects_the_start_image_and_says_why(tiny_backbone, guides, tmp_path):
    assert GenerateConfig(mode="R", guides=guides, backbone="b").people_range() == (1, MAX_PEOPLE)
    result = generate(r_config(tiny_backbone, guides, people="3-4", verify=False), tmp_path / "d", progress=False)
    assert result.accepted == 0
    reasons = {row["reason"] for row in manifest_rows(tmp_path / "d")}
    assert reasons == {"estimate: 2 of the people found fitted, --people needs 3"}


def test_a_variant_whose_people_interpenetrate_is_dropped_unless_its_estimates_do(anny_body):
    from types import SimpleNamespace

    from diffusion_hpc.pipeline.guided import drop_interpenetrating
    from diffusion_hpc.pipeline.stages import pose_bodies
    from diffusion_hpc.pipeline.samples import PlacedBodies, SampleLog

    zero = {"global_orient": np.array([np.pi, 0, 0], np.float32), "body_pose": np.zeros((anny_body.num_body_joints, 3), np.float32),
            anny_body.shape_key: np.full(anny_body.shape_dim, anny_body.neutral_shape_value, np.float32)}  # fmt: skip
    apart, together = [-0.6, 0, 4.0], [-0.05, 0, 4.0]
    # guide 0: estimates apart, variant 1 walks person 1 into person 0; guide 1: estimates already touch
    scenes = [(0, [apart, [0.6, 0, 4.0]]), (0, [apart, together]), (1, [together, [0.0, 0, 4.0]]), (1, [together, together])]
    persons = [dict(zero, transl=np.array(t, np.float32)) for _, places in scenes for t in places]
    bodies = PlacedBodies([SampleLog(index=i, seed=i) for i in range(4)],
                          {k: np.stack([p[k] for p in persons]) for k in persons[0]}, np.tile(np.eye(3), (4, 1, 1)),
                          owner=np.repeat(np.arange(4), 2))  # fmt: skip
    bodies.vertices, bodies.joints = pose_bodies(SimpleNamespace(body=anny_body), bodies.params)
    drop_interpenetrating(bodies, [g for g, _ in scenes], anny_body.faces.numpy())
    assert [log.reason for log in bodies.logs] == ["", "augment: the variant's people interpenetrate", "", ""]


def test_several_people_same_bytes_whatever_the_batch(tiny_backbone, guides, tmp_path):
    """A resumed run's batches start at another guide: the people of a guide do not depend on the
    guides they share a batch with."""
    from conftest import dataset_digest

    digests = []
    for batch_size in (2, 4):
        out = tmp_path / f"b{batch_size}"
        generate(r_config(tiny_backbone, guides, n=4, batch_size=batch_size, shard_size=2, verify=False), out, progress=False)
        assert sum(len(persons_of(s)) for s in open_dataset(out)) == 8
        digests.append(dataset_digest(out))
    assert digests[0] == digests[1]
