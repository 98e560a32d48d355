"""Sample records, dataset writers and readers.

``open_dataset(path)`` reads a dataset written by ``dhpc generate``.
"""

from __future__ import annotations


def open_dataset(path):
    """Open a Diffusion-HPC dataset directory; see :class:`diffusion_hpc.data.reader.Dataset`."""
    from diffusion_hpc.data.reader import Dataset

    return Dataset(path)


__all__ = ["open_dataset"]
