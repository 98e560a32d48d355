"""SIGKILL `dhpc generate` at random moments, --resume after each kill, then check nothing was lost.

    .venv/bin/python scripts/kill_storm.py --out /tmp/storm --kills 20 [--mode D|R|T] [--engine ray] [-n 40]
        [--backbone DIR] [--guides DIR] [--phase start|locked|commit] [--rng-seed S]

Every run is at 64 px with small shards (4 samples, batches of 3). Mode D: the render baseline.
Modes R and T: the tiny random diffusion backbone (``--backbone``, else written once to
OUT-backbone as ``dhpc backbone tiny`` does), k = 2 variants per guide. Mode R's guides
(``--guides``, else OUT-guides) are real photos of people from installed wheels: scikit-image's
astronaut and matplotlib's grace_hopper. Mode T draws its start images with the tiny backbone,
which draws noise, so most of its rows fail ("no person found") with their reason and cost: a T
storm checks those rows and the few accepted samples.

An unkilled run (same engine) goes to OUT-reference first and times the phases. Then each round
starts `dhpc generate` (the first fresh, then with --resume) in its own session and SIGKILLs the
whole session (with Ray, its helpers too) at a random moment: a fifth of the kills during start-up
(before the run takes the folder's lock); a fifth within the next shard after the round's first
new commit (in the first half of that shard, as the unkilled run timed it from commit to commit; never
when only the last shard is left); the rest at a uniform time after it took the
lock, within its model loading plus twice the rest of the work divided by --kills, so kills land
mid-shard, at commits and at the end, and the run needs about --kills rounds to finish. A round
whose run finished first is not a kill: it ends an episode, which is checked, and the next episode
starts afresh, until --kills kills landed. After the last kill a --resume finishes the run, and the
script checks each episode's dataset: exactly n manifest rows, indices 0..n-1; one unique, readable sample per accepted
row, in index order (mode D: all n); the manifest, its parts and the shards agree; no temporary
file or lock left; the dataset's digest (shards and manifest parts, timings aside) equals the
unkilled run's; and the package's source files did not change during the storm (in a working
tree others edit, run it on a frozen copy: ``git archive HEAD src | tar -x -C COPY`` and
``PYTHONPATH=COPY/src``). It prints one JSON summary and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import diffusion_hpc
from diffusion_hpc.data.reader import dataset_digest

LOCK = ".lock"
#: share of the kills during start-up (before the run takes its lock); the rest after it
START_SHARE = 0.2
#: share of the kills timed from the round's first new shard commit (right after a commit, mid-shard)
COMMIT_SHARE = 0.2
FLAGS = ["--image-size", "64", "--batch-size", "3", "--shard-size", "4", "--no-progress"]
#: mode T's action phrase
T_PROMPT = "doing a backflip"
#: one torch thread per run: the tiny UNet is many times slower with 2 threads on a shared 2-core machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mode_flags(mode: str, backbone: Path | None, guides: Path | None) -> list[str]:
    """The flags of ``mode``'s runs (D: none; R: guides and backbone; T: prompt and backbone), k = 2."""
    if mode == "D":
        return ["--mode", "D"]
    flags = ["--mode", mode, "--backbone", str(backbone), "-k", "2"]
    return flags + (["--guides", str(guides)] if mode == "R" else ["--prompt", T_PROMPT])


def write_guides(folder: Path) -> Path:
    """Real photos of people for mode R, from installed wheels: scikit-image's astronaut (512x512 PNG)
    and matplotlib's grace_hopper (JPEG)."""
    import matplotlib
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", folder / "grace_hopper.jpg")
    return folder


def command(out: Path, n: int, seed: int, engine: str, resume: bool, flags: list[str] = ("--mode", "D")) -> list[str]:
    cmd = [sys.executable, "-m", "diffusion_hpc.cli", "generate", "-n", str(n), "--seed", str(seed), "--out",
           str(out), *FLAGS, *flags, "--engine", engine]
    if engine == "ray":
        cmd += ["--workers", "2"]
    return cmd + (["--resume"] if resume else [])


def run_round(cmd: list[str], out: Path, kill: tuple[str, float] | None) -> bool:
    """Run ``cmd``; SIGKILL its session at ``kill``: ("start", t) t s after it starts, ("locked", t) t s
    after it took the lock of ``out``, ("commit", t) t s after it committed its first shard. True when
    it was killed (False: it finished first)."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty run never blocks on a full pipe
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=ENV)
        if kill is not None:
            start = time.perf_counter()
            if kill[0] == "locked":  # wait until this process holds the lock
                while proc.poll() is None and not _holds_lock(out, proc.pid):
                    time.sleep(0.005)
                start = time.perf_counter()
            elif kill[0] == "commit":  # wait until this process committed a shard
                before = committed(out)
                while proc.poll() is None and committed(out) == before:
                    time.sleep(0.005)
                start = time.perf_counter()
            while proc.poll() is None and time.perf_counter() - start < kill[1]:
                time.sleep(0.005)
            if proc.poll() is None:
                with_kill(proc)
                return True
        proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"kill_storm: {' '.join(cmd[2:])} failed ({proc.returncode}): "
                             f"{err.read().decode(errors='replace')[-2000:]}")
        return False


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
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    if [r["index"] for r in rows] != list(range(n)):
        problems.append(f"manifest.jsonl: {len(rows)} rows, expected indices 0..{n - 1}")
    accepted = [r["key"] for r in rows if r["status"] == "ok"]
    if keys != accepted:
        problems.append(f"samples: {len(keys)} ({len(set(keys))} unique), expected the {len(accepted)} accepted "
                        f"rows' in index order")
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


def storm(out: Path, kills: int, n: int = 40, seed: int = 0, engine: str = "local", rng_seed: int = 0,
          mode: str = "D", backbone: Path | None = None, guides: Path | None = None,
          phase: str | None = None) -> dict:
    """``kills`` SIGKILLs of runs into ``out`` at random moments, each followed by --resume; the summary.

    The unkilled run goes to ``OUT-reference`` first; it also times the moments to pick from. Modes R
    and T without ``backbone`` write the tiny one to ``OUT-backbone``; R without ``guides`` writes
    the photos to ``OUT-guides``. ``phase`` ("start", "locked" or "commit") times every kill from that
    moment (default: drawn per kill, :data:`START_SHARE` and :data:`COMMIT_SHARE`).

    The storm is only meaningful when every round runs the same code: the package's source files are
    fingerprinted before the unkilled run and after the last round, and a change is a problem (in a
    shared working tree, run the storm on a frozen copy: ``PYTHONPATH=<copy>/src``).
    """
    code = code_fingerprint()
    if mode in ("R", "T") and backbone is None:
        from diffusion_hpc.generate.tiny import write_tiny_backbone

        backbone = write_tiny_backbone(out.with_name(out.name + "-backbone"), seed=0)
    if mode == "R" and guides is None:
        guides = write_guides(out.with_name(out.name + "-guides"))
    flags = mode_flags(mode, backbone, guides)
    rng = random.Random(rng_seed)
    reference = out.with_name(out.name + "-reference")
    shutil.rmtree(reference, ignore_errors=True)
    locked, first, last, total = timed_run(command(reference, n, seed, engine, False, flags), reference)
    locked = locked if locked is not None else total / 3
    first = first if first is not None else total / 2
    shards = committed(reference)
    # a shard's time, commit to commit (the end's manifest and preview after the last commit left out);
    # a "commit" kill lands in the first half of the next shard, so a round whose shard runs faster than
    # the reference's is still killed inside it
    per_shard = ((last if shards > 1 and last is not None else total) - first) / max(1, shards - 1)
    commit_window = per_shard / 2
    # after the lock: model loading (the first shard's time less one shard's), then the shards; about
    # 1/kills of the work per round on average
    loading = max(0.0, first - locked - per_shard)
    window = loading + 2 * (total - locked - loading) / max(1, kills)
    moments: list[dict] = []
    problems: list[str] = []
    rounds = episodes = 0
    same = True
    while len(moments) < kills and episodes < max(1, kills):
        # an episode: a fresh run killed until a round finishes first (or the kills are done), then checked
        episodes += 1
        shutil.rmtree(out, ignore_errors=True)
        fresh, finished = True, False
        while len(moments) < kills and not finished:
            draw = rng.random()
            kind = phase or ("start" if draw < START_SHARE else "commit" if draw < START_SHARE + COMMIT_SHARE else "locked")
            if kind == "commit" and phase is None and committed(out) >= shards - 1:
                kind = "locked"  # no commit left before the run's end
            kill = (kind, rng.uniform(0.0, {"start": locked, "locked": window, "commit": commit_window}[kind]))
            before = committed(out)
            hit = run_round(command(out, n, seed, engine, not fresh, flags), out, kill)
            rounds, fresh, finished = rounds + 1, False, not hit
            if hit:
                moments.append({"episode": episodes, "phase": kill[0], "after_s": round(kill[1], 2),
                                "shards_before": before, "shards_after": committed(out),
                                "lock_left": (out / LOCK).exists()})
            print(f"kill_storm: mode {mode}, {engine}: episode {episodes} round {rounds}, "
                  f"{'killed' if hit else 'finished'} ({kill[0]} + {kill[1]:.2f} s), {committed(out)} shards committed",
                  file=sys.stderr, flush=True)
        if not finished:
            run_round(command(out, n, seed, engine, True, flags), out, None)
            rounds += 1
        problems += [f"episode {episodes}: {p}" for p in check(out, n)]
        if dataset_digest(out) != dataset_digest(reference):
            same = False
            problems.append(f"episode {episodes}: the dataset differs from the unkilled run's")
    if code_fingerprint() != code:
        problems.append("the diffusion_hpc source files changed during the storm: the rounds ran different code; "
                        "run it on a frozen copy (PYTHONPATH=<copy>/src)")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {"mode": mode, "engine": engine, "n": n, "accepted": sum(r["status"] == "ok" for r in rows),
            "kills": len(moments), "rounds": rounds, "episodes": episodes,
            "kills_after_lock": sum(1 for m in moments if m["phase"] == "locked"),
            "kills_after_commit": sum(1 for m in moments if m["phase"] == "commit"),
            "kills_after_new_shards": sum(1 for m in moments if m["shards_after"] > m["shards_before"]),
            "reference_s": {"lock": round(locked, 2), "first_shard": round(first, 2), "total": round(total, 2)},
            "moments": moments, "digest_equal": same, "problems": problems}


def timed_run(cmd: list[str], out: Path) -> tuple[float | None, float | None, float | None, float]:
    """Run ``cmd`` (into ``out``) to its end; seconds from its start until it took the lock, until its
    first and its last shard were committed (None: not seen), and until it ended."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        locked = first = last = None
        seen = 0
        while proc.poll() is None:
            now = time.perf_counter() - t0
            if locked is None and (out / LOCK).exists():
                locked = now
            if (count := committed(out)) > seen:
                seen, last = count, now
                first = now if first is None else first
            time.sleep(0.01)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"kill_storm: the unkilled run into {out} failed ({proc.returncode}): "
                             f"{err.read().decode(errors='replace')[-2000:]}")
        return locked, first, last, time.perf_counter() - t0


def code_fingerprint() -> str:
    """SHA-256 of the imported diffusion_hpc package's source files (what every round runs)."""
    root = Path(diffusion_hpc.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


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
    ap.add_argument("--mode", choices=("D", "R", "T"), default="D")
    ap.add_argument("--backbone", type=Path, help="R, T: diffusion backbone folder (default: the tiny one, "
                    "written to OUT-backbone)")
    ap.add_argument("--guides", type=Path, help="R: folder of photos of people (default: scikit-image's "
                    "astronaut and matplotlib's grace_hopper, copied to OUT-guides)")
    ap.add_argument("--rng-seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--phase", choices=("start", "locked", "commit"), help="time every kill from this moment "
                    "(default: drawn per kill)")
    args = ap.parse_args()
    summary = storm(args.out, args.kills, args.n, args.seed, args.engine, args.rng_seed, args.mode, args.backbone,
                    args.guides, args.phase)
    print(json.dumps(summary, indent=1))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
