"""FID / KID / H-FID and the quality report, with a randomly initialised FID Inception-v3.

The network has the standard architecture; its random weights are saved to a tmp file and loaded
through the same path as real weights (``load_inception``). Images are tiny (40 px, resized to
299 inside) and sets hold a handful of samples, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from diffusion_hpc.config import QualityConfig
from diffusion_hpc.errors import MissingModelError

SIZE = 40


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    from diffusion_hpc.eval.inception import FIDInceptionV3, init_random_, save_state_dict

    path = tmp_path_factory.mktemp("fid") / "random_inception.pth"
    return save_state_dict(init_random_(FIDInceptionV3(), seed=0), path)


@pytest.fixture(scope="module")
def model(weights_file):
    from diffusion_hpc.eval.inception import load_inception

    return load_inception(weights_file)


def _person_mask(h: int, w: int, cx: float, cy: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx - cx) / (0.18 * w)) ** 2 + ((yy - cy) / (0.38 * h)) ** 2 <= 1.0


def _images(n: int, seed: int, size: int = SIZE) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n synthetic (size, size, 3) uint8 images (smooth background + textured 'person' ellipse), masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float64)
        bg = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
        person = rng.integers(0, 256, (size, size, 3)).astype(np.float64) * 0.5 + np.array([120, 60, 30])
        mask = _person_mask(size, size, size * rng.uniform(0.4, 0.6), size * rng.uniform(0.45, 0.55))
        images.append(np.clip(np.where(mask[..., None], person, bg), 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


def _perturb(image: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    from PIL import Image, ImageFilter

    if kind == "noise":
        noise = np.random.default_rng(seed).normal(0, strength, image.shape)
        return np.clip(image + noise, 0, 255).astype(np.uint8)
    if kind == "blur":
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(strength)))
    if kind == "colour":
        return np.clip(image.astype(np.float64) + np.array([strength, 0, -strength]), 0, 255).astype(np.uint8)
    raise ValueError(kind)


# ------------------------------------------------------------------------------------ FID


def test_weights_roundtrip_key_for_key(weights_file, model, tmp_path):
    import torch

    from diffusion_hpc.eval.inception import FIDInceptionV3, load_inception, save_state_dict

    state = torch.load(weights_file, weights_only=True)
    assert set(state) == set(FIDInceptionV3().state_dict())
    assert state["fc.weight"].shape == (1008, 2048) and "Mixed_7c.branch3x3dbl_3b.conv.weight" in state
    # files of old torch lack num_batches_tracked; safetensors conversions load too
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    safe = save_state_dict(model, tmp_path / "w.safetensors")
    ref = model.state_dict()
    for path in (tmp_path / "old.pth", safe):
        loaded = load_inception(path).state_dict()
        assert all(torch.equal(loaded[k], ref[k]) for k in ref if not k.endswith("num_batches_tracked"))
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 299, 299)).shape == (1, 2048)


def test_fid_self_zero_and_grows_with_perturbation(model):
    from diffusion_hpc.eval.quality import feature_stats, fid_from_features, image_features

    base, _ = _images(3, seed=1)
    f0 = image_features(model, base, batch_size=3)
    mu, sigma = feature_stats(f0)
    scale = 2 * np.trace(sigma)
    assert abs(fid_from_features(f0, f0)) <= 1e-3 * scale
    # deterministic features: a second pass (other batching) over the same images scores ~0 as well
    assert abs(fid_from_features(f0, image_features(model, base[::-1], batch_size=2))) <= 1e-3 * scale
    for kind, strengths in {"noise": (8, 40), "blur": (0.7, 2.5), "colour": (15, 60)}.items():
        fids = [fid_from_features(f0, image_features(model, [_perturb(im, kind, s) for im in base], 3))
                for s in strengths]
        assert 1e-3 * scale < fids[0] < fids[1], (kind, fids)


def test_frechet_distance_matches_closed_form():
    from diffusion_hpc.eval.quality import frechet_distance

    # diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    want = 5.0 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-9)


def test_lowrank_fid_equals_sqrtm_fid():
    from diffusion_hpc.eval.quality import fid_from_features

    rng = np.random.default_rng(2)
    for n1, n2 in ((10, 12), (200, 150)):  # rank-deficient and full-rank covariances (D = 48)
        a = rng.normal(size=(n1, 48)) * rng.uniform(0.5, 2, 48)
        b = rng.normal(0.2, 1.0, size=(n2, 48))
        want = fid_from_features(a, b, method="sqrtm")
        assert fid_from_features(a, b, method="lowrank") == pytest.approx(want, rel=1e-6)
    assert abs(fid_from_features(a, a, method="lowrank")) < 1e-9 * np.trace(np.cov(a, rowvar=False))


# ------------------------------------------------------------------------------------ KID


def test_kid_unbiased_on_equal_distributions():
    from diffusion_hpc.eval.quality import kid_from_features, kid_subset_values

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 32)), rng.normal(size=(300, 32))
    kid = kid_from_features(a, b, subsets=100, subset_size=100, seed=0)
    assert kid["subsets"] == 100 and kid["subset_size"] == 100 and (kid["n1"], kid["n2"]) == (300, 300)
    assert abs(kid["mean"]) <= 2 * kid["std"]
    values = kid_subset_values(a, b, subsets=100, subset_size=100)
    assert (values < 0).any() and (values > 0).any()  # unbiased: the estimate straddles 0
    shifted = kid_from_features(a, rng.normal(0.5, 1.0, size=(300, 32)), subsets=50, subset_size=100)
    assert shifted["mean"] > 10 * kid["std"]


def test_kid_matches_brute_force_unbiased_mmd():
    from diffusion_hpc.eval.quality import kid_subset_values

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 5)), rng.normal(0.3, 1.0, size=(6, 5))
    k = lambda u, v: (u @ v / 5 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    # subset size = full set: every subset is a permutation, the estimate is exact
    assert kid_subset_values(x, y, subsets=3, subset_size=100) == pytest.approx([xx + yy - 2 * xy] * 3, rel=1e-10)


# ------------------------------------------------------------------------ datasets, report


class _FakeSegmenter:
    """Person masks from the synthetic images' known ellipses (real images use this in the test)."""

    name = "fake"

    def __init__(self, masks_by_image):
        self.masks = masks_by_image
        self.calls = 0

    def segment(self, images):
        from diffusion_hpc.segment.base import Segmentation

        self.calls += 1
        person = np.stack([self.masks[im.tobytes()] for im in images])
        found = person.reshape(len(person), -1).any(1)
        return Segmentation(person, np.zeros_like(person), found, found.astype(np.float32))


def _pipeline_config_yaml(**changes) -> str:
    """The config.yaml a mode-T run writes (``GenerateConfig.to_yaml``)."""
    from diffusion_hpc.config import GenerateConfig

    return GenerateConfig(mode="T", backbone="tiny", prompt="doing a backflip", **changes).to_yaml()


def _pipeline_config(**changes) -> dict:
    """A mode-T run's config as the dataset reader returns it, with top-level keys replaced."""
    import yaml

    return dict(yaml.safe_load(_pipeline_config_yaml()), **changes)


def _scored_rows(scores, hard=None) -> list[dict]:
    """Accepted manifest rows as modes T/R write them: the estimated pose's prior score and, per
    guided sample, the generating prior's verdict ``hard`` (1.0 / 0.0); ``hard=None``: rows of a
    dataset that did not record it (only the score)."""
    rows = []
    for i, score in enumerate(scores):
        row_scores = {"prior_score": score} if hard is None or hard[i] is None else {"prior_score": score, "hard": hard[i]}
        rows.append({"key": f"{i:09d}", "index": i, "shard": 0, "seed": i, "status": "ok", "reason": "",
                     "scores": row_scores, "unet_evals": 68, "timings": {}})
    return rows


def _write_dataset(root: Path, images, masks, scores=None, failed=()) -> Path:
    from diffusion_hpc.data.schema import SampleRecord
    from diffusion_hpc.data.writer import DatasetWriter, ManifestRow

    writer = DatasetWriter(root, _pipeline_config_yaml()).open()
    records, rows = [], []
    for i, (im, mk) in enumerate(zip(images, masks)):
        key = f"{i:06d}"
        records.append(SampleRecord(
            key=key, index=i, seed=i, image=im, mask=mk, depth=np.where(mk, 3.0, 0.0).astype(np.float32),
            K=np.eye(3), body_model="anny", params={"pose": np.zeros(3)}, joints3d={}, keypoints2d=np.zeros((17, 3)),
            mode="T"))
        rows.append(ManifestRow(key, i, 0, i, "ok", scores=(scores[i] if scores else {}), unet_evals=50))
    for j, reason in enumerate(failed):
        i = len(images) + j
        rows.append(ManifestRow(f"{i:06d}", i, 0, i, "failed", reason=reason, unet_evals=50))
    writer.write_shard(0, records, rows)
    writer.finalize(1, {})
    return root


def test_hard_share_is_the_generating_priors_verdict(tmp_path):
    """A pose is hard by the prior the dataset was made with: each row's recorded ``hard`` flag, else
    that prior's threshold (the shipped Anny prior's ~179 by default, not VPoser's 30); the report
    says which was used."""
    from diffusion_hpc.errors import InputError
    from diffusion_hpc.eval.quality import manifest_stats
    from diffusion_hpc.prior import get_prior
    from diffusion_hpc.prior.anny_prior import save_prior_file

    shipped = get_prior("anny")
    scores = [5.0, 60.0, 120.0, shipped.hard_threshold + 20.0]  # three of four >= 30, one >= ~179
    config = _pipeline_config()

    def stats(rows, **kwargs):
        return manifest_stats(rows, config=kwargs.pop("config", config), **kwargs)["prior_score"]

    flagged = stats(_scored_rows(scores, hard=[0.0, 0.0, 0.0, 1.0]))
    assert flagged["hard_share"] == pytest.approx(1 / 4) and flagged["easy_share"] == pytest.approx(3 / 4)
    assert flagged["hard_threshold"] == pytest.approx(shipped.hard_threshold)
    assert "recorded" in flagged["hard_threshold_source"]
    # the flags decide, not a threshold applied afterwards (here flags a custom prior would give)
    assert stats(_scored_rows(scores, hard=[0.0, 1.0, 1.0, 1.0]))["hard_share"] == pytest.approx(3 / 4)

    # rows without flags: the threshold of the prior the config names (prior_path null: shipped)
    unflagged = stats(_scored_rows(scores))
    assert unflagged["hard_share"] == pytest.approx(1 / 4)
    assert unflagged["hard_threshold"] == pytest.approx(shipped.hard_threshold)
    assert "shipped Anny prior" in unflagged["hard_threshold_source"]
    mixed = stats(_scored_rows(scores, hard=[0.0, 0.0, None, None]))
    assert mixed["hard_share"] == pytest.approx(1 / 4)
    assert "2 of 4" in mixed["hard_threshold_source"] and "shipped Anny prior" in mixed["hard_threshold_source"]

    custom = save_prior_file(tmp_path / "my_prior.safetensors", shipped.state_tensors(),
                             dict(shipped.metadata, hard_threshold=50.0))
    own = stats(_scored_rows(scores), config=_pipeline_config(prior_path=str(custom)))
    assert own["hard_share"] == pytest.approx(3 / 4) and own["hard_threshold"] == 50.0
    assert str(custom) in own["hard_threshold_source"]
    vposer = stats(_scored_rows(scores), config=_pipeline_config(body_model="smpl", prior_path="vposer.ckpt"))
    assert vposer["hard_share"] == pytest.approx(3 / 4) and vposer["hard_threshold"] == 30.0
    assert "VPoser" in vposer["hard_threshold_source"]
    # an explicit threshold overrides flags and config
    given = stats(_scored_rows(scores, hard=[0.0, 0.0, 0.0, 1.0]), hard_threshold=100.0)
    assert given["hard_share"] == pytest.approx(2 / 4) and given["hard_threshold_source"] == "argument"

    # no flags and a prior file that is gone: say which file and how to go on, do not guess
    with pytest.raises(InputError, match=r"gone\.safetensors.*--hard-threshold"):
        stats(_scored_rows(scores), config=_pipeline_config(prior_path=str(tmp_path / "gone.safetensors")))
    with pytest.raises(InputError, match="hard_threshold"):
        stats(_scored_rows(scores), config=None)
    # flags alone need no prior file; the threshold line is then unknown, and said so
    moved = stats(_scored_rows(scores, hard=[0.0, 0.0, 0.0, 1.0]),
                  config=_pipeline_config(prior_path=str(tmp_path / "gone.safetensors")))
    assert moved["hard_share"] == pytest.approx(1 / 4) and moved["hard_threshold"] is None
    assert "gone.safetensors" in moved["hard_threshold_source"]

    # the dataset's own record (run.json's prior) wins over what the config would load today: an
    # older dataset keeps its threshold, and mode D's threshold for its built-in poses is the one used
    record = dict(shipped.describe(), hard_threshold_used=100.0)
    recorded = stats(_scored_rows(scores), prior=record)
    assert recorded["hard_share"] == pytest.approx(2 / 4) and recorded["hard_threshold"] == 100.0
    assert record["sha256"][:12] in recorded["hard_threshold_source"]
    gone = stats(_scored_rows(scores), prior=dict(record, hard_threshold_used=None),
                 config=_pipeline_config(prior_path=str(tmp_path / "gone.safetensors")))
    assert gone["hard_threshold"] == pytest.approx(shipped.hard_threshold) and gone["hard_share"] == pytest.approx(1 / 4)


def test_quality_report_masked_variant_and_comparison(tmp_path, weights_file):
    from PIL import Image

    from diffusion_hpc.eval.quality import quality
    from diffusion_hpc.eval.report import flatten_figures
    from diffusion_hpc.prior import get_prior

    n = 3
    real_imgs, real_masks = _images(n, seed=10)
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for i, im in enumerate(real_imgs):
        Image.fromarray(im).save(real_dir / f"r{i}.png")
    seg = _FakeSegmenter({im.tobytes(): mk for im, mk in zip(real_imgs, real_masks)})

    gen_imgs, gen_masks = _images(n, seed=20)
    # same people, different background: only non-person pixels change
    other_bg, _ = _images(n, seed=30)
    swapped = [np.where(mk[..., None], im, ob) for im, mk, ob in zip(gen_imgs, gen_masks, other_bg)]
    # what a mode-T run records: scores 35 and 80 are hard for VPoser's threshold (30), not for the
    # shipped Anny prior's (~179) the run scored with; the pipeline wrote its verdict in ``hard``
    scores = [{"prior_score": s, "hard": h, "pck_agreement": a, "mask_iou": 0.8, "mask_area": 0.2}
              for s, h, a in zip([5.0, 35.0, 250.0], [0.0, 0.0, 1.0], [1.0, 0.9, 0.7])]
    gen_a = _write_dataset(tmp_path / "gen_a", gen_imgs, gen_masks, scores, failed=["prior: score 120 > 100", "camera: no fit"])
    gen_b = _write_dataset(tmp_path / "gen_b", swapped, gen_masks, scores)

    out = tmp_path / "report"
    result = quality(QualityConfig(real=str(real_dir), generated=[str(gen_a), str(gen_b)], out=out, human_only=True,
                                   fid_weights=weights_file, kid_subsets=10, kid_subset_size=1000, batch_size=3),
                     segmenter=seg)
    assert seg.calls == n  # real images segmented once each; datasets use their own masks

    table = result["comparison"]
    assert [r["name"] for r in table] == ["gen_a", "gen_b"]
    a, b = table
    assert a["n_generated"] == b["n_generated"] == n and a["n_real"] == n and a["kid_subset_size"] == n
    assert a["n_generated_human"] == n and a["n_real_human"] == n
    # the masked variant ignores background pixels; the whole-image FID does not
    assert b["h_fid"] == pytest.approx(a["h_fid"], rel=1e-9)
    assert b["h_kid_mean"] == pytest.approx(a["h_kid_mean"], rel=1e-9, abs=1e-12)
    assert abs(b["fid"] - a["fid"]) > 1e-3 * a["fid"]
    assert result["sources"]["real"]["mask_source"] == "fake"
    assert result["sources"]["gen_a"]["mask_source"] == "dataset"
    import torch

    assert result["settings"]["device"] == str(torch.device("cuda", 0) if torch.cuda.is_available() else "cpu")
    assert result["settings"]["dtype"] == "float32"  # auto: Inception runs in float32

    m = result["manifest"]["gen_a"]
    assert (m["rows"], m["accepted"], m["dropped"]) == (5, 3, 2)
    assert m["dropped_share"] == pytest.approx(2 / 5)
    assert m["drop_reasons"] == {"prior": 1, "camera": 1}
    assert m["unet_evals_per_accepted"] == pytest.approx(250 / 3) and m["unet_evals_accepted_mean"] == 50
    assert m["prior_score"]["hard_share"] == pytest.approx(1 / 3)
    assert m["prior_score"]["hard_threshold"] == pytest.approx(get_prior("anny").hard_threshold)
    assert "recorded" in m["prior_score"]["hard_threshold_source"]
    assert sum(m["prior_score"]["histogram"]["counts"]) == 3
    assert m["label_agreement"]["pck_agreement"]["median"] == pytest.approx(0.9)
    assert a["hard_share"] == pytest.approx(1 / 3) and a["dropped_share"] == pytest.approx(2 / 5)

    # the report: strict JSON with every figure, HTML that parses and lists each of them
    data = json.loads((out / "quality.json").read_text())
    assert data["comparison"][0]["fid"] == pytest.approx(a["fid"])
    page = (out / "quality.html").read_text()

    class _Check(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.images, self.rows = [], 0, 0

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images += 1
                assert dict(attrs)["src"].startswith("data:image/png;base64,")  # offline
            elif tag not in ("meta", "br"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    check = _Check()
    check.feed(page)
    check.close()
    assert not check.stack and check.images >= 3 + 2 * 3 + 3  # FID, KID, sample grids, manifest plots
    import html as html_mod

    figures = flatten_figures(data)
    assert len(figures) > 50
    for path, _ in figures:
        assert html_mod.escape(path) in page, path
    comparison_html = page.split('<div id="comparison">')[1].split("</div>")[0]
    assert comparison_html.count("<tr>") == 1 + len(table)  # header + one row per generated set


def test_missing_weights_fail_fast(tmp_path, monkeypatch):
    from diffusion_hpc.eval import quality as q

    monkeypatch.setenv("DHPC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DHPC_FID_WEIGHTS", raising=False)

    def _no_reading(*a, **k):
        raise AssertionError("images were read before the weights were checked")

    monkeypatch.setattr(q, "iter_source", _no_reading)
    monkeypatch.setattr(q, "load_image", _no_reading)
    for weights in (None, tmp_path / "nope.pth"):
        with pytest.raises(MissingModelError) as err:
            q.quality(QualityConfig(real=str(tmp_path / "real"), generated=[str(tmp_path / "gen")], out=tmp_path / "out",
                                    fid_weights=weights))
        msg = str(err.value)
        assert "pt_inception-2015-12-05-6726825d.pth" in msg
        assert "DHPC_FID_WEIGHTS" in msg and str(tmp_path / "cache" / "fid") in msg
        assert "https://github.com/mseitzer/pytorch-fid/releases" in msg
        if weights is not None:
            assert str(weights) in msg
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("DHPC_FID_WEIGHTS", str(tmp_path / "env.pth"))
    with pytest.raises(MissingModelError, match="env.pth"):
        q.quality(QualityConfig(real=str(tmp_path / "real"), generated=[str(tmp_path / "gen")], out=tmp_path / "out"))


def test_bad_weights_file_names_the_problem(tmp_path):
    import torch

    from diffusion_hpc.errors import InputError
    from diffusion_hpc.eval.inception import load_inception

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="do not match the FID Inception-v3 layout"):
        load_inception(tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="unreadable"):
        load_inception(tmp_path / "junk.pth")


def test_import_does_not_load_the_segmenters():
    """The segmenters' libraries load with the first real-image folder, after the weight check."""
    code = ("import sys, diffusion_hpc.eval.quality, diffusion_hpc.eval.report; "
            "bad = [m for m in ('mediapipe', 'transformers', 'PIL') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resize_clean_is_pil_bicubic_float():
    from PIL import Image

    from diffusion_hpc.eval.quality import mask_background, resize_clean

    im, mk = _images(1, seed=3)
    out = resize_clean(im[0])
    assert out.shape == (299, 299, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    ref = np.asarray(Image.fromarray(im[0][:, :, 1].astype(np.float32)).resize((299, 299), Image.BICUBIC))
    np.testing.assert_allclose(out[:, :, 1], np.clip(ref, 0, 255))
    masked = mask_background(im[0], mk[0])
    assert (masked[~mk[0]] == 0).all() and (masked[mk[0]] == im[0][mk[0]]).all()


def test_quality_cli_missing_weights_is_one_clear_line(tmp_path):
    import sys
    import subprocess

    real = tmp_path / "real"
    real.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_hpc.cli", "quality", "--real", str(real), "--generated", str(tmp_path / "g"),
         "--out", str(tmp_path / "rep"), "--fid-weights", str(tmp_path / "nope.pth")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "pt_inception" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_quality_cli_end_to_end_on_two_datasets(tmp_path, anny_body):
    """`dhpc quality` with random Inception weights: a dataset against itself and against another run."""
    import json
    import subprocess
    import sys

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.eval.inception import FIDInceptionV3, init_random_, save_state_dict
    from diffusion_hpc.pipeline.generate import generate

    weights = tmp_path / "inception.pth"
    model = FIDInceptionV3()
    init_random_(model, 0)
    save_state_dict(model, weights)
    a, b = tmp_path / "a", tmp_path / "b"
    generate(GenerateConfig(n=4, image_size=(48, 48), batch_size=4, seed=1), a, progress=False)
    generate(GenerateConfig(n=4, image_size=(48, 48), batch_size=4, seed=2), b, progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_hpc.cli", "quality", "--real", str(a), "--generated", str(a), str(b),
         "--out", str(tmp_path / "rep"), "--fid-weights", str(weights), "--kid-subsets", "5", "--batch-size", "8"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "rep" / "quality.json").read_text())
    assert (tmp_path / "rep" / "quality.html").stat().st_size > 0
    rows = report["comparison"]
    assert len(rows) == 2
    assert abs(rows[0]["fid"]) < 1e-3 * max(1.0, rows[1]["fid"]) and rows[1]["fid"] > 0  # a vs a ~ 0 < a vs b
    assert "h_fid" in rows[0]
