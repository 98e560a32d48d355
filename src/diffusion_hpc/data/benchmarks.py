"""Readers for real benchmark formats: SPIN-style npz, SkiPose ``labels.h5``, SMART (SportsCap) JSON.

Every reader returns a :class:`BenchmarkSet`: image paths, SPIN boxes (``center`` in pixels,
``scale`` = box side / 200), 2D keypoints with visibility in a *named* joint set, optional 3D joints
(metres) and optional SMPL parameters. Joint orders are data (tuples of names); conversions go
through :func:`convert_joints`, never through index lists written in code.

Two joint sets used only by benchmark files live here (add them to
:mod:`diffusion_hpc.body.joint_sets` to share them; :func:`joint_names` then finds them there):

- ``spin24``: SPIN's 24 "ground-truth" joints (the ``part`` / ``S`` order of SPIN npz files).
  Names shared with our other sets (limbs, pelvis, spine, head_top, nose, eyes, ears) mean the same
  point; SPIN joints with no exact counterpart get distinct names (``lsp_neck``, ``mpii_thorax``,
  ``jaw``, ``h36m_head``). :data:`SPIN24_ALIASES` says which of our H36M-17 joints stand in for
  them (SPIN's own Human3.6M mapping).
- ``skipose17``: the joint order of the SkiPose ``3D`` labels: H36M-17 with the left and right legs
  exchanged (the dataset's known leg swap).

File layouts read here:

- SPIN npz: ``imgname`` (N,) str, ``center`` (N, 2) px, ``scale`` (N,) = box side / 200,
  ``part`` (N, 24, 3) u, v, confidence in ``spin24``; optional ``pose`` (N, 72) axis-angle,
  ``shape`` (N, 10), ``has_smpl`` (N,), ``S`` (N, 24, 4) in ``spin24`` or (N, 17, 4) in
  ``h36m17`` (x, y, z metres, confidence). Read with ``allow_pickle=False``.
- SkiPose: ``<root>/<split>/labels.h5`` with datasets ``seq``, ``cam``, ``frame``, ``subj`` (N,),
  ``3D`` (N, 17, 3) metres (``skipose17`` order), ``2D`` (N, 17, 2) in [0, 1] of the 256-px image;
  images ``<root>/<split>/seq_{seq:03d}/cam_{cam:02d}/image_{frame:06d}.png``.
- SMART: a JSON list of videos ``{"VideoName", "action_labels", "frames": [{"img_name",
  "joints": 25 x [x, y, flag] (OpenPose BODY_25, flag 0 = visible), "bbox", "img_hw"}]}``;
  images under ``<SMART root>/images/<img_name>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from diffusion_hpc.body.joint_sets import SKIPOSE17, SPIN24
from diffusion_hpc.body.joint_sets import convert as convert_joints
from diffusion_hpc.body.joint_sets import get_joint_set as joint_names
from diffusion_hpc.body.joint_sets import joint_map as joint_index
from diffusion_hpc.errors import DhpcError, InputError
from diffusion_hpc.geometry.boxes import BOX_EXPAND, SPIN_SCALE_UNIT, keypoints_box

# Joint sets used by benchmark files live in diffusion_hpc.body.joint_sets (spin24, skipose17).

#: SPIN-24 joints without a same-named joint in our sets -> (joint set, joint) that stands in for
#: it, as in SPIN's Human3.6M preprocessing (LSP neck <- H36M thorax, jaw <- H36M neck/nose,
#: head <- H36M head). ``mpii_thorax`` has no stand-in.
SPIN24_ALIASES: dict[str, tuple[str, str]] = {
    "lsp_neck": ("h36m17", "thorax"),
    "jaw": ("h36m17", "neck"),
    "h36m_head": ("h36m17", "head_top"),
}

#: SkiPose images are 256 x 256; ``2D`` labels are fractions of that side.
SKIPOSE_IMAGE_SIZE = 256
SKIPOSE_SPLITS = ("train", "test")
SKIPOSE_DATASETS = ("seq", "cam", "frame", "subj", "3D", "2D")
#: SMART joint flag meaning "visible" (other flags: not visible / not annotated).
SMART_VISIBLE_FLAG = 0


# --------------------------------------------------------------------------------------------
# Container.


@dataclass
class BenchmarkSet:
    """N annotated person crops of a benchmark, in one common layout.

    - ``image_paths``: N image files.
    - ``center`` (N, 2) box centre in pixels of the image; ``scale`` (N,) box side / 200 (SPIN).
    - ``keypoints2d`` (N, J, 3): u, v in pixels of the image, and visibility / confidence
      (1 = labelled and used, 0 = not), in joint set ``joint_set``.
    - ``joints3d`` (N, J3, 3) metres (camera frame as the benchmark gives it) in ``joints3d_set``,
      with ``joints3d_conf`` (N, J3) (1 = valid); ``None`` when the benchmark has no 3D labels.
    - ``smpl``: ``{"pose": (N, 72) axis-angle, "shape": (N, 10), "has_smpl": (N,)}`` or ``None``.
    - ``extra``: other per-sample arrays with leading dimension N (sequence ids, raw boxes, ...).
    """

    name: str
    image_paths: list[Path]
    center: np.ndarray
    scale: np.ndarray
    keypoints2d: np.ndarray
    joint_set: str
    joints3d: np.ndarray | None = None
    joints3d_set: str | None = None
    joints3d_conf: np.ndarray | None = None
    smpl: dict[str, np.ndarray] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def box_size(self) -> np.ndarray:
        """(N,) box side in pixels (``scale`` x 200)."""
        return self.scale * SPIN_SCALE_UNIT

    def keypoints_in(self, joint_set: str) -> np.ndarray:
        """(N, J', 3) 2D keypoints in another joint set; joints this set lacks get visibility 0."""
        out = convert_joints(self.keypoints2d, self.joint_set, joint_set, fill=0.0)
        return out

    def subset(self, index) -> "BenchmarkSet":
        """The samples selected by ``index`` (an index array, slice or boolean mask)."""
        idx = np.arange(len(self))[index]

        def take(a):
            return None if a is None else np.asarray(a)[idx]

        return BenchmarkSet(
            name=self.name,
            image_paths=[self.image_paths[i] for i in idx],
            center=take(self.center),
            scale=take(self.scale),
            keypoints2d=take(self.keypoints2d),
            joint_set=self.joint_set,
            joints3d=take(self.joints3d),
            joints3d_set=self.joints3d_set,
            joints3d_conf=take(self.joints3d_conf),
            smpl=None if self.smpl is None else {k: take(v) for k, v in self.smpl.items()},
            extra={k: take(v) for k, v in self.extra.items()},
        )


# --------------------------------------------------------------------------------------------
# Boxes.

#: Torso segments (shoulder, hip) whose mean length sets the minimum box size (torso = 1/3 box).
TORSO_PAIRS = (("right_shoulder", "right_hip"), ("left_shoulder", "left_hip"))


def box_from_keypoints(
    keypoints2d, joint_set: str, *, expand: float = BOX_EXPAND, torso_fraction: float = 1 / 3
) -> tuple[np.ndarray, np.ndarray]:
    """SPIN boxes around (N, J, 3) keypoints (u, v px, visibility): ``center`` (N, 2), ``scale`` (N,).

    The box is centred on the bounding box of the visible joints; its side is the larger of
    ``expand`` x the bounding box's longer side and the mean visible torso length / ``torso_fraction``
    (the Diffusion-HPC preprocessing of SkiPose and SMART). Samples without visible joints use all
    joints; ``scale`` = side / 200.
    """
    names = joint_names(joint_set)
    pairs = tuple((names.index(a), names.index(b)) for a, b in TORSO_PAIRS if a in names and b in names)
    center, side = keypoints_box(keypoints2d, pairs, expand=expand, torso_fraction=torso_fraction)
    return center, side / SPIN_SCALE_UNIT


# --------------------------------------------------------------------------------------------
# SPIN npz.

SPIN_REQUIRED = ("imgname", "center", "scale", "part")


def load_spin_npz(path: str | Path, *, image_root: str | Path | None = None, name: str | None = None) -> BenchmarkSet:
    """Read a SPIN-style npz (see the module docstring) with ``allow_pickle=False``.

    ``imgname`` entries are resolved against ``image_root`` (default: the npz's directory);
    absolute names are kept. Keys beyond the SPIN ones (e.g. ``K``, ``cam_t``, ``anny_*``) with
    leading dimension N go to ``extra``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"SPIN npz {path} does not exist; pass the path of an existing .npz file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # zip local header / empty archive
        raise InputError(f"SPIN npz {path} is unreadable (not an .npz zip archive); re-create it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "Object arrays" in str(exc) or "pickle" in str(exc):
            raise InputError(
                f"SPIN npz {path} stores object arrays (pickles), which are not loaded for safety; "
                "re-save it with string arrays, e.g. imgname=np.array(names, dtype=str)"
            ) from exc
        raise InputError(f"SPIN npz {path} is unreadable ({exc})") from exc
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError
        raise InputError(f"SPIN npz {path} is unreadable ({type(exc).__name__}: {exc}); re-create or re-download it") from exc
    missing = [k for k in SPIN_REQUIRED if k not in arrays]
    if missing:
        raise InputError(f"SPIN npz {path} lacks keys {missing} (has {sorted(arrays)}); it needs {list(SPIN_REQUIRED)}")
    n = len(arrays["imgname"])

    def check(key: str, shape: tuple) -> np.ndarray:
        a = np.asarray(arrays[key])
        if a.shape[0] != n or any(s is not None and s != t for s, t in zip(shape, a.shape[1:])) or a.ndim != len(shape) + 1:
            want = "(N" + "".join(f", {s if s is not None else '?'}" for s in shape) + ")"
            raise InputError(f"SPIN npz {path}: {key!r} has shape {a.shape}, expected {want} with N = {n}")
        return a

    imgname = check("imgname", ())
    if imgname.dtype.kind not in "US":
        raise InputError(f"SPIN npz {path}: 'imgname' has dtype {imgname.dtype}, expected strings")
    center = check("center", (2,)).astype(np.float64)
    scale = check("scale", ()).astype(np.float64).reshape(n)
    part = check("part", (24, 3)).astype(np.float64)
    root = Path(image_root) if image_root is not None else path.parent
    image_paths = [root / str(s) for s in imgname.astype(str)]

    joints3d = joints3d_conf = joints3d_set = None
    if "S" in arrays:
        S = np.asarray(arrays["S"], np.float64)
        if S.ndim != 3 or S.shape[0] != n or S.shape[1:] not in ((24, 4), (17, 4), (24, 3), (17, 3)):
            raise InputError(f"SPIN npz {path}: 'S' has shape {S.shape}, expected (N, 24, 4) or (N, 17, 4) with N = {n}")
        joints3d_set = "spin24" if S.shape[1] == 24 else "h36m17"
        joints3d = S[..., :3]
        joints3d_conf = S[..., 3] if S.shape[2] == 4 else np.ones(S.shape[:2])
    smpl = None
    if "pose" in arrays or "shape" in arrays:
        pose = check("pose", (72,)).astype(np.float64) if "pose" in arrays else np.zeros((n, 72))
        shape = check("shape", (10,)).astype(np.float64) if "shape" in arrays else np.zeros((n, 10))
        has = check("has_smpl", ()).astype(np.float64) if "has_smpl" in arrays else np.ones(n)
        smpl = {"pose": pose, "shape": shape, "has_smpl": has}
    used = set(SPIN_REQUIRED) | {"S", "pose", "shape", "has_smpl"}
    extra = {k: v for k, v in arrays.items() if k not in used and v.ndim >= 1 and v.shape[0] == n}
    return BenchmarkSet(
        name=name or path.stem,
        image_paths=image_paths,
        center=center,
        scale=scale,
        keypoints2d=part,
        joint_set="spin24",
        joints3d=joints3d,
        joints3d_set=joints3d_set,
        joints3d_conf=joints3d_conf,
        smpl=smpl,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------
# SkiPose.


def _skipose_file(path: Path, split: str) -> tuple[Path, Path]:
    """(labels.h5, directory the image paths are relative to)."""
    if split not in SKIPOSE_SPLITS:
        raise DhpcError(f"SkiPose split {split!r} is not one of {list(SKIPOSE_SPLITS)}")
    if path.is_dir():
        labels = path / split / "labels.h5"
        if not labels.is_file() and (path / "labels.h5").is_file():
            labels = path / "labels.h5"
    else:
        labels = path
    if not labels.is_file():
        raise InputError(
            f"SkiPose labels {labels} do not exist; pass the SkiPose root (holding {split}/labels.h5) "
            "or the labels.h5 file itself"
        )
    return labels, labels.parent


def load_skipose(
    path: str | Path,
    split: str = "test",
    *,
    limit: int | None = None,
    swap_legs_3d: bool = True,
    swap_legs_2d: bool = False,
) -> BenchmarkSet:
    """Read SkiPose ``labels.h5`` (see the module docstring); joints come out in true ``h36m17`` order.

    ``path`` is the SkiPose root (``<root>/<split>/labels.h5``) or a ``labels.h5`` file.
    The ``3D`` labels are in ``skipose17`` order (legs exchanged) and are reordered to ``h36m17``
    (``swap_legs_3d``, as the Diffusion-HPC evaluation does); the ``2D`` labels are taken as
    ``h36m17`` unless ``swap_legs_2d`` (the reference code uses them unswapped). 2D labels are
    scaled from [0, 1] to pixels of the 256-px image; all 17 joints are visible.
    ``joints3d`` stays as in the file (metres, not root-centred); ``limit`` keeps the first samples
    (few-shot training sets). ``extra`` holds ``seq``, ``cam``, ``frame``, ``subj`` (N,) int.
    """
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DhpcError("reading SkiPose labels.h5 needs h5py; install it with `pip install h5py`") from exc
    labels, image_dir = _skipose_file(Path(path), split)
    try:
        with h5py.File(labels, "r") as f:
            missing = [k for k in SKIPOSE_DATASETS if k not in f]
            if missing:
                raise InputError(
                    f"SkiPose labels {labels} lack datasets {missing} (has {sorted(f.keys())}); "
                    f"a SkiPose labels.h5 has {list(SKIPOSE_DATASETS)}"
                )
            stop = None if limit is None else int(limit)
            data = {k: np.asarray(f[k][:stop]) for k in SKIPOSE_DATASETS}
    except InputError:
        raise
    except Exception as exc:  # OSError for truncated / non-HDF5 files
        raise InputError(f"SkiPose labels {labels} are unreadable ({type(exc).__name__}: {exc}); re-download the file") from exc
    n = len(data["seq"])
    try:
        pose3d = data["3D"].astype(np.float64).reshape(n, 17, 3)
        pose2d = data["2D"].astype(np.float64).reshape(n, 17, 2)
        ids = {k: data[k].astype(np.int64).reshape(n) for k in ("seq", "cam", "frame", "subj")}
    except ValueError as exc:
        shapes = {k: v.shape for k, v in data.items()}
        raise InputError(
            f"SkiPose labels {labels} have shapes {shapes}; expected seq/cam/frame/subj (N,), "
            "3D (N, 17, 3) and 2D (N, 17, 2)"
        ) from exc
    joints3d = convert_joints(pose3d, "skipose17", "h36m17") if swap_legs_3d else pose3d
    uv = pose2d * SKIPOSE_IMAGE_SIZE
    if swap_legs_2d:
        uv = convert_joints(uv, "skipose17", "h36m17")
    keypoints2d = np.concatenate([uv, np.ones((n, 17, 1))], axis=-1)
    center, scale = box_from_keypoints(keypoints2d, "h36m17")
    image_paths = [
        image_dir / f"seq_{s:03d}" / f"cam_{c:02d}" / f"image_{fr:06d}.png"
        for s, c, fr in zip(ids["seq"], ids["cam"], ids["frame"])
    ]
    return BenchmarkSet(
        name=f"skipose-{split}",
        image_paths=image_paths,
        center=center,
        scale=scale,
        keypoints2d=keypoints2d,
        joint_set="h36m17",
        joints3d=joints3d,
        joints3d_set="h36m17",
        joints3d_conf=np.ones((n, 17)),
        extra=ids,
    )


# --------------------------------------------------------------------------------------------
# SMART (SportsCap).


def _smart_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise InputError(f"SMART directory {path} holds no .json annotation files; pass an annotations folder or file")
        return files
    if not path.is_file():
        raise InputError(f"SMART annotations {path} do not exist; pass a SportsCap JSON file or its folder")
    return [path]


def load_smart(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    actions: Iterable[str] | None = None,
    videos: Iterable[str] | None = None,
) -> BenchmarkSet:
    """Read SMART (SportsCap) JSON annotations: one file, or every ``*.json`` of a folder.

    Keypoints come out in ``body25`` with visibility 1 where the file's flag is 0 (visible) and 0
    otherwise. Frames with no joints are skipped. ``actions`` / ``videos`` keep only videos whose
    ``action_labels`` / ``VideoName`` are listed. Images are ``image_root / img_name``; the default
    root is ``<SMART root>/images`` when the JSON sits in an ``annotations`` folder, else the JSON's
    folder. Boxes come from the visible keypoints (:func:`box_from_keypoints`); the file's own
    ``bbox`` is kept in ``extra["bbox"]`` (N, 4) as given (NaN when absent), with ``img_hw`` (N, 2),
    ``video`` (N,) str, ``action`` (N,) str and ``frame_index`` (N,) int.
    """
    path = Path(path)
    files = _smart_files(path)
    keep_actions = None if actions is None else set(actions)
    keep_videos = None if videos is None else set(videos)
    image_paths: list[Path] = []
    joints, bbox, img_hw, video_names, action_names, frame_index = [], [], [], [], [], []
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"SMART annotations {file} are not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise InputError(f"SMART annotations {file} must be a JSON list of videos, got {type(data).__name__}")
        root = Path(image_root) if image_root is not None else (
            file.parent.parent / "images" if file.parent.name == "annotations" else file.parent
        )
        for v, video in enumerate(data):
            if not isinstance(video, dict) or not isinstance(video.get("frames"), list):
                raise InputError(f"SMART annotations {file}: video {v} has no 'frames' list")
            vname = str(video.get("VideoName", f"{file.stem}:{v}"))
            action = str(video.get("action_labels", ""))
            if keep_actions is not None and action not in keep_actions:
                continue
            if keep_videos is not None and vname not in keep_videos:
                continue
            for i, frame in enumerate(video["frames"]):
                if not frame.get("joints"):
                    continue
                try:
                    j = np.asarray(frame["joints"], dtype=np.float64)
                    name = str(frame["img_name"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise InputError(f"SMART annotations {file}: video {vname!r} frame {i} is malformed ({exc!r})") from exc
                if j.shape != (25, 3):
                    raise InputError(
                        f"SMART annotations {file}: video {vname!r} frame {i} has joints of shape {j.shape}, "
                        "expected 25 x [x, y, flag] (OpenPose BODY_25)"
                    )
                box = np.asarray(frame.get("bbox") or [np.nan] * 4, dtype=np.float64).reshape(-1)[:4]
                hw = np.asarray(frame.get("img_hw") or [np.nan] * 2, dtype=np.float64).reshape(-1)[:2]
                joints.append(j)
                bbox.append(np.pad(box, (0, 4 - len(box)), constant_values=np.nan))
                img_hw.append(np.pad(hw, (0, 2 - len(hw)), constant_values=np.nan))
                image_paths.append(root / name)
                video_names.append(vname)
                action_names.append(action)
                frame_index.append(i)
    n = len(joints)
    kp = np.stack(joints) if n else np.zeros((0, 25, 3))
    kp[..., 2] = (kp[..., 2] == SMART_VISIBLE_FLAG).astype(np.float64)
    center, scale = box_from_keypoints(kp, "body25") if n else (np.zeros((0, 2)), np.zeros(0))
    return BenchmarkSet(
        name=f"smart-{path.stem}",
        image_paths=image_paths,
        center=center,
        scale=scale,
        keypoints2d=kp,
        joint_set="body25",
        extra={
            "bbox": np.array(bbox).reshape(n, 4),
            "img_hw": np.array(img_hw).reshape(n, 2),
            "video": np.array(video_names, dtype=str),
            "action": np.array(action_names, dtype=str),
            "frame_index": np.array(frame_index, dtype=np.int64),
        },
    )


__all__: Sequence[str] = [
    "BenchmarkSet",
    "SKIPOSE17",
    "SPIN24",
    "SPIN24_ALIASES",
    "box_from_keypoints",
    "convert_joints",
    "joint_index",
    "joint_names",
    "load_skipose",
    "load_smart",
    "load_spin_npz",
]
