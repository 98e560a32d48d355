"""The ground floor: services every other package may use, importing nothing above them.

- :mod:`~diffusion_hpc.runtime.atomic`: atomic file writes (temporary file + ``os.replace``)
- :mod:`~diffusion_hpc.runtime.paths`: the project's cache directories
- :mod:`~diffusion_hpc.runtime.images`: one image reader, one list of image suffixes
- :mod:`~diffusion_hpc.runtime.weights`: offline lookup of model weights (local folders, HF cache)
- :mod:`~diffusion_hpc.runtime.native_log`: native libraries' stderr chatter filtered out
- :mod:`~diffusion_hpc.runtime.threads`: torch's intra-op thread count for a block

Importing this package imports none of its modules (and so neither torch nor OpenCV).
"""
