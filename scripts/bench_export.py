"""Benchmark ``dhpc export``: seconds per 1,000 samples for each format.

    nice -n 10 .venv/bin/python scripts/bench_export.py [--n 500] [--size 256] [--people 1] [--out DIR]

1. Generates ``--n`` render-baseline samples (``--size`` px, built-in poses, ``--people`` per image,
   e.g. ``2-4``) into ``DIR/dataset`` once; a later run with the same settings reuses them.
2. Times reading the dataset alone (decode every sample), then each format's full export from the
   dataset folder: decode, one row per person, images written (PNG files, or tar members for
   4dhumans-wds), annotation file written atomically. Every person carries a converted SMPL label
   (stand-in values: zero pose, the person's own joints) so every format writes its SMPL columns;
   bedlam-npz needs one, and the values do not change the work.
3. Prints a table: seconds per 1,000 samples (images) and per 1,000 rows (persons), median of
   ``--rounds``, the share of it that is reading, and the size of what was written.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def make_dataset(root: Path, n: int, size: int, people: str) -> Path:
    """``n`` render-baseline samples of ``size`` px and ``people`` per image in ``root/dataset``
    (reused when they exist)."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import generate

    path = root / f"dataset-n{n}-{size}px-people{people}"
    if (path / "run.json").is_file() and len(open_dataset(path)) >= n:
        return path
    generate(GenerateConfig(n=n, image_size=(size, size), batch_size=16, generator="render", people=people), out=path,
             progress=False)
    return path


def stand_in_label(person: dict) -> dict:
    """A converted-SMPL label of the right shapes for one person (its own joints, zero pose)."""
    import numpy as np

    params = {"global_orient": np.zeros(3), "body_pose": np.zeros(69), "betas": np.zeros(10),
              "transl": person["joints3d"]["h36m17"][0]}  # fmt: skip
    return {"body_model": "smpl", "params": params, "joints3d": person["joints3d"],
            "fit": {"surface_mm": 0.0, "joints_mm": 0.0, "flagged": False}}


def with_stand_in_label(samples):
    """Each sample with a stand-in converted-SMPL label on every person (schema 2's ``persons``, or a
    schema-1 sample's one person)."""
    for s in samples:
        if "persons" in s:
            yield {**s, "persons": [{**p, "labels": {"smpl": stand_in_label(p)}} for p in s["persons"]]}
        else:
            yield {**s, "labels": {"smpl": stand_in_label(s)}}


def written_bytes(files, images: Path | None) -> int:
    total = sum(Path(f).stat().st_size for f in files)
    if images is not None and images.is_dir() and images.name == "images":
        total += sum(p.stat().st_size for p in images.iterdir())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="samples (default 500)")
    parser.add_argument("--size", type=int, default=256, help="image side, px (default 256)")
    parser.add_argument("--people", default="1", help="people per image, N or MIN-MAX (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per format (median; default 3)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dhpc-bench-export")
    args = parser.parse_args()

    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.export import (
        export_4dhumans_wds,
        export_bedlam_npz,
        export_coco_json,
        export_spin_npz,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset_path = make_dataset(args.out, args.n, args.size, args.people)
    n = len(open_dataset(dataset_path))
    persons = sum(len(s.get("persons") or [s]) for s in open_dataset(dataset_path))
    print(f"dataset: {n} samples ({persons} persons) of {args.size} px in {dataset_path} "
          f"({time.perf_counter() - t0:.1f} s to make or find)")

    def read_only(_out: Path):
        for _ in with_stand_in_label(iter(open_dataset(dataset_path))):
            pass

    writers = {
        "(read only)": (read_only, ".none"),
        "spin-npz": (lambda out: export_spin_npz(with_stand_in_label(iter(open_dataset(dataset_path))), out), ".npz"),
        "bedlam-npz": (lambda out: export_bedlam_npz(with_stand_in_label(iter(open_dataset(dataset_path))), out), ".npz"),
        "4dhumans-wds": (lambda out: export_4dhumans_wds(with_stand_in_label(iter(open_dataset(dataset_path))), out),
                         ".tar"),
        "coco-json": (lambda out: export_coco_json(with_stand_in_label(iter(open_dataset(dataset_path))), out), ".json"),
    }
    rows = []
    read_s = None
    for name, (write, suffix) in writers.items():
        times, size = [], 0
        for r in range(args.rounds):
            out = args.out / f"export-{name.strip('()').replace(' ', '-')}-{r}" / f"train{suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            result = write(out)
            times.append(time.perf_counter() - start)
            if result is not None:
                assert result.count == persons, (name, result.count, persons)
                size = written_bytes(result.files, result.images)
        per_k = statistics.median(times) * 1000 / n
        if read_s is None:
            read_s = per_k
        rows.append((name, per_k, per_k * n / persons, read_s / per_k if per_k else 0.0, size / 1e6))

    print(f"\n{'format':<14} {'s / 1000 samples':>17} {'s / 1000 rows':>14} {'reading share':>14} {'written MB':>11}")
    for name, per_k, per_row, share, mb in rows:
        print(f"{name:<14} {per_k:>17.2f} {per_row:>14.2f} {share:>13.0%} {mb:>11.1f}")


if __name__ == "__main__":
    main()
