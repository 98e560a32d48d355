"""BVH (Biovision hierarchy) motion files: a strict text parser and forward kinematics.

Parsed grammar::

    HIERARCHY
    ROOT <name> {                       (one root)
        OFFSET <x> <y> <z>
        CHANNELS <n> <channel>...       (any of Xposition Yposition Zposition Xrotation Yrotation
                                         Zrotation, in any order; case-insensitive)
        JOINT <name> { ... }            (any number, nested)
        End Site { OFFSET <x> <y> <z> } (optional leaf marker)
    }
    MOTION
    Frames: <F>
    Frame Time: <seconds>
    <F rows of as many numbers as there are channels in total, in hierarchy order>

Conventions of :func:`forward_kinematics` (the usual BVH ones, e.g. the CMU conversion):

- Angles are in degrees. A joint's local rotation is the product of its rotation channels in the
  order they are listed (intrinsic): ``CHANNELS 3 Zrotation Yrotation Xrotation`` gives
  ``R = Rz(z) @ Ry(y) @ Rx(x)``. Unwrapped angles (far outside +-180 deg) are fine: everything goes
  through rotation matrices.
- Position channels, where present (usually only on the root), replace the matching component of
  the joint's OFFSET.
- ``G_j = G_parent @ R_j`` and ``p_j = p_parent + G_parent @ t_j`` (``t_j`` the offset with its
  position channels applied); the root has ``G = R_root`` and ``p = t_root``.
- All channels zero gives the rest pose (for CMU files: a T-pose, Y up, facing +Z).

Malformed files raise :class:`diffusion_hpc.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_hpc.errors import InputError

CHANNEL_NAMES = ("Xposition", "Yposition", "Zposition", "Xrotation", "Yrotation", "Zrotation")
_CANONICAL = {name.lower(): name for name in CHANNEL_NAMES}
_TOKEN = re.compile(r"\{|\}|[^\s{}]+")


@dataclass
class BvhMotion:
    """A parsed BVH file.

    Attributes:
        path: the file it came from (``"<string>"`` when parsed from text).
        joint_names: (J,) joint names, in hierarchy (depth-first) order; ``joint_names[0]`` is the root.
        parents: (J,) int64 parent index per joint, -1 for the root; parents come before children.
        offsets: (J, 3) float64 OFFSET of each joint from its parent (the root's from the origin).
        channels: per joint, its channel names in file order (canonical spelling, e.g. ``"Zrotation"``).
        channel_start: (J,) int64 column of each joint's first channel in ``frames``.
        end_site_parents: (E,) int64 joint index of each ``End Site``.
        end_site_offsets: (E, 3) float64 offset of each end site from its joint.
        frames: (F, C) float64 channel values, one row per frame.
        frame_time: seconds per frame.
    """

    path: str
    joint_names: list[str]
    parents: np.ndarray
    offsets: np.ndarray
    channels: list[tuple[str, ...]]
    channel_start: np.ndarray
    end_site_parents: np.ndarray
    end_site_offsets: np.ndarray
    frames: np.ndarray
    frame_time: float
    lines: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.frames.shape[1])

    def joint_index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise KeyError(f"{self.path}: no joint named {name!r}") from None

    def column(self, joint: str, channel: str) -> int:
        """Column of ``frames`` holding ``channel`` (e.g. ``"Zrotation"``) of ``joint``."""
        j = self.joint_index(joint)
        chans = self.channels[j]
        canonical = _CANONICAL.get(channel.lower(), channel)
        if canonical not in chans:
            raise KeyError(f"{self.path}: joint {joint!r} has no {channel} channel (has {list(chans)})")
        return int(self.channel_start[j]) + chans.index(canonical)


class _Tokens:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.items: list[tuple[str, int]] = []
        self.lines = text.splitlines()
        self.pos = 0
        self.motion_line: int | None = None
        for lineno, line in enumerate(self.lines, start=1):
            if line.strip().upper() == "MOTION":
                self.items.append(("MOTION", lineno))
                self.motion_line = lineno
                break
            for tok in _TOKEN.findall(line):
                self.items.append((tok, lineno))

    def error(self, message: str, line: int | None = None) -> InputError:
        if line is None:
            line = self.items[min(self.pos, len(self.items) - 1)][1] if self.items else 1
        return InputError(f"{self.path}, line {line}: {message}")

    def peek(self) -> tuple[str, int]:
        if self.pos >= len(self.items):
            last = self.items[-1][1] if self.items else 1
            return ("<end of file>", last)
        return self.items[self.pos]

    def next(self, what: str) -> tuple[str, int]:
        tok, line = self.peek()
        if tok == "<end of file>":
            raise self.error(f"unexpected end of file, expected {what}", line)
        self.pos += 1
        return tok, line

    def expect(self, word: str) -> int:
        tok, line = self.next(repr(word))
        if tok.upper() != word.upper():
            raise self.error(f"expected {word!r}, found {tok!r}", line)
        return line

    def number(self, what: str) -> float:
        tok, line = self.next(what)
        try:
            value = float(tok)
        except ValueError:
            raise self.error(f"expected a number for {what}, found {tok!r}", line) from None
        if not np.isfinite(value):
            raise self.error(f"{what} is not finite ({tok!r})", line)
        return value


def parse_bvh(text: str, path: str = "<string>") -> BvhMotion:
    """Parse BVH text. ``path`` only labels error messages and :attr:`BvhMotion.path`."""
    toks = _Tokens(text, path)
    toks.expect("HIERARCHY")
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []
    end_parents: list[int] = []
    end_offsets: list[list[float]] = []
    lines: dict[str, int] = {}

    def parse_offset(owner: str) -> list[float]:
        toks.expect("OFFSET")
        return [toks.number(f"the OFFSET of {owner}") for _ in range(3)]

    def parse_joint(parent: int) -> None:
        kind, line = toks.next("ROOT or JOINT")
        name, _ = toks.next("a joint name")
        if name in ("{", "}"):
            raise toks.error(f"{kind} without a name", line)
        if name in lines:
            raise toks.error(f"joint {name!r} is defined twice (first on line {lines[name]})", line)
        lines[name] = line
        index = len(names)
        names.append(name)
        parents.append(parent)
        toks.expect("{")
        offsets.append(parse_offset(name))
        chans: tuple[str, ...] = ()
        if toks.peek()[0].upper() == "CHANNELS":
            toks.next("CHANNELS")
            count_tok, cline = toks.next("the channel count")
            if not count_tok.isdigit():
                raise toks.error(f"expected the channel count of {name!r}, found {count_tok!r}", cline)
            found = []
            for _ in range(int(count_tok)):
                tok, tline = toks.next(f"a channel name of {name!r}")
                canonical = _CANONICAL.get(tok.lower())
                if canonical is None:
                    raise toks.error(
                        f"unknown channel {tok!r} of joint {name!r}; expected one of {', '.join(CHANNEL_NAMES)}", tline
                    )
                if canonical in found:
                    raise toks.error(f"channel {canonical} listed twice for joint {name!r}", tline)
                found.append(canonical)
            chans = tuple(found)
        channels.append(chans)
        while True:
            tok, tline = toks.peek()
            upper = tok.upper()
            if tok == "}":
                toks.next("}")
                return
            if upper == "JOINT":
                parse_joint(index)
            elif upper == "END":
                toks.next("End")
                toks.expect("Site")
                toks.expect("{")
                end_parents.append(index)
                end_offsets.append(parse_offset(f"the End Site of {name!r}"))
                toks.expect("}")
            elif tok == "<end of file>":
                raise toks.error(f"unexpected end of file inside joint {name!r} (missing '}}')", tline)
            else:
                raise toks.error(f"expected JOINT, End Site or '}}' in joint {name!r}, found {tok!r}", tline)

    tok, line = toks.peek()
    if tok.upper() != "ROOT":
        raise toks.error(f"expected ROOT, found {tok!r}", line)
    parse_joint(-1)
    tok, line = toks.peek()
    if tok != "MOTION":
        if tok == "<end of file>":
            raise toks.error("missing MOTION section", line)
        raise toks.error(f"expected MOTION after the hierarchy (one ROOT per file), found {tok!r}", line)

    # MOTION section, line based.
    src = toks.lines
    i = toks.motion_line  # index of the line after MOTION (0-based == 1-based line number of MOTION)

    def next_content(i: int) -> int:
        while i < len(src) and not src[i].strip():
            i += 1
        return i

    i = next_content(i)
    m = re.fullmatch(r"\s*Frames\s*:\s*(\S+)\s*", src[i]) if i < len(src) else None
    if not m or not m.group(1).isdigit():
        raise InputError(f"{path}, line {min(i, len(src) - 1) + 1}: expected 'Frames: <count>'")
    num_frames = int(m.group(1))
    i = next_content(i + 1)
    m = re.fullmatch(r"\s*Frame\s+Time\s*:\s*(\S+)\s*", src[i], flags=re.IGNORECASE) if i < len(src) else None
    try:
        frame_time = float(m.group(1)) if m else float("nan")
    except ValueError:
        frame_time = float("nan")
    if not np.isfinite(frame_time) or frame_time <= 0:
        raise InputError(f"{path}, line {min(i, len(src) - 1) + 1}: expected 'Frame Time: <seconds>' (a positive number)")
    first_row = i + 1
    num_channels = sum(len(c) for c in channels)
    body = src[first_row:]
    values = None
    try:
        values = np.array(" ".join(body).split(), dtype=np.float64)
    except ValueError:
        values = None
    if values is None or values.size != num_frames * num_channels or not np.all(np.isfinite(values)):
        # Find the first offending line for the message.
        rows = 0
        for k, line in enumerate(body):
            if not line.strip():
                continue
            parts = line.split()
            lineno = first_row + k + 1
            try:
                row = np.array(parts, dtype=np.float64)
            except ValueError:
                bad = next(p for p in parts if not _is_float(p))
                raise InputError(f"{path}, line {lineno}: frame {rows} has a non-number {bad!r}") from None
            if row.size != num_channels:
                raise InputError(
                    f"{path}, line {lineno}: frame {rows} has {row.size} values; the hierarchy declares {num_channels} channels"
                )
            if not np.all(np.isfinite(row)):
                raise InputError(f"{path}, line {lineno}: frame {rows} has a NaN or infinite value")
            rows += 1
        raise InputError(f"{path}: 'Frames: {num_frames}' but the file has {rows} frame rows")
    frames = values.reshape(num_frames, num_channels)
    starts = np.cumsum([0] + [len(c) for c in channels[:-1]]).astype(np.int64)
    return BvhMotion(
        path=path,
        joint_names=names,
        parents=np.asarray(parents, dtype=np.int64),
        offsets=np.asarray(offsets, dtype=np.float64).reshape(-1, 3),
        channels=channels,
        channel_start=starts,
        end_site_parents=np.asarray(end_parents, dtype=np.int64),
        end_site_offsets=np.asarray(end_offsets, dtype=np.float64).reshape(-1, 3),
        frames=frames,
        frame_time=frame_time,
        lines=lines,
    )


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_bvh(path: str | Path) -> BvhMotion:
    """Read and parse a BVH file; :class:`InputError` if it is missing, unreadable or malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: BVH file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = p.read_text(encoding="latin-1")
        except OSError as exc:  # pragma: no cover
            raise InputError(f"{p}: cannot read the BVH file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the BVH file ({exc})") from None
    if "\x00" in text:
        raise InputError(f"{p}, line 1: not a BVH text file (binary data)")
    return parse_bvh(text, str(p))


def axis_rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices about ``"X"``, ``"Y"`` or ``"Z"`` by ``degrees``."""
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    if axis == "X":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "Y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    elif axis == "Z":
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    else:
        raise ValueError(f"unknown axis {axis!r}")
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def local_transforms(
    channels: list[tuple[str, ...]], channel_start: np.ndarray, offsets: np.ndarray, frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame local rotations (F, J, 3, 3) and translations (F, J, 3) from channel values (F, C)."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim == 1:
        frames = frames[None]
    num = frames.shape[0]
    joints = len(channels)
    rot = np.broadcast_to(np.eye(3), (num, joints, 3, 3)).copy()
    trans = np.broadcast_to(np.asarray(offsets, dtype=np.float64), (num, joints, 3)).copy()
    for j, chans in enumerate(channels):
        start = int(channel_start[j])
        for k, name in enumerate(chans):
            col = frames[:, start + k]
            axis = name[0]
            if name.endswith("rotation"):
                rot[:, j] = rot[:, j] @ axis_rotation(axis, col)
            else:
                trans[:, j, "XYZ".index(axis)] = col
    return rot, trans


def chain_rotations(parents: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Global rotations (..., J, 3, 3) from local ones: ``G_j = G_parent @ R_j`` (parents first)."""
    out = np.empty_like(local)
    for j, p in enumerate(parents):
        out[..., j, :, :] = local[..., j, :, :] if p < 0 else out[..., p, :, :] @ local[..., j, :, :]
    return out


def forward_kinematics(motion: BvhMotion, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Global joint rotations (F, J, 3, 3) and positions (F, J, 3) for ``frames`` (default: all).

    ``frames`` is (F, C) or (C,) channel values laid out like ``motion.frames``. Pure function.
    """
    frames = motion.frames if frames is None else np.asarray(frames, dtype=np.float64)
    if frames.ndim == 1:
        frames = frames[None]
    if frames.shape[-1] != motion.num_channels:
        raise ValueError(f"frames have {frames.shape[-1]} channels; {motion.path} has {motion.num_channels}")
    local, trans = local_transforms(motion.channels, motion.channel_start, motion.offsets, frames)
    rot = np.empty_like(local)
    pos = np.empty_like(trans)
    for j, p in enumerate(motion.parents):
        if p < 0:
            rot[:, j] = local[:, j]
            pos[:, j] = trans[:, j]
        else:
            rot[:, j] = rot[:, p] @ local[:, j]
            pos[:, j] = pos[:, p] + np.einsum("fab,fb->fa", rot[:, p], trans[:, j])
    return rot, pos


def end_site_positions(motion: BvhMotion, rotations: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(F, E, 3) positions of the End Sites given :func:`forward_kinematics` output."""
    par = motion.end_site_parents
    return positions[:, par] + np.einsum("feab,eb->fea", rotations[:, par], motion.end_site_offsets)


def rest_positions(parents: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(J, 3) joint positions in the rest pose (all channels zero, root at its OFFSET)."""
    pos = np.zeros((len(parents), 3))
    for j, p in enumerate(parents):
        pos[j] = offsets[j] if p < 0 else pos[p] + offsets[j]
    return pos
