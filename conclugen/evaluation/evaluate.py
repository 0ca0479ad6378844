"""`conclugen evaluate`: a pretrained checkpoint → linear probes with baselines → reports + MLflow.

Three encoders of the same feature store are probed side by side (see docs/method.md, Linear
probe), so the value of pretraining is visible in one table:

- ``conclugen``     the checkpoint's frozen representation heads, per-modality representations
                    concatenated (``len(modalities) × D``);
- ``raw_features``  the backbone features themselves, concatenated (no heads);
- ``random_heads``  the same architecture with random weights (seeded: ``cfg.train.seed``).

All three use the checkpoint's modalities; ``also`` (``--also NAME=CHECKPOINT``) adds the heads
of further checkpoints under their own names (each with its own modalities). The probe, reports
and PNGs come from :func:`conclugen.evaluation.compare.evaluate_representations`; every test
figure carries a 95% bootstrap interval over test clips (:mod:`conclugen.evaluation.intervals`).
With ``label_fractions`` the probe is also trained on stratified shares of the training labels,
``seeds`` times (:mod:`conclugen.evaluation.label_efficiency`). The MLflow run is a child of the
pretraining run (``mlflow.parentRunId`` + ``pretrain_run_id`` tags) when that run exists in the
tracking store.

Output folder (``--out``; local or ``s3://``)::

    comparison.md / comparison.csv     one row per encoder (test accuracy, weighted P/R/F1, intervals)
    label_efficiency/                  with label_fractions: label_efficiency.{md,csv,json,png}
    <encoder>/                         report.md, report.json, predictions.csv, confusion.png,
                                       map2d.png, probe.npz
    model/                             the predict bundle (see conclugen/evaluation/bundle.py)
    evaluate.json                      what was evaluated, where it was logged
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conclugen import storage, tracking
from conclugen.config import Config, ModelConfig
from conclugen.errors import ConCluGenError
from conclugen.evaluation.bundle import BUNDLE_DIR, write_bundle
from conclugen.evaluation.compare import evaluate_representations
from conclugen.evaluation.encoders import ENCODERS, build_encoders, heads_encoder
from conclugen.evaluation.intervals import Interval
from conclugen.evaluation.label_efficiency import (
    LabelEfficiencyResult,
    label_efficiency,
    log_label_efficiency,
)
from conclugen.evaluation.metrics import HEADLINE
from conclugen.evaluation.probe import ProbeResult
from conclugen.evaluation.probe_tracking import log_probe_results
from conclugen.features.store import FeatureMeta, check_meta, load_arrays, read_meta
from conclugen.training.run_folder import load_checkpoint, resolve_checkpoint

if TYPE_CHECKING:
    from conclugen.model.heads import ConCluGen


class EvaluateError(ConCluGenError, ValueError):
    """The checkpoint and the features do not fit together, or nothing can be evaluated."""


@dataclass
class EvaluateResult:
    out_dir: str
    checkpoint_uri: str
    results: dict[str, ProbeResult]  # by encoder
    table_markdown: str
    bundle_uri: str
    pretrain_run_id: str | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    notes: list[str] = field(default_factory=list)
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)  # encoder → metric → test interval
    label_efficiency: LabelEfficiencyResult | None = None

    def f1(self, encoder: str = "conclugen") -> float:
        return float(self.results[encoder].test_metrics["f1_weighted"])

    def describe(self) -> str:
        lines = [f"evaluate: {self.checkpoint_uri}", "", self.table_markdown.rstrip(), ""]
        if self.label_efficiency is not None:
            lines += [self.label_efficiency.table_markdown.rstrip(), ""]
        lines += [f"reports: {self.out_dir}", f"predict bundle: {self.bundle_uri}"]
        if self.mlflow_run_id:
            lines.append(f"MLflow run {self.mlflow_run_id} ({self.tracking_uri})"
                         + (f", child of pretraining run {self.pretrain_run_id}" if self.pretrain_run_id else ""))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class _Checkpoint:
    """The checkpoint under evaluation and what it says about itself."""

    uri: str
    model: ConCluGen
    info: dict[str, Any]
    model_cfg: ModelConfig
    modalities: list[str]
    input_dims: dict[str, int]

    @property
    def pretrain_run_id(self) -> str | None:
        return self.info.get("mlflow_run_id")


def parse_fractions(text: str) -> list[float]:
    """``"0.01,0.05,1"`` → [0.01, 0.05, 1.0] (each in (0, 1])."""
    try:
        fracs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise EvaluateError(f"--label-fractions must be comma-separated numbers, got {text!r}") from e
    if not fracs or any(not 0.0 < f <= 1.0 for f in fracs):
        raise EvaluateError(f"--label-fractions must lie in (0, 1], got {text!r}")
    return fracs


def parse_also(items: Sequence[str]) -> dict[str, str]:
    """``["simclr=runs/simclr", …]`` → {"simclr": "runs/simclr", …}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or not name.strip() or not uri.strip():
            raise EvaluateError(f"--also takes NAME=CHECKPOINT, got {item!r}")
        out[name.strip()] = uri.strip()
    return out


def default_out_dir(cfg: Config, ckpt_uri: str) -> str:
    """``<workdir>/evaluate/<run folder name>-<checkpoint folder name>``."""
    parts = [p for p in ckpt_uri.rstrip("/").replace("\\", "/").split("/") if p]
    if parts and parts[-1].endswith(".pt"):
        parts = parts[:-1]
    name = "-".join(parts[-2:]) if parts else "checkpoint"
    return str(Path(cfg.workdir) / "evaluate" / name)


def _load_checkpoint(checkpoint_uri: str, cfg: Config) -> _Checkpoint:
    uri = resolve_checkpoint(checkpoint_uri, cfg.storage)
    model, info = load_checkpoint(uri, cfg.storage)
    return _Checkpoint(uri, model, info, ModelConfig.model_validate(info["config"]["model"]),
                       list(model.modalities), {m: int(v) for m, v in info["input_dims"].items()})


def _check_features(features_uri: str, ckpt: _Checkpoint, cfg: Config) -> tuple[FeatureMeta, list[str]]:
    """The features' meta, checked against the checkpoint (a clear error before any work), and
    notes on what differs without stopping (other backbones than at pretraining)."""
    meta = read_meta(features_uri, cfg.storage)
    check_meta(meta, ckpt.modalities, expected_dims=ckpt.input_dims)
    notes: list[str] = []
    trained_meta = ckpt.info.get("meta") or {}
    trained_bb = {k: v.get("name") for k, v in (trained_meta.get("backbones") or {}).items()}
    eval_bb = {k: b.name for k, b in meta.backbones.items()}
    if trained_bb and eval_bb and trained_bb != eval_bb:
        notes.append(f"the checkpoint was pretrained on features of backbones {trained_bb}, "
                     f"these features come from {eval_bb}")
    if not meta.label_space:
        raise EvaluateError(f"{features_uri} has no label space (an unlabelled corpus cannot be probed)")
    return meta, notes


def _log_mlflow(
    results: Mapping[str, ProbeResult], local_out: Path, cfg: Config, pretrain_run_id: str | None, *,
    run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
) -> tuple[str, str, str | None]:
    """(tracking uri, evaluate run id, parent run id actually used). The predict bundle is logged
    into the run as an MLflow pyfunc and registered under ``tracking.model_name``
    (:func:`conclugen.serving.mlflow_model.register_evaluation`)."""
    from conclugen.serving.mlflow_model import register_evaluation  # imports mlflow: only here

    uri = tracking.tracking_uri(cfg)
    parent = None
    if pretrain_run_id:
        try:
            tracking.client(uri).get_run(pretrain_run_id)
            parent = pretrain_run_id
        except Exception:  # noqa: BLE001 - the pretraining was tracked elsewhere: tag only
            parent = None
    tracking.get_or_create_experiment(uri, cfg.tracking.experiment)
    extra = dict(tags)
    if pretrain_run_id and parent is None:
        extra["conclugen.pretrain_run_id"] = pretrain_run_id  # link kept even across stores
    run_id = log_probe_results(results, local_out, parent, tracking_uri=uri, run_name=run_name,
                               experiment=cfg.tracking.experiment, params=params, tags=extra)
    register_evaluation(uri, run_id, local_out, results, cfg, run_tags=extra)
    return uri, run_id, parent


def _summary(features_uri: str, ckpt: _Checkpoint, results: Mapping[str, ProbeResult],
             intervals: Mapping[str, Mapping[str, Interval]], notes: list[str]) -> dict:
    """evaluate.json (without the MLflow run, which is added once logged)."""
    return {
        "features_uri": str(features_uri), "checkpoint": ckpt.uri, "epoch": ckpt.info.get("epoch"),
        "modalities": ckpt.modalities, "encoders": list(results), "pretrain_run_id": ckpt.pretrain_run_id,
        "test": {n: {k: r.test_metrics[k] for k in HEADLINE} for n, r in results.items()},
        "test_intervals": {n: {k: iv.as_dict() for k, iv in ivs.items()} for n, ivs in intervals.items()},
        "notes": notes,
    }


def _also_encoders(also: Mapping[str, str], ckpt: _Checkpoint, features_uri: str, cfg: Config,
                   taken: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """(encoders of the further checkpoints' heads, by name; the modalities they need beyond the
    main checkpoint's), each checkpoint checked against the features first."""
    encs: dict[str, Any] = {}
    extra: list[str] = []
    for name, uri in also.items():
        if name in taken or name in encs or not name.replace("_", "").replace("-", "").isalnum():
            raise EvaluateError(f"--also name {name!r} must be a new folder-safe name (not one of {list(taken)})")
        other = _load_checkpoint(uri, cfg)
        _check_features(features_uri, other, cfg)
        encs[name] = heads_encoder(other.model, other.modalities)
        extra += [m for m in other.modalities if m not in ckpt.modalities and m not in extra]
    return encs, extra


def _interval_metrics(intervals: Mapping[str, Mapping[str, Interval]]) -> dict[str, float]:
    """``<encoder>.test_<metric>_low`` / ``_high`` for the evaluate run."""
    return {f"{n}.test_{k}_{end}": getattr(iv, end) for n, ivs in intervals.items() for k, iv in ivs.items()
            for end in ("low", "high")}


def _mlflow_params(features_uri: str, ckpt: _Checkpoint, cfg: Config) -> dict[str, Any]:
    return {"evaluate.features_uri": features_uri, "evaluate.checkpoint": ckpt.uri,
            "evaluate.epoch": ckpt.info.get("epoch"), "evaluate.modalities": ",".join(ckpt.modalities),
            **{f"probe.{k}": v for k, v in cfg.probe.model_dump().items()},
            **{f"model.{k}": v for k, v in ckpt.model_cfg.model_dump().items()}}


def _log_evaluation(
    results: Mapping[str, ProbeResult], intervals: Mapping[str, Any], le: Any, local: Path, features_uri: str,
    ckpt: _Checkpoint, cfg: Config, *, run_name: str, tags: Mapping[str, str] | None,
) -> tuple[str, str, str | None]:
    """The evaluate run: probe results, intervals and the label-efficiency study (whose files came
    with the out folder); (tracking uri, run id, parent run id)."""
    uri, run_id, parent = _log_mlflow(
        results, local, cfg, ckpt.pretrain_run_id, run_name=run_name,
        params=_mlflow_params(features_uri, ckpt, cfg),
        tags={"conclugen.command": "evaluate", "conclugen.checkpoint": ckpt.uri,
              "conclugen.features_uri": str(features_uri), **dict(tags or {})},
    )
    tracking.log_metrics(uri, run_id, _interval_metrics(intervals), step=0)
    if le is not None:
        log_label_efficiency(uri, run_id, le, artifacts=False)
    return uri, run_id, parent


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
    also: Mapping[str, str] | None = None,
    label_fractions: Sequence[float] | None = None,
    seeds: int = 5,
    progress: Any = None,
) -> EvaluateResult:
    """Probe the checkpoint's representations (and the baselines in ``encoders``, and the heads of
    the checkpoints in ``also``: name → checkpoint) on the labelled splits of ``features_uri``;
    write reports (figures with intervals) and the predict bundle to ``out_dir``; log to MLflow.
    ``label_fractions``: also the label-efficiency study over those shares of the training labels,
    ``seeds`` repeats each (``progress`` gets a line per probe).

    ``checkpoint_uri`` is a checkpoint folder, its ``checkpoint.pt``, or a pretraining run folder
    (its best checkpoint is used). ``cfg`` gives the probe settings, the seed of the random heads
    and the tracking store; the model shape comes from the checkpoint.
    """
    ckpt = _load_checkpoint(checkpoint_uri, cfg)
    meta, notes = _check_features(features_uri, ckpt, cfg)
    extra_encs, extra_mods = _also_encoders(also or {}, ckpt, features_uri, cfg, encoders)
    # augmented=True: a store with augmented versions trains the probe on them (compare.encoded_splits)
    arrays = load_arrays(features_uri, [*ckpt.modalities, *extra_mods], splits=("train", "val", "test"),
                         cfg=cfg.storage, augmented=True)
    if not np.any(arrays["split"] == "train"):
        raise EvaluateError(f"{features_uri} has no labelled train rows to fit the probe on")
    encs = build_encoders(ckpt.model, ckpt.model_cfg, ckpt.input_dims, cfg.train.seed, encoders) | extra_encs

    out = out_dir or default_out_dir(cfg, ckpt.uri)
    remote = storage.is_s3(out)
    local = Path(tempfile.mkdtemp(prefix="conclugen-eval-")) if remote else Path(storage.resolve(out)[1])
    try:
        results = evaluate_representations(
            encs, arrays, label_space=list(meta.label_space), multilabel=bool(meta.multilabel),
            corpus=meta.corpus, cfg=cfg, out_dir=local, map_method=map_method,
        )
        intervals = {n: r.test_intervals for n, r in results.items()}  # cfg.probe's bootstrap
        table = (local / "comparison.md").read_text()
        le = None
        if label_fractions:
            le = label_efficiency(encs, arrays, label_space=list(meta.label_space), multilabel=bool(meta.multilabel),
                                  corpus=meta.corpus, cfg=cfg, out_dir=local / "label_efficiency",
                                  fractions=label_fractions, seeds=seeds, progress=progress)
        write_bundle(local, ckpt.uri, meta, cfg.extract, features_uri=features_uri, modalities=ckpt.modalities,
                     input_dims=ckpt.input_dims, storage_cfg=cfg.storage, pretrain_run_id=ckpt.pretrain_run_id,
                     probe_file=local / "conclugen" / "probe.npz" if "conclugen" in results else None)
        summary = _summary(features_uri, ckpt, results, intervals, notes)
        (local / "evaluate.json").write_text(json.dumps(summary, indent=2))

        uri = run_id = parent = None
        if log_mlflow:
            uri, run_id, parent = _log_evaluation(results, intervals, le, local, features_uri, ckpt, cfg,
                                                  run_name=run_name, tags=tags)
            summary |= {"mlflow_run_id": run_id, "tracking_uri": uri}
            (local / "evaluate.json").write_text(json.dumps(summary, indent=2))
        if remote:
            storage.upload_dir(local, out, cfg.storage)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
    out_uri = out if remote else str(local)
    return EvaluateResult(
        out_dir=out_uri, checkpoint_uri=ckpt.uri, results=results, table_markdown=table,
        bundle_uri=storage.join(out_uri, BUNDLE_DIR), pretrain_run_id=parent or ckpt.pretrain_run_id,
        mlflow_run_id=run_id, tracking_uri=uri, notes=notes, intervals=intervals, label_efficiency=le,
    )
