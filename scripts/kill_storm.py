"""SIGKILL `dhpc generate` at random moments, --resume after each kill, then check nothing was lost.

    .venv/bin/python scripts/kill_storm.py --out /tmp/storm --kills 20 [--engine ray] [-n 40]

The run is mode D, the render baseline at 64 px with small shards (4 samples, batches of 3). An
unkilled run (same engine) goes to OUT-reference first and times the phases. Then each round starts `dhpc
generate` (the first fresh, then with --resume) in its own session and SIGKILLs the whole session
(with Ray, its helpers too) at a random moment: a fifth of the kills during start-up (before the
run takes the folder's lock), the rest at a uniform time after it took the lock, within its model
loading plus twice the rest of the work divided by --kills, so kills land mid-shard, at commits
and at the end, and the run needs about --kills rounds to finish. A round whose run finished first
is not a kill. After the kills a last --resume finishes the run, and the script checks: exactly n
unique, readable samples in index order; the manifest, its parts and the shards agree; no
temporary file or lock left; and the dataset's digest (shards and manifest parts, timings aside)
equals the unkilled run's. It prints one JSON summary and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from diffusion_hpc.data.reader import dataset_digest

LOCK = ".lock"
#: share of the kills during start-up (before the run takes its lock); the rest after it
START_SHARE = 0.2
FLAGS = ["--image-size", "64", "--batch-size", "3", "--shard-size", "4", "--no-progress"]


def command(out: Path, n: int, seed: int, engine: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "diffusion_hpc.cli", "generate", "-n", str(n), "--seed", str(seed), "--out",
           str(out), *FLAGS, "--engine", engine]
    if engine == "ray":
        cmd += ["--workers", "2"]
    return cmd + (["--resume"] if resume else [])


def run_round(cmd: list[str], out: Path, kill: tuple[str, float] | None) -> bool:
    """Run ``cmd``; SIGKILL its session at ``kill``: ("start", t) t s after it starts, ("locked", t) t s
    after it took the lock of ``out``. True when it was killed (False: it finished first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if kill is not None:
            start = time.perf_counter()
            if kill[0] == "locked":  # wait until this process holds the lock
                while proc.poll() is None and not _holds_lock(out, proc.pid):
                    time.sleep(0.005)
                start = time.perf_counter()
            while proc.poll() is None and time.perf_counter() - start < kill[1]:
                time.sleep(0.005)
            if proc.poll() is None:
                with_kill(proc)
                return True
        proc.wait()
        if proc.returncode != 0:
            raise SystemExit(f"kill_storm: {' '.join(cmd[2:])} failed ({proc.returncode}): "
                             f"{proc.stderr.read().decode()[-2000:]}")
        return False
    finally:
        proc.stderr.close()


def _holds_lock(out: Path, pid: int) -> bool:
    try:
        return json.loads((out / LOCK).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def with_kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started (Ray's processes)
    except ProcessLookupError:
        pass
    proc.wait()


def check(out: Path, n: int) -> list[str]:
    """What is wrong with the finished run in ``out`` (empty: nothing)."""
    from diffusion_hpc.data import open_dataset

    problems = []
    keys = [s["key"] for s in open_dataset(out)]  # every sample decoded
    if keys != [f"{i:09d}" for i in range(n)]:
        problems.append(f"samples: {len(keys)} ({len(set(keys))} unique), expected {n} in index order")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    if [r["index"] for r in rows] != list(range(n)):
        problems.append(f"manifest.jsonl: {len(rows)} rows, expected indices 0..{n - 1}")
    shards = sorted(p.stem for p in (out / "shards").glob("*.tar"))
    parts = sorted(p.stem for p in (out / "manifest").glob("*.jsonl"))
    if shards != parts:
        problems.append(f"shards {shards} and manifest parts {parts} differ")
    for name in shards:
        with tarfile.open(out / "shards" / f"{name}.tar") as tar:
            in_tar = sorted({m.name.split(".")[0] for m in tar.getmembers()})
        in_part = sorted(json.loads(line)["key"] for line in (out / "manifest" / f"{name}.jsonl").read_text().splitlines()
                         if json.loads(line)["status"] == "ok")
        if in_tar != in_part:
            problems.append(f"{name}: the tar holds {len(in_tar)} samples, its manifest part {len(in_part)} accepted")
    left = [str(p.relative_to(out)) for p in out.rglob(".*")]
    if left:
        problems.append(f"left behind: {left}")
    return problems


def storm(out: Path, kills: int, n: int = 40, seed: int = 0, engine: str = "local", rng_seed: int = 0) -> dict:
    """``kills`` SIGKILLs of runs into ``out`` at random moments, each followed by --resume; the summary.

    The unkilled run goes to ``OUT-reference`` first; it also times the moments to pick from.
    """
    rng = random.Random(rng_seed)
    reference = out.with_name(out.name + "-reference")
    shutil.rmtree(reference, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command(reference, n, seed, engine, False), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    locked = first = None
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if locked is None and (reference / LOCK).exists():
            locked = now
        if first is None and (reference / "shards" / "shard-000000.tar").exists():
            first = now
        time.sleep(0.01)
    if proc.returncode != 0:
        raise SystemExit(f"kill_storm: the unkilled run into {reference} failed ({proc.returncode})")
    total = time.perf_counter() - t0
    locked = locked if locked is not None else total / 3
    first = first if first is not None else total / 2
    # after the lock: model loading, then the shards; about 1/kills of the work per round on average
    window = (first - locked) + 2 * (total - first) / max(1, kills)
    shutil.rmtree(out, ignore_errors=True)
    moments: list[dict] = []
    finished, rounds = False, 0
    while len(moments) < kills and not finished:
        kill = ("start", rng.uniform(0.0, locked)) if rng.random() < START_SHARE else ("locked", rng.uniform(0.0, window))
        before = committed(out)
        hit = run_round(command(out, n, seed, engine, resume=rounds > 0), out, kill)
        rounds += 1
        if hit:
            moments.append({"phase": kill[0], "after_s": round(kill[1], 2), "shards_before": before,
                            "shards_after": committed(out), "lock_left": (out / LOCK).exists()})
        else:
            finished = True
    if not finished:
        run_round(command(out, n, seed, engine, resume=True), out, None)
        rounds += 1
    problems = check(out, n)
    same = dataset_digest(out) == dataset_digest(reference)
    if not same:
        problems.append("the dataset differs from the unkilled run's")
    return {"engine": engine, "n": n, "kills": len(moments), "rounds": rounds,
            "kills_after_lock": sum(1 for m in moments if m["phase"] == "locked"),
            "kills_after_new_shards": sum(1 for m in moments if m["shards_after"] > m["shards_before"]),
            "reference_s": {"lock": round(locked, 2), "first_shard": round(first, 2), "total": round(total, 2)},
            "moments": moments, "digest_equal": same, "problems": problems}


def committed(out: Path) -> int:
    return len(list((out / "shards").glob("*.tar"))) if (out / "shards").exists() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the run's folder (deleted first); the unkilled "
                    "run goes to OUT-reference")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("local", "ray"), default="local")
    ap.add_argument("--rng-seed", type=int, default=0, help="seed of the kill moments")
    args = ap.parse_args()
    summary = storm(args.out, args.kills, args.n, args.seed, args.engine, args.rng_seed)
    print(json.dumps(summary, indent=1))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
