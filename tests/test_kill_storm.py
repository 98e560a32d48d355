"""SIGKILLs of `dhpc generate` at random moments, each followed by --resume (scripts/kill_storm.py,
a few kills here; the script does 20): exactly n unique readable samples, the manifest and shards
agree, and the data equal an unkilled run's, with the local engine and once with Ray."""

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
