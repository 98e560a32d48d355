"""The quality report: ``quality.json`` (every figure) and ``quality.html`` (offline: plots and sample
grids inline as base64 PNG, no external assets), both written atomically.

The HTML lists every numeric figure of the JSON under its path (``comparison[0].fid``,
``manifest.<name>.prior_score.hard_share``, ...; :func:`flatten_figures`), so nothing in the JSON is
missing from the page. matplotlib is used through its object API (no pyplot, no global backend).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_hpc.errors import InputError
from diffusion_hpc.runtime.atomic import atomic_write_bytes


def clean_json(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays converted and NaN / inf replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def flatten_figures(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every numeric leaf (or list of numbers) of a cleaned report dict, in order.

    None stands for a figure that could not be computed (NaN). The ``files`` entry is skipped.
    """
    out: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if prefix == "" and k == "files":
                continue
            out += flatten_figures(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        if obj and all(_is_num(v) for v in obj):
            out.append((prefix, obj))
        else:
            for i, v in enumerate(obj):
                out += flatten_figures(v, f"{prefix}[{i}]")
    elif _is_num(obj) and prefix:
        out.append((prefix, obj))
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}"


# ----------------------------------------------------------------------------------- plots


def _png_b64(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 6.0, h: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    return fig, fig.add_subplot(1, 1, 1)


def _bar_plot(title: str, labels: list[str], series: dict[str, tuple[list, list | None]]) -> str:
    fig, ax = _figure()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, (vals, errs)) in enumerate(series.items()):
        v = [np.nan if a is None else a for a in vals]
        e = None if errs is None else [0 if a is None else a for a in errs]
        ax.bar(x + i * width, v, width, yerr=e, label=name, capsize=3)
    ax.set_xticks(x + width * (len(series) - 1) / 2, labels, rotation=15, fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png_b64(fig)


def _hist_plot(title: str, hist: dict, threshold: float | None = None, xlabel: str = "") -> str:
    fig, ax = _figure()
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    if counts:
        ax.stairs(counts, edges, fill=True, alpha=0.7)
    if threshold is not None:
        ax.axvline(threshold, color="r", ls="--", label=f"hard >= {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    return _png_b64(fig)


def _reasons_plot(title: str, reasons: dict) -> str:
    fig, ax = _figure(6.0, 0.5 + 0.35 * max(1, len(reasons)))
    names = list(reasons)
    ax.barh(np.arange(len(names)), [reasons[n] for n in names])
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel("dropped samples")
    return _png_b64(fig)


def sample_grid(samples: list) -> np.ndarray | None:
    """(key, thumb, human thumb or None) triples -> (H, W, 3) uint8 grid: images on top, human-only below."""
    if not samples:
        return None
    gap = 4
    height = max(t.shape[0] for _, t, _ in samples)
    tops, bottoms = [], []
    for _, thumb, human in samples:
        w = thumb.shape[1]
        top = np.full((height, w + gap, 3), 255, np.uint8)
        top[: thumb.shape[0], :w] = thumb
        bot = np.full((height, w + gap, 3), 255, np.uint8)
        if human is not None:
            bot[: human.shape[0], : human.shape[1]] = human
        else:  # no person found: grey
            bot[:, :w] = 128
        tops.append(top)
        bottoms.append(bot)
    rows = [np.concatenate(tops, 1), np.full((gap, sum(t.shape[1] for t in tops), 3), 255, np.uint8),
            np.concatenate(bottoms, 1)]
    return np.concatenate(rows, 0)


def _png_array_b64(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------- html

_COLUMNS = [
    ("name", "generated set"), ("n_generated", "N gen"), ("n_real", "N real"), ("fid", "FID"),
    ("kid_mean", "KID"), ("kid_std", "KID std"), ("kid_subset_size", "KID subset"),
    ("h_fid", "H-FID"), ("h_kid_mean", "H-KID"), ("h_kid_std", "H-KID std"),
    ("n_generated_human", "N gen (H)"), ("n_real_human", "N real (H)"), ("hard_share", "hard share"),
    ("persons", "persons"), ("persons_per_image", "persons / image"), ("occluded_share", "occluded persons"),
    ("hard_share_persons", "hard share (persons)"),
    ("dropped_share", "dropped"), ("unet_evals_per_accepted", "UNet evals / accepted"),
]

_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px}th{background:#eee}td.num{text-align:right}
img{max-width:100%}h2{border-bottom:1px solid #ccc}.note{color:#a40;font-size:13px}"""


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict, samples: dict | None = None) -> str:
    """The offline HTML page of a cleaned report dict (see :func:`write_report`)."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Generation quality</title>",
             f"<style>{_CSS}</style></head><body><h1>Generation quality</h1>"]
    real = report.get("real", "")
    parts.append(f"<p>Real set: <b>{esc(str(real))}</b>. Small sets give noisy (even negative) KID and "
                 "upward-biased FID: read every score with its sample counts.</p>")
    settings = report.get("settings", {})
    parts.append("<h2>Settings</h2>" + _table(["setting", "value"], [[esc(k), esc(str(v))] for k, v in settings.items()], 2))

    comp = report.get("comparison", [])
    parts.append("<h2>Comparison</h2>")
    cols = [c for c in _COLUMNS if any(c[0] in r for r in comp)]
    rows = [[esc(str(r.get(k))) if k == "name" else esc(_fmt(r.get(k))) for k, _ in cols] for r in comp]
    parts.append(f'<div id="comparison">{_table([h for _, h in cols], rows)}</div>')
    for r in comp:
        for note in r.get("notes", []):
            parts.append(f'<p class="note">{esc(str(r.get("name")))}: {esc(note)}</p>')
    if comp:
        labels = [str(r["name"]) for r in comp]
        series = {"FID": ([r.get("fid") for r in comp], None)}
        if any("h_fid" in r for r in comp):
            series["H-FID"] = ([r.get("h_fid") for r in comp], None)
        parts.append(f'<img alt="FID" src="data:image/png;base64,{_bar_plot("FID (lower is better)", labels, series)}">')
        kid = {"KID": ([r.get("kid_mean") for r in comp], [r.get("kid_std") for r in comp])}
        if any("h_kid_mean" in r for r in comp):
            kid["H-KID"] = ([r.get("h_kid_mean") for r in comp], [r.get("h_kid_std") for r in comp])
        parts.append(f'<img alt="KID" src="data:image/png;base64,{_bar_plot("KID ± std over subsets", labels, kid)}">')

    src = report.get("sources", {})
    if src:
        keys = ["n", "n_human", "no_person"]
        parts.append("<h2>Sources</h2>" + _table(
            ["source", "path", "kind", "mask source", *keys],
            [[esc(n), esc(str(s.get("path"))), esc(str(s.get("kind"))), esc(str(s.get("mask_source"))),
              *[esc(_fmt(s.get(k))) for k in keys]] for n, s in src.items()], numeric_from=4))

    for name, m in (report.get("manifest") or {}).items():
        parts.append(f"<h2>Manifest: {esc(name)}</h2>")
        keys = ["rows", "accepted", "dropped", "dropped_share", "unet_evals_total", "unet_evals_per_accepted",
                "unet_evals_accepted_mean"]
        parts.append(_table(["figure", "value"], [[esc(k), esc(_fmt(m.get(k)))] for k in keys]))
        if m.get("drop_reasons"):
            parts.append(_table(["drop reason", "samples", "share of rows"],
                                [[esc(k), esc(_fmt(v)), esc(_fmt(m["drop_reason_share"].get(k)))]
                                 for k, v in m["drop_reasons"].items()]))
            parts.append(f'<img alt="drops" src="data:image/png;base64,{_reasons_plot(f"{name}: why samples were dropped", m["drop_reasons"])}">')
        if "prior_score" in m:
            p = m["prior_score"]
            parts.append(f"<p>Pose prior: hard share {esc(_fmt(p.get('hard_share')))} (score &ge; "
                         f"{esc(_fmt(p.get('hard_threshold')))}, {esc(str(p.get('hard_threshold_source')))}), "
                         f"easy share {esc(_fmt(p.get('easy_share')))}, n = {esc(_fmt(p.get('n')))}</p>")
            parts.append(f'<img alt="prior" src="data:image/png;base64,'
                         f'{_hist_plot(f"{name}: pose-prior score", p["histogram"], p.get("hard_threshold"), "prior score")}">')
        for k, a in (m.get("label_agreement") or {}).items():
            parts.append(f'<img alt="{esc(k)}" src="data:image/png;base64,{_hist_plot(f"{name}: {k}", a["histogram"], None, k)}">')
        if m.get("scores"):
            stat = ["n", "mean", "std", "min", "q05", "median", "q95", "max"]
            parts.append(_table(["score", *stat], [[esc(k), *[esc(_fmt(s.get(x))) for x in stat]]
                                                   for k, s in m["scores"].items()]))

    for name, p in (report.get("persons") or {}).items():
        parts.append(f"<h2>Persons: {esc(name)}</h2><p>Per person (a multi-person image counts each of its people).</p>")
        parts.append(_table(["figure", "value"], [[esc(k), esc(_fmt(p.get(k)))] for k in
                                                  ("images", "persons", "persons_per_image", "occluded", "occluded_share")]))
        parts.append(_table(["persons in an image", "images"], [[esc(str(k)), esc(_fmt(v))]
                                                                for k, v in (p.get("per_image") or {}).items()]))
        if "prior_score" in p:
            q = p["prior_score"]
            parts.append(f"<p>Pose prior over persons: hard share {esc(_fmt(q.get('hard_share')))} (score &ge; "
                         f"{esc(_fmt(q.get('hard_threshold')))}, {esc(str(q.get('hard_threshold_source')))}), "
                         f"n = {esc(_fmt(q.get('n')))}</p>")
        rows = {"visible_fraction": p.get("visible_fraction") or {}, **(p.get("scores") or {})}
        stat = ["n", "mean", "std", "min", "q05", "median", "q95", "max"]
        parts.append(_table(["per-person score", *stat], [[esc(k), *[esc(_fmt(s.get(x))) for x in stat]]
                                                          for k, s in rows.items()]))

    if samples:
        parts.append("<h2>Samples</h2><p>Top: images; bottom: human-only versions (non-person pixels black; "
                     "grey where no person was found).</p>")
        for name, triples in samples.items():
            grid = sample_grid(triples)
            if grid is not None:
                parts.append(f"<h3>{esc(name)}</h3><img alt='samples {esc(name)}' "
                             f"src='data:image/png;base64,{_png_array_b64(grid)}'>")

    figures = flatten_figures(report)
    parts.append(f"<h2>All figures</h2><p>{len(figures)} figures, as in quality.json.</p>")
    parts.append('<div id="figures">' + _table(["figure", "value"], [[esc(p), esc(_fmt(v))] for p, v in figures]) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: dict, out_dir, samples: dict | None = None) -> dict:
    """Write ``quality.json`` and ``quality.html`` into ``out_dir`` atomically; returns their paths.

    ``samples``: {source name: [(key, thumbnail (h, w, 3) uint8, human-only thumbnail or None)]}.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; choose a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "quality.json"), "html": str(out / "quality.html")}
    report = clean_json({**result, "files": files})
    atomic_write_bytes(out / "quality.json", json.dumps(report, indent=2, allow_nan=False).encode())
    atomic_write_bytes(out / "quality.html", render_html(report, samples).encode())
    return files
