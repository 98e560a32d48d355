"""Sample records, dataset writers and readers.

``open_dataset(path)`` reads a dataset written by ``dhpc generate``.
"""

from __future__ import annotations

from diffusion_hpc.data.reader import Dataset


def open_dataset(path) -> Dataset:
    """Open a Diffusion-HPC dataset directory; see :class:`diffusion_hpc.data.reader.Dataset`."""
    return Dataset(path)


__all__ = ["Dataset", "open_dataset"]
