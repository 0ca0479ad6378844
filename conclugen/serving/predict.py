"""`conclugen predict`: emotions for new video files through the same extraction, heads and probe.

MODEL_URI is the output folder of ``conclugen evaluate`` (or its ``model/`` bundle folder; local
or ``s3://``). The bundle (see :mod:`conclugen.evaluation.evaluate`) holds the pretrained heads, the fitted
"conclugen" linear probe and the backbone specs the training features were extracted with.

Inputs: video files, folders (every video file below, as the ``folder`` corpus loader lists them)
and Parquet manifests (``.parquet`` with at least ``video_uri``; ``clip_id``, ``transcript``,
``start_s``/``end_s`` optional) — local paths or ``s3://`` URIs, mixed freely.

Pipeline: the extraction's own Ray Data plan (:func:`conclugen.features.extract.build_dataset`: read +
decode tasks → backbone actors) followed by one more actor pool, :class:`PredictStage`, that turns
each clip's backbone outputs into its feature row (:func:`conclugen.features.extract.feature_row`, the
function that writes training features), then representations (pretrained heads) and class
probabilities (probe) — Ray Data batch inference end to end, whatever the number of clips.

A clip that cannot be read or decoded becomes an error line (stage + reason); the others go on.
Text: a transcript comes from the manifest, else from a sidecar ``<video stem>.txt`` beside the
file *(ours)*, else from the bundle's ASR backbone; with none (``offline:none``) the text vector
is zeros and ``text`` is listed under ``gaps`` — as extraction does for training clips.

Extraction settings (backbones, frame rates, sizes) come from the bundle; resource settings
(batch sizes, actor counts, GPUs) from the current config.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conclugen import storage
from conclugen.config import Config, ExtractConfig, StorageConfig
from conclugen.errors import ConCluGenError

# ExtractConfig fields that size the work, not what is computed: taken from the predict config.
RESOURCE_FIELDS = ("decode_batch_size", "backbone_batch_size", "backbone_actors", "num_gpus_per_actor",
                   "backbone_stages", "backbone_threads", "decode_tasks", "s3_read_retries")


class PredictError(ConCluGenError, ValueError):
    """The model bundle is missing or incomplete, or no input names a video."""


@dataclass
class Bundle:
    uri: str  # the bundle folder
    info: dict[str, Any]  # bundle.json
    payload: dict[str, Any]  # checkpoint.pt (model weights, config, input_dims)
    probe_bytes: bytes

    @property
    def label_space(self) -> list[str]:
        return list(self.info["label_space"])

    @property
    def multilabel(self) -> bool:
        return bool(self.info["multilabel"])

    def extract_config(self, current: ExtractConfig) -> ExtractConfig:
        data = dict(self.info["extract"])
        cur = json.loads(current.model_dump_json())
        for k in RESOURCE_FIELDS:
            data[k] = cur[k]
        return ExtractConfig.model_validate(data)


def bundle_dir(model_uri: str, storage_cfg: StorageConfig | None = None) -> str:
    """The evaluate output folder → its ``model/`` bundle; a bundle folder as given."""
    from conclugen.evaluation.evaluate import BUNDLE_DIR, BUNDLE_FILE

    model_uri = str(model_uri).rstrip("/")
    if storage.exists(storage.join(model_uri, BUNDLE_FILE), storage_cfg):
        return model_uri
    inner = storage.join(model_uri, BUNDLE_DIR)
    if storage.exists(storage.join(inner, BUNDLE_FILE), storage_cfg):
        return inner
    raise PredictError(f"{model_uri} holds no model bundle ({BUNDLE_FILE}): pass the output folder of "
                       "`conclugen evaluate` (or its model/ folder)")


def load_bundle(model_uri: str, storage_cfg: StorageConfig | None = None) -> Bundle:
    import torch

    d = bundle_dir(model_uri, storage_cfg)
    info = json.loads(storage.read_text(storage.join(d, "bundle.json"), storage_cfg))
    if not info.get("probe"):
        raise PredictError(f"{d} has no fitted probe of the conclugen encoder (evaluate ran without it)")
    payload = torch.load(io.BytesIO(storage.read_bytes(storage.join(d, info["checkpoint"]), storage_cfg)),
                         map_location="cpu", weights_only=True)
    probe = storage.read_bytes(storage.join(d, info["probe"]), storage_cfg)
    return Bundle(uri=d, info=info, payload=payload, probe_bytes=probe)


# ----------------------------------------------------------------------------- inputs


def _sidecar(uri: str) -> str:
    return posixpath.splitext(uri)[0] + ".txt"


def _read_sidecar(uri: str, storage_cfg: StorageConfig | None) -> str | None:
    try:
        text = storage.read_text(uri, storage_cfg).strip()
    except (OSError, ValueError):
        return None
    return text or None


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
        uri = str(raw)
        if not storage.is_s3(uri) and not uri.startswith("file://"):
            uri = str(Path(uri).expanduser().resolve())
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

    def __init__(self, bundle_uri: str, storage_cfg: StorageConfig | None) -> None:
        import torch

        from conclugen.config import ModelConfig
        from conclugen.evaluation.probe import ProbeModel
        from conclugen.model.heads import ConCluGen

        torch.set_num_threads(1)  # the heads are small next to the backbones; leave cores to them
        b = load_bundle(bundle_uri, storage_cfg)
        p = b.payload
        self.model = ConCluGen.from_config(ModelConfig.model_validate(p["config"]["model"]), p["input_dims"])
        self.model.load_state_dict(p["model"])
        self.model.eval()
        self.probe = ProbeModel.from_bytes(b.probe_bytes)
        self.modalities = list(self.model.modalities)
        self.input_dims = {m: int(v) for m, v in p["input_dims"].items()}
        self.kind_dims = {k: int(v) for k, v in b.info["backbone_dims"].items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from conclugen.features.extract import feature_row

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
                f = feature_row(r, self.kind_dims)
                row_vecs = {m: np.asarray(f[m], np.float32) for m in self.modalities}
                for m, v in row_vecs.items():
                    if v.shape[0] != self.input_dims[m]:
                        raise ValueError(f"{m} vector has {v.shape[0]} values, the model expects {self.input_dims[m]}")
            except Exception as e:  # noqa: BLE001 - a bad clip is data
                errors[i] = f"assemble: {type(e).__name__}: {e}"
                continue
            for m, v in row_vecs.items():
                vecs[m].append(v)
            gaps[i] = json.dumps(list(f["gaps"]))
            good.append(i)
        if good:
            with torch.no_grad():
                reps = self.model.represent({m: torch.from_numpy(np.stack(v)) for m, v in vecs.items()})
                X = torch.cat([reps[m] for m in self.modalities], dim=1).numpy()
            P = self.probe.predict_proba(X)
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


@dataclass
class ClipPrediction:
    clip_id: str
    video_uri: str
    probabilities: dict[str, float] | None  # None when the clip failed
    predicted: list[str]
    gaps: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.probabilities is not None


@dataclass
class PredictResult:
    label_space: list[str]
    multilabel: bool
    clips: list[ClipPrediction]
    csv_path: str | None = None
    json_path: str | None = None
    seconds: float = 0.0

    @property
    def n_ok(self) -> int:
        return sum(c.ok for c in self.clips)

    def table(self) -> str:
        """Fixed-width text: one line per clip (probabilities), then one error line per failed clip."""
        labels = self.label_space
        width = max([4, *(len(_short(c.clip_id)) for c in self.clips)])
        w = max(7, *(len(lab) for lab in labels))
        head = f"{'clip':<{width}}  {'predicted':<12}  " + "  ".join(f"{lab:>{w}}" for lab in labels)
        lines = [head, "-" * len(head)]
        for c in self.clips:
            if c.ok:
                probs = "  ".join(f"{c.probabilities[lab]:>{w}.4f}" for lab in labels)
                pred = ",".join(c.predicted) or "-"
                lines.append(f"{_short(c.clip_id):<{width}}  {pred:<12}  {probs}"
                             + (f"  (gaps: {','.join(c.gaps)})" if c.gaps else ""))
        for c in self.clips:
            if not c.ok:
                lines.append(f"error: {c.video_uri}: {c.error}")
        lines.append(f"{self.n_ok} of {len(self.clips)} clips predicted ({self.seconds:.1f} s)"
                     + (f"; written to {self.csv_path} and {self.json_path}" if self.csv_path else ""))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({
            "label_space": self.label_space, "multilabel": self.multilabel,
            "clips": [{"clip_id": c.clip_id, "video_uri": c.video_uri, "predicted": c.predicted,
                       "probabilities": c.probabilities, "gaps": c.gaps, "error": c.error or None}
                      for c in self.clips],
        }, indent=2)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["clip_id", "video_uri", "status", "predicted", *[f"p_{lab}" for lab in self.label_space],
                    "gaps", "error"])
        for c in self.clips:
            probs = [f"{c.probabilities[lab]:.6f}" for lab in self.label_space] if c.ok else [""] * len(self.label_space)
            w.writerow([c.clip_id, c.video_uri, "ok" if c.ok else "error", ";".join(c.predicted), *probs,
                        ";".join(c.gaps), c.error])
        return buf.getvalue()


def _short(clip_id: str, keep: int = 48) -> str:
    return clip_id if len(clip_id) <= keep else "…" + clip_id[-(keep - 1):]


def _decide(p: np.ndarray, labels: list[str], multilabel: bool, threshold: float) -> list[str]:
    if multilabel:
        return [lab for lab, x in zip(labels, p, strict=True) if x >= threshold]
    return [labels[int(np.argmax(p))]]


# ----------------------------------------------------------------------------- entry point


def predict_videos(
    inputs: Sequence[str],
    model_uri: str,
    cfg: Config,
    out: str | None = None,
    batch_size: int = 16,
) -> PredictResult:
    """Class probabilities for every clip of ``inputs`` (files, folders, manifests) with the
    bundle at ``model_uri``; writes ``predictions.csv`` and ``predictions.json`` under ``out``
    (local or ``s3://``; None: nothing is written). Starts a local Ray if none is running."""
    from conclugen.evaluation.probe import ProbeModel
    from conclugen.features.extract import build_dataset, ensure_ray, resolved_storage

    t0 = time.perf_counter()
    bundle = load_bundle(model_uri, cfg.storage)  # fails fast, before Ray or any decoding
    probe = ProbeModel.from_bytes(bundle.probe_bytes)
    rows = collect_inputs(inputs, cfg)
    pcfg = cfg.model_copy(update={"extract": bundle.extract_config(cfg.extract)})
    ensure_ray(pcfg)
    wcfg = resolved_storage(cfg.storage)  # workers get the driver's endpoint and credentials
    import ray

    ds = build_dataset(rows, pcfg, wcfg).map_batches(
        PredictStage,
        fn_constructor_kwargs={"bundle_uri": bundle.uri, "storage_cfg": wcfg},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
    )
    got: dict[str, ClipPrediction] = {}
    labels = bundle.label_space
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1):
        for i in range(len(batch["clip_id"])):
            cid, uri, err = str(batch["clip_id"][i]), str(batch["video_uri"][i]), str(batch["error"][i])
            if err:
                got[cid] = ClipPrediction(cid, uri, None, [], error=err)
                continue
            p = np.asarray(json.loads(str(batch["proba"][i])), dtype=np.float64)
            got[cid] = ClipPrediction(
                cid, uri, {lab: float(x) for lab, x in zip(labels, p, strict=True)},
                _decide(p, labels, bundle.multilabel, probe.threshold), gaps=json.loads(str(batch["gaps"][i])),
            )
    clips = []
    for r in rows:  # input order; a clip the pipeline lost is still reported, never dropped
        clips.append(got.get(r["clip_id"]) or ClipPrediction(r["clip_id"], r["video_uri"], None, [],
                                                             error="pipeline: no output for this clip"))
    result = PredictResult(labels, bundle.multilabel, clips, seconds=time.perf_counter() - t0)
    if out:
        result.csv_path = storage.join(out, "predictions.csv")
        result.json_path = storage.join(out, "predictions.json")
        storage.makedirs(out, cfg.storage)
        storage.write_text(result.csv_path, result.to_csv(), cfg.storage)
        storage.write_text(result.json_path, result.to_json(), cfg.storage)
    return result
