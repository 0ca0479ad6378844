"""Probe reports: markdown + JSON per encoder, the predictions CSV and the comparison table.

Every test figure carries its 95% interval, a seeded percentile bootstrap over the test clips
(:mod:`conclugen.evaluation.intervals`; ``probe.bootstrap`` resamples, ``probe.confidence``).
Figures come from :mod:`conclugen.evaluation.plots`; MLflow logging of the results from
:mod:`conclugen.evaluation.probe_tracking`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from conclugen.config import ProbeConfig
from conclugen.evaluation.intervals import Interval, probe_intervals
from conclugen.evaluation.metrics import HEADLINE
from conclugen.evaluation.plots import plot_confusion, plot_map2d
from conclugen.evaluation.probe import ProbeResult

COMPARISON_COLUMNS = ("encoder", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted")
# Interval bounds in comparison.csv, after COMPARISON_COLUMNS.
INTERVAL_COLUMNS = tuple(f"{k}_{end}" for k in HEADLINE for end in ("low", "high"))
REPORT_METRICS = (*HEADLINE, "f1_macro")
_DEFAULT = ProbeConfig()  # the interval settings' defaults when a caller passes none
Intervals = Mapping[str, Interval]


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def report_intervals(
    res: ProbeResult, *, bootstrap: int = _DEFAULT.bootstrap, confidence: float = _DEFAULT.confidence,
    seed: int = _DEFAULT.seed,
) -> dict[str, Interval]:
    """The test intervals a report shows: headline metrics and macro F1."""
    return probe_intervals(res, metrics=REPORT_METRICS, resamples=bootstrap, confidence=confidence, seed=seed)


def markdown_report(res: ProbeResult, intervals: Intervals | None = None) -> str:
    """report.md: the setup, val/test headline metrics (test with its interval), per-class test
    figures, the confusion table."""
    t, v = res.test_metrics, res.val_metrics
    iv = intervals if intervals is not None else report_intervals(res)
    conf = next(iter(iv.values())).confidence if iv else _DEFAULT.confidence
    lines = [
        f"# Linear probe: {res.encoder or 'representations'}",
        "",
        f"- protocol: {res.protocol}",
        f"- task: {'multi-label (BCE with pos_weight, threshold ' + str(res.model.threshold) + ')' if res.multilabel else 'single-label (weighted cross-entropy)'}",
        f"- rows: train {res.n_train}, val {res.n_val}, test {res.n_test}; features {res.model.weight.shape[1]}"
        f" ({'standardised with train statistics' if res.standardized else 'not standardised'})",
        f"- best epoch {res.best_epoch} of {res.epochs_run} by val {res.selection_metric}"
        f" ({'early-stopped on val loss' if res.stopped_early else 'ran all epochs'})",
        f"- class weights: {', '.join(f'{n} {w:g}' for n, w in zip(res.label_space, res.class_weights, strict=True))}",
        *[f"- note: {n}" for n in res.notes],
        "",
        "| split | accuracy | precision (w) | recall (w) | F1 (w) | F1 (macro) |",
        "|---|---|---|---|---|---|",
    ]
    lines.append(f"| val | {' | '.join(_fmt(v[k]) for k in REPORT_METRICS)} |")
    lines.append(f"| test | {' | '.join(str(iv[k]) if k in iv else _fmt(t[k]) for k in REPORT_METRICS)} |")
    lines += ["", f"Test figures: value [{conf:.0%} interval], percentile bootstrap over the {res.n_test} test clips."]
    if res.multilabel:
        lines += [
            "",
            "Accuracy is per-label accuracy weighted by label support (torchmetrics' weighted multilabel "
            f"accuracy); exact match (test): {_fmt(t.get('exact_match', 0.0))}; unweighted per-label "
            f"accuracy: {_fmt(t['label_accuracy'])}.",
        ]
    lines += [
        "",
        "## Per class (test)",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for row in t["per_class"]:
        lines.append(
            f"| {row['label']} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | {row['support']} |"
        )
    if not res.multilabel:
        lines += ["", "## Confusion matrix (test; rows true, columns predicted)", ""]
        lines.append("| true \\ pred | " + " | ".join(res.label_space) + " |")
        lines.append("|---" * (len(res.label_space) + 1) + "|")
        for name, row in zip(res.label_space, t["confusion_matrix"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
    lines += [
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![2D map of the test representations](map2d.png)",
        "",
    ]
    return "\n".join(lines)


def write_predictions(res: ProbeResult, path: str | Path) -> Path:
    """predictions.csv: per test clip its true and predicted labels and the class probabilities."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip_id", "true", "predicted", *[f"p_{n}" for n in res.label_space]])
        ids = res.test_clip_ids or [str(i) for i in range(res.n_test)]
        proba = res.test_proba if res.test_proba is not None else np.zeros((0, len(res.label_space)))
        for cid, true, pred, p in zip(ids, res.test_labels, res.test_pred, proba, strict=True):
            w.writerow([cid, ";".join(true), ";".join(pred), *[f"{x:.6f}" for x in p]])
    return path


def write_probe_report(
    res: ProbeResult,
    out_dir: str | Path,
    *,
    X_test: np.ndarray | None = None,
    map_method: str = "auto",
    seed: int = 0,
    bootstrap: int = _DEFAULT.bootstrap,
    confidence: float = _DEFAULT.confidence,
    intervals: Intervals | None = None,
) -> dict[str, Path]:
    """report.md, report.json (with ``test_intervals``), predictions.csv, confusion.png and
    (given X_test) map2d.png. ``seed`` seeds the map and the bootstrap; ``intervals``: ones
    already computed (else bootstrapped here with these settings)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "report.md",
        "json": out / "report.json",
        "predictions": write_predictions(res, out / "predictions.csv"),
        "confusion": plot_confusion(
            res.test_metrics, out / "confusion.png", title=f"{res.encoder} (test)".strip()
        ),
    }
    if X_test is not None and len(X_test):
        paths["map2d"] = plot_map2d(
            X_test,
            res.test_labels,
            res.label_space,
            out / "map2d.png",
            method=map_method,
            seed=seed,
            title=f"{res.encoder}: test representations".strip(": "),
        )
    if intervals is None:
        intervals = report_intervals(res, bootstrap=bootstrap, confidence=confidence, seed=seed)
    write_report_text(res, out, intervals)
    return paths


def write_report_text(res: ProbeResult, out_dir: str | Path, intervals: Intervals) -> tuple[Path, Path]:
    """report.md and report.json (``test_intervals`` = ``intervals``) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown_report(res, intervals))
    summary = res.summary() | {"test_intervals": {k: i.as_dict() for k, i in intervals.items()}}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return out / "report.md", out / "report.json"


def comparison_rows(
    results: Mapping[str, ProbeResult], intervals: Mapping[str, Intervals] | None = None
) -> list[dict[str, Any]]:
    """One row per encoder: its name, the test headline metrics and (given ``intervals``, by
    encoder) their ``<metric>_low`` / ``<metric>_high`` bounds."""
    rows = []
    for name, r in results.items():
        row: dict[str, Any] = {"encoder": name, **{k: float(r.test_metrics[k]) for k in HEADLINE}}
        for k, iv in (intervals or {}).get(name, {}).items():
            if k in HEADLINE:
                row |= {f"{k}_low": iv.low, f"{k}_high": iv.high}
        rows.append(row)
    return rows


def comparison_markdown(results: Mapping[str, ProbeResult], intervals: Mapping[str, Intervals]) -> str:
    """The comparison table: one row per encoder, test figures as ``0.752 [0.65, 0.84]``."""
    conf = next((i.confidence for ivs in intervals.values() for i in ivs.values()), _DEFAULT.confidence)
    md = ["| encoder | accuracy | precision (w) | recall (w) | F1 (w) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        iv = intervals.get(name, {})
        md.append(f"| {name} | " + " | ".join(str(iv[k]) if k in iv else _fmt(r.test_metrics[k]) for k in HEADLINE)
                  + " |")
    n_test = next((r.n_test for r in results.values()), 0)
    md += ["", f"Test figures: value [{conf:.0%} interval], percentile bootstrap over the {n_test} test clips."]
    return "\n".join(md) + "\n"


def write_comparison(
    results: Mapping[str, ProbeResult],
    out_dir: str | Path,
    *,
    intervals: Mapping[str, Intervals] | None = None,
    bootstrap: int = _DEFAULT.bootstrap,
    confidence: float = _DEFAULT.confidence,
    seed: int = _DEFAULT.seed,
) -> tuple[Path, Path]:
    """comparison.md and comparison.csv: one row per encoder with the test headline metrics and
    their intervals (``intervals`` by encoder, else bootstrapped here with these settings)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if intervals is None:
        intervals = {n: report_intervals(r, bootstrap=bootstrap, confidence=confidence, seed=seed)
                     for n, r in results.items()}
    rows = comparison_rows(results, intervals)
    cols = [*COMPARISON_COLUMNS, *INTERVAL_COLUMNS]
    csv_path = out / "comparison.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({k: (row[k] if k == "encoder" else f"{row[k]:.6f}" if k in row else "") for k in cols})
    md_path = out / "comparison.md"
    md_path.write_text(comparison_markdown(results, intervals))
    return md_path, csv_path
