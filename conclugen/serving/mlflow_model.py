"""The predict bundle as an MLflow pyfunc model: videos in, emotion probabilities out.

``conclugen evaluate`` logs its predict bundle (:mod:`conclugen.evaluation.bundle`) with
:func:`log_predict_model` into its MLflow run and registers it under ``tracking.model_name``
(:func:`register_evaluation`), with the evaluation's figures as tags on the model version. The
model's files are the bundle (one ``bundle`` artifact folder); its code is the installed conclugen
package (the model class is pickled by reference), so it loads in any process of the same
environment — ``mlflow.pyfunc.load_model("models:/conclugen/1")`` or
``mlflow models serve -m models:/conclugen/1 --env-manager local``.

Input: a pandas DataFrame, one row per clip, with either ``video`` (a local path, ``file://`` or
``s3://`` URI, read where the model runs) or ``video_bytes`` (the file's bytes; base64 in the
REST server's JSON, as MLflow encodes binary columns), and optionally ``transcript`` (else a
sidecar ``<stem>.txt`` beside a path, else ASR / a text gap, as ``conclugen predict`` does).

Output: a DataFrame with one row per input row, in order — the columns of ``predictions.csv``
(:meth:`conclugen.serving.results.PredictResult.records`): ``clip_id``, ``video_uri``, ``status``
(ok | error), ``predicted`` (the decided labels, ``;``-joined), one ``p_<label>`` probability per
class (null for a failed clip), ``gaps`` and ``error``. A clip that cannot be read or decoded is
an error row naming its path (``video_uri``) and the reason, never a failed request — as
``conclugen predict`` reports it.

The stages run in process (:class:`conclugen.serving.predict.LocalPredictor`: the Ray pipeline's
own stage objects, no Ray), with the backbones loaded once in ``load_context``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from conclugen import tracking
from conclugen.config import Config, load_config
from conclugen.errors import ConCluGenError
from conclugen.evaluation.bundle import BUNDLE_DIR, BUNDLE_FILE, RESOURCE_FIELDS, load_bundle

ARTIFACT = "bundle"
MODEL_NAME = "predict_model"  # the logged model's name inside the evaluate run
# The evaluation figures set as model-version tags (names of ProbeResult.test_metrics).
TAGGED_METRICS = ("accuracy", "f1_weighted")
# The evaluate command's tag holding the checkpoint it evaluated.
CHECKPOINT_TAG = "conclugen.checkpoint"


class ServingInputError(ConCluGenError, ValueError):
    """A served model's input that names no video (a missing file is an error row instead)."""


def _served_config(model_config: Mapping[str, Any] | None) -> Config:
    """The settings a served model predicts with: the evaluate config's resource settings and clip
    cap (logged as the model's ``model_config``, overridable at load time), storage from the
    environment."""
    mc = dict(model_config or {})
    return load_config(None, base={"extract": dict(mc.get("extract") or {}),
                                   "corpus": dict(mc.get("corpus") or {})})


def model_config_of(cfg: Config) -> dict[str, Any]:
    """What :func:`_served_config` needs from the evaluate config (no secrets: no storage)."""
    extract = json.loads(cfg.extract.model_dump_json())
    return {"extract": {k: extract[k] for k in RESOURCE_FIELDS},
            "corpus": {"max_clip_seconds": cfg.corpus.max_clip_seconds}}


class ConCluGenVideoModel(mlflow.pyfunc.PythonModel):
    """pyfunc model: videos (paths / URIs / bytes) → emotion probabilities (see the module doc)."""

    def load_context(self, context: Any) -> None:
        from conclugen.serving.predict import LocalPredictor

        cfg = _served_config(getattr(context, "model_config", None))
        self.predictor = LocalPredictor(load_bundle(context.artifacts[ARTIFACT], cfg.storage), cfg)

    # A DataFrame hint: MLflow then leaves the input to the signature (no type-hint validation).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self.predictor, model_input)


def _cell(v: Any) -> Any:
    """A DataFrame cell, None for a missing value (NaN / None / pandas NA)."""
    return None if v is None or (not isinstance(v, bytes | str) and pd.isna(v)) else v


def predict_frame(predictor: Any, frame: Any) -> pd.DataFrame:
    """``frame`` (columns ``video`` | ``video_bytes``, optional ``transcript``) → the output
    DataFrame, one row per input row. Bytes go through temporary files, so they take the same
    read + decode path as a file on disk."""
    from conclugen.serving.predict import normalise_uri, video_row
    from conclugen.serving.results import PredictResult

    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    if "video" not in frame.columns and "video_bytes" not in frame.columns:
        raise ServingInputError(f"the input needs a `video` (path or URI) or `video_bytes` column; "
                                f"got columns {list(frame.columns)}")
    scfg = predictor.cfg.storage
    with tempfile.TemporaryDirectory(prefix="conclugen-serve-") as tmp:
        rows, shown = [], []
        for i, rec in enumerate(frame.to_dict("records")):
            video, data = _cell(rec.get("video")), _cell(rec.get("video_bytes"))
            if (video is None) == (data is None):
                raise ServingInputError(f"input row {i}: give exactly one of `video` and `video_bytes`")
            if data is not None:
                uri = str(Path(tmp) / f"row{i}.video")
                Path(uri).write_bytes(bytes(data))
                shown.append(f"<video_bytes of row {i}>")
            else:
                uri = normalise_uri(str(video))
                shown.append(uri)
            rows.append(video_row(f"row{i}", uri, _cell(rec.get("transcript")), scfg))
        clips = predictor.predict_rows(rows)
    for c, name in zip(clips, shown, strict=True):
        c.video_uri = name
    b = predictor.bundle
    result = PredictResult(b.label_space, b.multilabel, clips)
    out = pd.DataFrame(result.records(), columns=result.columns())
    for lab in b.label_space:  # a failed clip's probabilities: None (JSON null), not NaN (invalid JSON)
        col = out[f"p_{lab}"]
        out[f"p_{lab}"] = col.astype(object).where(col.notna(), None)
    return out


def model_signature(label_space: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, "video", required=False),
                     ColSpec(DataType.binary, "video_bytes", required=False),
                     ColSpec(DataType.string, "transcript", required=False)])
    outputs = Schema([ColSpec(DataType.string, c) for c in ("clip_id", "video_uri", "status", "predicted")]
                     + [ColSpec(DataType.double, f"p_{lab}") for lab in label_space]
                     + [ColSpec(DataType.string, c) for c in ("gaps", "error")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """The installed conclugen (its own metadata pins the rest) and the libraries the model
    object itself needs, at the versions it was saved with; explicit, so MLflow does not infer
    them by loading the model (and its backbones) in a subprocess."""
    return [f"{p}=={metadata.version(p)}" for p in ("conclugen", "mlflow", "torch", "pandas", "numpy")]


def log_predict_model(uri: str, run_id: str, bundle_folder: str | Path, cfg: Config,
                      name: str = MODEL_NAME) -> str:
    """Log the bundle folder as a :class:`ConCluGenVideoModel` pyfunc into run ``run_id``;
    returns the logged model's URI. The run's status is left FINISHED (it is reopened for this)."""
    import mlflow

    info = json.loads((Path(bundle_folder) / BUNDLE_FILE).read_text())
    with tracking.scoped_tracking_uri(uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        model = mlflow.pyfunc.log_model(
            name=name, python_model=ConCluGenVideoModel(), artifacts={ARTIFACT: str(bundle_folder)},
            signature=model_signature(list(info["label_space"])), pip_requirements=pip_requirements(),
            model_config=model_config_of(cfg),
        )
    return model.model_uri


@dataclass
class RegisteredVersion:
    name: str
    version: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def version_tags(results: Mapping[str, Any], bundle_info: Mapping[str, Any], cfg: Config, run_id: str,
                 run_tags: Mapping[str, str]) -> dict[str, str]:
    """The model version's tags: the conclugen encoder's test figures, corpus, probe protocol,
    checkpoint and the evaluate run."""
    test = results["conclugen"].test_metrics
    tags = {f"test_{k}": f"{float(test[k]):.6f}" for k in TAGGED_METRICS}
    tags |= {"corpus": str(bundle_info.get("corpus")), "protocol": cfg.probe.protocol,
             "checkpoint": str(run_tags.get(CHECKPOINT_TAG) or bundle_info.get("source_checkpoint")),
             "evaluate_run_id": run_id, "label_space": ",".join(bundle_info["label_space"])}
    if bundle_info.get("pretrain_run_id"):
        tags["pretrain_run_id"] = str(bundle_info["pretrain_run_id"])
    return tags


def register_evaluation(uri: str, run_id: str, out_dir: str | Path, results: Mapping[str, Any], cfg: Config,
                        run_tags: Mapping[str, str]) -> RegisteredVersion | None:
    """Log ``out_dir``'s predict bundle as a pyfunc into the evaluate run and register it under
    ``cfg.tracking.model_name`` with :func:`version_tags`. None — nothing logged — when the
    bundle cannot predict (the conclugen encoder was not probed) or for an ablation row (a study
    of settings, not a model to serve)."""
    import mlflow

    folder = Path(out_dir) / BUNDLE_DIR
    if "conclugen" not in results or "conclugen.ablation" in run_tags:
        return None
    info = json.loads((folder / BUNDLE_FILE).read_text())
    if not info.get("probe"):
        return None
    model_uri = log_predict_model(uri, run_id, folder, cfg)
    tags = version_tags(results, info, cfg, run_id, run_tags)
    with tracking.scoped_tracking_uri(uri):
        mv = mlflow.register_model(model_uri, cfg.tracking.model_name, tags=tags)
    tracking.client(uri).update_model_version(
        cfg.tracking.model_name, mv.version,
        description=f"ConCluGen video → emotion model ({info.get('corpus')}, test weighted F1 "
                    f"{tags['test_f1_weighted']}), from evaluate run {run_id}")
    return RegisteredVersion(cfg.tracking.model_name, str(mv.version), tags)
