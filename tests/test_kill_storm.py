"""SIGKILLs of `dhpc generate` at random moments, each followed by --resume (scripts/kill_storm.py,
a few kills here; the script does 20): exactly n manifest rows, one unique readable sample per
accepted row, the manifest and shards agree, and the data equal an unkilled run's. Mode D with the
local engine and once with Ray; modes R (real photos) and T on the tiny diffusion backbone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import dataset_digest, manifest_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from kill_storm import storm


@pytest.mark.parametrize("engine, kills, n", [("local", 3, 20), ("ray", 1, 12)])
def test_kill_storm_loses_nothing(tmp_path, anny_body, engine, kills, n):
    out = tmp_path / "d"
    summary = storm(out, kills=kills, n=n, seed=5, engine=engine, rng_seed=1)
    assert summary["problems"] == [], summary
    assert summary["kills"] >= 1, summary  # at least one run was killed before it finished
    assert [r["index"] for r in manifest_rows(out)] == list(range(n))
    assert dataset_digest(out) == dataset_digest(tmp_path / "d-reference")
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("mode", ["R", "T"])
def test_kill_storm_guided_modes_lose_nothing(tmp_path, anny_body, tiny_backbone, mode):
    """Modes R (guides: scikit-image's astronaut and matplotlib's grace_hopper, written by the script)
    and T on the tiny backbone; one SIGKILL inside the second shard, just after the first commit, then
    --resume: the rows (accepted, or failed with their reason and cost) equal the unkilled run's."""
    out, n = tmp_path / "g", 6
    summary = storm(out, kills=1, n=n, seed=2, engine="local", rng_seed=4, mode=mode, backbone=tiny_backbone,
                    phase="commit")  # fmt: skip
    assert summary["problems"] == [], summary
    assert summary["kills"] == 1 and summary["digest_equal"], summary
    [moment] = summary["moments"]
    assert (moment["shards_before"], moment["shards_after"]) == (0, 1), summary  # killed with shard 1 of 2 pending
    rows = manifest_rows(out)
    assert [r["index"] for r in rows] == list(range(n))
    assert all(r["status"] == "ok" or r["reason"] for r in rows)
    if mode == "R":
        assert summary["accepted"] >= n // 2, summary
    assert all(r["unet_evals"] > 0 for r in rows)
