"""The user's inputs of modes T and R, read and checked before any model loads or file is written.

- Prompts (``--prompt TEXT`` or ``--prompts FILE``): one prompt or action phrase per line; blank
  lines and lines starting with ``#`` are skipped. An empty file is an error.
- Guides (``--guides DIR``, mode R): every image file of the folder (sorted by name, suffixes of
  :data:`~diffusion_hpc.runtime.images.IMAGE_SUFFIXES`) is decoded once up front, so a corrupt
  file stops the run before any work, naming the file (friendlier than a failure row per sample
  after hours of generation). Guide g of the run uses file ``g % F``: with more guides than files
  the files are reused, each time with other seeds (other augmentations and regeneration noise).
  Guides are resized to the run's ``image_size`` by a centred crop to its aspect ratio ("cover"),
  then area resampling, so the estimate's camera is that of the saved image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion_hpc.errors import InputError
from diffusion_hpc.runtime.images import image_files, load_image


#: largest ``--prompts`` file read (bytes, checked before reading) and most prompt lines kept
MAX_PROMPT_FILE_BYTES = 10_000_000
MAX_PROMPT_LINES = 100_000


def read_prompt_lines(prompt: str | None, prompts: Path | None, default: str | None = None) -> list[str]:
    """The prompt lines of a run: [prompt], the lines of ``prompts``, or [default].

    A ``--prompts`` file above :data:`MAX_PROMPT_FILE_BYTES` (10 MB, checked before it is read) or
    with more than :data:`MAX_PROMPT_LINES` prompts is an :class:`InputError`.
    """
    if prompt is not None:
        return [prompt.strip()]
    if prompts is not None:
        path = Path(prompts)
        try:
            size = path.stat().st_size if path.is_file() else 0
        except OSError:
            size = 0  # the read below names the problem
        if size > MAX_PROMPT_FILE_BYTES:
            raise InputError(f"--prompts {path} is {size / 1e6:.1f} MB, above the limit of "
                             f"{MAX_PROMPT_FILE_BYTES // 1_000_000} MB; pass a prompt file of at most "
                             f"{MAX_PROMPT_LINES} lines (prompts are reused cyclically, a short list suffices)")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--prompts {path}: cannot read the file ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise InputError(f"--prompts {path} is not a UTF-8 text file; write one prompt per line") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if len(lines) > MAX_PROMPT_LINES:
            raise InputError(f"--prompts {path} holds {len(lines)} prompts, above the limit of {MAX_PROMPT_LINES}; "
                             "shorten the file (prompts are reused cyclically, a short list suffices)")
        if not lines:
            raise InputError(f"--prompts {path} holds no prompts; write one prompt or action phrase per line "
                             "(e.g. 'doing a backflip')")
        for i, line in enumerate(lines):
            if "{action}" in line:
                raise InputError(f"--prompts {path} line {i + 1} {line!r} is a template; write the action phrase itself")
        return lines
    if default is None:
        raise InputError("no prompt given: pass --prompt TEXT or --prompts FILE")
    return [default]


def list_guides(folder: Path) -> list[Path]:
    """Image files of a guides folder, sorted; an error naming the folder when there are none."""
    return image_files(folder, what="--guides")


def fit_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3): centred crop to the aspect ratio of ``size``, then resize."""
    import cv2

    h, w = size
    ih, iw = image.shape[:2]
    scale = max(h / ih, w / iw)
    ch, cw = min(ih, int(round(h / scale))), min(iw, int(round(w / scale)))
    y0, x0 = (ih - ch) // 2, (iw - cw) // 2
    crop = image[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (w, h), interpolation=interp))


class GuideImages:
    """The guide files of mode R: all checked at construction, loaded per batch."""

    def __init__(self, folder: Path, size: tuple[int, int]) -> None:
        self.files = list_guides(folder)
        self.size = tuple(size)
        for path in self.files:  # fail fast: decode everything once (InputError names the file)
            image = load_image(path, what="guide image")
            if min(image.shape[:2]) < 16:
                raise InputError(f"guide image {path} is {image.shape[1]}x{image.shape[0]} pixels; at least 16x16 is needed")

    def __len__(self) -> int:
        return len(self.files)

    def path(self, guide: int) -> Path:
        return self.files[int(guide) % len(self.files)]

    def load(self, guide: int) -> np.ndarray:
        """(H, W, 3) uint8 start image of guide ``guide``, at the run's image size."""
        return fit_image(load_image(self.path(guide), what="guide image"), self.size)
