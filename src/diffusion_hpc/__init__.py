"""Diffusion-HPC: labelled synthetic training data for 3D human mesh recovery.

Heavy dependencies (torch, anny, moderngl) are imported lazily by the modules that need them, so
``import diffusion_hpc`` is cheap.
"""

__version__ = "0.1.0"
