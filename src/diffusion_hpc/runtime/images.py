"""One image reader and one list of image suffixes for every input folder (guides, photos to
estimate, backgrounds, real sets for FID).

Decoding is OpenCV's (``cv2.imdecode``, EXIF orientation applied), the same everywhere, so one
file gives the same pixels to every stage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffusion_hpc.errors import InputError

#: suffixes (lower case) of the files read as images; anything else in an input folder is ignored
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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

    Raises:
        InputError: the file is missing or not a readable image; the message names the file.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
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
