"""The pose-prior interface: score, sample, perturb, and a differentiable penalty for fitting.

A pose is the body model's ``body_pose`` (B, J, 3) axis-angle (root excluded: the prior is about
articulation, not about global orientation). Implementations: the default prior for Anny learned
from CMU mocap (shipped in the package), and a VPoser adapter for SMPL users.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch


class PosePrior(torch.nn.Module):
    """Interface of a pose prior over ``body_pose`` (B, J, 3) axis-angle tensors."""

    #: registry name
    name: str = ""
    #: body model the prior is defined for ("anny", "smpl")
    body_model: str = ""
    #: score at or above which a pose counts as hard (calibrated per prior, documented)
    hard_threshold: float = float("inf")

    @property
    def corpus_hard_threshold(self) -> float:
        """The hard threshold for the prior's own training poses, which it scores in-sample (lower
        than new poses); equal to :attr:`hard_threshold` for a prior without such a calibration."""
        return self.hard_threshold

    def describe(self) -> dict:
        """What a dataset records about the prior that scored it: ``name``, ``body_model``,
        ``file`` (the weights file it was loaded from, the packaged one for the shipped prior;
        None when built from tensors), ``sha256`` of that file (identifies the prior across
        versions), ``hard_threshold``, ``corpus_hard_threshold``, ``plausible_threshold``.
        JSON-ready."""
        path = getattr(self, "path", None)
        return {
            "name": self.name, "body_model": self.body_model,
            "file": None if path is None else str(path),
            "sha256": None if path is None or not Path(path).is_file() else hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "hard_threshold": float(self.hard_threshold), "corpus_hard_threshold": float(self.corpus_hard_threshold),
            "plausible_threshold": float(getattr(self, "plausible_threshold", float("inf"))),
        }

    def score(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) one number per pose: higher = harder / less typical."""
        raise NotImplementedError

    def penalty(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) differentiable regulariser for fitting (e.g. negative log-likelihood up to a constant)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, J, 3) plausible poses."""
        raise NotImplementedError

    def perturb(self, body_pose: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, J, 3) variants around ``body_pose`` that stay plausible; ``strength`` 0 returns the input."""
        raise NotImplementedError

    def is_plausible(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) bool: inside the prior's plausible set (documented per prior)."""
        raise NotImplementedError

    def is_hard(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) bool: score >= hard_threshold."""
        return self.score(body_pose) >= self.hard_threshold


def as_generator(seed: int | np.random.Generator | torch.Generator | None) -> torch.Generator:
    """A torch generator from a seed, a numpy generator (draws a seed) or a torch generator."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if isinstance(seed, np.random.Generator):
        g.manual_seed(int(seed.integers(2**62)))
    elif seed is not None:
        g.manual_seed(int(seed))
    else:
        g.seed()
    return g
