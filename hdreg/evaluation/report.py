"""Reports of an evaluation run: Markdown table, CSV, JSON and the cumulative error plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from hdreg.estimators import reportable
from hdreg.evaluation.metrics import SUMMARY_KEYS
from hdreg.evaluation.runner import EvaluationResult

__all__ = ["format_table", "plot_cumulative_errors", "write_report"]

TABLE_FILE = "results.md"
PLOT_FILE = "corner_error_cdf.png"


def _fmt_err(x: float) -> str:
    return "inf" if not np.isfinite(x) else f"{x:.2f}"


def _refinement_line(name: str, details: list[dict]) -> str | None:
    """How often a refinement was kept, from the pairs' ``refined_by``/``refine_kept`` details
    (``None`` when the method was not refined)."""
    started = [d for d in details if "refine_kept" in d]
    if not started:
        return None
    by = ", ".join(sorted({str(d.get("refined_by", "the refiner")) for d in started}))
    kept = sum(bool(d["refine_kept"]) for d in started)
    return (
        f"{name}: {by}'s refinement kept on {kept} of the {len(started)} pairs it started from "
        "(the others keep the starting estimate; why: `refine_note` in pairs.csv's details)."
    )


def format_table(result: EvaluationResult, *, per_pair: bool | None = None) -> str:
    """The Markdown summary table (one row per method), plus, for real pairs, the corner error of
    every pair (one column per method) when ``per_pair`` (default: real pairs, at most 200).
    Pairs the set skipped are counted in the title and listed with their reasons."""
    pairs = result.pairs
    auc = pairs.kind == "real"  # the AUC columns of the real-pair protocols (HPatches)
    skipped = f" (skipped {len(pairs.skipped)})" if pairs.skipped else ""
    lines = [
        f"Corner error (px) on {len(pairs)} {pairs.kind} pairs{skipped}: {pairs.name}",
        "",
        "| method | MACE | median | <1px | <3px | <5px | <10px | failed | ms/pair |"
        + (" AUC@1px | AUC@3px | AUC@5px |" if auc else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" * 3 if auc else ""),
    ]
    for m in result.methods:
        s = m.summary
        lines.append(
            f"| {m.name} | {_fmt_err(s['mace'])} | {_fmt_err(s['median'])} | "
            f"{100 * s['lt1']:.1f}% | {100 * s['lt3']:.1f}% | {100 * s['lt5']:.1f}% | "
            f"{100 * s['lt10']:.1f}% | {100 * s['fail_rate']:.1f}% | {s['ms_per_pair']:.2f} |"
            + (
                f" {100 * s['auc1']:.1f} | {100 * s['auc3']:.1f} | {100 * s['auc5']:.1f} |"
                if auc
                else ""
            )
        )
    lines += [
        "",
        "Failed pairs (no homography, or one that folds the image) are scored as the identity.",
    ]
    if auc:
        lines.append(
            "AUC@t px: area under the share-of-pairs-vs-error curve from 0 to t, divided by t, "
            "in % (docs/conventions.md)."
        )
    if pairs.skipped:
        listed = "; ".join(f"{s.id} ({s.reason})" for s in pairs.skipped[:10])
        more = f"; and {len(pairs.skipped) - 10} more" if len(pairs.skipped) > 10 else ""
        lines.append(
            f"Skipped {len(pairs.skipped)} pair(s) whose ground truth or images cannot be used "
            f"(not scored; `reason` in pairs.csv): {listed}{more}."
        )
    if pairs.clipped is not None and pairs.clipped.any():
        ids = ", ".join(pairs.ids[i] for i in np.flatnonzero(pairs.clipped))
        lines.append(
            "Scored on the part of image A that lands inside B, the ground truth sending a corner "
            f"of A behind the camera (docs/conventions.md): {ids}."
        )
    for m in result.methods:
        if (line := _refinement_line(m.name, m.details)) is not None:
            lines.append(line)
        budgets = sorted({str(d["budget"]) for d in m.details if "budget" in d})
        if budgets:  # the learned matchers' input-size budget (hdreg/configs/method/)
            lines.append(f"{m.name}: network input {'; '.join(budgets)}.")
    if per_pair is None:
        per_pair = pairs.kind == "real" and len(pairs) <= 200
    if per_pair:
        names = [m.name for m in result.methods]
        lines += ["", "| pair | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for i, pid in enumerate(pairs.ids):
            cells = [
                _fmt_err(m.errors[i]) + (" (failed)" if m.failed[i] else "") for m in result.methods
            ]
            lines.append(f"| {pid} | " + " | ".join(cells) + " |")
        for sk in pairs.skipped:
            lines.append(f"| {sk.id} | " + " | ".join("skipped" for _ in names) + " |")
    return "\n".join(lines) + "\n"


def _details_json(details: dict) -> str:
    """A pair's reportable details as compact JSON (``""`` when there are none)."""
    shown = reportable(details)
    return json.dumps(shown, separators=(",", ":")) if shown else ""


def plot_cumulative_errors(result: EvaluationResult, path: Path, *, x_max: float = 100.0) -> None:
    """Share of pairs with corner error below x (log x-axis, 0.01 px to ``x_max``), one curve per
    method: the curve that rises earliest and highest is the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs = np.logspace(-2, np.log10(x_max), 400)
    for m in result.methods:
        errs = np.sort(m.errors)
        share = np.searchsorted(errs, xs, side="right") / len(errs)
        ax.plot(xs, share, label=f"{m.name} (median {_fmt_err(m.summary['median'])} px)")
    ax.set_xscale("log")
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("corner error (px)")
    ax.set_ylabel("share of pairs with a smaller error")
    ax.set_title(f"{len(result.pairs)} {result.pairs.kind} pairs", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``pairs.csv``, ``results.json`` and the plot into
    ``out_dir`` (created if needed); returns the paths by kind. ``pairs.csv`` also lists each
    skipped pair, for every method, with an empty error, failure flag and time, and the reason
    (``skipped: ...``); every other row is one pair's
    :class:`~hdreg.estimators.base.Result` and its corner error."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out / TABLE_FILE,
        "results_csv": out / "results.csv",
        "pairs_csv": out / "pairs.csv",
        "results_json": out / "results.json",
        "plot": out / PLOT_FILE,
    }
    paths["table"].write_text(format_table(result))
    with paths["results_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", *SUMMARY_KEYS])
        for m in result.methods:
            w.writerow([m.name, *(m.summary[k] for k in SUMMARY_KEYS)])
    with paths["pairs_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "pair", "group", "error", "failed", "ms", "reason", "details"])
        for m in result.methods:
            rows = zip(result.pairs.ids, result.pairs.groups, m.errors, m.results, strict=True)
            for pid, group, error, r in rows:
                w.writerow([
                    m.name, pid, group, f"{error:.6g}", int(r.failed), f"{1e3 * r.seconds:.4g}",
                    r.reason, _details_json(r.details),
                ])  # fmt: skip
            for sk in result.pairs.skipped:
                w.writerow([m.name, sk.id, sk.group, "", "", "", f"skipped: {sk.reason}", ""])
    summaries = {
        m.name: {k: (int(m.summary[k]) if k == "n" else m.summary[k]) for k in SUMMARY_KEYS}
        for m in result.methods
    }
    paths["results_json"].write_text(json.dumps(summaries, indent=2) + "\n")
    plot_cumulative_errors(result, paths["plot"])
    return paths
