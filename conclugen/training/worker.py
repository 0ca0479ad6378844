"""The Ray Train loop that runs on every worker (see docs/method.md, Pretraining).

One epoch = ``n_train // global_batch`` steps of equal local batches on every rank (see
:mod:`conclugen.training.data`), then validation; contrastive loss with all-gathered negatives,
k-means per step on the gathered batch plus queue, reconstruction; AdamW with the warm-up +
decayed cosine-restart schedule (:mod:`conclugen.training.step`). Every rank reports its metrics
each epoch and rank 0 a checkpoint with them (Ray Train resumes a restarted worker group from the
last one); MLflow metrics come from world rank 0 only. Every rank records which process trained
which epoch in the run folder (:func:`conclugen.training.run_folder.write_worker_record`).

A non-finite loss stops every rank at the same step: the loop returns normally (Ray Train must
not retry a deterministic failure) after rank 0 wrote ``error.json``, which the driver raises.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conclugen import tracking
from conclugen.config import Config
from conclugen.model.distributed import all_reduce_sum
from conclugen.training.data import BatchPlan, Versions, WorkerBatches
from conclugen.training.errors import NonFiniteLossError
from conclugen.training.run_folder import (
    CHECKPOINT_FILE,
    RunFs,
    save_checkpoint_dir,
    upload_checkpoint,
    write_worker_error,
    write_worker_record,
)
from conclugen.training.schedule import lr_for
from conclugen.training.step import Stepper, seed_all

if TYPE_CHECKING:
    import ray.train


@dataclass
class WorkerConfig:
    """What every worker needs, built by the driver (:func:`conclugen.training.driver.fit`)."""

    config: dict[str, Any]  # Config.public_dict(): no secrets travel to the workers
    input_dims: dict[str, int]
    meta: dict[str, Any]  # the feature store's meta.json, saved in each checkpoint
    n_train: int
    n_val: int
    global_batch: int  # train.batch_size rounded down to a multiple of the workers
    val_batch: int  # 0 without a val split
    use_gpu: bool
    run_fs: RunFs  # RUN_URI through the driver's filesystem (workers may lack its credentials)
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    cache_shards: bool = False  # materialised datasets: each worker keeps its shard in memory
    # modality → (mean, std) per dimension for model.input_norm=standardize (None: identity)
    input_stats: dict[str, tuple[Any, Any]] | None = None


@dataclass
class Progress:
    """Where the run stands between epochs (early stopping on the val loss); checkpointed."""

    start_epoch: int = 0
    best: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> Progress:
        if payload is None:
            return cls()
        return cls(int(payload["epoch"]) + 1, float(payload.get("best", math.inf)),
                   int(payload.get("bad_epochs", 0)), bool(payload.get("stopped_early", False)))

    def update(self, val_loss: float, patience: int) -> None:
        """After an epoch's validation (the same value on every rank after the all-reduce)."""
        if val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        self.stopped_early = self.bad_epochs >= patience


def train_loop_per_worker(wc: WorkerConfig) -> None:
    """The loop of one Ray Train worker (see the module docstring)."""
    import ray.train

    cfg = Config.model_validate(wc.config)
    ctx = ray.train.get_context()
    rank, ws = ctx.get_world_rank(), ctx.get_world_size()
    payload = _checkpoint_payload(ray.train.get_checkpoint())
    progress = Progress.from_payload(payload)
    if payload is not None and rank == 0:
        print(f"[pretrain] resuming from epoch {payload['epoch']} checkpoint", flush=True)
    if progress.stopped_early or progress.start_epoch >= cfg.train.epochs:
        if rank == 0:
            print(f"[pretrain] nothing to do: {progress.start_epoch} epochs done"
                  + (" (stopped early)" if progress.stopped_early else ""), flush=True)
        return
    stepper = _stepper(wc, cfg, ws, payload)
    plan = BatchPlan.for_world(wc.n_train, wc.n_val, wc.global_batch, wc.val_batch, ws)
    # Augmented versions (meta.json "augmentations"): drawn per row, modality and epoch from the seed.
    versions = Versions(int(wc.meta.get("augmentations", 0)), cfg.train.seed, stepper.second_views)
    batches = WorkerBatches(
        ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val") if plan.has_val else None,
        plan, stepper.modalities, stepper.device, seed=cfg.train.seed, rank=rank, cache=wc.cache_shards,
        versions=versions,
        keys=stepper.bank is not None,  # memory_bank: batches carry the rows' clip keys
        epochs=cfg.train.epochs,
    )
    for epoch in range(progress.start_epoch, cfg.train.epochs):
        try:
            metrics = _epoch(stepper, batches, epoch, progress, wc.run_fs, rank)
        except NonFiniteLossError as e:
            if rank == 0:
                write_worker_error(wc.run_fs, str(e), e.epoch, e.step)
                print(f"[pretrain] {e}", flush=True)
            return
        if rank == 0:
            _log_epoch(wc, cfg, metrics, stepper.names, progress.stopped_early)
        _report(wc, stepper, progress, metrics, rank)
        if progress.stopped_early:
            break


def _checkpoint_payload(ckpt: ray.train.Checkpoint | None) -> dict[str, Any] | None:
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _stepper(wc: WorkerConfig, cfg: Config, ws: int, payload: dict[str, Any] | None) -> Stepper:
    """The step object on this worker's device, DDP-wrapped when needed, restored on resume."""
    import ray.train.torch

    device = ray.train.torch.get_device() if wc.use_gpu else torch.device("cpu")
    if not wc.use_gpu:
        # Exactly the CPUs this worker was given: more threads than cores only adds contention.
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    seed_all(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    # SyncBatchNorm on GPUs only; CPU keeps per-worker BatchNorm (see model.heads.to_sync_batchnorm).
    stepper = Stepper(cfg, wc.input_dims, device=device, distributed=ws > 1, sync_batchnorm=cfg.model.sync_batchnorm,
                      input_stats=wc.input_stats)
    if ws > 1 or wc.use_gpu:
        kwargs = {"find_unused_parameters": stepper.find_unused()}
        stepper.wrap(lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs=kwargs))
    if payload is not None:
        stepper.load_state_dict(payload)
    return stepper


def _epoch(stepper: Stepper, batches: WorkerBatches, epoch: int, progress: Progress, run_fs: RunFs,
           rank: int) -> dict[str, Any]:
    """Train one epoch, then validate; the epoch's metrics (``progress`` updated)."""
    T, plan = stepper.cfg.train, batches.plan
    lr = stepper.lr

    def record() -> None:  # once the first step ran: this process is training this epoch
        write_worker_record(run_fs, rank, epoch, progress.start_epoch)

    t0, c0 = time.perf_counter(), time.process_time()
    if stepper.needs_bank_fill(epoch):  # memory_bank: first clustering epoch, or a resumed run
        stepper.fill_bank(batches.train(epoch))
    train = stepper.run_epoch(batches.train(epoch), epoch, train=True, after_first_step=record)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    samples = plan.steps * plan.local_batch * stepper.world_size
    metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, **train,
                               "samples_per_s": samples / max(train_s, 1e-9), "epoch_s": train_s}
    # CPU seconds of all ranks: throughput per CPU-second does not depend on how much of the
    # machine other processes take (the benchmark compares loops on a shared machine).
    cpu_total = float(all_reduce_sum(torch.tensor([cpu_s], dtype=torch.float64, device=stepper.device)).item())
    metrics["samples_per_cpu_s"] = samples / max(cpu_total, 1e-9)
    metrics.update(stepper.cluster_stats())
    if plan.has_val:
        val = stepper.run_epoch(batches.val(), epoch, train=False)
        metrics.update({f"val_{k}": v for k, v in val.items()})
        progress.update(metrics["val_loss"], T.patience)
    metrics["score"] = metrics["val_loss"] if plan.has_val else metrics["loss"]
    metrics["next_lr"] = lr_for(epoch + 1, T)
    return metrics


def _log_epoch(wc: WorkerConfig, cfg: Config, metrics: dict[str, Any], names: list[str], stopped_early: bool) -> None:
    """Rank 0: the epoch's metrics to MLflow (a tracking hiccup must not kill the training) and
    one progress line."""
    if wc.tracking_uri and wc.mlflow_run_id:
        try:
            tracking.log_metrics(wc.tracking_uri, wc.mlflow_run_id,
                                 {k: v for k, v in metrics.items() if k not in ("epoch", "next_lr", "score")},
                                 step=metrics["epoch"])
        except Exception as e:  # noqa: BLE001
            print(f"[pretrain] warning: MLflow logging failed: {type(e).__name__}: {e}", flush=True)
    line = f"[pretrain] epoch {metrics['epoch'] + 1}/{cfg.train.epochs} loss {metrics['loss']:.4f}"
    if "val_loss" in metrics:
        line += f" val {metrics['val_loss']:.4f}"
    line += " | " + " ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)
    line += f" | lr {metrics['lr']:.2e} | {metrics['samples_per_s']:.0f} samples/s"
    if "cluster_occupancy" in metrics:
        line += f" | clusters {metrics['cluster_occupancy']:.2f} used, H {metrics['cluster_entropy']:.2f}"
    if stopped_early:
        line += f" | early stop (no val improvement for {cfg.train.patience} epochs)"
    print(line, flush=True)


def _report(wc: WorkerConfig, stepper: Stepper, progress: Progress, metrics: dict[str, Any], rank: int) -> None:
    """The epoch's checkpoint, written by rank 0 and reported by every rank (V2 needs all ranks
    to report)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="conclugen-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            epoch = metrics["epoch"]
            info = {"epoch": epoch, "score": metrics["score"], "metrics": metrics,
                    "stopped_early": progress.stopped_early, "mlflow_run_id": wc.mlflow_run_id}
            save_checkpoint_dir(tmp, {
                **stepper.state_dict(), "epoch": epoch, "best": progress.best, "bad_epochs": progress.bad_epochs,
                "stopped_early": progress.stopped_early, "metrics": metrics, "config": wc.config,
                "input_dims": stepper.input_dims, "meta": wc.meta, "mlflow_run_id": wc.mlflow_run_id,
            }, info)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=upload_checkpoint)
