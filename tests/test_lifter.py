"""The MediaPipe landmark lifter (``estimate/lifter.py``): the shipped weights load and run on any
batch shape, device and dtype; its features ignore where and how large the person is in the image;
on renders the bench does not train on, its joints and the fit that follows them land closer to the
true joints than MediaPipe's world landmarks; the real photos keep facing the right way with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.estimate.landmarks import coco17_from_mediapipe
from diffusion_hpc.estimate.lifter import (
    LandmarkLifter,
    default_lifter_path,
    hip_centred,
    lifter_features,
    load_default_lifter,
    load_lifter,
    mirror_joints,
    mirror_landmarks,
    save_lifter,
    train_lifter,
)

LIMBS = np.arange(5, 17)


def limb_pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Limb PA-MPJPE (bench_estimate's figure): similarity Procrustes on the 12 limb joints."""
    a, b = pred[LIMBS] - pred[LIMBS].mean(0), gt[LIMBS] - gt[LIMBS].mean(0)
    u, s, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    scale = (s * np.diag(d)).sum() / (a**2).sum()
    return float(np.linalg.norm(scale * a @ (u @ d @ vt).T - b, axis=1).mean())


def fake_landmarks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 33, 3) image landmarks (px, visibility) and (n, 33, 3) world landmarks of a rough person."""
    rng = np.random.default_rng(seed)
    world = rng.normal(0.0, 0.25, (n, 33, 3))
    lm = np.concatenate([120 + 300 * world[..., :2], rng.uniform(0.2, 1.0, (n, 33, 1))], axis=-1)
    return lm, world


@pytest.fixture(scope="module")
def held_out_renders(tmp_path_factory):
    """Renders of seeds the lifter never trained on (scripts/train_lifter.py trains on seeds >= 10000),
    each with its MediaPipe detection on its true mask."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.pipeline.generate import generate

    out = tmp_path_factory.mktemp("lifter") / "ds"
    generate(GenerateConfig(n=8, image_size=(256, 256), seed=2025), out=out, progress=False)
    return [p for s in open_dataset(out) for p in persons_of(s)]


def test_shipped_lifter_loads_once_and_runs_on_any_batch_shape():
    path = default_lifter_path()
    assert path.is_file() and path.stat().st_size < 2 * 1024 * 1024  # the wheel's budget for it: under 2 MiB
    lifter = load_default_lifter()
    assert load_default_lifter() is lifter and not lifter.training
    assert lifter.record["data"]["renders"] > 1000  # the training record travels with the weights
    from diffusion_hpc.estimate import describe_estimator, get_estimator

    # run.json says which lifter labelled a dataset (file name and content fingerprint) or that none did
    assert describe_estimator(get_estimator("mediapipe"))["lifter"] == f"lifter.safetensors {lifter.fingerprint}"
    assert len(lifter.fingerprint) == 16
    assert describe_estimator(get_estimator("mediapipe", lifter="off"))["lifter"] == "off"
    lm, world = fake_landmarks(6)
    joints, swap = lifter.lift(lm.reshape(2, 3, 33, 3), world.reshape(2, 3, 33, 3))
    assert joints.shape == (2, 3, 17, 3) and swap.shape == (2, 3)
    assert np.all((swap >= 0) & (swap <= 1)) and np.isfinite(joints).all()
    np.testing.assert_allclose(hip_centred(joints), joints, atol=0.05)  # the hips stay near the origin
    # float64 on the CPU (and any other device / dtype) gives the same joints
    lifter64 = load_lifter(path, "cpu", torch.float64)
    assert lifter64.dtype == torch.float64 and lifter64.device == torch.device("cpu")
    np.testing.assert_allclose(lifter64.lift(lm, world)[0], joints.reshape(6, 17, 3), atol=1e-4)


def test_features_ignore_the_persons_place_and_size_in_the_image():
    lm, world = fake_landmarks(3)
    moved = lm.copy()
    moved[..., :2] = 2.5 * moved[..., :2] + np.array([40.0, -17.0])
    np.testing.assert_allclose(lifter_features(moved, world), lifter_features(lm, world), atol=1e-5)
    with pytest.raises(InputError, match="33, 3"):
        lifter_features(lm[:, :17], world)


def test_mirroring_twice_is_the_identity():
    lm, world = fake_landmarks(2)
    twice = mirror_landmarks(*mirror_landmarks(lm, world, 256), 256)
    np.testing.assert_allclose(twice[0], lm)
    np.testing.assert_allclose(twice[1], world)
    joints = world[:, :17]
    np.testing.assert_allclose(mirror_joints(mirror_joints(joints)), joints)


def test_lifted_joints_and_the_fit_beat_the_world_landmarks_on_held_out_renders(held_out_renders):
    """The property the lifter is for: its joints, and the fit that uses them as its 3D target, lie
    closer to the true joints (limb PA-MPJPE) than MediaPipe's own world landmarks."""
    from diffusion_hpc.estimate import get_estimator

    est = get_estimator("mediapipe", lifter="on")
    images = [s["image"] for s in held_out_renders]
    detections = est.detect(images, [s["mask"] for s in held_out_renders])
    found = [i for i, d in enumerate(detections) if d is not None]
    assert len(found) >= 6
    dets = [detections[i] for i in found]
    truth = [held_out_renders[i]["joints3d"]["coco17"] for i in found]
    lifted, _ = est.lifter.lift(np.stack([d.landmarks2d for d in dets]), np.stack([d.world for d in dets]))
    world_err = np.mean([limb_pa_mpjpe(coco17_from_mediapipe(d.world), t) for d, t in zip(dets, truth)])
    lifted_err = np.mean([limb_pa_mpjpe(j, t) for j, t in zip(lifted, truth)])
    fits = est.fit(dets, [images[i].shape[:2] for i in found])
    fit_err = np.mean([limb_pa_mpjpe(r.joints3d["coco17"], t) for r, t in zip(fits, truth) if r.ok])
    assert lifted_err < world_err and fit_err < world_err, (lifted_err, fit_err, world_err)


def test_real_photos_keep_facing_the_camera_with_the_lifter():
    """Issue 14's photo check with the lifter on: the astronaut and Grace Hopper face the camera,
    unswapped (the lifter keeps MediaPipe's labels)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    from diffusion_hpc.estimate import get_estimator

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        grace = np.asarray(im.convert("RGB"))
    for name, est in zip(("astronaut", "grace_hopper"),
                         get_estimator("mediapipe", lifter="on").estimate([skimage.data.astronaut(), grace])):
        assert est.ok and est.facing == "front" and est.fit_hypothesis == "base", (name, est.facing, est.fit_hypothesis)
        assert est.keypoints2d[5, 0] > est.keypoints2d[6, 0], name  # the left shoulder on the image right


def test_training_is_reproducible_and_files_round_trip(tmp_path):
    """train_lifter is seeded: the same data and seed give the same weights; a saved file loads
    back to the same outputs; a missing or foreign file is refused with a message naming it."""
    torch.set_num_threads(1)
    lm, world = fake_landmarks(64)
    x = lifter_features(lm, world)
    y = hip_centred(0.9 * coco17_from_mediapipe(world))  # a learnable target: the world joints, shrunk
    swapped = np.arange(64) % 5 == 0
    a = train_lifter(x, y, swapped, hidden=16, depth=2, epochs=3, batch=16, seed=3)
    b = train_lifter(x, y, swapped, hidden=16, depth=2, epochs=3, batch=16, seed=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    path = save_lifter(tmp_path / "l.safetensors", a, {"note": "test"})
    back = load_lifter(path)
    assert isinstance(back, LandmarkLifter) and back.record == {"note": "test"}
    np.testing.assert_allclose(back.lift(lm, world)[0], a.lift(lm, world)[0], atol=1e-6)
    with pytest.raises(MissingModelError, match="train_lifter.py"):
        load_lifter(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="junk.safetensors"):
        load_lifter(tmp_path / "junk.safetensors")


def test_the_fitter_takes_a_retrained_weights_file_and_names_a_bad_one(tmp_path):
    """MediaPipeFitter(lifter=...) resolves 'on', 'off' and a path to a file of train_lifter.py --out
    (str or Path); a missing path or a file that is not a lifter fails with the value in the message."""
    from diffusion_hpc.estimate.mediapipe_fit import resolve_lifter

    lm, world = fake_landmarks(16)
    mine = train_lifter(lifter_features(lm, world), hip_centred(coco17_from_mediapipe(world)), np.zeros(16, bool),
                        hidden=8, depth=1, epochs=1, batch=8)
    path = save_lifter(tmp_path / "retrained.safetensors", mine, {"note": "user"})
    for spec in (path, str(path)):
        got = resolve_lifter(spec)
        assert got.path_name == "retrained.safetensors" and got.record == {"note": "user"}
        np.testing.assert_allclose(got.lift(lm, world)[0], mine.lift(lm, world)[0], atol=1e-6)
    assert resolve_lifter("off") is None and resolve_lifter("on") is load_default_lifter()
    with pytest.raises(MissingModelError, match="'of' is neither 'on', 'off' nor"):
        resolve_lifter("of")
    with pytest.raises(MissingModelError, match="train_lifter.py --out"):
        resolve_lifter(tmp_path / "missing.safetensors")
    (tmp_path / "prior.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(InputError, match="prior.safetensors"):
        resolve_lifter(tmp_path / "prior.safetensors")
