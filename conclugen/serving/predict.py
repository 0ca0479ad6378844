"""`conclugen predict`: emotions for new video files through the same extraction, heads and probe.

MODEL_URI is the output folder of ``conclugen evaluate`` (or its ``model/`` bundle folder; local
or ``s3://``). The bundle (see :mod:`conclugen.evaluation.bundle`) holds the pretrained heads, the fitted
"conclugen" linear probe and the backbone specs the training features were extracted with.

Inputs: video files, folders (every video file below, as the ``folder`` corpus loader lists them)
and Parquet manifests (``.parquet`` with at least ``video_uri``; ``clip_id``, ``transcript``,
``start_s``/``end_s`` optional) — local paths or ``s3://`` URIs, mixed freely.

Pipeline: the extraction's own Ray Data plan (:func:`conclugen.features.extract.build_dataset`: read +
decode tasks → backbone actors) followed by one more actor pool, :class:`PredictStage`, that turns
each clip's backbone outputs into its feature row (:func:`conclugen.features.rows.feature_row`, the
function that writes training features), then representations (pretrained heads) and class
probabilities (probe) — Ray Data batch inference end to end, whatever the number of clips.
:class:`LocalPredictor` runs the same stage objects (decode, :class:`BackboneStage`,
:class:`PredictStage`) in this process, without Ray, with the backbones loaded once: the MLflow
pyfunc (:mod:`conclugen.serving.mlflow_model`) serves through it, and ``predict_videos(local=True)``.

A clip that cannot be read or decoded becomes an error line (stage + reason); the others go on.
Text: a transcript comes from the manifest, else from a sidecar ``<video stem>.txt`` beside the
file *(ours)*, else from the bundle's ASR backbone; with none (``offline:none``) the text vector
is zeros and ``text`` is listed under ``gaps`` — as extraction does for training clips.

Extraction settings (backbones, frame rates, sizes) come from the bundle; resource settings
(batch sizes, actor counts, GPUs) from the current config.
"""

from __future__ import annotations

import io
import json
import posixpath
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conclugen import storage
from conclugen.config import Config, StorageConfig
from conclugen.errors import ConCluGenError
from conclugen.evaluation.bundle import Bundle, load_bundle
from conclugen.evaluation.encoders import heads_encoder
from conclugen.evaluation.probe_model import ProbeModel
from conclugen.serving.results import ClipPrediction, PredictResult


class PredictError(ConCluGenError, ValueError):
    """No input names a video (a missing or incomplete bundle is a BundleError)."""


# ----------------------------------------------------------------------------- inputs


def _sidecar(uri: str) -> str:
    return posixpath.splitext(uri)[0] + ".txt"


def _read_sidecar(uri: str, storage_cfg: StorageConfig | None) -> str | None:
    try:
        text = storage.read_text(uri, storage_cfg).strip()
    except (OSError, ValueError):
        return None
    return text or None


def normalise_uri(uri: str) -> str:
    """A local path made absolute (``~`` expanded); ``s3://`` and ``file://`` URIs as given."""
    uri = str(uri)
    if not storage.is_s3(uri) and not uri.startswith("file://"):
        uri = str(Path(uri).expanduser().resolve())
    return uri


def video_row(clip_id: str, uri: str, transcript: str | None, storage_cfg: StorageConfig | None) -> dict[str, Any]:
    """The manifest row of one video to predict: its transcript as given, else its sidecar
    ``<stem>.txt`` when there is one, else none (ASR or a text gap, as in extraction)."""
    from conclugen.data.corpora.manifest import row

    if transcript is None or not str(transcript).strip():
        transcript = _read_sidecar(_sidecar(uri), storage_cfg)
    return row(clip_id, uri, "unlabeled", "predict", transcript=transcript)


def collect_inputs(inputs: Sequence[str], cfg: Config) -> list[dict[str, Any]]:
    """Video files, folders and Parquet manifests → manifest rows (split ``unlabeled``), in the
    order given, duplicates dropped. A path that does not exist stays a row: its read fails in
    the pipeline and becomes an error line like any unreadable file."""
    from conclugen.data.corpora.manifest import is_video, row

    scfg = cfg.storage
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(uri: str, transcript: str | None = None, clip_id: str | None = None,
            start_s: float | None = None, end_s: float | None = None) -> None:
        cid = clip_id or uri
        if cid in seen:
            return
        seen.add(cid)
        rows.append(row(cid, uri, "unlabeled", "predict", transcript=transcript, start_s=start_s, end_s=end_s))

    for raw in inputs:
        uri = normalise_uri(raw)
        if uri.endswith(".parquet") and storage.is_file(uri, scfg):
            table = _read_parquet(uri, scfg)
            for r in table.to_pylist():
                if not r.get("video_uri"):
                    continue
                add(str(r["video_uri"]), r.get("transcript"), r.get("clip_id"), r.get("start_s"), r.get("end_s"))
            continue
        if storage.is_file(uri, scfg) or not storage.exists(uri, scfg):
            add(uri, _read_sidecar(_sidecar(uri), scfg))
            continue
        files = storage.list_files(uri, scfg)  # a folder
        texts = set(f for f in files if f.endswith(".txt"))
        for f in files:
            if is_video(f):
                add(f, _read_sidecar(_sidecar(f), scfg) if _sidecar(f) in texts else None)
    if not rows:
        raise PredictError(f"no video files in {', '.join(map(str, inputs))}")
    return rows


def _read_parquet(uri: str, scfg: StorageConfig | None) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(uri, scfg)))


# ----------------------------------------------------------------------------- the stage


class PredictStage:
    """Ray Data actor: backbone outputs → feature row → representations → probe probabilities.

    Output columns (small: frames and vectors are dropped here): clip_id, video_uri, error
    ("" or "<stage>: <Type>: message"), proba (JSON list in label-space order), gaps (JSON list).
    """

    def __init__(self, bundle_uri: str, storage_cfg: StorageConfig | None, threads: int | None = 1,
                 bundle: Bundle | None = None) -> None:
        import torch

        if threads:  # an actor: the heads are small next to the backbones; leave cores to them
            torch.set_num_threads(threads)
        b = bundle or load_bundle(bundle_uri, storage_cfg)
        model = b.model()
        self.modalities = list(model.modalities)
        self.encode = heads_encoder(model, self.modalities)
        self.probe = b.probe()
        self.input_dims = {m: int(v) for m, v in b.payload["input_dims"].items()}
        self.kind_dims = {k: int(v) for k, v in b.info["backbone_dims"].items()}

    def _assemble(self, r: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
        """One clip's backbone outputs → (its per-modality feature vectors, its gaps)."""
        from conclugen.features.rows import feature_row

        f = feature_row(r, self.kind_dims)
        vecs = {m: np.asarray(f[m], np.float32) for m in self.modalities}
        for m, v in vecs.items():
            if v.shape[0] != self.input_dims[m]:
                raise ValueError(f"{m} vector has {v.shape[0]} values, the model expects {self.input_dims[m]}")
        return vecs, list(f["gaps"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["clip_id"])
        errors = [""] * n
        probas = ["[]"] * n
        gaps = ["[]"] * n
        good: list[int] = []
        vecs: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        for i in range(n):
            r = {k: v[i] for k, v in batch.items()}
            if str(r["err_stage"]):
                errors[i] = f"{r['err_stage']}: {r['err']}"
                continue
            try:
                row_vecs, row_gaps = self._assemble(r)
            except Exception as e:  # noqa: BLE001 - a bad clip is data
                errors[i] = f"assemble: {type(e).__name__}: {e}"
                continue
            for m, v in row_vecs.items():
                vecs[m].append(v)
            gaps[i] = json.dumps(row_gaps)
            good.append(i)
        if good:
            P = self.probe.predict_proba(self.encode({m: np.stack(v) for m, v in vecs.items()}))
            for j, i in enumerate(good):
                probas[i] = json.dumps([float(x) for x in P[j]])
        return {
            "clip_id": np.asarray([str(c) for c in batch["clip_id"]], dtype=object),
            "video_uri": np.asarray([str(c) for c in batch["video_uri"]], dtype=object),
            "error": np.asarray(errors, dtype=object),
            "proba": np.asarray(probas, dtype=object),
            "gaps": np.asarray(gaps, dtype=object),
        }


# ----------------------------------------------------------------------------- results


# ----------------------------------------------------------------------------- entry point


def _batch_predictions(batch: dict[str, np.ndarray], probe: ProbeModel) -> dict[str, ClipPrediction]:
    """One batch of :class:`PredictStage` output → a ClipPrediction per clip id (probabilities,
    decision, gaps)."""
    got: dict[str, ClipPrediction] = {}
    labels = probe.label_space
    for i in range(len(batch["clip_id"])):
        cid, uri, err = str(batch["clip_id"][i]), str(batch["video_uri"][i]), str(batch["error"][i])
        if err:
            got[cid] = ClipPrediction(cid, uri, None, [], error=err)
            continue
        p = np.asarray(json.loads(str(batch["proba"][i])), dtype=np.float64)
        got[cid] = ClipPrediction(
            cid, uri, {lab: float(x) for lab, x in zip(labels, p, strict=True)},
            probe.labels_of(probe.decide(p[None]))[0], gaps=json.loads(str(batch["gaps"][i])),
        )
    return got


def _in_order(rows: Sequence[dict[str, Any]], got: dict[str, ClipPrediction]) -> list[ClipPrediction]:
    """Input order; a clip the pipeline lost is still reported, never dropped."""
    return [got.get(r["clip_id"]) or ClipPrediction(r["clip_id"], r["video_uri"], None, [],
                                                    error="pipeline: no output for this clip") for r in rows]


class LocalPredictor:
    """The predict stages in this process, without Ray: read + decode
    (:func:`~conclugen.features.decode_stage.read_and_decode`), every backbone in one
    :class:`~conclugen.features.backbone_stage.BackboneStage`, then :class:`PredictStage` — the
    objects the Ray pipeline runs, so both give the same probabilities. Loads the backbones once
    (a served model keeps one of these for its lifetime)."""

    def __init__(self, bundle: Bundle, cfg: Config, device: str = "auto") -> None:
        from conclugen.features.backbone_stage import BackboneStage, active_kinds

        self.bundle = bundle
        self.probe = bundle.probe()
        self.cfg = cfg.model_copy(update={"extract": bundle.extract_config(cfg.extract)})
        ecfg = self.cfg.extract
        kinds = active_kinds(ecfg)
        self.backbones = BackboneStage(kinds, {k: getattr(ecfg.backbones, k) for k in kinds},
                                       ecfg.model_dump_json(), cfg.storage, device=device,
                                       threads=ecfg.backbone_threads)
        self.stage = PredictStage(bundle.uri, cfg.storage, threads=None, bundle=bundle)

    def predict_rows(self, rows: Sequence[dict[str, Any]]) -> list[ClipPrediction]:
        """One ClipPrediction per manifest row, in order (``clip_id`` must be unique), batched
        by ``extract.backbone_batch_size``; a clip that fails is an error prediction."""
        from conclugen.features.decode_stage import read_and_decode
        from conclugen.features.rows import DECODED_COLUMNS

        got: dict[str, ClipPrediction] = {}
        size = max(1, self.cfg.extract.backbone_batch_size)
        for start in range(0, len(rows), size):
            decoded = [read_and_decode(r, self.cfg, self.cfg.storage) for r in rows[start:start + size]]
            batch = {k: _column([d[k] for d in decoded]) for k in DECODED_COLUMNS}
            got |= _batch_predictions(self.stage(self.backbones(batch)), self.probe)
        return _in_order(rows, got)


def _column(values: list[Any]) -> np.ndarray:
    """A 1-D object array (as Ray Data hands string / binary columns to a numpy-format stage)."""
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def _predict_on_ray(rows: list[dict[str, Any]], bundle: Bundle, cfg: Config, batch_size: int) -> dict[str, ClipPrediction]:
    """Ray Data batch inference: the extraction's plan, then a :class:`PredictStage` actor."""
    import ray

    from conclugen.features.extract import build_dataset, resolved_storage
    from conclugen.runtime import require_ray

    probe = bundle.probe()
    pcfg = cfg.model_copy(update={"extract": bundle.extract_config(cfg.extract)})
    require_ray("predict")
    wcfg = resolved_storage(cfg.storage)  # workers get the driver's endpoint and credentials
    ds = build_dataset(rows, pcfg, wcfg).map_batches(
        PredictStage,
        fn_constructor_kwargs={"bundle_uri": bundle.uri, "storage_cfg": wcfg},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
    )
    got: dict[str, ClipPrediction] = {}
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1):
        got |= _batch_predictions(batch, probe)
    return got


def _write(result: PredictResult, out: str, cfg: Config) -> None:
    result.csv_path = storage.join(out, "predictions.csv")
    result.json_path = storage.join(out, "predictions.json")
    storage.makedirs(out, cfg.storage)
    storage.write_text(result.csv_path, result.to_csv(), cfg.storage)
    storage.write_text(result.json_path, result.to_json(), cfg.storage)


def predict_videos(
    inputs: Sequence[str],
    model_uri: str,
    cfg: Config,
    out: str | None = None,
    batch_size: int = 16,
    local: bool = False,
) -> PredictResult:
    """Class probabilities for every clip of ``inputs`` (files, folders, manifests) with the
    bundle at ``model_uri``; writes ``predictions.csv`` and ``predictions.json`` under ``out``
    (local or ``s3://``; None: nothing is written). Ray must be started by the caller (the CLI
    does) unless ``local``: then the same stages run in this process (:class:`LocalPredictor`)."""
    t0 = time.perf_counter()
    bundle = load_bundle(model_uri, cfg.storage)  # fails fast, before Ray or any decoding
    rows = collect_inputs(inputs, cfg)
    if local:
        clips = LocalPredictor(bundle, cfg).predict_rows(rows)
    else:
        clips = _in_order(rows, _predict_on_ray(rows, bundle, cfg, batch_size))
    result = PredictResult(bundle.label_space, bundle.multilabel, clips, seconds=time.perf_counter() - t0)
    if out:
        _write(result, out, cfg)
    return result
