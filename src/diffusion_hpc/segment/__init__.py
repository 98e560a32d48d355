"""Person and occluder masks of start images (DESIGN §2 step 2).

Backends: ``mediapipe`` (default: selfie / pose segmentation from the mediapipe wheel, person mask
only) and ``instance`` (a transformers Mask2Former-style checkpoint from disk: person and occluder
masks). Importing this package imports neither mediapipe, torch nor transformers.
"""

from diffusion_hpc.segment.base import Segmentation, Segmenter, make_segmenter

__all__ = ["Segmentation", "Segmenter", "make_segmenter"]
