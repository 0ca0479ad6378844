"""Probe reports: markdown + JSON, confusion-matrix and 2D-map PNGs, the comparison table, MLflow.

Figures use matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so nothing
here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conclugen.evaluation.metrics import HEADLINE

if TYPE_CHECKING:
    from conclugen.evaluation.probe import ProbeResult

COMPARISON_COLUMNS = ("encoder", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted")


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(metrics: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Single-label: one C×C matrix; multi-label: one 2×2 [[tn, fp], [fn, tp]] per label. Cells
    show counts, colours the share of the true row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(metrics["label_space"])
    cm = np.asarray(metrics["confusion_matrix"])
    if not metrics.get("multilabel"):
        c = len(labels)
        fig = _figure(1.2 + 0.75 * c, 1.0 + 0.7 * c)
        ax = fig.add_subplot(1, 1, 1)
        rows = cm.sum(1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(c):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(c), labels, rotation=45, ha="right")
        ax.set_yticks(range(c), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    else:
        c = len(labels)
        fig = _figure(2.2 * c, 2.6)
        for k, name in enumerate(labels):
            ax = fig.add_subplot(1, c, k + 1)
            m = cm[k]
            rows = m.sum(1, keepdims=True)
            ax.imshow(
                np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0),
                cmap="Blues",
                vmin=0.0,
                vmax=1.0,
            )
            for i in range(2):
                for j in range(2):
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
            ax.set_xticks([0, 1], ["absent", "present"], fontsize=7)
            ax.set_yticks([0, 1], ["absent", "present"], fontsize=7)
            ax.set_title(name, fontsize=9)
            if k == 0:
                ax.set_ylabel("true")
            ax.set_xlabel("predicted", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def embed_2d(X: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """[N, F] → [N, 2] by PCA or t-SNE (``auto``: t-SNE for 10 < N ≤ 2000, else PCA)."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    n = X.shape[0]
    if method == "auto":
        method = "tsne" if 10 < n <= 2000 else "pca"
    if method not in ("pca", "tsne"):
        raise ValueError(f"map method must be pca, tsne or auto, not {method!r}")
    if n < 3 or X.shape[1] < 2:
        out = np.zeros((n, 2), dtype=np.float32)
        out[:, : min(2, X.shape[1])] = X[:, :2]
        return out, "none"
    from threadpoolctl import threadpool_limits

    std = X.std(0)
    Z = (X - X.mean(0)) / np.where(std > 1e-6, std, 1.0)
    # Small maps in one thread: on a loaded 2-core machine t-SNE of 50 points took 10 s with
    # OpenMP threads and 0.2 s without.
    with threadpool_limits(limits=1 if n <= 1000 else None):
        if method == "pca":
            return PCA(n_components=2, random_state=seed).fit_transform(Z), "pca"
        from sklearn.manifold import TSNE

        k = min(50, n - 1, Z.shape[1])  # PCA first: faster and less noisy t-SNE
        Z = PCA(n_components=k, random_state=seed).fit_transform(Z) if Z.shape[1] > k else Z
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(Z), "tsne"


def plot_map2d(
    X: np.ndarray,
    labels: Sequence[Sequence[str]],
    label_space: Sequence[str],
    path: str | Path,
    *,
    method: str = "auto",
    seed: int = 0,
    title: str = "",
) -> Path:
    """Scatter of the 2D map coloured by label (multi-label: the first present label, or "none")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xy, used = embed_2d(X, method, seed)
    order = list(label_space)
    colour_of = [next((lab for lab in order if lab in row), "none") for row in labels]
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    for k, name in enumerate([*order, "none"]):
        idx = [i for i, c in enumerate(colour_of) if c == name]
        if idx:
            ax.scatter(
                xy[idx, 0],
                xy[idx, 1],
                s=12,
                alpha=0.8,
                label=name,
                color="lightgrey" if name == "none" else cmap(k % 10),
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title or 'test representations'} ({used})")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def markdown_report(res: ProbeResult) -> str:
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


def _key(text: str) -> str:
    """An MLflow-safe metric-name part."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def _experiment_id(client: Any, parent_run_id: str | None, experiment: str | None) -> str:
    import mlflow

    if parent_run_id:
        return client.get_run(parent_run_id).info.experiment_id
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        return exp.experiment_id if exp is not None else client.create_experiment(experiment)
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    from mlflow.tracking.fluent import _get_experiment_id  # the experiment set by mlflow.set_experiment

    return _get_experiment_id()


def log_probe_results(
    results: Mapping[str, ProbeResult],
    out_dir: str | Path,
    parent_run_id: str | None,
    *,
    run_name: str = "evaluate",
    experiment: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Log an evaluation to MLflow (tracking URI set by the caller); returns the new run's id.

    One run ``run_name`` — a child of the pretraining run ``parent_run_id`` (tags
    ``mlflow.parentRunId`` and ``pretrain_run_id``, in the parent's experiment) — holding
    ``<encoder>.test_*`` / ``<encoder>.val_*`` metrics, ``params`` and every file under
    ``out_dir`` as artifacts; under it one child run per encoder with the same metric names
    (so the MLflow UI can chart encoders side by side), per-class test figures, the per-epoch
    probe curves as steps and that encoder's report folder.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp_id = _experiment_id(client, parent_run_id, experiment)
    tags = {"conclugen.stage": "evaluate"}
    if parent_run_id:
        tags |= {"mlflow.parentRunId": parent_run_id, "pretrain_run_id": parent_run_id}
    out = Path(out_dir)
    run = client.create_run(exp_id, tags=tags, run_name=run_name)
    run_id = run.info.run_id
    import time

    now = int(time.time() * 1000)
    try:
        first = next(iter(results.values()), None)
        p = {str(k): str(v)[:6000] for k, v in (params or {}).items()}
        if first is not None:
            p |= {
                "probe.label_space": ",".join(first.label_space),
                "probe.multilabel": str(first.multilabel),
                "probe.encoders": ",".join(results),
                "probe.n_train": str(first.n_train),
                "probe.n_val": str(first.n_val),
                "probe.n_test": str(first.n_test),
            }
        summary: list[Metric] = []
        for name, res in results.items():
            for k in HEADLINE:
                summary.append(Metric(_key(f"{name}.test_{k}"), float(res.test_metrics[k]), now, 0))
                summary.append(Metric(_key(f"{name}.val_{k}"), float(res.val_metrics[k]), now, 0))
        params_list = [Param(k, v) for k, v in p.items()]
        for i in range(0, len(params_list), 100):  # log_batch takes at most 100 params
            client.log_batch(run_id, params=params_list[i : i + 100])
        for i in range(0, len(summary), 900):
            client.log_batch(run_id, metrics=summary[i : i + 900])
        if out.is_dir():
            client.log_artifacts(run_id, str(out))

        for name, res in results.items():
            child = client.create_run(
                exp_id,
                tags={
                    "mlflow.parentRunId": run_id,
                    "encoder": name,
                    "conclugen.stage": "probe",
                    **({"pretrain_run_id": parent_run_id} if parent_run_id else {}),
                },
                run_name=name,
            ).info.run_id
            ms = [Metric(f"test_{k}", float(res.test_metrics[k]), now, 0) for k in HEADLINE]
            ms += [Metric(f"val_{k}", float(res.val_metrics[k]), now, 0) for k in HEADLINE]
            ms += [
                Metric("best_epoch", float(res.best_epoch), now, 0),
                Metric("epochs_run", float(res.epochs_run), now, 0),
            ]
            for row in res.test_metrics["per_class"]:
                for k in ("precision", "recall", "f1"):
                    ms.append(Metric(_key(f"test_{k}.{row['label']}"), float(row[k]), now, 0))
            for h in res.history:
                for k in ("train_loss", "val_loss", "val_accuracy", "val_f1_weighted"):
                    ms.append(Metric(f"curve.{k}", float(h[k]), now, int(h["epoch"])))
            for i in range(0, len(ms), 900):  # log_batch takes at most 1000 metrics
                client.log_batch(child, metrics=ms[i : i + 900])
            client.log_batch(child, tags=[RunTag("best_epoch", str(res.best_epoch))])
            if (out / name).is_dir():
                client.log_artifacts(child, str(out / name))
            client.set_terminated(child, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
