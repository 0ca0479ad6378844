"""Distributed pretraining on Ray Train (V2), driver side: checks, the trainer, the result.

:func:`run_pretrain` checks the feature store against the config before any work (modalities,
dims, split sizes), opens or re-opens the MLflow run, builds the Ray Data datasets
(:func:`conclugen.training.data.build_datasets`) and a ``TorchTrainer`` (:func:`fit`) whose
``RunConfig(name, storage_path)`` is derived from RUN_URI — re-running with the same RUN_URI
therefore resumes from the last checkpoint (V2 has no ``Trainer.restore``) — and finally logs the
best checkpoint as an MLflow pyfunc model. The workers run
:func:`conclugen.training.worker.train_loop_per_worker`; what the run leaves under RUN_URI is
described in :mod:`conclugen.training.run_folder`. A non-finite loss is raised here as
:class:`NonFiniteLossError` naming epoch, step and loss, without Ray Train retrying it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conclugen import storage, tracking
from conclugen.config import Config
from conclugen.features.store import FeatureMeta, FeatureStoreError, check_meta, features_uri, read_meta
from conclugen.locks import output_lock
from conclugen.training.data import TRAIN_SPLITS, VAL_SPLITS, build_datasets, feature_stats, val_batch_size
from conclugen.training.errors import NonFiniteLossError, PretrainError
from conclugen.training.run_folder import (
    CHECKPOINT_FILE,
    best_checkpoint,
    clear_worker_error,
    find_checkpoints,
    ray_storage,
    read_payload,
    read_worker_error,
    state_uri,
)
from conclugen.training.step import SIMCLR_MODALITY
from conclugen.training.worker import WorkerConfig, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_uri: str
    best_checkpoint: str | None  # URI of the checkpoint folder with the best score
    last_checkpoint: str | None
    epochs_done: int  # epochs completed in total (across resumes)
    metrics: dict[str, float] = field(default_factory=dict)  # of the last epoch
    best_metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None  # runs:/<id>/model
    stopped_early: bool = False
    wall_s: float = 0.0

    def describe(self) -> str:
        m = self.metrics
        parts = [f"{self.epochs_done} epochs" + (" (early stop)" if self.stopped_early else "")]
        for k in ("loss", "val_loss"):
            if k in m:
                parts.append(f"{k} {m[k]:.4f}")
        parts.append(f"best {self.best_checkpoint}")
        if self.mlflow_run_id:
            parts.append(f"MLflow run {self.mlflow_run_id}")
        return "pretrain: " + ", ".join(parts) + f" [{self.wall_s:.0f} s]"


# ----------------------------------------------------------------------------- feature checks


def split_counts(features_root: str, cfg: Config) -> dict[str, int]:
    """Rows per split, read from the ``split`` column only."""
    import pyarrow.compute as pc

    from conclugen.features.store import read_table

    table = read_table(features_uri(features_root), cfg.storage, columns=["split"])
    if table.num_rows == 0:
        return {}
    vc = pc.value_counts(table.column("split")).to_pylist()
    return {d["values"]: int(d["counts"]) for d in vc}


def check_features(features_root: str, cfg: Config) -> tuple[FeatureMeta, dict[str, int]]:
    """Meta and split sizes checked against the config; raises a clear error before any work."""
    if cfg.losses.contrastive > 0 and len(cfg.model.modalities) < 2:
        raise PretrainError(
            f"the contrastive loss needs two modalities; model.modalities={cfg.model.modalities} "
            "(set losses.contrastive=0 and losses.clustering=0 for reconstruction only)"
        )
    if cfg.losses.simclr > 0 and SIMCLR_MODALITY not in cfg.model.modalities:
        raise PretrainError(
            f"losses.simclr > 0 contrasts two versions of the {SIMCLR_MODALITY} features; "
            f"model.modalities={cfg.model.modalities} has no {SIMCLR_MODALITY}"
        )
    meta = read_meta(features_root, cfg.storage)
    check_meta(meta, cfg.model.modalities)
    if cfg.losses.simclr > 0 and meta.augmentations < 1:
        raise PretrainError(
            f"losses.simclr > 0 needs augmented versions of each clip, but {features_root} was extracted "
            "without them (meta.json augmentations=0): re-extract with extract.augmentations=N "
            "(N ≥ 2 for two augmented views; the reference uses 10)"
        )
    bad = {m: meta.dims[m] for m in cfg.model.modalities if int(meta.dims[m]) < 1}
    if bad:
        raise FeatureStoreError(f"features have empty vectors for {bad}")
    counts = split_counts(features_root, cfg)
    n_train = sum(counts.get(s, 0) for s in TRAIN_SPLITS)
    workers = max(cfg.train.workers, 1)
    if n_train == 0:
        raise PretrainError(
            f"{features_root} has no rows in splits {'/'.join(TRAIN_SPLITS)} (have {counts or 'none'})"
        )
    if n_train < cfg.train.batch_size:
        raise PretrainError(
            f"the train split has {n_train} rows, fewer than one global batch "
            f"(train.batch_size={cfg.train.batch_size}); lower train.batch_size"
        )
    if cfg.train.batch_size < 2 * workers:
        raise PretrainError(
            f"train.batch_size={cfg.train.batch_size} gives fewer than 2 rows per worker "
            f"({workers} workers); the contrastive loss needs negatives"
        )
    n_val = sum(counts.get(s, 0) for s in VAL_SPLITS)
    if 0 < n_val < 2 * workers:
        raise PretrainError(f"the val split has {n_val} rows: too few for {workers} workers (need ≥ {2 * workers})")
    return meta, counts


# ----------------------------------------------------------------------------- the trainer


def fit(
    datasets: Mapping[str, Any],
    run_uri: str,
    cfg: Config,
    input_dims: Mapping[str, int],
    n_train: int,
    n_val: int = 0,
    meta: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    callbacks: list[Any] | None = None,
    cache_shards: bool | None = None,
) -> Any:
    """Build and run the TorchTrainer on ready Ray datasets; returns Ray's ``Result``.

    The benchmark calls this with in-memory datasets; :func:`run_pretrain` with the feature store.
    ``cache_shards``: None = each worker keeps its shard in memory when every dataset is
    materialised (small), else streams it every epoch.
    """
    import ray
    from ray.data.dataset import MaterializedDataset
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    T = cfg.train
    use_gpu = T.use_gpu if T.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    workers = max(T.workers, 1)
    global_batch = (T.batch_size // workers) * workers
    if cache_shards is None:
        cache_shards = all(isinstance(d, MaterializedDataset) for d in datasets.values())
    wc = WorkerConfig(
        config=cfg.public_dict(), input_dims=dict(input_dims), meta=dict(meta or {}), n_train=int(n_train),
        n_val=int(n_val), global_batch=global_batch,
        val_batch=val_batch_size(n_val, global_batch, workers) if n_val else 0, use_gpu=bool(use_gpu),
        run_fs=storage.resolve(run_uri, cfg.storage), tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id,
        cache_shards=bool(cache_shards),
        input_stats=feature_stats(datasets["train"], cfg.model.modalities)
        if cfg.model.input_norm == "standardize" else None,
    )
    fs, storage_path, name = ray_storage(run_uri, cfg.storage)
    resources = {"CPU": T.cpus_per_worker, **T.worker_resources}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        functools.partial(train_loop_per_worker, wc),  # typed config, not train_loop_config's dict
        scaling_config=ScalingConfig(num_workers=T.workers, use_gpu=bool(use_gpu), resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=T.keep_checkpoints,
                checkpoint_score_attribute="score",
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=T.max_failures),
            callbacks=list(callbacks or []),  # e.g. conclugen.search.trial forwards per-epoch reports to Tune
        ),
        datasets=dict(datasets),
        # The rows a rank gets must not depend on which node holds which block: with locality on,
        # a worker group restarted on other nodes (or a re-run) splits the data differently, and
        # a resumed run no longer trains on what the uninterrupted one would.
        dataset_config=DataConfig(enable_shard_locality=False),
    )
    return trainer.fit()


# ----------------------------------------------------------------------------- the command


def run_pretrain(
    features_uri_: str,
    run_uri: str,
    cfg: Config,
    *,
    run_name: str | None = None,
    log_model: bool = True,
    tags: Mapping[str, str] | None = None,
    callbacks: list[Any] | None = None,
    datasets: Mapping[str, Any] | None = None,
    stream: bool | None = None,
    lock_output: bool = True,
) -> PretrainResult:
    """Pretrain the heads on the features at ``features_uri_``; checkpoints under ``run_uri``.

    Re-running with the same ``run_uri`` continues from its last checkpoint (and the same MLflow
    run). Ray must be initialised by the caller (CLI / job).
    ``tags``: extra tags on a new MLflow run (``mlflow.parentRunId`` nests it, as Tune trials do);
    ``callbacks``: Ray Train ``UserCallback``s for the trainer's RunConfig. ``datasets``: ready
    ``{"train", "val"}`` Ray datasets (as :func:`conclugen.training.data.build_datasets` builds
    them) shared by many runs, instead of reading the store again (Tune trials). ``stream``:
    None = features under a quarter of the object store are materialised and each worker caches
    its shard in memory, larger ones stream through Ray Data every epoch; True/False force
    streaming / caching. ``lock_output``: hold ``run_uri``'s output lock (:mod:`conclugen.locks`) so
    that a second run into the same folder is refused; callers that own a fresh folder per run and
    retry it elsewhere after a lost process (Tune trials, ablation rows, possibly on another host
    where a dead holder cannot be proven dead) pass False.
    """
    t_start = time.perf_counter()
    meta, counts = check_features(features_uri_, cfg)  # before any cluster work
    n_train = sum(counts.get(s, 0) for s in TRAIN_SPLITS)
    n_val = sum(counts.get(s, 0) for s in VAL_SPLITS)
    run_uri = str(run_uri).rstrip("/")
    storage.ensure_bucket(run_uri, cfg.storage)
    input_dims = {m: int(meta.dims[m]) for m in cfg.model.modalities}
    _check_same_model(run_uri, cfg, input_dims)
    lock = output_lock(run_uri, "pretrain", cfg.storage) if lock_output else contextlib.nullcontext()
    with _held(lock, run_uri):  # two runs into one folder would mix their checkpoints
        clear_worker_error(run_uri, cfg.storage)
        result = _tracked_fit(features_uri_, run_uri, cfg, meta, input_dims, n_train, n_val, run_name=run_name,
                              log_model=log_model, tags=tags, callbacks=callbacks, datasets=datasets, stream=stream)
        result.wall_s = time.perf_counter() - t_start
        storage.write_text(state_uri(run_uri, "summary.json"), json.dumps(asdict(result), indent=2, default=str),
                           cfg.storage)
    return result


def _tracked_fit(
    features_uri_: str, run_uri: str, cfg: Config, meta: FeatureMeta, input_dims: dict[str, int], n_train: int,
    n_val: int, *, run_name: str | None, log_model: bool, tags: Mapping[str, str] | None,
    callbacks: list[Any] | None, datasets: Mapping[str, Any] | None, stream: bool | None,
) -> PretrainResult:
    """The training itself, inside the run's MLflow run (reopened on resume)."""
    run_tags = {"conclugen.run_uri": run_uri, "conclugen.features_uri": str(features_uri_),
                "conclugen.command": "pretrain", **dict(tags or {})}
    with tracking.tracked_run(cfg, run_name=run_name or Path(run_uri).name, tags=run_tags,
                              state_uri=state_uri(run_uri, "run.json")) as tracked:
        if not tracked.reopened:
            tracking.log_text(tracked.uri, tracked.run_id, meta.to_json(), "feature_meta.json")
        datasets = dict(datasets) if datasets is not None else build_datasets(features_uri_, cfg, n_val > 0, stream)
        from ray.train import TrainingFailedError

        try:
            fit(
                datasets, run_uri, cfg, input_dims, n_train, n_val,
                meta=json.loads(meta.to_json()), tracking_uri=tracked.uri, mlflow_run_id=tracked.run_id,
                callbacks=callbacks,
            )
        except TrainingFailedError as e:
            raise training_failed(run_uri, cfg, e) from e
        err = read_worker_error(run_uri, cfg.storage)
        if err is not None:
            raise NonFiniteLossError(err["message"] + " — lower train.lr or check the features",
                                     err.get("epoch"), err.get("step"))
        return _result(run_uri, cfg, tracked, input_dims, log_model)


@contextlib.contextmanager
def _held(lock: contextlib.AbstractContextManager[Any], run_uri: str) -> Iterator[None]:
    """``with lock``, except that when the block failed a failing release (the storage may be
    what failed) is only logged: the block's error is the one that says what went wrong."""
    lock.__enter__()
    try:
        yield
    except BaseException as e:
        try:
            lock.__exit__(type(e), e, e.__traceback__)
        except Exception as release_error:  # noqa: BLE001
            log.warning("could not release the output lock of %s: %s", run_uri, release_error)
        raise
    lock.__exit__(None, None, None)


def training_failed(run_uri: str, cfg: Config, error: Exception) -> PretrainError:
    """Ray Train gave up (``train.max_failures`` restarts used): a :class:`PretrainError` that
    says why in one line. When RUN_URI cannot be reached now, that is named as the cause (with the
    S3 endpoint): re-running the same command once it is back resumes from the last checkpoint."""
    cause = _root_cause(error)
    fs, path = storage.resolve(run_uri, cfg.storage)
    try:
        storage.with_retries(lambda: fs.get_file_info(path), f"reading {run_uri}", retries=1, seconds=2.0)
    except (OSError, storage.StorageError) as e:
        where = run_uri
        if storage.is_s3(run_uri):
            where += f" (S3 endpoint {storage.s3_settings(cfg.storage).endpoint or 'the AWS default'})"
        return PretrainError(
            f"pretraining stopped: its run folder {where} cannot be reached ({e}); the last error of the "
            f"workers was: {cause}. Re-run the same command once the storage is back: it resumes from the "
            "last checkpoint")
    return PretrainError(f"pretraining into {run_uri} failed (train.max_failures={cfg.train.max_failures} "
                         f"restarts used): {cause}")


def _root_cause(error: Exception) -> str:
    """The last line of each failed worker's error (Ray prefixes them with its own traceback)."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures and getattr(error, "controller_failure", None) is not None:
        failures = {"controller": error.controller_failure}
    lines = {rank: (str(e).strip().splitlines() or [type(e).__name__])[-1] for rank, e in failures.items()}
    if not lines:
        return (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return "; ".join(f"rank {rank}: {line}" if isinstance(rank, int) else f"{rank}: {line}"
                     for rank, line in sorted(lines.items(), key=lambda kv: str(kv[0])))


def _check_same_model(run_uri: str, cfg: Config, input_dims: Mapping[str, int]) -> None:
    """Resume: the run folder must hold a run of the same model shape (or none)."""
    previous = find_checkpoints(run_uri, cfg.storage)
    if not previous:
        return
    payload = read_payload(previous[-1]["uri"], cfg.storage)
    if payload["input_dims"] != input_dims or payload["config"]["model"] != json.loads(cfg.model.model_dump_json()):
        raise PretrainError(
            f"{run_uri} holds a run with a different model ({payload['input_dims']}, "
            f"{payload['config']['model']}); use another --out or the same settings"
        )


def _result(
    run_uri: str, cfg: Config, tracked: tracking.TrackedRun, input_dims: Mapping[str, int], log_model: bool
) -> PretrainResult:
    """The result read back from the run folder; the best checkpoint logged as the MLflow model."""
    ckpts = find_checkpoints(run_uri, cfg.storage)
    if not ckpts:
        raise PretrainError(f"training ended without a checkpoint under {run_uri}")
    last = ckpts[-1]
    best_uri = best_checkpoint(run_uri, cfg.storage)
    best = next(c for c in ckpts if c["uri"] == best_uri)
    model_uri = None
    if log_model:
        local = tracking.local_copy(storage.join(best_uri, CHECKPOINT_FILE))
        model_uri = tracking.log_representation_model(tracked.uri, tracked.run_id, local, input_dims, cfg.model.d)
        if storage.is_s3(best_uri):
            os.unlink(local)
    tracking.set_tags(tracked.uri, tracked.run_id,
                      {"conclugen.best_checkpoint": best_uri, "conclugen.best_epoch": best["epoch"]})
    return PretrainResult(
        run_uri=run_uri,
        best_checkpoint=best_uri,
        last_checkpoint=last["uri"],
        epochs_done=int(last["epoch"]) + 1,
        metrics={k: v for k, v in last.get("metrics", {}).items() if isinstance(v, int | float)},
        best_metrics={k: v for k, v in best.get("metrics", {}).items() if isinstance(v, int | float)},
        mlflow_run_id=tracked.run_id,
        tracking_uri=tracked.uri,
        model_uri=model_uri,
        stopped_early=bool(last.get("stopped_early", False)),
    )
