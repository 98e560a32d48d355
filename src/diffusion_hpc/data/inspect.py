"""``dhpc inspect``: a dataset summary (with the people per image) and a preview grid (image | depth |
each person's silhouette outline and keypoints in its own colour, :mod:`diffusion_hpc.data.preview`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.export_persons import iter_sample_meta
from diffusion_hpc.data.preview import overlay_persons
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.data.writer import atomic_write_bytes


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """(H, W) metric depth -> (H, W, 3) uint8 (near = bright, background black)."""
    import cv2

    fg = depth > 0
    out = np.zeros(depth.shape + (3,), np.uint8)
    if fg.any():
        lo, hi = depth[fg].min(), depth[fg].max()
        scaled = np.zeros(depth.shape, np.uint8)
        scaled[fg] = (255 - 200 * (depth[fg] - lo) / max(hi - lo, 1e-6)).astype(np.uint8)
        out = cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)[..., ::-1].copy()
        out[~fg] = 0
    return out


def preview_grid(samples: list[dict], tile: int = 192) -> np.ndarray:
    """(rows * tile, 3 * tile, 3) uint8: one row per sample, image | depth | the union silhouette in grey
    with each person's outline and keypoints in its own colour (:func:`~diffusion_hpc.data.preview.overlay_persons`)."""
    import cv2

    rows = []
    for s in samples:
        panels = [s["image"], depth_to_rgb(s["depth"]), overlay_persons(s["mask"], persons_of(s))]
        h, w = s["image"].shape[:2]
        scale = tile / max(h, w)
        size = (int(round(w * scale)), int(round(h * scale)))
        resized = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in panels]
        row = np.zeros((tile, 3 * tile, 3), np.uint8)
        for i, p in enumerate(resized):
            row[: p.shape[0], i * tile : i * tile + p.shape[1]] = p
        rows.append(row)
    return np.concatenate(rows, axis=0) if rows else np.zeros((tile, 3 * tile, 3), np.uint8)


def write_preview(path: str | Path, count: int = 8, out: str | Path | None = None) -> Path:
    """Write ``preview.png`` (first ``count`` samples) into the dataset or to ``out``; returns its path."""
    import cv2


    dataset = open_dataset(path)
    samples = []
    for sample in dataset:
        samples.append(sample)
        if len(samples) >= count:
            break
    grid = preview_grid(samples)
    target = Path(out) if out else Path(path) / "preview.png"
    ok, buf = cv2.imencode(".png", grid[..., ::-1])
    atomic_write_bytes(target, buf.tobytes())
    return target


def people_census(shards: list[Path]) -> dict:
    """People in the accepted samples of ``shards``, from each sample's JSON (no image decoded):
    ``images``, ``persons``, ``per_image`` ({persons in an image: images}, ascending) and ``occluded``
    (persons whose ``visible_fraction`` is below 1: partly hidden by another person or cut by the image
    border; a v1 sample is one unoccluded person)."""
    per_image: Counter = Counter()
    occluded = 0
    for shard in shards:
        for meta in iter_sample_meta(shard):
            people = persons_of(meta)
            per_image[len(people)] += 1
            occluded += sum(float(p.get("visible_fraction", 1.0)) < 1.0 for p in people)
    return {"images": sum(per_image.values()), "persons": sum(n * c for n, c in per_image.items()),
            "per_image": dict(sorted(per_image.items())), "occluded": occluded}


def people_lines(census: dict, width: int = 30) -> list[str]:
    """The summary's lines of a :func:`people_census`: totals, occluded share, people-per-image histogram."""
    persons = census["persons"]
    share = census["occluded"] / persons if persons else 0.0
    lines = [f"people    {persons} persons in {census['images']} images; {census['occluded']} occluded "
             f"(visible_fraction < 1, {share:.1%})", "people per image:"]
    top = max(census["per_image"].values(), default=1)
    lines.extend(f"  {n:>3} | {'#' * int(round(width * c / top)):<{width}} {c}" for n, c in census["per_image"].items())
    return lines


def _histogram(values: list[float], bins: int = 8, width: int = 30) -> list[str]:
    if not values:
        return ["  (none)"]
    counts, edges = np.histogram(values, bins=bins)
    top = max(counts.max(), 1)
    return [f"  {edges[i]:8.3f} .. {edges[i + 1]:8.3f} | {'#' * int(round(width * c / top)):<{width}} {c}" for i, c in enumerate(counts)]


#: per-sample fields that are costs or flags, summarised in one line instead of a histogram
SUMMARY_ONLY = ("controlnet_evals", "hard", "person_found")
#: UNet evaluations per sample of the original (DESIGN §2)
ORIGINAL_UNET_EVALS = {"T": 170, "R": 70}


def cost_summary(rows: list[dict]) -> dict:
    """UNet evaluations spent (accepted and failed samples) and per accepted sample."""
    ok = [r for r in rows if r["status"] == "ok"]
    spent = float(sum(r.get("unet_evals", 0) or 0 for r in rows))
    wasted = float(sum(r.get("unet_evals", 0) or 0 for r in rows if r["status"] != "ok"))
    cn = float(sum((r.get("scores") or {}).get("controlnet_evals", 0) for r in rows))
    return {"spent": spent, "wasted": wasted, "accepted": len(ok), "candidates": len(rows),
            "per_accepted": spent / len(ok) if ok else float("nan"),
            "per_candidate": spent / len(rows) if rows else float("nan"), "controlnet": cn}


def _identity(model: dict | None) -> str:
    """``spec (commit abc1234, fingerprint 0123...)`` of a model identity (generate.identity), "" if none."""
    if not model:
        return ""
    parts = ([f"commit {model['commit'][:12]}"] if model.get("commit") else []) + [f"fingerprint {model['fingerprint']}"]
    extra = [f"controlnet {_identity(model['controlnet'])}"] if model.get("controlnet") else []
    if model.get("lora"):
        lora = model["lora"]
        extra.append(f"lora {lora['file']} x{lora['scale']:g} (fingerprint {lora['fingerprint']})")
    return f"{model['spec']} ({', '.join(parts)})" + "".join(f"; {e}" for e in extra)


def sampler_summary(sampler: dict, rows: list[dict]) -> str:
    """One line of what ran (run.json's ``sampler``), with the blur and steps the rows record."""
    text = f"preset {sampler['preset']}  scheduler {sampler['scheduler']}  guidance {sampler['guidance']:g}"
    if sampler.get("txt2img_steps") is not None:
        text += f"  txt2img {sampler['txt2img_steps']} steps"
    text += f"  regeneration {sampler['steps']} steps at strength {sampler['strength']:g}"
    ran = [r["sampler"] for r in rows if r.get("sampler") and r["sampler"].get("regenerations")]
    run_steps = sorted({s["steps_run"] for s in ran})
    if run_steps:
        text += f" ({'/'.join(map(str, run_steps))} ran)"
    if sampler.get("controlnet_scale") is not None:
        text += f"  controlnet scale {sampler['controlnet_scale']:g}"
    if sampler.get("blur_prob"):
        blurred = sum(1 for s in ran if s.get("blur"))
        text += f"  blur p {sampler['blur_prob']:g} ({blurred} of {len(ran)} regenerated blurred)"
    return text


def summarize(path: str | Path) -> str:
    """A readable summary of a dataset: counts, failures by reason, cost, timings, score histograms."""
    dataset = open_dataset(path)
    rows = dataset.manifest()
    config = dataset.config
    mode = config.get("mode")
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    source = {"T": f"prompt {config.get('prompt') or config.get('prompts')}", "R": f"guides {config.get('guides')}",
              "D": f"poses {config.get('poses')}"}.get(mode, "")  # fmt: skip
    lines = [
        f"dataset   {Path(path)}",
        f"mode      {mode}  generator {config.get('generator')}  body model {config.get('body_model')}  {source}",
        f"samples   {len(ok)} accepted, {len(failed)} failed, of {config.get('n')} requested; {len(dataset.shards)} shards",
    ]
    lines.extend(people_lines(people_census(dataset.shards)))
    run_path = Path(path) / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    if config.get("backbone"):
        lines.append(f"backbone  {_identity(run.get('backbone')) or config.get('backbone')}  k {config.get('k')}  "
                     f"verify {config.get('verify')}  min agreement {config.get('min_agreement')}  cycles {config.get('cycles')}")
    if run.get("sampler"):
        lines.append("sampler   " + sampler_summary(run["sampler"], rows))
    if failed:
        lines.append("failures by reason:")
        for reason, count in Counter(r["reason"][:70] for r in failed).most_common():
            lines.append(f"  {reason:<70} {count}")
        drifted = sum(1 for r in failed if r["reason"].startswith("verify: drifted"))
        if drifted:
            lines.append(f"drifted (verification below --min-agreement): {drifted}")
    cost = cost_summary(rows)
    if ok:
        lines.append(f"UNet evaluations per accepted sample: {cost['per_accepted']:.1f}")
    lines.append(f"UNet evaluations: {cost['spent']:.0f} spent on {cost['candidates']} candidates "
                 f"({cost['per_candidate']:.1f} per candidate), {cost['wasted']:.0f} of them on failed samples; "
                 f"mode {mode}" + (f" (original: {ORIGINAL_UNET_EVALS[mode]} per candidate)" if mode in ORIGINAL_UNET_EVALS else "")
                 + (f"; ControlNet evaluations {cost['controlnet']:.0f}" if cost["controlnet"] else ""))
    if ok:
        stages = sorted({k for r in ok for k in (r.get("timings") or {})})
        if stages:
            means = {k: 1000 * np.mean([(r.get("timings") or {}).get(k, 0.0) for r in ok]) for k in stages}
            write = run.get("write_seconds_per_sample")
            if write is not None:
                means["write"] = 1000 * write
            lines.append("time per sample (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in means.items()) + f"; total {sum(means.values()):.1f}")
        score_names = sorted({k for r in ok for k in (r.get("scores") or {})})
        for name in score_names:
            values = [r["scores"][name] for r in ok if name in (r.get("scores") or {})]
            values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
            if name in SUMMARY_ONLY or (values and min(values) == max(values)):
                lines.append(f"score {name}: mean {np.mean(values):.3f} over {len(values)}" if values else f"score {name}: none")
                continue
            lines.append(f"score {name}:")
            lines.extend(_histogram(values))
    return "\n".join(lines)
