"""Temporarily change torch's intra-op thread count.

Optimisation loops over tiny tensors (a batch of 17 keypoints, a few dozen bones) are dominated by
per-operation overhead; splitting each operation across threads only adds synchronisation. On this
project's 2-core reference machine the body-model fit runs ~8x faster on one thread than on two
(``scripts/bench_estimate.py``), so such loops run inside ``torch_threads(1)``.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count afterwards
    (the setting is process-wide)."""
    import torch

    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
