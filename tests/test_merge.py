"""Parts for job arrays (--part I/N) and dhpc merge: the merged folder is the single run's dataset;
mismatched configs, overlapping parts and missing shards are refused with one line."""

from __future__ import annotations

import json
import shutil

import pytest

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.merge import merge, part_shards
from diffusion_hpc.errors import DhpcError
from diffusion_hpc.pipeline.generate import generate

from conftest import dataset_digest, manifest_rows, run_cli

#: render baseline at 64 px: 10 samples in 3 shards (4, 4, 2), batches of 3
SMALL = dict(n=10, seed=3, image_size=(64, 64), batch_size=3, shard_size=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, anny_body):
    """The single run and its two parts (part 1/2: shards 0 and 2; part 2/2: shard 1)."""
    root = tmp_path_factory.mktemp("parts")
    generate(GenerateConfig(**SMALL), root / "single", progress=False)
    for i in (1, 2):
        generate(GenerateConfig(**SMALL, part=f"{i}/2"), root / f"p{i}", progress=False)
    return root


def test_part_shards_round_robin():
    assert part_shards(5, (1, 2)) == [0, 2, 4] and part_shards(5, (2, 2)) == [1, 3]
    assert part_shards(3, None) == [0, 1, 2] and part_shards(2, (3, 3)) == []


def test_parts_hold_their_shards_and_merge_equals_single_run(runs, tmp_path):
    assert sorted(p.name for p in (runs / "p1" / "shards").iterdir()) == ["shard-000000.tar", "shard-000002.tar"]
    assert [r["index"] for r in manifest_rows(runs / "p2")] == [4, 5, 6, 7]
    assert json.loads((runs / "p1" / "run.json").read_text())["part"] == "1/2"
    out = tmp_path / "merged"
    proc = run_cli("merge", str(runs / "p2"), str(runs / "p1"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "3 shards" in proc.stdout
    single = runs / "single"
    assert dataset_digest(out) == dataset_digest(single)
    assert manifest_rows(out) == manifest_rows(single)
    assert (out / "config.yaml").read_text() == (single / "config.yaml").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["accepted"] == 10 and run["part"] is None and len(run["merged_from"]) == 2
    assert not list(tmp_path.glob(".merged.merge-*"))  # no temporary folder left


def _merge_error(*args: str) -> str:
    proc = run_cli("merge", *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_merge_refuses_mismatch_overlap_and_missing(runs, tmp_path):
    other = tmp_path / "other"
    generate(GenerateConfig(**{**SMALL, "seed": 4}, part="2/2"), other, progress=False)
    err = _merge_error(str(runs / "p1"), str(other), "--out", str(tmp_path / "m1"))
    assert "another config" in err and "seed: 3 vs 4" in err
    err = _merge_error(str(runs / "p1"), str(runs / "single"), "--out", str(tmp_path / "m2"))
    assert "shard-000000 is in both" in err
    err = _merge_error(str(runs / "p1"), "--out", str(tmp_path / "m3"))
    assert "shard-000001" in err and "--part 2/2" in err
    assert not any(tmp_path.glob("m*"))  # nothing written by a refused merge
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    err = _merge_error(str(runs / "p1"), str(runs / "p2"), "--out", str(tmp_path / "full"))
    assert "not an empty folder" in err


def test_resume_of_a_part_with_another_part_is_refused(runs, tmp_path):
    copy = tmp_path / "p1"
    shutil.copytree(runs / "p1", copy)
    with pytest.raises(DhpcError, match="different config"):
        generate(GenerateConfig(**SMALL, part="2/2"), copy, resume=True, progress=False)
    result = generate(GenerateConfig(**SMALL, part="1/2"), copy, resume=True, progress=False)
    assert result.skipped_shards == 2


def test_a_part_beyond_the_shards_is_refused(tmp_path):
    with pytest.raises(DhpcError, match="holds none"):
        generate(GenerateConfig(**SMALL, part="4/4"), tmp_path / "x", progress=False)


def test_python_merge_api(runs, tmp_path):
    result = merge([runs / "p1", runs / "p2"], tmp_path / "m")
    assert (result.shards, result.accepted, result.linked + result.copied) == (3, 10, 6)
