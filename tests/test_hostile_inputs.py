"""Hostile and broken inputs: oversized or truncated images, non-image files, non-finite numbers,
names that climb out of a dataset folder. Each is refused with an InputError / ConfigError naming it."""

from __future__ import annotations

import importlib
import inspect
import io
import math
import pkgutil
import struct
import time
import typing
import zlib
from pathlib import Path

import numpy as np
import pydantic
import pytest

from diffusion_hpc.errors import InputError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A PNG header declaring width x height RGB pixels, with a tiny IDAT: a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + _chunk(b"IEND", b""))
    return path


def image_bytes(fmt: str, size=(64, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


# ---------------------------------------------------------------- image size limit


@pytest.mark.parametrize("width,height", [(60000, 60000), (8000, 7000)])
def test_decompression_bomb_refused_before_decoding(tmp_path, width, height):
    from diffusion_hpc.runtime.images import load_image

    path = bomb_png(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb\.png.*DHPC_MAX_IMAGE_PIXELS"):
        load_image(path, what="guide image")
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_env_override(tmp_path, monkeypatch):
    from diffusion_hpc.runtime.images import check_image_file, load_image

    path = tmp_path / "small.png"
    path.write_bytes(image_bytes("PNG", (64, 48)))
    assert check_image_file(path) == (64, 48)
    monkeypatch.setenv("DHPC_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(InputError, match=r"small\.png declares 64x48 pixels.*limit of 1000"):
        load_image(path)
    monkeypatch.setenv("DHPC_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="DHPC_MAX_IMAGE_PIXELS='lots' is not a positive integer"):
        load_image(path)


# ---------------------------------------------------------------- corrupt files in input folders


def _folder_with(tmp_path: Path, bad: str) -> Path:
    folder = tmp_path / bad.replace(".", "_")
    folder.mkdir()
    for i in range(2):
        (folder / f"good{i}.png").write_bytes(image_bytes("PNG"))
    if bad.startswith("trunc."):
        whole = image_bytes({"jpg": "JPEG", "tif": "TIFF"}.get(bad[6:], bad[6:].upper()))
        content = whole[: len(whole) - 40] if bad == "trunc.jpg" else whole[: len(whole) // 2]
    else:
        content = b"this is a text file, not an image\n"
    (folder / bad).write_bytes(content)
    return folder


@pytest.mark.parametrize("bad", ["trunc.png", "trunc.jpg", "trunc.webp", "trunc.bmp", "trunc.tif", "x.png"])
def test_guides_folder_refuses_bad_file_up_front(tmp_path, bad):
    from diffusion_hpc.pipeline.inputs import GuideImages

    with pytest.raises(InputError, match=rf"guide image .*{bad.replace('.', '[.]')}"):
        GuideImages(_folder_with(tmp_path, bad), (32, 32))


@pytest.mark.parametrize("bad", ["trunc.png", "trunc.jpg", "trunc.webp", "trunc.bmp", "trunc.tif", "x.png"])
def test_background_folder_refuses_bad_file_up_front(tmp_path, bad):
    from diffusion_hpc.generate.backgrounds import FolderBackgrounds

    with pytest.raises(InputError, match=rf"background image .*{bad.replace('.', '[.]')}"):
        FolderBackgrounds(_folder_with(tmp_path, bad))


@pytest.mark.parametrize("side, bad", [("real", "trunc.png"), ("real", "x.png"), ("generated", "trunc.jpg"),
                                       ("generated", "trunc.webp")])
def test_quality_folders_refuse_bad_file_before_the_network_loads(tmp_path, monkeypatch, side, bad):
    """`dhpc quality`: a bad file in the real or a generated image folder is refused up front (not
    skipped), naming the file, before the Inception network loads or any report is written."""
    from diffusion_hpc.config import QualityConfig
    from diffusion_hpc.eval import quality as q

    def _no_model(*a, **k):
        raise AssertionError("the Inception network loaded before the folders were checked")

    monkeypatch.setattr(q, "load_inception", _no_model)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"never read: the folders fail first")
    good, broken = tmp_path / "good", _folder_with(tmp_path, bad)
    good.mkdir()
    for i in range(2):
        (good / f"g{i}.png").write_bytes(image_bytes("PNG"))
    folders = {"real": good, "generated": good} | {side: broken}
    cfg = QualityConfig(real=str(folders["real"]), generated=[str(good), str(folders["generated"])],
                        out=tmp_path / "report", fid_weights=weights)
    with pytest.raises(InputError, match=rf"--{side} image .*{bad.replace('.', '[.]')} .*remove it from the folder"):
        q.quality(cfg)
    assert not (tmp_path / "report").exists()
    # --limit: only the files read are checked (the bad one sorts last)
    (broken / bad).rename(broken / f"z{bad}")
    (broken / "good0.png").unlink()
    assert q.check_source(broken, f"--{side} image", limit=1) == "folder"
    with pytest.raises(InputError, match=rf"z{bad.replace('.', '[.]')}"):
        q.check_source(broken, f"--{side} image", limit=2)


def test_quality_cli_bad_real_file_is_one_clear_line(tmp_path):
    import subprocess
    import sys

    real = _folder_with(tmp_path, "x.png")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"never read")
    proc = subprocess.run([sys.executable, "-m", "diffusion_hpc.cli", "quality", "--real", str(real), "--generated",
                           str(real), "--out", str(tmp_path / "rep"), "--fid-weights", str(weights)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"--real image {real / 'x.png'} is corrupt" in proc.stderr, proc.stderr
    assert not (tmp_path / "rep").exists()


def test_good_jpeg_folder_accepted(tmp_path):
    from diffusion_hpc.generate.backgrounds import FolderBackgrounds

    (tmp_path / "a.jpg").write_bytes(image_bytes("JPEG"))
    assert FolderBackgrounds(tmp_path).load(0).shape == (48, 64, 3)


# ---------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_pose_file_non_finite_refused(tmp_path, bad):
    from diffusion_hpc.poses import builtin_poses, load_pose_file, save_pose_file

    path = save_pose_file(tmp_path / "poses.npz", builtin_poses())
    with np.load(path) as npz:
        arrays = dict(npz)
    body_pose = arrays["body_pose"].astype(np.float64)
    body_pose[2, 5, 1] = bad
    arrays["body_pose"] = body_pose
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=r"poses\.npz: 'body_pose' has NaN or infinite .* row 2"):
        load_pose_file(path)


def _config_classes():
    import diffusion_hpc.config as package
    from diffusion_hpc.config.base import Strict

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"diffusion_hpc.config.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Strict) and obj is not Strict:
                found[obj.__name__] = obj
    return [found[k] for k in sorted(found)]


def _float_fields():
    out = []
    for cls in _config_classes():
        for name, field in cls.model_fields.items():
            text = str(field.annotation)
            if "float" in text and typing.get_origin(field.annotation) is not typing.Literal:
                out.append(pytest.param(cls, name, id=f"{cls.__name__}.{name}"))
    return out


@pytest.mark.parametrize("cls,name", _float_fields())
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_config_float_fields_refuse_non_finite(cls, name, bad):
    default = cls.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, tuple | list):
        value = (bad,) + tuple(default[1:])
    elif isinstance(default, dict):
        key_type = typing.get_args(cls.model_fields[name].annotation)[0]
        value = {k: bad for k in (default or typing.get_args(key_type)[:1])}
    else:
        value = bad
    with pytest.raises(pydantic.ValidationError) as caught:
        cls.model_validate({name: value})
    assert any(e["loc"][0] == name and e["type"] == "finite_number" for e in caught.value.errors()), caught.value
    try:
        obj = cls()
    except pydantic.ValidationError:  # required fields: the validation above covers it
        return
    with pytest.raises(pydantic.ValidationError, match="finite"):
        setattr(obj, name, value)


def test_config_float_fields_found():
    names = {p.id for p in _float_fields()}
    assert {"CameraConfig.fov_deg", "TrainConfig.lr", "TrainConfig.loss_weights"} <= names


# ---------------------------------------------------------------- names outside the dataset folder


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", ["../evil.image.png", "/tmp/evil.image.png", "sub/000000000.json"])
def test_reader_refuses_member_names_outside_the_shard(tmp_path, member):
    from diffusion_hpc.data.reader import Dataset

    (tmp_path / "config.yaml").write_text("{}\n")
    _tar_with(tmp_path / "shards" / "shard-000000.tar", {member: b"x"})
    with pytest.raises(InputError, match=r"shard-000000\.tar.*not a plain file name"):
        list(iter(Dataset(tmp_path)))
    assert not (tmp_path.parent / "evil.image.png").exists()


def test_reader_refuses_record_key_that_differs_from_its_member(tmp_path):
    import json

    from diffusion_hpc.data.reader import iter_shard

    shard = _tar_with(tmp_path / "shard-000000.tar", {"000000000.json": json.dumps({"key": "../../evil"}).encode()})
    with pytest.raises(InputError, match=r"member key '000000000' holds a record whose key is '../../evil'"):
        list(iter_shard(shard))


@pytest.mark.parametrize("key", ["../evil", "/tmp/evil", "a/b", "..", ""])
def test_export_refuses_image_names_outside_its_folder(tmp_path, key):
    from diffusion_hpc.data.export import _write_images

    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    with pytest.raises(InputError, match="not a plain file name"):
        _write_images({"key": key, "image_png": b"png"}, images)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------- prompt files


def test_prompt_file_too_large_refused_before_reading(tmp_path, monkeypatch):
    from diffusion_hpc.pipeline import inputs

    path = tmp_path / "prompts.txt"
    with path.open("wb") as fh:  # sparse: 20 MB declared, nothing written
        fh.truncate(20_000_000)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("the file was read"))
    with pytest.raises(InputError, match=r"prompts\.txt is 20\.0 MB, above the limit of 10 MB"):
        inputs.read_prompt_lines(None, path)


def test_prompt_file_too_many_lines_refused(tmp_path, monkeypatch):
    from diffusion_hpc.pipeline import inputs

    monkeypatch.setattr(inputs, "MAX_PROMPT_LINES", 5)
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"doing thing {i}\n" for i in range(6)))
    with pytest.raises(InputError, match="holds 6 prompts, above the limit of 5"):
        inputs.read_prompt_lines(None, path)
    path.write_text("".join(f"doing thing {i}\n" for i in range(5)))
    assert len(inputs.read_prompt_lines(None, path)) == 5


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_bvh_non_finite_refused(tmp_path, bad):
    from test_poses import TINY_BVH

    from diffusion_hpc.poses import import_bvh

    lines = TINY_BVH.splitlines()
    lines[-2] = lines[-2].replace("90 0 0 90", f"90 0 0 {bad}", 1)
    path = tmp_path / "bad.bvh"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad\.bvh, line 25: frame 1 has a NaN or infinite value"):
        import_bvh([str(path)], str(tmp_path / "out.npz"))
    assert not (tmp_path / "out.npz").exists()
