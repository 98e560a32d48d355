"""Pose priors: the shipped Anny prior (CMU mocap), the VPoser adapter, pose augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_hpc.errors import MissingModelError

#: Held-out (split by skeleton) easy-vs-hard AUC of the shipped prior must stay above this. The
#: labels are per motion file, not per frame, so ~0.69 is what a well-fitted prior reaches.
MIN_HELDOUT_AUC = 0.65


@pytest.fixture(scope="module")
def prior():
    from diffusion_hpc.prior import get_prior

    return get_prior("anny")


@pytest.fixture(scope="module")
def poses():
    from diffusion_hpc.poses.io import builtin_poses

    return builtin_poses()


def _first(poses, word):
    idx = [i for i, d in enumerate(poses.description) if word in str(d).lower()]
    assert idx, word
    return torch.tensor(poses.body_pose[idx])


def test_score_orders_everyday_below_extreme(prior, poses):
    walk = prior.score(_first(poses, "walk")).median()
    cart = prior.score(_first(poses, "cartwheel")).median()
    breakdance = prior.score(_first(poses, "breakdance")).median()
    assert walk < cart and walk < breakdance
    # An anatomically impossible pose: knees bent 150 degrees the wrong way, arms twisted.
    bad = torch.tensor(poses.body_pose[:1]).clone()
    from diffusion_hpc.body.joint_sets import ANNY_CMU31

    for bone in ("LeftLeg", "RightLeg"):
        bad[0, ANNY_CMU31.index(bone) - 1] = torch.tensor([-2.6, 0.0, 0.0])
    for bone in ("LeftForeArm", "RightForeArm"):
        bad[0, ANNY_CMU31.index(bone) - 1] = torch.tensor([0.0, 2.8, 0.0])
    assert prior.score(bad).item() > prior.score(_first(poses, "walk")).max()
    assert not prior.is_plausible(bad).item()
    assert (prior.score(torch.tensor(poses.body_pose)) >= 0).all()


def test_heldout_auc_recorded_and_reproducible(prior, poses):
    from diffusion_hpc.prior.fit import assign_folds, auc, fit_params, log_density, log_peak, pose_groups, _features
    from diffusion_hpc.prior.anny_prior import label_easy_hard

    cal = prior.metadata["calibration"]
    assert cal["heldout_auc"] > MIN_HELDOUT_AUC
    # Recompute the held-out scores of the selected model (5 folds by skeleton) and check the AUC.
    x = _features(poses.body_pose)
    fold = assign_folds(pose_groups(poses), 5, 0)
    md = prior.metadata
    scores = np.empty(len(x))
    for f in range(5):
        p = fit_params(x[fold != f], md["d"], md["k"], f, md["training"]["reg"], md["residual_scale"])
        scores[fold == f] = -2 * (log_density(x[fold == f], p) - log_peak(p))
    lab = label_easy_hard(poses.description)
    assert auc(scores[lab == 0], scores[lab == 1]) == pytest.approx(cal["heldout_auc"], abs=2e-3)


def test_perturb_plausible_and_different(prior, poses):
    bp = torch.tensor(poses.body_pose[::25])
    g = torch.Generator().manual_seed(1)
    var = prior.perturb(bp, 1.0, g)
    assert var.shape == bp.shape
    assert prior.is_plausible(var).all()
    assert ((var - bp).abs().amax(dim=(1, 2)) > 1e-3).all()
    assert torch.equal(prior.perturb(bp, 0.0, g), bp)
    again = prior.perturb(bp, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(var, again)


def test_variants_harder_than_inputs_and_plausible(prior, poses):
    """The original's augmentation pushes variants outward (z * (1.5 + 0.3 N)): on average they are
    harder than the pose they come from, and still plausible, for training poses and for new ones."""
    bp = torch.tensor(poses.body_pose[::12])  # 62 poses: walking ... breakdance
    g = torch.Generator().manual_seed(0)
    var = prior.perturb(bp, 1.0, g)
    assert prior.is_plausible(var).all()
    s_in, s_var = prior.score(bp), prior.score(var)
    assert s_var.mean() >= 1.5 * s_in.mean() and (s_var >= s_in).float().mean() >= 0.9
    # Poses the prior has not seen: rotations jittered by 0.03 rad score like held-out poses (mean
    # ~150), by 0.08 rad near the plausible edge (mean ~660): variants are harder, all plausible
    # (the pushes past the edge are shrunk back only as far as needed).
    for sigma in (0.03, 0.08):
        new = bp + sigma * torch.randn(bp.shape, generator=torch.Generator().manual_seed(1))
        new = new[prior.is_plausible(new)]
        assert len(new) > 55
        v = prior.perturb(new, 1.0, g)
        assert prior.is_plausible(v).all() and (prior.score(v) >= prior.score(new)).float().mean() >= 0.9
    # An implausible input comes back plausible; strength scales the push.
    bad = bp[:4].clone()
    bad[:, :, 0] += 2.5
    assert not prior.is_plausible(bad).any() and prior.is_plausible(prior.perturb(bad, 1.0, g)).all()
    weak = prior.perturb(bp, 0.2, torch.Generator().manual_seed(0))
    assert s_in.mean() < prior.score(weak).mean() < s_var.mean()


def test_push_whitened_and_bisection_maths():
    from diffusion_hpc.prior.anny_prior import bisect_plausible, push_whitened

    g = torch.Generator().manual_seed(0)
    w = torch.ones(4000, 60)
    f = push_whitened(w, torch.randn(w.shape, generator=g))
    assert f.mean().item() == pytest.approx(1.5, abs=0.01) and f.std().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(push_whitened(w, torch.randn(w.shape, generator=g), 0.0), w)
    # A path whose pose holds the fraction t and the row; plausible up to a per-row limit.
    limit = torch.tensor([1.0, 0.3, 0.0, 0.77])

    def decode(t, rows):
        pose = torch.zeros(len(rows), 30, 3)
        pose[:, 0, 0], pose[:, 0, 1] = t, rows.float()
        return pose

    def plausible(pose):
        return pose[:, 0, 0] <= limit[pose[:, 0, 1].long()] + 1e-9

    out, t = bisect_plausible(decode, plausible, 4, 8)
    assert t[0] == 1.0 and (t <= limit).all() and (limit - t < 2**-8 + 1e-9).all()
    assert torch.equal(out[:, 0, 0], t)


def test_sample_plausible(prior):
    s = prior.sample(64, torch.Generator().manual_seed(0))
    assert s.shape == (64, 30, 3) and torch.isfinite(s).all()
    assert prior.is_plausible(s).all()


def test_penalty_gradients(prior, poses):
    bp = torch.tensor(poses.body_pose[:4]).requires_grad_(True)
    prior.penalty(bp).sum().backward()
    assert torch.isfinite(bp.grad).all() and bp.grad.abs().sum() > 0
    z = torch.zeros(1, 30, 3, requires_grad=True)
    prior.penalty(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_shipped_file_safetensors_metadata(prior):
    from safetensors import safe_open

    from diffusion_hpc.prior.anny_prior import default_prior_path

    path = default_prior_path()
    assert path.stat().st_size < 200_000
    with safe_open(str(path), framework="pt") as fh:  # no pickle involved
        meta = json.loads(fh.metadata()["dhpc"])
    assert meta == prior.metadata
    assert prior.hard_threshold == meta["hard_threshold"] and prior.plausible_threshold == meta["plausible_threshold"]
    assert meta["calibration"]["n_easy"] > 100 and meta["calibration"]["n_hard"] > 100
    assert any(c["selected"] for c in meta["comparison"]) and len(meta["comparison"]) >= 2


def test_describe_records_file_and_thresholds(prior):
    import hashlib

    from diffusion_hpc.prior.anny_prior import default_prior_path

    d = prior.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == "anny" and d["file"] == str(default_prior_path())
    assert d["sha256"] == hashlib.sha256(default_prior_path().read_bytes()).hexdigest()
    assert (d["hard_threshold"], d["corpus_hard_threshold"], d["plausible_threshold"]) == (
        prior.hard_threshold, prior.metadata["calibration"]["in_sample_hard_threshold"], prior.plausible_threshold)
    assert d["corpus_hard_threshold"] < d["hard_threshold"]


def test_fit_prior_roundtrip(tmp_path, poses):
    from diffusion_hpc.prior import get_prior
    from diffusion_hpc.prior.fit import fit_prior

    out = tmp_path / "p.safetensors"
    r = fit_prior(poses, out, seed=0, candidates=((12, 1, 3.0), (12, 2, 3.0)), folds=3)
    assert out.is_file() and not list(tmp_path.glob(".*tmp"))
    loaded = get_prior("anny", out)
    assert loaded.metadata["d"] == 12 and len(r["comparison"]) == 2
    assert loaded.score(torch.tensor(poses.body_pose[:3])).shape == (3,)


def test_missing_anny_file(tmp_path):
    from diffusion_hpc.prior import get_prior

    with pytest.raises(MissingModelError, match="fit"):
        get_prior("anny", tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- VPoser


@pytest.fixture(scope="module")
def vposer_ckpt(tmp_path_factory):
    from diffusion_hpc.prior.vposer import VPoserNet

    torch.manual_seed(0)
    net = VPoserNet()
    state = {f"vp_model.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("vposer") / "V02_05_epoch=08_val_loss=0.03.ckpt"
    torch.save({"state_dict": state, "epoch": 8}, path)
    return path, net


def test_vposer_roundtrip(vposer_ckpt):
    from diffusion_hpc.prior import get_prior

    path, net = vposer_ckpt
    prior = get_prior("vposer", path)
    assert prior.describe()["file"] == str(path) and prior.describe()["hard_threshold"] == 30.0
    assert torch.equal(prior.net.decoder_net[5].weight, net.decoder_net[5].weight)
    bp = 0.3 * torch.randn(5, 23, 3, generator=torch.Generator().manual_seed(0))
    q = prior.encode(bp)
    assert q.mean.shape == (5, 32) and (q.stddev > 0).all()
    dec = prior.decode(q.mean)
    assert dec.shape == (5, 21, 3)
    s = prior.score(bp)
    assert s.shape == (5,) and (s >= 0).all()
    assert torch.allclose(s, (q.mean**2).sum(-1))
    assert prior.sample(4, torch.Generator().manual_seed(0)).shape == (4, 23, 3)
    var = prior.perturb(bp, 1.0, torch.Generator().manual_seed(0))
    assert var.shape == bp.shape and torch.equal(var[:, 21:], bp[:, 21:])
    assert torch.equal(prior.perturb(bp, 0.0), bp)
    x = bp.clone().requires_grad_(True)
    prior.penalty(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_vposer_safetensors(vposer_ckpt, tmp_path):
    from safetensors.torch import save_file

    from diffusion_hpc.prior.vposer import VPoserPrior

    _, net = vposer_ckpt
    path = tmp_path / "vposer.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    prior = VPoserPrior(path)
    assert torch.equal(prior.net.encoder_net[8].mu.weight, net.encoder_net[8].mu.weight)


def test_vposer_augmentation_statistics():
    from diffusion_hpc.prior.vposer import augment_betas, augment_latent, augment_orientation

    g = torch.Generator().manual_seed(0)
    z = torch.ones(4000, 32)
    f = augment_latent(z, g)
    assert f.mean().item() == pytest.approx(1.5, abs=0.01) and f.std().item() == pytest.approx(0.3, abs=0.01)
    d = augment_orientation(torch.zeros(20000, 3), g)
    assert np.rad2deg(d.std(0).numpy()) == pytest.approx([10, 10, 10], rel=0.03)
    b = augment_betas(torch.full((20000, 10), 2.0), g) / 2.0
    assert b.mean().item() == pytest.approx(1.0, abs=0.005) and b.std().item() == pytest.approx(0.1, abs=0.005)


def test_vposer_missing(tmp_path):
    from diffusion_hpc.prior import get_prior

    missing = tmp_path / "V02_05" / "snapshots" / "x.ckpt"
    with pytest.raises(MissingModelError) as err:
        get_prior("vposer", missing)
    assert str(missing) in str(err.value) and "smpl-x.is.tue.mpg.de" in str(err.value) and "V02_05" in str(err.value)
    with pytest.raises(MissingModelError, match="smpl-x"):
        get_prior("vposer", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingModelError, match="no VPoser weights"):
        get_prior("vposer", tmp_path / "empty")


# --------------------------------------------------------------------------- augmentation


def test_augment_poses_anny(prior, poses):
    from diffusion_hpc.prior import augment_poses

    bp = poses.body_pose[:2]
    go = np.zeros((2, 3), np.float32)
    ph = np.full((2, 6), 0.5, np.float32)
    out = augment_poses(prior, bp, go, ph, k=3, generator=0)
    assert out.body_pose.shape == (2, 3, 30, 3) and out.global_orient.shape == (2, 3, 3) and out.shape.shape == (2, 3, 6)
    assert np.array_equal(out.body_pose[:, 0], bp) and np.array_equal(out.global_orient[:, 0], go) and np.array_equal(out.shape[:, 0], ph)
    assert out.plausible.all() and out.redraws >= 0
    assert not np.allclose(out.body_pose[:, 1], bp) and not np.allclose(out.global_orient[:, 1], go)
    assert (out.shape >= 0).all() and (out.shape <= 1).all()
    again = augment_poses(prior, bp, go, ph, k=3, generator=0)
    assert np.array_equal(out.body_pose, again.body_pose)
    # Each variant carries its own score and hard flag (the input's in column 0).
    assert out.scores.shape == out.hard.shape == (2, 3)
    assert np.allclose(out.scores[:, 0], prior.score(torch.tensor(bp)).numpy(), rtol=1e-3)  # batch-size round-off
    assert (out.scores[:, 1:] > out.scores[:, :1]).all()
    assert np.array_equal(out.hard, out.scores >= prior.hard_threshold)
    shared = augment_poses(prior, bp[:1], go, ph, k=2, generator=0)  # one pose for two guides
    assert np.array_equal(shared.body_pose[:, 0], np.repeat(bp[:1], 2, 0))


def test_augment_poses_vposer(vposer_ckpt):
    from diffusion_hpc.prior import augment_poses, get_prior

    prior = get_prior("vposer", vposer_ckpt[0])
    bp = 0.2 * np.random.default_rng(0).standard_normal((2, 23, 3)).astype(np.float32)
    betas = np.ones((2, 10), np.float32)
    out = augment_poses(prior, bp, np.zeros((2, 3), np.float32), betas, k=3, generator=0, body_model="smpl")
    assert out.body_pose.shape == (2, 3, 23, 3) and np.array_equal(out.body_pose[:, 0], bp)
    assert np.array_equal(out.shape[:, 0], betas) and not np.allclose(out.shape[:, 1], betas)


# --------------------------------------------------------------------------- prompts per variant


def test_templates_per_variant_differ_and_are_reproducible():
    from diffusion_hpc.generate.base import PROMPT_TEMPLATES
    from diffusion_hpc.pipeline.requests import variant_prompt

    assert len(PROMPT_TEMPLATES) == 8 and len(set(PROMPT_TEMPLATES)) == 8
    assert all(t.count("{action}") == 1 for t in PROMPT_TEMPLATES)
    k, guides = 3, 40
    prompts = [[variant_prompt("doing a backflip", 7, g * k + v) for v in range(k)] for g in range(guides)]
    # Each variant draws its own template: the variants of a guide do not all share one.
    assert sum(len(set(p)) > 1 for p in prompts) > guides // 2
    used = {p for row in prompts for p in row}
    assert len(used) == 8 and all(p.endswith(" doing a backflip") for p in used)
    # Reproducible and order-free: from (run seed, sample index) alone.
    assert [variant_prompt("doing a backflip", 7, i) for i in reversed(range(k * guides))][::-1] == sum(prompts, [])
    assert [variant_prompt("doing a backflip", 8, i) for i in range(30)] != sum(prompts, [])[:30]
    # A full prompt line is used verbatim by every variant.
    assert {variant_prompt("a skier on a slope, winter", 7, i) for i in range(6)} == {"a skier on a slope, winter"}
