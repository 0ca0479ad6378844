"""Feature extraction on Ray Data: manifest → clip bytes → decode → frozen backbones → Parquet.

Stages (streaming, so memory does not grow with the corpus):

1. The driver loads the manifest and each backbone once (a bad spec fails here, before anything is
   written), then takes the output's lock (:func:`conclugen.locks.output_lock`: a second run into
   the same output stops with an error naming this one). It writes the loader's problems (missing
   files, unknown labels) to ``errors/`` and drops clips already written under the output
   (features *or* errors: a re-run after an interruption processes only the rest; an errored clip
   is not retried — delete its errors shard to retry it).
2. ``read+decode`` CPU tasks (``map_batches``, ``decode_batch_size`` clips):
   :mod:`conclugen.features.decode_stage`, bytes through :mod:`conclugen.storage` with
   ``s3_read_retries`` retries, then :func:`conclugen.data.media.decode_clip`.
3. Backbone actors (:mod:`conclugen.features.backbone_stage`; image → video3d → [asr] → audio →
   text): by default (``extract.backbone_stages = "fused"``) one actor pool whose actors hold every
   backbone; ``"separate"``: one actor pool per backbone. ``backbone_actors`` actors per pool,
   ``backbone_batch_size`` clips per batch, ``num_gpus`` when the cluster has GPUs. Each backbone
   consumes and drops its input column, so blocks shrink as they go.
4. The driver iterates the result and writes one Parquet shard per ``shard_rows`` rows to
   ``features/`` and ``errors/`` as it goes (:class:`conclugen.features.store.ShardWriter`).

A failure at any stage turns that clip into an errors row (``stage``, ``"<Type>: message"``);
a batch whose forward pass fails is retried clip by clip so one bad clip does not take its
batch-mates down. At the end every manifest clip is checked to be in exactly one of features
or errors (``ExtractSummary.accounted``); a miss raises :class:`ExtractError`.

Gaps (documented decision, see docs/method.md, Backbones and features): a clip **without an audio
track** keeps its row, with a zero audio vector and ``"audio"`` in ``gaps``; a clip **without
transcript** gets ASR text when an ASR backbone is configured, else (``offline:none``, or no
audio to transcribe) a zero text vector and ``"text"`` in ``gaps``. No video stream / no
decodable frame is an error (MediaError), as the video modality is what the method is about.

Augmented versions (``extract.augmentations`` = N > 0, docs/method.md, Backbones and features,
Augmentation): each clip is decoded once; the backbone actors build its N augmented copies and
embed them with the plain input; the row gets the ``<modality>_aug`` columns (N·dim floats) and
meta.json ``augmentations`` = N and ``augmentation`` (per modality, what was done). A store is
extended only with the same N (resume), never mixed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conclugen import storage
from conclugen.config import Config, StorageConfig
from conclugen.errors import ConCluGenError
from conclugen.features.augment_stage import augmentation_notes
from conclugen.features.backbone_stage import (
    BackboneStage,
    backbone_infos,
    gpus_per_actor,
    modality_dims,
    stage_groups,
)
from conclugen.features.backbones.registry import input_form
from conclugen.features.decode_stage import DECODE_TASK_MEMORY, decode_batch
from conclugen.features.rows import split_batch
from conclugen.features.store import (
    ERROR_SCHEMA,
    ERRORS_DIR,
    FEATURE_SCHEMA,
    FEATURES_DIR,
    META_FILE,
    FeatureMeta,
    ShardWriter,
    feature_schema,
    written_ids,
)
from conclugen.features.summary import ExtractSummary, error_reason
from conclugen.locks import output_lock
from conclugen.runtime import require_ray

log = logging.getLogger(__name__)


class ExtractError(ConCluGenError, RuntimeError):
    """Extraction cannot start (bad output, other backbones already there) or lost a clip."""


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


def build_dataset(rows: list[dict[str, Any]], cfg: Config, storage_cfg: StorageConfig) -> Any:
    """The Ray Data plan (lazy) over manifest rows: decode tasks, then the backbone actor pool(s)."""
    import ray

    ecfg = cfg.extract
    items = [{"row": json.dumps(r)} for r in rows]
    n_blocks = max(1, math.ceil(len(items) / ecfg.decode_batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(decode_batch, fn_kwargs={"cfg_json": cfg.model_dump_json(), "storage_cfg": storage_cfg},
                        batch_size=ecfg.decode_batch_size, batch_format="numpy", num_cpus=1,
                        compute=ray.data.TaskPoolStrategy(size=ecfg.decode_tasks or None),
                        # the memory reservation also makes the remote args differ from the actors',
                        # which keeps Ray Data from fusing decode into the first backbone actor (that
                        # would serialise decoding behind the forward passes)
                        memory=DECODE_TASK_MEMORY)
    groups = stage_groups(ecfg)
    gpus = gpus_per_actor(ecfg, len(groups))
    specs = {k: getattr(ecfg.backbones, k) for group in groups for k in group}
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


@dataclass
class _Tally:
    """Rows written by this run, and why clips failed."""

    features: int = 0
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    gaps: Counter[str] = field(default_factory=Counter)

    def add(self, feats: list[dict[str, Any]], errs: list[dict[str, Any]]) -> None:
        self.features += len(feats)
        self.errors += len(errs)
        self.reasons.update(error_reason(e["stage"], e["error"]) for e in errs)
        self.gaps.update(g for f in feats for g in f["gaps"])


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
    (see the module docstring). Needs Ray started by the caller when there are clips to process
    (the CLI does). ``manifest`` (a :class:`conclugen.data.corpora.Manifest`) replaces loading
    one from ``corpus_root``."""
    from conclugen.data.corpora import load_manifest

    cfg = cfg or Config()
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    if manifest is None:
        manifest = load_manifest(corpus, corpus_root, cfg)
    infos = backbone_infos(cfg.extract, resolved_storage(cfg.storage))
    n_aug = cfg.extract.augmentations
    audio_spec = cfg.extract.backbones.audio
    # the loader's name wins (a synthetic corpus in MELD's layout is "synthetic": the probe then
    # weights classes from the data, not with MELD's reference weights)
    meta = FeatureMeta(corpus=manifest.corpus or corpus, dims=modality_dims(infos),
                       label_space=list(manifest.label_space), multilabel=bool(manifest.multilabel),
                       backbones=infos, augmentations=n_aug,
                       augmentation=augmentation_notes(n_aug, audio_spec, input_form("audio", audio_spec)
                                                       if infos["audio"].dim else ""))
    with output_lock(out_uri, "extract", cfg.storage):
        summary = _extract_into(out_uri, manifest, meta, cfg, shard_rows, say)
    log.info("extract finished in %.1f s", time.perf_counter() - t0)
    return summary


def _extract_into(out_uri: str, manifest: Any, meta: FeatureMeta, cfg: Config, shard_rows: int,
                  say: Callable[[str], None]) -> ExtractSummary:
    """The locked part of :func:`run_extract`: meta, resume scan, pipeline, final accounting
    (raises :class:`ExtractError` when a manifest clip is in neither features nor errors, or both)."""
    scfg = cfg.storage
    check_existing_meta(out_uri, meta, scfg)
    storage.makedirs(out_uri, scfg)
    storage.write_text(storage.join(out_uri, META_FILE), meta.to_json(), scfg)

    done_f, done_e = written_ids(out_uri, scfg)
    done = done_f | done_e
    rows, problems, manifest_ids = _todo(manifest, done)
    n_aug = meta.augmentations
    schema = feature_schema(augmentations=n_aug) if n_aug else FEATURE_SCHEMA
    writer = ShardWriter(out_uri, scfg, tag=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
                         schema=schema)
    tally = _Tally()
    if problems:
        errs = [{k: p[k] for k in ERROR_SCHEMA.names} for p in problems]
        writer.write(ERRORS_DIR, errs)
        tally.add([], errs)
    say(f"extract: {len(manifest_ids)} manifest clips, {len(manifest_ids & done)} already written, "
        f"{len(rows)} to process, {len(problems)} manifest problems")

    t_run = time.perf_counter()
    first: tuple[float, int] | None = None
    completions: list[tuple[float, int]] = []
    if rows:
        require_ray("extract")
        dims = {k: meta.backbones[k].dim for k in ("image", "video3d", "audio", "text")}
        first = _stream(build_dataset(rows, cfg, resolved_storage(scfg)), writer, tally, dims, shard_rows,
                        cfg.extract.backbone_batch_size, n_aug, completions)
    seconds = time.perf_counter() - t_run if rows else 0.0

    all_f, all_e = written_ids(out_uri, scfg)
    missing = sorted(manifest_ids - (all_f | all_e))
    both = sorted(all_f & all_e)
    summary = ExtractSummary(
        out_uri=out_uri, corpus=meta.corpus, manifest_clips=len(manifest_ids), skipped=len(manifest_ids & done),
        processed=len(rows), features=tally.features, errors=tally.errors, errors_by_reason=dict(tally.reasons),
        seconds=seconds, total_features=len(all_f & manifest_ids), total_errors=len(all_e & manifest_ids),
        accounted=not missing and not both, unaccounted=missing + both, gaps=dict(tally.gaps),
        augmentations=n_aug, completions=completions,
    )
    if first is not None:
        summary.first_output_s, summary.first_output_rows = first
    say(summary.describe())
    if not summary.accounted:
        raise ExtractError(f"{len(missing)} manifest clips are in neither features nor errors, "
                           f"{len(both)} in both (first: {(missing + both)[:5]})")
    return summary


def _todo(manifest: Any, done: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """(manifest rows to process, loader problems to record, every manifest clip_id): duplicate
    clip_ids and clips already written are left out."""
    rows, seen, dup = [], set(), 0
    for r in manifest.rows:
        if r["clip_id"] in seen:
            dup += 1
            continue
        seen.add(r["clip_id"])
        if r["clip_id"] not in done:
            rows.append(r)
    if dup:
        log.warning("%d duplicate clip_id rows in the manifest were ignored", dup)
    problems = [p for p in manifest.problems if p["clip_id"] not in done and p["clip_id"] not in seen]
    return rows, problems, seen | {p["clip_id"] for p in manifest.problems}


def _stream(ds: Any, writer: ShardWriter, tally: _Tally, dims: dict[str, int], shard_rows: int,
            batch_size: int, augmentations: int = 0,
            completions: list[tuple[float, int]] | None = None) -> tuple[float, int] | None:
    """Pull rows as the backbone stage emits them (small batches: the driver holds at most one
    shard of vectors) and write a shard every ``shard_rows`` rows. Returns (seconds, rows) to the
    first output batch, None when there was none."""
    t_run = time.perf_counter()
    first: tuple[float, int] | None = None
    pending: dict[str, list[dict]] = {FEATURES_DIR: [], ERRORS_DIR: []}
    before = tally.features + tally.errors  # the manifest's problems, written before the pipeline

    def flush(kind: str, size: int) -> None:
        while pending[kind] and len(pending[kind]) >= size:
            writer.write(kind, pending[kind][:shard_rows])
            pending[kind] = pending[kind][shard_rows:]

    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1):
        if first is None:
            first = (time.perf_counter() - t_run, len(batch["clip_id"]))
        feats, errs = split_batch(batch, dims, augmentations)
        pending[FEATURES_DIR] += feats
        pending[ERRORS_DIR] += errs
        tally.add(feats, errs)
        if completions is not None:
            completions.append((time.perf_counter() - t_run, tally.features + tally.errors - before))
        flush(FEATURES_DIR, shard_rows)
        flush(ERRORS_DIR, shard_rows)
    flush(FEATURES_DIR, 1)
    flush(ERRORS_DIR, 1)
    return first


def check_existing_meta(out_uri: str, meta: FeatureMeta, cfg: StorageConfig) -> None:
    """Refuse to mix: an output that already holds another corpus, other backbones or another
    number of augmented versions."""
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
    if old.augmentations != meta.augmentations:
        raise ExtractError(
            f"{out_uri} already holds features with {old.augmentations} augmented versions per clip; this "
            f"run would write {meta.augmentations} (extract.augmentations). Use another --out (or delete that one)."
        )
