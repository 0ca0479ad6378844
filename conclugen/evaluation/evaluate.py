"""`conclugen evaluate`: a pretrained checkpoint → linear probes with baselines → reports + MLflow.

Three encoders of the same feature store are probed side by side (METHOD.md, "Downstream
evaluation"), so the value of pretraining is visible in one table:

- ``conclugen``     the checkpoint's frozen representation heads, per-modality representations
                    concatenated (``len(modalities) × D``);
- ``raw_features``  the backbone features themselves, concatenated (no heads);
- ``random_heads``  the same architecture with random weights (seeded: ``cfg.train.seed``).

All three use the checkpoint's modalities. The probe, reports and PNGs come from
:func:`conclugen.evaluation.probe.evaluate_representations`; the MLflow run is a child of the pretraining run
(``mlflow.parentRunId`` + ``pretrain_run_id`` tags) when that run exists in the tracking store.

Output folder (``--out``; local or ``s3://``)::

    comparison.md / comparison.csv     one row per encoder (test accuracy, weighted P/R/F1)
    <encoder>/                         report.md, report.json, predictions.csv, confusion.png,
                                       map2d.png, probe.npz
    model/                             the predict bundle: bundle.json, checkpoint.pt (model
                                       weights and config only), probe.npz (= conclugen/evaluation/probe.npz)
    evaluate.json                      what was evaluated, where it was logged

The bundle copies the weights because Ray Train rotates checkpoints (``keep_checkpoints``): a
bundle that only pointed at a checkpoint folder could lose it on the next resume.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conclugen import storage
from conclugen.config import Config, ExtractConfig, ModelConfig
from conclugen.errors import ConCluGenError
from conclugen.evaluation.encoders import ENCODERS, build_encoders
from conclugen.training.run_folder import inference_payload, load_checkpoint, resolve_checkpoint

BUNDLE_DIR = "model"
BUNDLE_FILE = "bundle.json"
BUNDLE_CHECKPOINT = "checkpoint.pt"
BUNDLE_PROBE = "probe.npz"


class EvaluateError(ConCluGenError, ValueError):
    """The checkpoint and the features do not fit together, or nothing can be evaluated."""


@dataclass
class EvaluateResult:
    out_dir: str
    checkpoint_uri: str
    results: dict[str, Any]  # encoder → ProbeResult
    table_markdown: str
    bundle_uri: str
    pretrain_run_id: str | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    notes: list[str] = field(default_factory=list)

    def f1(self, encoder: str = "conclugen") -> float:
        return float(self.results[encoder].test_metrics["f1_weighted"])

    def describe(self) -> str:
        lines = [f"evaluate: {self.checkpoint_uri}", "", self.table_markdown.rstrip(), "",
                 f"reports: {self.out_dir}", f"predict bundle: {self.bundle_uri}"]
        if self.mlflow_run_id:
            lines.append(f"MLflow run {self.mlflow_run_id} ({self.tracking_uri})"
                         + (f", child of pretraining run {self.pretrain_run_id}" if self.pretrain_run_id else ""))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- checkpoint


def default_out_dir(cfg: Config, ckpt_uri: str) -> str:
    """``<workdir>/evaluate/<run folder name>-<checkpoint folder name>``."""
    parts = [p for p in ckpt_uri.rstrip("/").replace("\\", "/").split("/") if p]
    if parts and parts[-1].endswith(".pt"):
        parts = parts[:-1]
    name = "-".join(parts[-2:]) if parts else "checkpoint"
    return str(Path(cfg.workdir) / "evaluate" / name)


# ----------------------------------------------------------------------------- MLflow


def _log_mlflow(
    results: Mapping[str, Any], local_out: Path, cfg: Config, pretrain_run_id: str | None, *, run_name: str,
    params: Mapping[str, Any], tags: Mapping[str, str],
) -> tuple[str, str, str | None]:
    """(tracking uri, evaluate run id, parent run id actually used)."""
    from conclugen import tracking
    from conclugen.evaluation.probe import log_probe_results

    uri = tracking.tracking_uri(cfg)
    parent = None
    if pretrain_run_id:
        try:
            tracking.client(uri).get_run(pretrain_run_id)
            parent = pretrain_run_id
        except Exception:  # noqa: BLE001 - the pretraining was tracked elsewhere: tag only
            parent = None
    tracking.get_or_create_experiment(uri, cfg.tracking.experiment)
    with tracking.scoped_tracking_uri(uri):  # log_probe_results uses MlflowClient() with the global URI
        run_id = log_probe_results(results, local_out, parent, run_name=run_name,
                                   experiment=cfg.tracking.experiment, params=params)
    extra = dict(tags)
    if pretrain_run_id and parent is None:
        extra["conclugen.pretrain_run_id"] = pretrain_run_id  # link kept even across stores
    if extra:
        tracking.set_tags(uri, run_id, extra)
    return uri, run_id, parent


# ----------------------------------------------------------------------------- entry point


def run_evaluate(
    features_uri: str,
    checkpoint_uri: str,
    cfg: Config,
    out_dir: str | None = None,
    *,
    encoders: Sequence[str] = ENCODERS,
    log_mlflow: bool = True,
    run_name: str = "evaluate",
    tags: Mapping[str, str] | None = None,
    map_method: str = "auto",
) -> EvaluateResult:
    """Probe the checkpoint's representations (and the baselines in ``encoders``) on the labelled
    splits of ``features_uri``; write reports and the predict bundle to ``out_dir``; log to MLflow.

    ``checkpoint_uri`` is a checkpoint folder, its ``checkpoint.pt``, or a pretraining run folder
    (its best checkpoint is used). ``cfg`` gives the probe settings, the seed of the random heads
    and the tracking store; the model shape comes from the checkpoint.
    """
    from conclugen.evaluation.probe import evaluate_representations
    from conclugen.features.store import check_meta, load_arrays, read_meta

    ckpt = resolve_checkpoint(checkpoint_uri, cfg.storage)
    model, info = load_checkpoint(ckpt, cfg.storage)
    model_cfg = ModelConfig.model_validate(info["config"]["model"])
    mods = list(model.modalities)
    input_dims = {m: int(v) for m, v in info["input_dims"].items()}

    meta = read_meta(features_uri, cfg.storage)
    check_meta(meta, mods, expected_dims=input_dims)  # a clear error before any work
    notes: list[str] = []
    trained_meta = info.get("meta") or {}
    trained_bb = {k: v.get("name") for k, v in (trained_meta.get("backbones") or {}).items()}
    eval_bb = {k: b.name for k, b in meta.backbones.items()}
    if trained_bb and eval_bb and trained_bb != eval_bb:
        notes.append(f"the checkpoint was pretrained on features of backbones {trained_bb}, "
                     f"these features come from {eval_bb}")
    if not meta.label_space:
        raise EvaluateError(f"{features_uri} has no label space (an unlabelled corpus cannot be probed)")

    arrays = load_arrays(features_uri, mods, splits=("train", "val", "test"), cfg=cfg.storage)
    if not np.any(arrays["split"] == "train"):
        raise EvaluateError(f"{features_uri} has no labelled train rows to fit the probe on")
    encs = build_encoders(model, model_cfg, input_dims, cfg.train.seed, encoders)

    out = out_dir or default_out_dir(cfg, ckpt)
    remote = storage.is_s3(out)
    local = Path(tempfile.mkdtemp(prefix="conclugen-eval-")) if remote else Path(storage.resolve(out)[1])
    try:
        results = evaluate_representations(
            encs, arrays, label_space=list(meta.label_space), multilabel=bool(meta.multilabel),
            corpus=meta.corpus, cfg=cfg, out_dir=local, map_method=map_method,
        )
        table = (local / "comparison.md").read_text()

        # The predict bundle: weights + config, the conclugen probe, the backbones to re-extract with.
        bundle_dir = local / BUNDLE_DIR
        bundle_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(inference_payload(ckpt, cfg.storage), buf)
        (bundle_dir / BUNDLE_CHECKPOINT).write_bytes(buf.getvalue())
        if "conclugen" in results:
            shutil.copyfile(local / "conclugen" / "probe.npz", bundle_dir / BUNDLE_PROBE)
        extract = _bundle_extract(meta, cfg.extract)
        pretrain_run_id = info.get("mlflow_run_id")
        bundle = {
            "version": 1,
            "checkpoint": BUNDLE_CHECKPOINT,
            "probe": BUNDLE_PROBE if "conclugen" in results else None,
            "source_checkpoint": ckpt,
            "features_uri": str(features_uri),
            "modalities": mods,
            "input_dims": input_dims,
            "label_space": list(meta.label_space),
            "multilabel": bool(meta.multilabel),
            "corpus": meta.corpus,
            "backbones": {k: b.name for k, b in meta.backbones.items()},
            "backbone_dims": {k: int(b.dim) for k, b in meta.backbones.items()},
            "extract": json.loads(extract.model_dump_json()),
            "pretrain_run_id": pretrain_run_id,
        }
        (bundle_dir / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2))

        summary = {
            "features_uri": str(features_uri), "checkpoint": ckpt, "epoch": info.get("epoch"),
            "modalities": mods, "encoders": list(results), "pretrain_run_id": pretrain_run_id,
            "test": {n: {k: r.test_metrics[k] for k in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted")}
                     for n, r in results.items()},
            "notes": notes,
        }
        (local / "evaluate.json").write_text(json.dumps(summary, indent=2))

        uri = run_id = parent = None
        if log_mlflow:
            params = {"evaluate.features_uri": features_uri, "evaluate.checkpoint": ckpt,
                      "evaluate.epoch": info.get("epoch"), "evaluate.modalities": ",".join(mods),
                      **{f"probe.{k}": v for k, v in cfg.probe.model_dump().items()},
                      **{f"model.{k}": v for k, v in model_cfg.model_dump().items()}}
            uri, run_id, parent = _log_mlflow(
                results, local, cfg, pretrain_run_id, run_name=run_name, params=params,
                tags={"conclugen.command": "evaluate", "conclugen.checkpoint": ckpt,
                      "conclugen.features_uri": str(features_uri), **dict(tags or {})},
            )
            summary |= {"mlflow_run_id": run_id, "tracking_uri": uri}
            (local / "evaluate.json").write_text(json.dumps(summary, indent=2))
        if remote:
            storage.upload_dir(local, out, cfg.storage)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
    out_uri = out if remote else str(local)
    return EvaluateResult(
        out_dir=out_uri, checkpoint_uri=ckpt, results=results, table_markdown=table,
        bundle_uri=storage.join(out_uri, BUNDLE_DIR), pretrain_run_id=parent or pretrain_run_id,
        mlflow_run_id=run_id, tracking_uri=uri, notes=notes,
    )


def _bundle_extract(meta: Any, extract: ExtractConfig) -> ExtractConfig:
    """The extraction settings for predict: this config's decoding settings with the backbones the
    features were made with (from meta.json), so new clips go through the same models."""
    data = json.loads(extract.model_dump_json())
    for kind, b in meta.backbones.items():
        if kind in data["backbones"]:
            data["backbones"][kind] = b.name
    return ExtractConfig.model_validate(data)
