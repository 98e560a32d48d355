"""The conversion fits every person on its own: a person's result does not depend on which other
persons share its batch (issue 12: one L-BFGS over the batch's summed energy coupled them)."""

from __future__ import annotations

import pytest
import torch
from test_convert import _anny_bodies

from diffusion_hpc.body.convert import (
    ConvertWeights,
    LBFGSHistory,
    convert_bodies,
    lbfgs_step,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """The fit's many small tensor ops run ~40x slower with 2 threads on a shared 2-core machine."""


def _rosenbrock(scales: torch.Tensor):
    """Row b: scales[b] * Rosenbrock(x_b) in n/2 pairs (minimum 0 at all ones)."""

    def evaluate(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        a, b = x[:, 0::2], x[:, 1::2]
        f = scales[rows] * (100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2).sum(1)
        (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g

    return evaluate


def _minimise(x: torch.Tensor, scales: torch.Tensor, steps: int) -> torch.Tensor:
    evaluate = _rosenbrock(scales)
    history = LBFGSHistory.empty(len(x), 10, x.shape[1], x)
    f, g = evaluate(x, torch.arange(len(x)))
    for _ in range(steps):
        x, f, g = lbfgs_step(evaluate, x, f, g, history)
    return x


def test_batched_lbfgs_minimises_each_row_as_if_alone():
    """Rows of very different scale (1e-3 to 1e4) each reach their minimum, and each row's path is
    the one it takes alone: a summed-energy L-BFGS would let the stiff row set everyone's step."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.2, 1.0]).repeat(4, 3) + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    scales = torch.tensor([1e-3, 1.0, 30.0, 1e4], dtype=torch.float64)
    together = _minimise(x0, scales, 150)
    assert torch.allclose(together, torch.ones_like(together), atol=1e-6), together
    for b in range(4):
        alone = _minimise(x0[b:b + 1], scales[b:b + 1], 150)
        assert torch.allclose(alone[0], together[b], atol=1e-12)
    short = _minimise(x0, scales, 20)  # mid-way too, where the rows are far from converged
    for b in range(4):
        assert torch.allclose(_minimise(x0[b:b + 1], scales[b:b + 1], 20)[0], short[b], atol=1e-12)


def test_a_person_converts_the_same_alone_and_in_a_batch_of_nine(anny_body):
    """Anny -> Anny, correspondence thrown away: one person converted alone and in the middle of
    a batch of nine different bodies ends with the same parameters and errors (float rounding
    aside: a batched forward pass may round differently from a single one)."""
    rows = [20, 100, 180, 260, 340, 420, 500, 580, 660]
    _, out = _anny_bodies(anny_body, rows)
    perm = torch.randperm(out.vertices.shape[1], generator=torch.Generator().manual_seed(0))
    faces = torch.argsort(perm)[anny_body.faces]
    weights = ConvertWeights(iters_pose=10, iters_refine=20)
    batch = convert_bodies(out.vertices[:, perm], faces, out.joints, anny_body, weights=weights)
    k = 4
    alone = convert_bodies(out.vertices[k:k + 1, perm], faces, {n: j[k:k + 1] for n, j in out.joints.items()}, anny_body,
                           weights=weights)
    assert abs(alone.surface_mm[0] - batch.surface_mm[k]) < 0.05, (alone.surface_mm, batch.surface_mm[k])
    assert abs(alone.joints_mm[0] - batch.joints_mm[k]) < 0.05, (alone.joints_mm, batch.joints_mm[k])
    for name, value in alone.params.items():
        assert torch.allclose(value[0], batch.params[name][k], atol=1e-3), name
    assert (1e3 * (alone.vertices[0] - batch.vertices[k]).norm(dim=-1)).max() < 0.2  # mm (the old coupled fit: 13 mm)
