"""Shared fixtures. The Anny model is built once per machine into the project cache (first run
about 80 s), then loads in about a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def anny_body():
    from diffusion_hpc.body import get_body_model

    return get_body_model("anny")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None):
    """Run ``dhpc`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "diffusion_hpc.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
