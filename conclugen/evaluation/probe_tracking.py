"""MLflow logging of probe results: one evaluate run, under it one child run per encoder.

Everything goes to the tracking store named by the caller (no global MLflow state). Each run
this module opens is ended here: FINISHED, or FAILED (KILLED on Ctrl-C) when logging raised.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen import tracking
from conclugen.evaluation.class_weights import named_weights
from conclugen.evaluation.metrics import HEADLINE
from conclugen.evaluation.probe import ProbeResult

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

# MLflow's own default experiment: where a run goes with neither a parent run nor an experiment.
DEFAULT_EXPERIMENT = "Default"
_PARAMS_PER_BATCH = 100  # log_batch takes at most 100 params …
_METRICS_PER_BATCH = 900  # … and 1000 metrics per call
_MAX_PARAM = 6000  # MLflow 3 caps param values at 6000 characters


def _key(text: str) -> str:
    """An MLflow-safe metric-name part."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _METRICS_PER_BATCH])


def _params(results: Mapping[str, ProbeResult], params: Mapping[str, Any] | None) -> dict[str, str]:
    """The caller's params (as strings, cut to MLflow's limit) and the probe's data shape."""
    p = {str(k): str(v)[:_MAX_PARAM] for k, v in (params or {}).items()}
    first = next(iter(results.values()), None)
    if first is not None:
        p |= {
            "probe.label_space": ",".join(first.label_space),
            "probe.multilabel": str(first.multilabel),
            "probe.encoders": ",".join(results),
            "probe.n_train": str(first.n_train),
            "probe.n_val": str(first.n_val),
            "probe.n_test": str(first.n_test),
            # The protocol the probe actually ran (the same as the config's probe.protocol).
            "probe.protocol": first.protocol,
            "probe.standardized": str(first.standardized),
            "probe.augmentations": str(first.augmentations),
            "probe.class_weights": json.dumps(named_weights(first.label_space, first.class_weights))[:_MAX_PARAM],
        }
    return p


def _log_summary(
    client: MlflowClient, run_id: str, results: Mapping[str, ProbeResult], params: dict[str, str], now: int
) -> None:
    """The evaluate run's params and its ``<encoder>.test_*`` / ``<encoder>.val_*`` metrics."""
    from mlflow.entities import Metric, Param

    plist = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(plist), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=plist[i : i + _PARAMS_PER_BATCH])
    summary: list[Metric] = []
    for name, res in results.items():
        for k in HEADLINE:
            summary.append(Metric(_key(f"{name}.test_{k}"), float(res.test_metrics[k]), now, 0))
            summary.append(Metric(_key(f"{name}.val_{k}"), float(res.val_metrics[k]), now, 0))
    _log_metrics(client, run_id, summary)


def _encoder_metrics(res: ProbeResult, now: int) -> list[Metric]:
    """One encoder's headline metrics, per-class test figures and per-epoch probe curves."""
    from mlflow.entities import Metric

    ms = [Metric(f"test_{k}", float(res.test_metrics[k]), now, 0) for k in HEADLINE]
    ms += [Metric(f"val_{k}", float(res.val_metrics[k]), now, 0) for k in HEADLINE]
    ms += [Metric("best_epoch", float(res.best_epoch), now, 0), Metric("epochs_run", float(res.epochs_run), now, 0)]
    for row in res.test_metrics["per_class"]:
        for k in ("precision", "recall", "f1"):
            ms.append(Metric(_key(f"test_{k}.{row['label']}"), float(row[k]), now, 0))
    for h in res.history:
        for k in ("lr", "train_loss", "val_loss", "val_accuracy", "val_f1_weighted"):
            if k in h:
                ms.append(Metric(f"curve.{k}", float(h[k]), now, int(h["epoch"])))
    if res.multilabel:  # accuracy is the weighted per-label one; subset accuracy beside it
        ms.append(Metric("test_exact_match", float(res.test_metrics["exact_match"]), now, 0))
    return ms


def log_probe_results(
    results: Mapping[str, ProbeResult],
    out_dir: str | Path,
    parent_run_id: str | None,
    *,
    tracking_uri: str,
    run_name: str = "evaluate",
    experiment: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log an evaluation to the MLflow store at ``tracking_uri``; returns the new run's id.

    One run ``run_name`` — a child of the pretraining run ``parent_run_id`` (tags
    ``mlflow.parentRunId`` and ``pretrain_run_id``, in the parent's experiment; else in
    ``experiment``, else MLflow's default one) — holding ``<encoder>.test_*`` / ``<encoder>.val_*``
    metrics, ``params``, ``tags`` and every file under ``out_dir`` as artifacts; under it one child
    run per encoder with the same metric names (so the MLflow UI can chart encoders side by side),
    per-class test figures, the per-epoch probe curves as steps and that encoder's report folder.
    """
    from mlflow.entities import RunTag

    client = tracking.client(tracking_uri)
    if parent_run_id:
        exp_id = client.get_run(parent_run_id).info.experiment_id
    else:
        exp_id = tracking.get_or_create_experiment(tracking_uri, experiment or DEFAULT_EXPERIMENT)
    run_tags = {"conclugen.stage": "evaluate", **dict(tags or {})}
    lineage = {"pretrain_run_id": parent_run_id} if parent_run_id else {}
    if parent_run_id:
        run_tags |= {"mlflow.parentRunId": parent_run_id, **lineage}
    out = Path(out_dir)
    run_id = client.create_run(exp_id, tags=run_tags, run_name=run_name).info.run_id
    now = int(time.time() * 1000)
    with tracking.ended(tracking.TrackedRun(tracking_uri, run_id, reopened=False)):
        _log_summary(client, run_id, results, _params(results, params), now)
        if out.is_dir():
            client.log_artifacts(run_id, str(out))
        for name, res in results.items():
            child_tags = {"mlflow.parentRunId": run_id, "encoder": name, "conclugen.stage": "probe",
                          "probe.protocol": res.protocol, **lineage}
            child = client.create_run(exp_id, tags=child_tags, run_name=name).info.run_id
            with tracking.ended(tracking.TrackedRun(tracking_uri, child, reopened=False)):
                _log_metrics(client, child, _encoder_metrics(res, now))
                client.log_batch(child, tags=[RunTag("best_epoch", str(res.best_epoch))])
                if (out / name).is_dir():
                    client.log_artifacts(child, str(out / name))
    return run_id
