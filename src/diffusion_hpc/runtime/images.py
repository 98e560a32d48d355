"""One image reader and one list of image suffixes for every input folder (guides, photos to
estimate, backgrounds, real sets for FID).

Decoding is OpenCV's (``cv2.imdecode``, EXIF orientation applied), the same everywhere, so one
file gives the same pixels to every stage.

Before any decode, :func:`check_image_file` reads only the file's header (PIL ``Image.open``) and
refuses a file that is not an image, whose declared width x height exceeds :func:`max_image_pixels`
(:data:`MAX_IMAGE_PIXELS`, 50 megapixels, or the environment variable ``DHPC_MAX_IMAGE_PIXELS``),
or that is truncated (PNG: chunks and CRCs up to ``IEND``; JPEG: no end marker after the last scan;
WebP: its header; BMP and TIFF, which have no cheap check: a full PIL decode).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffusion_hpc.errors import InputError

#: suffixes (lower case) of the files read as images; anything else in an input folder is ignored
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: largest declared width x height read (50 megapixels, e.g. 8660 x 5773); override with the
#: environment variable ``DHPC_MAX_IMAGE_PIXELS`` (a positive integer)
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_PIXELS_ENV = "DHPC_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit: ``DHPC_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        InputError: the variable is set but not a positive integer.
    """
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r} is not a positive integer; set it to a pixel count "
                         f"such as {MAX_IMAGE_PIXELS} or unset it")
    return value


def check_image_file(path: str | os.PathLike, what: str = "image file") -> tuple[int, int]:
    """Check an image file before it is decoded; return its declared (width, height).

    Reads the header (PIL ``Image.open``), refuses a declared size above :func:`max_image_pixels`
    (before any pixel is decoded), then checks the file's structure (PIL ``verify()``: PNG chunks and
    CRCs; JPEG: an end-of-image marker after the last scan; BMP and TIFF: a PIL decode, as they have
    no cheaper check), so a truncated or non-image file is refused before any work.

    Raises:
        InputError: the file is missing, not an image, too large, or truncated; the message names it.
    """
    import warnings

    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # PIL's own bomb guard must not be stricter than ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                fmt = im.format
                if width * height <= limit:
                    im.verify()  # structure only, no pixels
    except Image.DecompressionBombError as exc:  # PIL refuses sizes far above the limit at open
        raise InputError(f"{what} {path} declares more pixels than the limit of {limit} ({exc}); downscale it, "
                         f"remove it, or raise the limit with {MAX_IMAGE_PIXELS_ENV}=<pixels>") from exc
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{what} {path} is corrupt, truncated or not an image ({exc.__class__.__name__}: {exc}); "
                         f"replace it with a readable image ({', '.join(IMAGE_SUFFIXES)}) or remove it from the folder") from exc
    if width * height > limit:
        raise InputError(f"{what} {path} declares {width}x{height} pixels ({width * height / 1e6:.0f} MP), above the "
                         f"limit of {limit} pixels; downscale it, remove it, or raise the limit with "
                         f"{MAX_IMAGE_PIXELS_ENV}=<pixels>")
    if fmt not in ("PNG", "JPEG", "WEBP"):  # BMP, TIFF: no structural check short of decoding (size bounded above)
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{what} {path} is corrupt or truncated ({exc.__class__.__name__}: {exc}); "
                             "replace it with a complete copy or remove it from the folder") from exc
    if fmt == "JPEG":
        data = path.read_bytes()
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0:
            raise InputError(f"{what} {path} is a truncated JPEG (no end-of-image marker after its last scan); "
                             "replace it with a complete copy or remove it from the folder")
    return width, height


def is_image_file(path: str | os.PathLike) -> bool:
    """True for an existing file whose suffix is in :data:`IMAGE_SUFFIXES`."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(folder: str | os.PathLike, *, recursive: bool = False, what: str = "folder") -> list[Path]:
    """Image files of ``folder``, sorted by relative POSIX path (the same order on every machine).

    Args:
        folder: a directory.
        recursive: also search sub-folders (symbolic links followed).
        what: how the error messages name the folder (e.g. ``"--guides"``).

    Raises:
        InputError: ``folder`` is not a directory, or holds no image file.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{what} {root} does not exist or is not a folder; pass a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    if recursive:
        found = [Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names]
    else:
        found = list(root.iterdir())
    files = sorted((p for p in found if is_image_file(p)), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        where = " (searched recursively)" if recursive else ""
        raise InputError(f"{what} {root} holds no images ({', '.join(IMAGE_SUFFIXES)}){where}")
    return files


def load_image(path: str | os.PathLike, what: str = "image file") -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file (grey and RGBA are converted; EXIF rotation applied).

    The file is first checked by :func:`check_image_file` (header, pixel limit, truncation).

    Raises:
        InputError: the file is missing, too large, truncated or not a readable image; the message names the file.
    """
    import cv2

    path = Path(path)
    check_image_file(path, what)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{what} {path} is not a readable image (corrupt or unsupported format; "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}); replace it or remove it from the folder")
    return np.ascontiguousarray(image[..., ::-1])


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` if it is an (H, W, 3) uint8 RGB array of at least 16 x 16 pixels, else raise
    :class:`~diffusion_hpc.errors.InputError`.

    Args:
        image: candidate array.
        name: what to call it in the message (a file name or ``images[3]``).
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} is a {type(image).__name__}, not a numpy array; load files with "
                         "diffusion_hpc.runtime.images.load_image(path)")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{name} has shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8 RGB "
                         "(convert grey or RGBA images to RGB and floats to 0..255 uint8, or use load_image(path))")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise InputError(f"{name} is {image.shape[1]}x{image.shape[0]} pixels; at least 16x16 is needed")
    return image
