"""Feature extraction on Ray Data: manifest → clip bytes → decode → frozen backbones → Parquet,
with no vector passing through the driver.

Stages (streaming, so memory does not grow with the corpus):

1. The driver loads the manifest and each backbone once (a bad spec fails here, before anything is
   written), then takes the output's lock (:func:`conclugen.locks.output_lock`: a second run into
   the same output stops with an error naming this one). It finishes or rolls back an interrupted
   ``conclugen compact`` (:func:`conclugen.features.compact.recover`), writes the loader's problems
   (missing files, unknown labels) to ``errors/`` and drops clips already written under the output
   (features *or* errors: a re-run after an interruption processes only the rest; an errored clip
   is not retried — delete its errors shard to retry it). The clips to do become one Arrow table,
   written to ``<out>/manifest/<run tag>.parquet`` (:mod:`conclugen.features.manifest_store`) and
   read back as a Ray Dataset, one read task per ``extract.task_clips`` clips.
2. ``read+decode`` CPU tasks (``map_batches``, ``decode_batch_size`` clips per batch):
   :mod:`conclugen.features.decode_stage`, bytes through :mod:`conclugen.storage` with
   ``s3_read_retries`` retries, then :func:`conclugen.data.media.decode_clip`.
3. Backbone actors (:mod:`conclugen.features.backbone_stage`; image → video3d → [asr] → audio →
   text): by default (``extract.backbone_stages = "fused"``) one actor pool whose actors hold every
   backbone; ``"separate"``: one actor pool per backbone. ``backbone_actors`` actors per pool,
   ``backbone_batch_size`` clips per batch, ``num_gpus`` when the cluster has GPUs. Each backbone
   consumes and drops its input column, so blocks shrink as they go. The last stage reports each
   finished batch to the progress counter (:mod:`conclugen.features.progress`).
4. Write tasks (:mod:`conclugen.features.sink`, ``ds.write_datasink``) write ``features/`` and
   ``errors/`` shards of about ``extract.shard_mb`` MB of vectors (at most ``shard_rows`` rows when
   given), named by a hash of their clip_ids, and return small tallies the driver sums.

Fault tolerance: decode and write tasks are retried when their worker or node is lost
(``max_retries=-1``), backbone actors restarted (``max_restarts=-1``, ``max_task_retries=-1``).
These are Ray Data 2.60's own defaults (``ray/data/_internal/remote_fn.py`` for tasks,
``ActorPoolMapOperator._apply_default_remote_args`` for actors), so they are not passed again:
extra remote args to ``map_batches`` are deprecated (removed in Ray 2.64). A retry writes the same rows under the same names; a clip that still lands twice (a retry that
regrouped rows, a run killed between a write and its retry) is removed by the final duplicate
check (:func:`conclugen.features.compact.dedupe_store`, logged). Rows in flight when a run is
killed are redone by the next run (at most a shard's worth per write task).

A failure at any stage turns that clip into an errors row (``stage``, ``"<Type>: message"``);
a batch whose forward pass fails is retried clip by clip so one bad clip does not take its
batch-mates down. At the end every manifest clip is checked to be in exactly one row of features
or errors (``ExtractSummary.accounted``; Arrow over the clip_id columns, cheap at 1M clips); a
miss raises :class:`ExtractError`.

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

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

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
from conclugen.features.compact import dedupe_store, recover
from conclugen.features.decode_stage import DECODE_TASK_MEMORY, decode_batch, decode_concurrency
from conclugen.features.manifest_store import (
    clear_manifests,
    manifest_dataset,
    rows_dataset,
    task_clips,
    todo_table,
    write_manifest,
)
from conclugen.features.sink import Tally, feature_sink, rows_per_shard
from conclugen.features.store import (
    ERROR_SCHEMA,
    ERRORS_DIR,
    FEATURE_SCHEMA,
    META_FILE,
    FeatureMeta,
    ShardWriter,
    feature_schema,
    written_id_arrays,
)
from conclugen.features.summary import ExtractSummary, accounting
from conclugen.locks import output_lock
from conclugen.runtime import cluster_is_this_machine, machine_cores, require_ray

log = logging.getLogger(__name__)


class ExtractError(ConCluGenError, RuntimeError):
    """Extraction cannot start (bad output, other backbones already there) or lost a clip."""


def resolved_storage(cfg: StorageConfig) -> StorageConfig:
    """The storage section with the endpoint and credentials resolved on the driver, so Ray
    workers (whose environment was fixed when Ray started) reach the same S3 as the driver; the
    retry policy travels with it."""
    s = storage.s3_settings(cfg)
    return StorageConfig(**{**cfg.model_dump(), "s3_endpoint": s.endpoint, "s3_region": s.region,
                            "access_key_id": s.access_key, "secret_access_key": s.secret_key,
                            "session_token": s.session_token})


def build_dataset(source: Any, cfg: Config, storage_cfg: StorageConfig, progress: Any = None) -> Any:
    """The Ray Data plan (lazy): decode tasks, then the backbone actor pool(s). ``source``: a Ray
    Dataset of manifest rows (:func:`conclugen.features.manifest_store.manifest_dataset`) or a
    list of manifest rows (``conclugen predict``). ``progress``: a progress handle the last
    backbone stage reports finished rows to."""
    import ray

    ecfg = cfg.extract
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if isinstance(source, list):
        source = rows_dataset(source, task_clips(len(source), ecfg, cpus))
    decoders = decode_concurrency(ecfg.decode_tasks, cpus, cluster_is_this_machine(), machine_cores())
    ds = source.map_batches(decode_batch, fn_kwargs={"cfg_json": cfg.model_dump_json(), "storage_cfg": storage_cfg},
                            batch_size=ecfg.decode_batch_size, batch_format="pyarrow", num_cpus=1,
                            compute=ray.data.TaskPoolStrategy(size=decoders),
                            # the memory reservation also makes the remote args differ from the actors',
                            # which keeps Ray Data from fusing decode into the first backbone actor (that
                            # would serialise decoding behind the forward passes)
                            memory=DECODE_TASK_MEMORY)
    groups = stage_groups(ecfg)
    gpus = gpus_per_actor(ecfg, len(groups))
    specs = {k: getattr(ecfg.backbones, k) for group in groups for k in group}
    for n, group in enumerate(groups):
        ds = ds.map_batches(
            BackboneStage,
            fn_constructor_kwargs={"kinds": group, "specs": specs, "extract_json": ecfg.model_dump_json(),
                                   "storage_cfg": storage_cfg, "device": "cuda" if gpus > 0 else "cpu",
                                   "threads": ecfg.backbone_threads,
                                   "progress": progress if n == len(groups) - 1 else None},
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
    shard_rows: int | None = None,
    progress: Callable[[str], None] | None = print,
    manifest: Any = None,
) -> ExtractSummary:
    """Extract features for every clip of ``corpus`` under ``corpus_root`` into ``out_uri``
    (see the module docstring). Needs Ray started by the caller when there are clips to process
    (the CLI does). ``manifest`` (a :class:`conclugen.data.corpora.Manifest`) replaces loading
    one from ``corpus_root``. ``shard_rows``: at most this many rows per shard (None: shards are
    cut by ``extract.shard_mb`` only)."""
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


def _extract_into(out_uri: str, manifest: Any, meta: FeatureMeta, cfg: Config, shard_rows: int | None,
                  say: Callable[[str], None]) -> ExtractSummary:
    """The locked part of :func:`run_extract`: meta, resume scan, pipeline, duplicate check, final
    accounting (raises :class:`ExtractError` when a manifest clip is in neither features nor
    errors, or in more than one row)."""
    scfg = cfg.storage
    check_existing_meta(out_uri, meta, scfg)
    storage.makedirs(out_uri, scfg)
    storage.write_text(storage.join(out_uri, META_FILE), meta.to_json(), scfg)
    recover(out_uri, scfg)  # an interrupted `conclugen compact`: finished or rolled back first
    clear_manifests(out_uri, scfg)  # a killed run's leftovers

    done = pa.concat_arrays(list(written_id_arrays(out_uri, scfg)))
    todo, problems, manifest_ids = todo_table(manifest, done)
    skipped = int(pc.sum(pc.is_in(manifest_ids, value_set=done)).as_py() or 0)
    tag = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    tally = Tally()
    if problems:
        errs = [{k: p[k] for k in ERROR_SCHEMA.names} for p in problems]
        ShardWriter(out_uri, scfg, tag=tag).write(ERRORS_DIR, errs)
        tally.add_rows([], errs)
    say(f"extract: {len(manifest_ids)} manifest clips, {skipped} already written, "
        f"{todo.num_rows} to process, {len(problems)} manifest problems")

    t_run = time.perf_counter()
    completions: list[tuple[float, int]] = []
    if todo.num_rows:
        require_ray("extract")
        written, completions = _run_pipeline(out_uri, todo, meta, cfg, shard_rows, tag, say)
        tally.merge(written)
    seconds = time.perf_counter() - t_run if todo.num_rows else 0.0
    removed = dedupe_store(out_uri, scfg)
    clear_manifests(out_uri, scfg)

    all_f, all_e = written_id_arrays(out_uri, scfg)
    missing, repeated = accounting(manifest_ids, all_f, all_e)
    in_manifest = lambda ids: int(pc.sum(pc.is_in(ids, value_set=manifest_ids)).as_py() or 0)  # noqa: E731
    summary = ExtractSummary(
        out_uri=out_uri, corpus=meta.corpus, manifest_clips=len(manifest_ids), skipped=skipped,
        processed=todo.num_rows, features=tally.features, errors=tally.errors, errors_by_reason=dict(tally.reasons),
        seconds=seconds, total_features=in_manifest(all_f), total_errors=in_manifest(all_e),
        accounted=not missing and not repeated, unaccounted=missing + repeated, gaps=dict(tally.gaps),
        augmentations=meta.augmentations, completions=completions, duplicates_removed=sum(removed.values()),
    )
    if completions:
        summary.first_output_s, summary.first_output_rows = completions[0]
    say(summary.describe())
    if not summary.accounted:
        raise ExtractError(f"{len(missing)} manifest clips are in neither features nor errors, "
                           f"{len(repeated)} in more than one row (first: {(missing + repeated)[:5]})")
    return summary


def _run_pipeline(out_uri: str, todo: pa.Table, meta: FeatureMeta, cfg: Config, shard_rows: int | None,
                  tag: str, say: Callable[[str], None]) -> tuple[Tally, list[tuple[float, int]]]:
    """Manifest file → Ray Data plan → write tasks; returns the write tasks' summed tally and the
    progress completions. The driver only plans and sums: rows and vectors stay in the cluster."""
    import ray

    from conclugen.features.progress import quiet_ray_data, start_progress

    ecfg, wcfg = cfg.extract, resolved_storage(cfg.storage)
    per_task = task_clips(todo.num_rows, ecfg, float(ray.cluster_resources().get("CPU", 1.0)))
    uri = write_manifest(out_uri, todo, tag, per_task, cfg.storage)
    dims = {k: meta.backbones[k].dim for k in ("image", "video3d", "audio", "text")}
    n_aug = meta.augmentations
    schema = feature_schema(augmentations=n_aug) if n_aug else FEATURE_SCHEMA
    sink = feature_sink(out_uri, wcfg, schema, dims, n_aug, rows_per_shard(dims, n_aug, ecfg.shard_mb, shard_rows))
    handle = start_progress(todo.num_rows, say)
    try:
        ds = build_dataset(manifest_dataset(uri, wcfg), cfg, wcfg, progress=handle)
        quiet_ray_data(ds.context)  # the progress handle reports instead
        ds.write_datasink(sink)
    except Exception as e:
        outage = _storage_outage(e)
        if outage is None:
            raise
        raise ExtractError(f"{outage} — the shards written so far are kept: run the same command again once the "
                           "storage is back, it processes only the rest") from e
    finally:
        completions = handle.stop()
    return sink.tally, completions


def _storage_outage(e: BaseException) -> str | None:
    """The message of the :class:`conclugen.storage.StorageUnavailableError` behind a failed
    pipeline (Ray wraps a task's exception; its text survives the wrapping), else None."""
    seen: BaseException | None = e
    while seen is not None:
        inner = getattr(seen, "cause", None)  # a RayTaskError's own exception (its str is Ray's traceback)
        if isinstance(inner, storage.StorageUnavailableError):
            return str(inner)
        if isinstance(seen, storage.StorageUnavailableError) and not hasattr(seen, "cause"):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    marker = "StorageUnavailableError: "
    lines = [line for line in str(e).splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1].strip() if lines else None


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
