"""Feature extraction on Ray Data: manifest → clip bytes → decode → frozen backbones → Parquet.

Stages (streaming, so memory does not grow with the corpus):

1. The driver loads the manifest, writes the loader's problems (missing files, unknown labels)
   to ``errors/`` and drops clips already written under the output (features *or* errors: a
   re-run after an interruption processes only the rest; an errored clip is not retried —
   delete its errors shard to retry it).
2. ``read+decode`` CPU tasks (``map_batches``, ``decode_batch_size`` clips): bytes through
   :mod:`conclugen.storage` with ``s3_read_retries`` retries, then :func:`conclugen.data.media.decode_clip`.
3. One actor pool per backbone (image → video3d → [asr] → audio → text), ``backbone_actors``
   actors each, ``backbone_batch_size`` clips per batch, ``num_gpus`` when the cluster has GPUs.
   Each stage consumes and drops its input column, so blocks shrink as they go.
4. The driver iterates the result and writes one Parquet shard per ``shard_rows`` rows to
   ``features/`` and ``errors/`` as it goes (atomically: temp name, then rename), then meta.json.

A failure at any stage turns that clip into an errors row (``stage``, ``"<Type>: message"``);
a batch whose forward pass fails is retried clip by clip so one bad clip does not take its
batch-mates down. At the end every manifest clip is checked to be in exactly one of features
or errors (``ExtractSummary.accounted``); a miss raises :class:`ExtractError`.

Gaps (documented decision): a clip **without an audio track** keeps its row, with a zero audio
vector and ``"audio"`` in ``gaps``; a clip **without transcript** gets ASR text when an ASR
backbone is configured, else (``offline:none``, or no audio to transcribe) a zero text vector
and ``"text"`` in ``gaps``. No video stream / no decodable frame is an error (MediaError), as
the video modality is what the method is about.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conclugen import storage
from conclugen.config import Config, ExtractConfig, StorageConfig
from conclugen.errors import ConCluGenError
from conclugen.features.store import (
    ERRORS_DIR,
    FEATURES_DIR,
    META_FILE,
    BackboneInfo,
    FeatureMeta,
    errors_uri,
    features_uri,
)
from conclugen.runtime import ensure_ray  # noqa: F401 - re-exported for entry points

log = logging.getLogger(__name__)

STAGE_KINDS = ("image", "video3d", "asr", "audio", "text")
DECODE_TASK_MEMORY = 512 * 1024**2

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("intensities", pa.list_(pa.float32())),
        pa.field("corpus", pa.string()),
        pa.field("video", pa.list_(pa.float32())),  # concat(image, video3d)
        pa.field("audio", pa.list_(pa.float32())),
        pa.field("text", pa.list_(pa.float32())),
        pa.field("n_frames", pa.int32()),  # face frames (1 fps)
        pa.field("n_faces", pa.int32()),  # of which a face was detected in
        pa.field("n_windows", pa.int32()),  # 16-frame windows
        pa.field("audio_seconds", pa.float32()),
        pa.field("duration_s", pa.float32()),
        pa.field("truncated_to_s", pa.float32()),  # null unless cut to max_clip_seconds
        pa.field("transcript_source", pa.string()),  # manifest | asr | none
        pa.field("gaps", pa.list_(pa.string())),  # modalities whose input was missing (zeros)
    ]
)
ERROR_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
    ]
)


class ExtractError(ConCluGenError, RuntimeError):
    """Extraction cannot start (bad output, other backbones already there) or lost a clip."""


# ---------------------------------------------------------------------------------- helpers


def pack(arr: np.ndarray | None) -> bytes:
    if arr is None:
        return b""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def unpack(blob: bytes | None) -> np.ndarray | None:
    if blob is None or len(blob) == 0:
        return None
    return np.load(io.BytesIO(bytes(blob)), allow_pickle=False)


def error_text(e: BaseException) -> str:
    msg = storage._scrub(str(e)).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def resolved_storage(cfg: StorageConfig) -> StorageConfig:
    """The storage section with the endpoint and credentials resolved on the driver, so Ray
    workers (whose environment was fixed when Ray started) reach the same S3 as the driver."""
    s = storage.s3_settings(cfg)
    return StorageConfig(
        s3_endpoint=s.endpoint,
        s3_region=s.region,
        access_key_id=s.access_key,
        secret_access_key=s.secret_key,
        session_token=s.session_token,
        retries=cfg.retries,
    )


# ------------------------------------------------------------------------------ decode stage


def _empty_out() -> dict[str, list[Any]]:
    keys = ("clip_id", "video_uri", "row", "err_stage", "err", "faces", "windows", "audio", "facts",
            "text", "text_src")
    return {k: [] for k in keys}


def read_and_decode(row: dict[str, Any], cfg: Config, storage_cfg: StorageConfig) -> dict[str, Any]:
    """One manifest row → the decode stage's output row (arrays packed as .npy bytes), or an error
    row with ``err_stage`` read | decode."""
    from conclugen.data.media import decode_clip

    out: dict[str, Any] = {"clip_id": row["clip_id"], "video_uri": row["video_uri"], "row": json.dumps(row),
                           "err_stage": "", "err": "", "faces": b"", "windows": b"", "audio": b"",
                           "facts": "{}", "text": row.get("transcript") or "",
                           "text_src": "manifest" if row.get("transcript") is not None else "none"}
    try:
        data = storage.read_bytes(row["video_uri"], storage_cfg, retries=cfg.extract.s3_read_retries)
    except Exception as e:  # missing file, S3 failure after retries, permissions, ...
        out.update(err_stage="read", err=error_text(e))
        return out
    try:
        clip = decode_clip(data, cfg.extract, start_s=row.get("start_s"), end_s=row.get("end_s"),
                           max_seconds=cfg.corpus.max_clip_seconds)
    except Exception as e:
        reason = getattr(e, "reason", None)
        stage = "decode" if reason is None else f"decode:{getattr(e, 'stage', 'decode')}"
        out.update(err_stage=stage, err=error_text(e))
        return out
    del data
    facts = {"n_frames": clip.n_frames, "n_faces": int(clip.n_faces), "n_windows": clip.n_windows,
             "audio_seconds": clip.audio_seconds if clip.has_audio else 0.0,
             "duration_s": float(clip.duration_s), "truncated_to_s": clip.truncated_to_s,
             "has_audio": bool(clip.has_audio and len(clip.audio) > 0)}
    out.update(faces=pack(clip.face_frames), windows=pack(clip.windows),
               audio=pack(clip.audio if facts["has_audio"] else None), facts=json.dumps(facts))
    return out


def decode_batch(batch: dict[str, np.ndarray], cfg_json: str, storage_cfg: StorageConfig) -> dict[str, list[Any]]:
    """``map_batches`` function of the decode tasks."""
    cfg = Config.model_validate_json(cfg_json)
    out = _empty_out()
    for raw in batch["row"]:
        r = read_and_decode(json.loads(raw), cfg, storage_cfg)
        for k in out:
            out[k].append(r[k])
    return out


# ---------------------------------------------------------------------------- backbone stages

# stage kind → (input column, output column)
_IO = {"image": ("faces", "v_image"), "video3d": ("windows", "v_video3d"), "audio": ("audio", "v_audio"),
       "text": ("text", "v_text"), "asr": ("audio", "text")}


class BackboneStage:
    """An actor holding one or more backbones (``kinds``, applied in order): loads the models
    once, then embeds batches. Rows that already failed pass through; a batch whose forward fails
    is retried clip by clip, so only the bad clip becomes an errors row (stage = backbone kind)."""

    def __init__(self, kinds: list[str], specs: dict[str, str], extract_json: str, storage_cfg: StorageConfig,
                 device: str = "cpu", threads: int = 0) -> None:
        import torch

        from conclugen.features.backbones import load_backbone
        from conclugen.features.backbones.registry import torch_device

        if threads > 0:
            torch.set_num_threads(threads)
        cfg = ExtractConfig.model_validate_json(extract_json)
        dev = torch_device(device)
        self.models = [(k, load_backbone(k, specs[k], dev, cfg, storage_cfg)) for k in kinds]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items()}
        out["err_stage"] = np.asarray([str(s) for s in batch["err_stage"]], dtype=object)
        out["err"] = np.asarray([str(s) for s in batch["err"]], dtype=object)
        for kind, model in self.models:
            _apply(kind, model, out)
        return out


def _apply(kind: str, model: Any, out: dict[str, np.ndarray]) -> None:
    """Run one backbone over the batch ``out`` in place."""
    inp, col = _IO[kind]
    n = len(out["clip_id"])
    err_stage, err = out["err_stage"], out["err"]
    ok = [i for i in range(n) if not err_stage[i]]
    if kind == "asr":  # only clips without text that have audio
        ok = [i for i in ok if out["text_src"][i] == "none" and len(out["audio"][i])]

    def inputs(rows: list[int]) -> list[Any]:
        if kind == "text":
            return [str(out["text"][i]) if out["text_src"][i] != "none" else None for i in rows]
        return [unpack(out[inp][i]) for i in rows]

    def run(rows: list[int]) -> list[Any]:
        x = inputs(rows)
        return list(model.transcribe(x)) if kind == "asr" else list(model.embed(x))

    results: dict[int, Any] = {}
    try:
        results = dict(zip(ok, run(ok), strict=True))
    except Exception:
        for i in ok:  # isolate the bad clip(s)
            try:
                results[i] = run([i])[0]
            except Exception as e:
                err_stage[i], err[i] = kind, error_text(e)
    if kind == "asr":
        text = np.asarray([str(t) for t in out["text"]], dtype=object)
        src = np.asarray([str(s) for s in out["text_src"]], dtype=object)
        for i, t in results.items():
            if t is not None and not err_stage[i]:
                text[i], src[i] = t, "asr"
        out["text"], out["text_src"] = text, src
        return
    out[col] = np.asarray(
        [pack(np.asarray(results[i], np.float32)) if i in results and not err_stage[i] else b"" for i in range(n)],
        dtype=object,
    )
    if kind in ("image", "video3d", "audio"):
        out.pop(inp, None)  # consumed: later stages do not carry frames or samples


# ------------------------------------------------------------------------------- row assembly


def feature_row(r: dict[str, Any], dims: dict[str, int]) -> dict[str, Any]:
    """The decode/backbone stages' row → a FEATURE_SCHEMA row (vectors joined, gaps recorded)."""
    m = json.loads(r["row"])
    facts = json.loads(r["facts"])

    def vec(col: str, dim: int) -> np.ndarray:
        v = unpack(r.get(col))
        return np.zeros(dim, np.float32) if v is None else np.asarray(v, np.float32).reshape(-1)

    gaps = []
    image, video3d = vec("v_image", dims["image"]), vec("v_video3d", dims["video3d"])
    if facts.get("n_frames", 0) == 0 and facts.get("n_windows", 0) == 0:
        gaps.append("video")
    audio = vec("v_audio", dims["audio"])
    if not facts.get("has_audio", False):
        gaps.append("audio")
        audio = np.zeros(dims["audio"], np.float32)
    text_src = str(r["text_src"])
    text = vec("v_text", dims["text"])
    if text_src == "none":
        gaps.append("text")
        text = np.zeros(dims["text"], np.float32)
    return {
        "clip_id": m["clip_id"], "split": m.get("split"), "labels": list(m.get("labels") or []),
        "intensities": m.get("intensities"), "corpus": m.get("corpus"),
        "video": np.concatenate([image, video3d]).tolist(), "audio": audio.tolist(), "text": text.tolist(),
        "n_frames": int(facts.get("n_frames", 0)), "n_faces": int(facts.get("n_faces", 0)),
        "n_windows": int(facts.get("n_windows", 0)), "audio_seconds": float(facts.get("audio_seconds", 0.0)),
        "duration_s": float(facts.get("duration_s", 0.0)), "truncated_to_s": facts.get("truncated_to_s"),
        "transcript_source": text_src, "gaps": gaps,
    }


# ----------------------------------------------------------------------------------- writing


def _write_parquet(uri: str, table: pa.Table, cfg: StorageConfig) -> None:
    """Write one shard; on local disks via a temp name + rename, so a crash never leaves half a
    Parquet file that a resume would trip over (S3 PUTs are atomic already)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    if storage.is_s3(uri):
        storage.write_bytes(uri, buf.getvalue(), cfg)
        return
    fs, path = storage.resolve(uri, cfg)
    storage.write_bytes(uri + ".tmp", buf.getvalue(), cfg)
    fs.move(path + ".tmp", path)


def written_ids(root: str, cfg: StorageConfig) -> tuple[set[str], set[str]]:
    """clip_ids already under ``root``'s features/ and errors/. Unreadable shards (a crash while
    writing to an object store that is not atomic) are deleted so their clips are redone."""
    out: list[set[str]] = []
    for sub in (FEATURES_DIR, ERRORS_DIR):
        ids: set[str] = set()
        for f in storage.list_files(storage.join(root, sub), cfg):
            if f.endswith(".tmp"):
                storage.delete(f, cfg)
                continue
            if not f.endswith(".parquet"):
                continue
            try:
                fs, path = storage.resolve(f, cfg)
                with fs.open_input_file(path) as fh:
                    ids.update(pq.read_table(fh, columns=["clip_id"]).column("clip_id").to_pylist())
            except Exception as e:  # a broken shard: redo its clips
                log.warning("unreadable shard %s (%s): deleting it, its clips are redone", f, error_text(e))
                storage.delete(f, cfg)
        out.append(ids)
    return out[0], out[1]


class ShardWriter:
    def __init__(self, root: str, cfg: StorageConfig, tag: str) -> None:
        self.root, self.cfg, self.tag = root, cfg, tag
        self.seq = 0

    def write(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        schema = FEATURE_SCHEMA if kind == FEATURES_DIR else ERROR_SCHEMA
        table = pa.Table.from_pylist(rows, schema=schema)
        base = features_uri(self.root) if kind == FEATURES_DIR else errors_uri(self.root)
        _write_parquet(storage.join(base, f"part-{self.tag}-{self.seq:05d}.parquet"), table, self.cfg)
        self.seq += 1


# ----------------------------------------------------------------------------------- summary


@dataclass
class ExtractSummary:
    out_uri: str
    corpus: str
    manifest_clips: int
    skipped: int  # already written before this run
    processed: int  # clips that went through the pipeline in this run
    features: int  # feature rows written in this run
    errors: int  # error rows written in this run (incl. manifest problems)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    total_features: int = 0  # in the store after the run
    total_errors: int = 0
    accounted: bool = False  # every manifest clip in exactly one of features / errors
    unaccounted: list[str] = field(default_factory=list)
    gaps: dict[str, int] = field(default_factory=dict)
    first_output_s: float = 0.0  # from pipeline start to the first rows out (worker/actor start-up)
    first_output_rows: int = 0

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"extract {self.corpus} → {self.out_uri}",
            f"  manifest clips        {self.manifest_clips}",
            f"  already written       {self.skipped}",
            f"  processed this run    {self.processed}  ({self.clips_per_s:.2f} clips/s, {self.seconds:.1f} s)",
            f"  features written      {self.features}",
            f"  errors written        {self.errors}",
        ]
        for reason, n in sorted(self.errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n:5d}  {reason}")
        if self.gaps:
            lines.append("  gaps (zeros)          " + ", ".join(f"{k}: {v}" for k, v in sorted(self.gaps.items())))
        lines.append(f"  store: {self.total_features} features + {self.total_errors} errors = "
                     f"{self.total_features + self.total_errors} of {self.manifest_clips} manifest clips "
                     f"({'all accounted for' if self.accounted else 'MISMATCH'})")
        return "\n".join(lines)


def error_reason(stage: str, error: str) -> str:
    """Group key for the summary: stage + exception type (+ MediaError's reason code)."""
    head = error.split(":", 1)
    kind = head[0]
    if kind == "MediaError" and len(head) > 1:
        kind += ":" + head[1].strip().split(":", 1)[0]
    return f"{stage} / {kind}"


# ------------------------------------------------------------------------------------ driver


def backbone_infos(cfg: ExtractConfig, storage_cfg: StorageConfig) -> dict[str, BackboneInfo]:
    """Load each configured backbone once on the driver: fails early on a bad spec, gives dims."""
    from conclugen.features.backbones import load_backbone

    infos = {}
    for kind in STAGE_KINDS:
        spec = getattr(cfg.backbones, kind)
        b = load_backbone(kind, spec, "cpu", cfg, storage_cfg)
        infos[kind] = BackboneInfo(name=spec, dim=int(b.dim), trained=bool(b.trained), details=dict(b.details))
        del b
    return infos


def modality_dims(infos: dict[str, BackboneInfo]) -> dict[str, int]:
    return {"video": infos["image"].dim + infos["video3d"].dim, "audio": infos["audio"].dim,
            "text": infos["text"].dim}


def _gpus_per_actor(cfg: ExtractConfig, n_stages: int) -> float:
    import ray

    if cfg.num_gpus_per_actor > 0:
        return float(cfg.num_gpus_per_actor)
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus <= 0:
        return 0.0
    # auto: all backbone stages share the GPUs (each actor a slice), at most one GPU each
    return min(1.0, gpus / max(1, n_stages * cfg.backbone_actors))


def build_dataset(rows: list[dict[str, Any]], cfg: Config, storage_cfg: StorageConfig) -> Any:
    """The Ray Data plan (lazy) over manifest rows."""
    import ray

    ecfg = cfg.extract
    items = [{"row": json.dumps(r)} for r in rows]
    n_blocks = max(1, math.ceil(len(items) / ecfg.decode_batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(decode_batch, fn_kwargs={"cfg_json": cfg.model_dump_json(), "storage_cfg": storage_cfg},
                        batch_size=ecfg.decode_batch_size, batch_format="numpy", num_cpus=1,
                        compute=ray.data.TaskPoolStrategy(size=ecfg.decode_tasks or None),
                        # a memory reservation (a worker with torch, PyAV and a decoded clip: ~300 MB)
                        # also makes the remote args differ from the actors', which keeps Ray Data from
                        # fusing decode into the first backbone actor (that would serialise decoding
                        # behind the forward passes)
                        memory=DECODE_TASK_MEMORY)
    kinds = [k for k in STAGE_KINDS if not (k == "asr" and ecfg.backbones.asr == "offline:none")]
    # "fused": one actor pool holding every backbone (one process per actor to start, all models
    # on one GPU); "separate": one actor pool per backbone, so stages overlap on a bigger machine.
    groups = [kinds] if ecfg.backbone_stages == "fused" else [[k] for k in kinds]
    gpus = _gpus_per_actor(ecfg, len(groups))
    specs = {k: getattr(ecfg.backbones, k) for k in kinds}
    for group in groups:
        ds = ds.map_batches(
            BackboneStage,
            fn_constructor_kwargs={"kinds": group, "specs": specs, "extract_json": ecfg.model_dump_json(),
                                   "storage_cfg": storage_cfg, "device": "cuda" if gpus > 0 else "cpu",
                                   "threads": ecfg.backbone_threads},
            batch_size=ecfg.backbone_batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=ecfg.backbone_actors),
            num_cpus=ecfg.backbone_threads or 1, num_gpus=gpus,
        )
    return ds


def run_extract(
    corpus_root: str,
    corpus: str,
    out_uri: str,
    cfg: Config | None = None,
    shard_rows: int = 64,
    progress: Callable[[str], None] | None = print,
    manifest: Any = None,
) -> ExtractSummary:
    """Extract features for every clip of ``corpus`` under ``corpus_root`` into ``out_uri``
    (see the module docstring). Starts a local Ray if none is running. ``manifest`` (a
    :class:`conclugen.data.corpora.Manifest`) replaces loading one from ``corpus_root``."""
    from conclugen.data.corpora import load_manifest

    cfg = cfg or Config()
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    scfg = cfg.storage
    wcfg = resolved_storage(scfg)

    if manifest is None:
        manifest = load_manifest(corpus, corpus_root, cfg)
    infos = backbone_infos(cfg.extract, wcfg)
    dims = modality_dims(infos)
    # the loader's name wins (a synthetic corpus in MELD's layout is "synthetic": the probe then
    # weights classes from the data, not with MELD's reference weights)
    corpus = manifest.corpus or corpus
    meta = FeatureMeta(corpus=corpus, dims=dims, label_space=list(manifest.label_space),
                       multilabel=bool(manifest.multilabel), backbones=infos)
    _check_existing_meta(out_uri, meta, scfg)
    storage.makedirs(out_uri, scfg)
    storage.write_text(storage.join(out_uri, META_FILE), meta.to_json(), scfg)

    done_f, done_e = written_ids(out_uri, scfg)
    done = done_f | done_e
    rows, seen, dup = [], set(), 0
    for r in manifest.rows:
        if r["clip_id"] in seen:
            dup += 1
            continue
        seen.add(r["clip_id"])
        if r["clip_id"] not in done:
            rows.append(r)
    problems = [p for p in manifest.problems if p["clip_id"] not in done and p["clip_id"] not in seen]
    manifest_ids = seen | {p["clip_id"] for p in manifest.problems}
    if dup:
        log.warning("%d duplicate clip_id rows in the manifest were ignored", dup)

    writer = ShardWriter(out_uri, scfg, tag=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    reasons: Counter[str] = Counter()
    gaps: Counter[str] = Counter()
    n_feat = n_err = 0
    if problems:
        writer.write(ERRORS_DIR, [{k: p[k] for k in ERROR_SCHEMA.names} for p in problems])
        n_err += len(problems)
        reasons.update(error_reason(p["stage"], p["error"]) for p in problems)
    say(f"extract: {len(manifest_ids)} manifest clips, {len(manifest_ids & done)} already written, "
        f"{len(rows)} to process, {len(problems)} manifest problems")

    t_run = time.perf_counter()
    first: tuple[float, int] | None = None
    if rows:
        ensure_ray(cfg)
        ds = build_dataset(rows, cfg, wcfg)
        dims_kind = {k: infos[k].dim for k in ("image", "video3d", "audio", "text")}
        pending: dict[str, list[dict]] = {FEATURES_DIR: [], ERRORS_DIR: []}

        def flush(kind: str, size: int) -> None:
            while pending[kind] and len(pending[kind]) >= size:
                writer.write(kind, pending[kind][:shard_rows])
                pending[kind] = pending[kind][shard_rows:]

        # pull rows as the backbone stage emits them (small batches: the driver holds at most one
        # shard of vectors), write a shard every ``shard_rows`` rows
        for batch in ds.iter_batches(batch_size=cfg.extract.backbone_batch_size, batch_format="numpy",
                                     prefetch_batches=1):
            if first is None:
                first = (time.perf_counter() - t_run, len(batch["clip_id"]))
            feats, errs = _split_batch(batch, dims_kind)
            pending[FEATURES_DIR] += feats
            pending[ERRORS_DIR] += errs
            n_feat += len(feats)
            n_err += len(errs)
            reasons.update(error_reason(e["stage"], e["error"]) for e in errs)
            gaps.update(g for f in feats for g in f["gaps"])
            flush(FEATURES_DIR, shard_rows)
            flush(ERRORS_DIR, shard_rows)
        flush(FEATURES_DIR, 1)
        flush(ERRORS_DIR, 1)
    seconds = time.perf_counter() - t_run

    all_f, all_e = written_ids(out_uri, scfg)
    missing = sorted(manifest_ids - (all_f | all_e))
    both = sorted(all_f & all_e)
    summary = ExtractSummary(
        out_uri=out_uri, corpus=corpus, manifest_clips=len(manifest_ids), skipped=len(manifest_ids & done),
        processed=len(rows), features=n_feat, errors=n_err, errors_by_reason=dict(reasons),
        seconds=seconds if rows else 0.0, total_features=len(all_f & manifest_ids),
        total_errors=len(all_e & manifest_ids), accounted=not missing and not both,
        unaccounted=missing + both, gaps=dict(gaps),
    )
    if rows and first is not None:
        summary.first_output_s, summary.first_output_rows = first
    log.info("extract finished in %.1f s", time.perf_counter() - t0)
    say(summary.describe())
    if not summary.accounted:
        raise ExtractError(f"{len(missing)} manifest clips are in neither features nor errors, "
                           f"{len(both)} in both (first: {(missing + both)[:5]})")
    return summary


def _split_batch(batch: dict[str, np.ndarray], dims: dict[str, int]) -> tuple[list[dict], list[dict]]:
    feats, errs = [], []
    n = len(batch["clip_id"])
    for i in range(n):
        r = {k: v[i] for k, v in batch.items()}
        if str(r["err_stage"]):
            errs.append({"clip_id": str(r["clip_id"]), "video_uri": str(r["video_uri"]),
                         "stage": str(r["err_stage"]), "error": str(r["err"])})
            continue
        try:
            feats.append(feature_row(r, dims))
        except Exception as e:  # a malformed vector: still an errors row, never a silent drop
            errs.append({"clip_id": str(r["clip_id"]), "video_uri": str(r["video_uri"]),
                         "stage": "assemble", "error": error_text(e)})
    return feats, errs


def _check_existing_meta(out_uri: str, meta: FeatureMeta, cfg: StorageConfig) -> None:
    uri = storage.join(out_uri, META_FILE)
    if not storage.exists(uri, cfg):
        return
    old = FeatureMeta.from_json(storage.read_text(uri, cfg))
    mine = {k: (b.name, b.dim) for k, b in meta.backbones.items()}
    theirs = {k: (b.name, b.dim) for k, b in old.backbones.items()}
    if old.corpus != meta.corpus or mine != theirs:
        raise ExtractError(
            f"{out_uri} already holds features of corpus {old.corpus!r} made with {theirs}; this run "
            f"would use {meta.corpus!r} with {mine}. Use another --out (or delete that one)."
        )

