"""`dhpc export` and `dhpc prior fit` end to end, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, anny_body):
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import generate

    out = tmp_path_factory.mktemp("tools") / "d"
    generate(GenerateConfig(n=3, image_size=(64, 64), batch_size=3), out, progress=False)
    return out


@pytest.mark.parametrize("fmt, suffix", [("spin-npz", ".npz"), ("coco-json", ".json")])
def test_export_cli(small_dataset, tmp_path, fmt, suffix):
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of

    out = tmp_path / f"export{suffix}"
    proc = run_cli("export", str(small_dataset), "--format", fmt, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "3 person rows" in proc.stdout
    samples = list(open_dataset(small_dataset))
    if suffix == ".npz":
        with np.load(out, allow_pickle=False) as npz:
            assert len(npz["imgname"]) == 3
    else:
        coco = json.loads(out.read_text())
        assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3
        kp = np.asarray(coco["annotations"][0]["keypoints"], float).reshape(17, 3)
        assert np.allclose(kp[:, :2], persons_of(samples[0])[0]["keypoints2d"][:, :2], atol=1e-3)
    assert len(list((tmp_path / "images").iterdir())) == 3


def test_export_from_a_config_file_equals_the_flags(small_dataset, tmp_path):
    """``--config FILE`` writes what the same flags write; a flag given wins over the file."""
    import yaml

    flags = tmp_path / "flags" / "train.npz"
    assert run_cli("export", str(small_dataset), "--format", "spin-npz", "--out", str(flags),
                   "--box-expand", "1.5").returncode == 0
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(small_dataset), "format": "spin-npz", "box_expand": 1.1,
                                      "out": str(tmp_path / "elsewhere.npz")}))
    from_file = tmp_path / "file" / "train.npz"
    proc = run_cli("export", "--config", str(config), "--box-expand", "1.5", "--out", str(from_file))
    assert proc.returncode == 0, proc.stderr
    with np.load(flags, allow_pickle=False) as a, np.load(from_file, allow_pickle=False) as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not (tmp_path / "elsewhere.npz").exists()


def test_export_bad_format_is_a_clear_error(small_dataset, tmp_path):
    """An --out whose suffix does not fit --format: one line naming the file, the format and the
    corrected name; nothing is written."""
    bad = tmp_path / "x.json"
    proc = run_cli("export", str(small_dataset), "--format", "spin-npz", "--out", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(bad) in proc.stderr and "spin-npz" in proc.stderr and str(bad.with_suffix(".npz")) in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_prior_fit_cli(tmp_path):
    out = tmp_path / "prior.safetensors"
    proc = run_cli("prior", "fit", "--poses", "builtin", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "selected" in proc.stdout and "hard_threshold" in proc.stdout
    from diffusion_hpc.prior.anny_prior import load_prior_file

    prior = load_prior_file(out)
    assert np.isfinite(prior.hard_threshold)


def test_estimate_cli_on_a_real_photo_and_a_blank_image(tmp_path):
    import skimage.data as skimage_data
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(folder / "blank.png")
    out = tmp_path / "est.npz"
    proc = run_cli("estimate", "--images", str(folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 images fitted" in proc.stdout
    with np.load(out, allow_pickle=False) as npz:
        assert npz["ok"].tolist() == [True, False]
        assert npz["keypoints2d"].shape == (2, 17, 3)
    assert sorted(p.name for p in (tmp_path / "est_preview").iterdir()) == ["astronaut.png", "blank.png"]
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    proc = run_cli("estimate", "--images", str(bad), "--out", str(tmp_path / "e2.npz"))
    assert proc.returncode == 2 and "broken.jpg" in proc.stderr and not (tmp_path / "e2.npz").exists()
