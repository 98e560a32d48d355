"""Pose files: sets of body poses (no shape, no camera) for the generator, and BVH import.

Pose-file format ``dhpc-poses/1``
=================================

A NumPy ``.npz`` archive (zip, compressed or not) of plain arrays; object arrays / pickles are
never written nor accepted (files are always read with ``np.load(..., allow_pickle=False)``).
``N`` is the number of poses (at least 1).

========================  =================  ====================================================
key                       dtype, shape       meaning
========================  =================  ====================================================
``format``                str, ()            exactly ``"dhpc-poses/1"``
``body_model``            str, ()            ``"anny"`` or ``"smpl"``
``global_orient``         float, (N, 3)      axis-angle root rotation in the body model's canonical
                                             frame (Anny: metres, Z up, body facing -Y, left at +X;
                                             SMPL: its usual Y-up frame), radians
``body_pose``             float, (N, J, 3)   axis-angle local joint rotations, radians. Anny:
                                             J = 30, bones 1..30 of
                                             :data:`~diffusion_hpc.body.joint_sets.ANNY_CMU31`, in
                                             Anny's ``local-ref`` parameterisation. SMPL: J = 23,
                                             standard SMPL axis-angle (joints 1..23).
``phenotype`` (optional)  float, (N, 6)      Anny phenotype, values in [0, 1] (Anny files only)
``betas`` (optional)      float, (N, 10)     SMPL shape (SMPL files only)
``name`` (optional)       str, (N,)          a short unique label per pose
``source`` (optional)     str, (N,)          where the pose comes from (e.g. ``"13_31.bvh"`` or
                                             ``"walk.bvh:120"``, file and frame)
``description`` (opt.)    str, (N,)          free text (e.g. the activity)
``subject`` (optional)    int, (N,)          performer / subject number
========================  =================  ====================================================

Rotations are stored as float32 (float16 is accepted, e.g. for the packaged set, and float64);
they are always loaded as float32 and must be finite. Other keys are ignored.
:func:`load_pose_file` checks all of the above and raises :class:`~diffusion_hpc.errors.InputError`
naming the file and the problem. :func:`save_pose_file` writes atomically (a temporary file in the
same directory, then ``os.replace``).

The packaged set (:func:`builtin_poses`, ``diffusion_hpc/poses/data/cmu_builtin.npz``) holds real
motion-capture poses of the CMU Graphics Lab Motion Capture Database retargeted to Anny by
``scripts/build_builtin_poses.py`` (see :mod:`diffusion_hpc.poses.retarget`). Named subsets
(:data:`BUILTIN_SETS`; ``builtin-hard``: the poses the shipped prior calls hard) are lists of pose
names in ``cmu_builtin_sets.npz`` (format ``dhpc-pose-sets/1``: ``format``, then per set
``<set>`` (M,) str names and ``<set>.selection`` a JSON string saying how they were chosen),
written by ``scripts/fit_default_prior.py``. :func:`load_pose_set` resolves ``--poses``: a set
name or a pose file.

The data used in this project was obtained from mocap.cs.cmu.edu. The database was created with
funding from NSF EIA-0196217.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.poses.bvh import load_bvh
from diffusion_hpc.poses.retarget import retarget_bvh
from diffusion_hpc.runtime.atomic import atomic_path

FORMAT = "dhpc-poses/1"
BODY_POSE_JOINTS = {"anny": 30, "smpl": 23}
SHAPE_KEYS = {"anny": ("phenotype", 6), "smpl": ("betas", 10)}
STRING_KEYS = ("name", "source", "description")
OPTIONAL_KEYS = ("phenotype", "betas", "name", "source", "description", "subject")


@dataclass
class PoseSet:
    """N poses of one body model (see the module docstring for the meaning of each field)."""

    body_model: str
    global_orient: np.ndarray
    body_pose: np.ndarray
    phenotype: np.ndarray | None = None
    betas: np.ndarray | None = None
    name: np.ndarray | None = None
    source: np.ndarray | None = None
    description: np.ndarray | None = None
    subject: np.ndarray | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.body_model not in BODY_POSE_JOINTS:
            raise ValueError(f"body_model must be one of {sorted(BODY_POSE_JOINTS)}, not {self.body_model!r}")
        self.global_orient = np.asarray(self.global_orient, dtype=np.float32)
        self.body_pose = np.asarray(self.body_pose, dtype=np.float32)
        n = self.global_orient.shape[0] if self.global_orient.ndim else -1
        joints = BODY_POSE_JOINTS[self.body_model]
        if self.global_orient.shape != (n, 3):
            raise ValueError(f"global_orient has shape {self.global_orient.shape}; expected (N, 3)")
        if self.body_pose.shape != (n, joints, 3):
            raise ValueError(f"body_pose has shape {self.body_pose.shape}; expected ({n}, {joints}, 3) for {self.body_model}")
        for key, dim in (("phenotype", 6), ("betas", 10)):
            value = getattr(self, key)
            if value is not None:
                value = np.asarray(value, dtype=np.float32)
                if value.shape != (n, dim):
                    raise ValueError(f"{key} has shape {value.shape}; expected ({n}, {dim})")
                setattr(self, key, value)
        for key in STRING_KEYS:
            value = getattr(self, key)
            if value is not None:
                value = np.asarray(value, dtype=str)
                if value.shape != (n,):
                    raise ValueError(f"{key} has shape {value.shape}; expected ({n},)")
                setattr(self, key, value)
        if self.subject is not None:
            self.subject = np.asarray(self.subject, dtype=np.int64)
            if self.subject.shape != (n,):
                raise ValueError(f"subject has shape {self.subject.shape}; expected ({n},)")

    def __len__(self) -> int:
        return int(self.global_orient.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "PoseSet":
        """A new :class:`PoseSet` with the poses at ``indices`` (ints or a boolean mask)."""
        idx = np.asarray(indices)
        if idx.dtype != bool:
            idx = idx.astype(np.int64)
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "body_model":
                kwargs[f.name] = value
            elif f.name == "extra":
                kwargs[f.name] = dict(value)
            else:
                kwargs[f.name] = None if value is None else value[idx]
        return PoseSet(**kwargs)

    def params(self) -> dict[str, np.ndarray]:
        """``global_orient`` / ``body_pose`` (and the shape key if stored) as a dict of arrays."""
        out = {"global_orient": self.global_orient, "body_pose": self.body_pose}
        key = SHAPE_KEYS[self.body_model][0]
        if getattr(self, key) is not None:
            out[key] = getattr(self, key)
        return out


def _scalar_string(value: np.ndarray) -> str | None:
    if value.shape != () or value.dtype.kind not in "US":
        return None
    return str(value.item() if value.dtype.kind == "U" else value.item().decode("utf-8", "replace"))


def load_pose_file(path: str | os.PathLike) -> PoseSet:
    """Read and validate a ``dhpc-poses/1`` file; :class:`InputError` says what is wrong."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: pose file not found")
    if not p.is_file():
        raise InputError(f"{p}: is not a file (a pose file is a .npz archive)")
    if not zipfile.is_zipfile(p):
        raise InputError(f"{p}: is not a pose file (.npz): not a zip archive")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(p, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{p}: contains pickled (object) arrays, which pose files may not hold") from None
        raise InputError(f"{p}: is not a readable .npz pose file ({exc})") from None
    except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, OSError, format errors...
        raise InputError(f"{p}: is a corrupt .npz archive ({type(exc).__name__}: {exc})") from None

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise InputError(f"{p}: lacks the key {key!r} (a {FORMAT} pose file has {sorted(arrays) or 'no keys'})")
        return arrays[key]

    fmt = _scalar_string(need("format"))
    if fmt != FORMAT:
        raise InputError(f"{p}: 'format' is {arrays['format']!r}, expected {FORMAT!r}")
    body_model = _scalar_string(need("body_model"))
    if body_model not in BODY_POSE_JOINTS:
        raise InputError(f"{p}: 'body_model' is {arrays['body_model']!r}; expected one of {sorted(BODY_POSE_JOINTS)}")
    joints = BODY_POSE_JOINTS[body_model]

    def float_array(key: str, tail: tuple[int, ...], n: int | None) -> np.ndarray:
        value = arrays[key]
        if value.dtype.kind != "f":
            raise InputError(f"{p}: {key!r} has dtype {value.dtype}; expected floats")
        if value.ndim != 1 + len(tail) or tuple(value.shape[1:]) != tail or (n is not None and value.shape[0] != n):
            expected = ", ".join(["N" if n is None else str(n)] + [str(t) for t in tail])
            raise InputError(f"{p}: {key!r} has shape {value.shape}; expected ({expected}) for {body_model}")
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            value = value.astype(np.float32)
        if not np.all(np.isfinite(value)):
            bad = int(np.nonzero((~np.isfinite(value.reshape(value.shape[0], -1))).any(axis=1))[0][0])
            raise InputError(f"{p}: {key!r} has NaN or infinite values (or values beyond float32), first at row "
                             f"{bad} (pose {bad}); fix or drop that pose and save the file again")
        return value

    need("global_orient")
    global_orient = float_array("global_orient", (3,), None)
    n = global_orient.shape[0]
    if n == 0:
        raise InputError(f"{p}: contains no poses (global_orient has shape {global_orient.shape})")
    need("body_pose")
    body_pose = float_array("body_pose", (joints, 3), n)
    kwargs: dict[str, np.ndarray] = {}
    shape_key, shape_dim = SHAPE_KEYS[body_model]
    for key, dim in SHAPE_KEYS.values():
        if key in arrays:
            if key != shape_key:
                raise InputError(f"{p}: has {key!r}, which does not belong to a {body_model} pose file")
            kwargs[key] = float_array(key, (dim,), n)
    if "phenotype" in kwargs and (kwargs["phenotype"].min() < 0 or kwargs["phenotype"].max() > 1):
        raise InputError(f"{p}: 'phenotype' values must lie in [0, 1] (found {kwargs['phenotype'].min():.3g}..{kwargs['phenotype'].max():.3g})")
    for key in STRING_KEYS:
        if key in arrays:
            value = arrays[key]
            if value.dtype.kind not in "US" or value.shape != (n,):
                raise InputError(f"{p}: {key!r} must be a string array of shape ({n},), found {value.dtype} {value.shape}")
            kwargs[key] = value.astype(str)
    if "subject" in arrays:
        value = arrays["subject"]
        if value.dtype.kind not in "iu" or value.shape != (n,):
            raise InputError(f"{p}: 'subject' must be an integer array of shape ({n},), found {value.dtype} {value.shape}")
        kwargs["subject"] = value.astype(np.int64)
    return PoseSet(body_model=body_model, global_orient=global_orient, body_pose=body_pose, **kwargs)


def save_pose_file(path: str | os.PathLike, pose_set: PoseSet, rotation_dtype=np.float32, compress: bool = True) -> Path:
    """Write ``pose_set`` as a ``dhpc-poses/1`` file, atomically. Returns the path.

    ``rotation_dtype`` (float32 by default; float16 for compact packaged sets) applies to
    ``global_orient`` and ``body_pose``.
    """
    p = Path(path)
    if np.dtype(rotation_dtype).kind != "f":
        raise ValueError(f"rotation_dtype must be a float type, not {rotation_dtype}")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "body_model": np.array(pose_set.body_model),
        "global_orient": np.asarray(pose_set.global_orient).astype(rotation_dtype),
        "body_pose": np.asarray(pose_set.body_pose).astype(rotation_dtype),
    }
    for key in ("phenotype", "betas"):
        value = getattr(pose_set, key)
        if value is not None:
            arrays[key] = np.asarray(value, dtype=np.float32)
    for key in STRING_KEYS:
        value = getattr(pose_set, key)
        if value is not None:
            arrays[key] = np.asarray(value, dtype=str)
    if pose_set.subject is not None:
        arrays["subject"] = np.asarray(pose_set.subject, dtype=np.int32)
    with atomic_path(p) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)
    return p


#: named packaged pose sets (``--poses NAME``): every built-in pose, or the hard ones
BUILTIN_SETS = ("builtin", "builtin-hard")
#: the packaged selections of :data:`BUILTIN_SETS` (pose names per set, and how each was chosen)
SETS_FORMAT = "dhpc-pose-sets/1"
SETS_FILE = "data/cmu_builtin_sets.npz"


def _packaged(relative: str):
    """A context manager giving the path of a packaged file of ``diffusion_hpc.poses``."""
    from importlib import resources

    return resources.as_file(resources.files("diffusion_hpc.poses").joinpath(relative))


def builtin_set_selection(name: str) -> dict:
    """How the packaged set ``name`` was chosen (criterion, prior, threshold, counts), as
    written by ``scripts/fit_default_prior.py``; ``{}`` for ``"builtin"`` (all poses)."""
    _check_set_name(name)
    if name == "builtin":
        return {}
    with _packaged(SETS_FILE) as path, np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz[f"{name}.selection"]))


def builtin_set_names(name: str) -> np.ndarray:
    """(M,) str: the pose names of the packaged set ``name`` (a subset of :func:`builtin_poses`)."""
    _check_set_name(name)
    if name == "builtin":
        return builtin_poses().name
    with _packaged(SETS_FILE) as path, np.load(path, allow_pickle=False) as npz:
        if _scalar_string(npz["format"]) != SETS_FORMAT:
            raise InputError(f"{path}: 'format' is {npz['format']!r}, expected {SETS_FORMAT!r}; reinstall the package")
        return npz[name].astype(str)


def _check_set_name(name: str) -> None:
    if name not in BUILTIN_SETS:
        raise ConfigError(f"unknown built-in pose set {name!r}; choose one of {', '.join(BUILTIN_SETS)} "
                          "or pass a pose file (.npz)")


def builtin_poses(name: str = "builtin") -> PoseSet:
    """A packaged pose set for Anny: ``"builtin"``, the CMU motion-capture poses
    (``diffusion_hpc/poses/data/cmu_builtin.npz``), or ``"builtin-hard"``, those of them the
    shipped Anny prior calls hard (:func:`builtin_set_selection` says how they were chosen).

    Raises:
        ConfigError: ``name`` is not one of :data:`BUILTIN_SETS`.
    """
    _check_set_name(name)
    with _packaged("data/cmu_builtin.npz") as path:
        poses = load_pose_file(path)
    if name == "builtin":
        return poses
    names = builtin_set_names(name)
    row = {n: i for i, n in enumerate(poses.name)}
    missing = [n for n in names if n not in row]
    if missing:
        raise InputError(f"the packaged set {name!r} names {len(missing)} poses not in cmu_builtin.npz "
                         f"(first {missing[0]!r}); rebuild it with scripts/fit_default_prior.py --sets-only")
    return poses.subset([row[n] for n in names])


def load_pose_set(spec: str | os.PathLike) -> PoseSet:
    """The poses ``spec`` names: a packaged set (:data:`BUILTIN_SETS`) or a pose file path.

    A string starting with ``builtin`` that is neither a packaged set nor an existing file is
    refused with the list of sets (a typo such as ``builtin_hard`` is not read as a path).
    """
    text = os.fspath(spec)
    if isinstance(spec, str) and text in BUILTIN_SETS:
        return builtin_poses(text)
    if isinstance(spec, str) and text.startswith("builtin") and not Path(text).exists():
        _check_set_name(text)
    return load_pose_file(text)


def import_bvh(paths: list[str], out: str, every: int = 1, max_frames: int | None = None) -> PoseSet:
    """Import BVH files (CMU 31-joint skeleton) as Anny poses and save them to ``out``.

    Args:
        paths: BVH files.
        out: the pose file to write (``dhpc-poses/1``).
        every: keep every ``every``-th frame of each file (frames 0, every, 2 every, ...).
        max_frames: at most this many frames per file (after subsampling); None for all.
    Returns:
        The saved :class:`PoseSet`; ``source`` is ``"<file name>:<frame index>"``.
    """

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ConfigError("import_bvh needs at least one BVH file")
    if int(every) < 1:
        raise ConfigError(f"every must be a positive integer, not {every!r}")
    if max_frames is not None and int(max_frames) < 1:
        raise ConfigError(f"max_frames must be a positive integer or None, not {max_frames!r}")
    go_all, bp_all, names, sources, descriptions = [], [], [], [], []
    for path in paths:
        motion = load_bvh(path)
        frames = np.arange(0, motion.num_frames, int(every))
        if max_frames is not None:
            frames = frames[: int(max_frames)]
        if frames.size == 0:
            raise InputError(f"{path}: has no frames")
        try:
            go, bp = retarget_bvh(motion, motion.frames[frames])
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        file_name = Path(path).name
        go_all.append(go)
        bp_all.append(bp)
        names += [f"{Path(path).stem}_f{int(f):05d}" for f in frames]
        sources += [f"{file_name}:{int(f)}" for f in frames]
        descriptions += [f"imported from {file_name}"] * len(frames)
    pose_set = PoseSet(
        body_model="anny",
        global_orient=np.concatenate(go_all),
        body_pose=np.concatenate(bp_all),
        name=np.array(names),
        source=np.array(sources),
        description=np.array(descriptions),
    )
    save_pose_file(out, pose_set)
    return pose_set
