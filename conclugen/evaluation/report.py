"""Probe reports: markdown + JSON per encoder, the predictions CSV and the comparison table.

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

from conclugen.evaluation.metrics import HEADLINE
from conclugen.evaluation.plots import plot_confusion, plot_map2d
from conclugen.evaluation.probe import ProbeResult

COMPARISON_COLUMNS = ("encoder", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted")


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def markdown_report(res: ProbeResult) -> str:
    """report.md: the setup, val/test headline metrics, per-class test figures, the confusion table."""
    t, v = res.test_metrics, res.val_metrics
    lines = [
        f"# Linear probe: {res.encoder or 'representations'}",
        "",
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
    for name, m in (("val", v), ("test", t)):
        lines.append(f"| {name} | {' | '.join(_fmt(m[k]) for k in HEADLINE)} | {_fmt(m['f1_macro'])} |")
    if res.multilabel:
        lines += [
            "",
            f"Accuracy is exact-match over all labels; per-label accuracy (test): {_fmt(t['label_accuracy'])}.",
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
) -> dict[str, Path]:
    """report.md, report.json, predictions.csv, confusion.png and (given X_test) map2d.png."""
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
    paths["markdown"].write_text(markdown_report(res))
    paths["json"].write_text(json.dumps(res.summary(), indent=2))
    return paths


def comparison_rows(results: Mapping[str, ProbeResult]) -> list[dict[str, Any]]:
    """One row per encoder: its name and the test headline metrics."""
    return [
        {"encoder": name, **{k: float(r.test_metrics[k]) for k in HEADLINE}} for name, r in results.items()
    ]


def write_comparison(results: Mapping[str, ProbeResult], out_dir: str | Path) -> tuple[Path, Path]:
    """comparison.md and comparison.csv: one row per encoder with the test headline metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(results)
    csv_path = out / "comparison.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COMPARISON_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: (row[k] if k == "encoder" else f"{row[k]:.6f}") for k in COMPARISON_COLUMNS})
    md = ["| encoder | accuracy | precision (w) | recall (w) | F1 (w) |", "|---|---|---|---|---|"]
    md += [f"| {r['encoder']} | " + " | ".join(_fmt(r[k]) for k in HEADLINE) + " |" for r in rows]
    md_path = out / "comparison.md"
    md_path.write_text("\n".join(md) + "\n")
    return md_path, csv_path
