"""Distributed pretraining on Ray Train (V2): DDP heads + three losses, checkpoints, resume, MLflow.

Driver side (:func:`run_pretrain`): check the feature store against the config before any work
(modalities, dims, split sizes), open or re-open the MLflow run, build Ray Data datasets
(``train`` = splits train+unlabeled, ``val`` = split val) and a ``TorchTrainer`` whose
``RunConfig(name, storage_path)`` is derived from RUN_URI — re-running with the same RUN_URI
therefore resumes from the last checkpoint (V2 has no ``Trainer.restore``) — and finally log the
best checkpoint as an MLflow pyfunc model.

Worker side (:func:`train_loop_per_worker`): one epoch = ``n_train // global_batch`` steps of
equal local batches on every rank (gloo needs equal sizes: the last partial batch is dropped);
contrastive loss with all-gathered negatives, k-means per step on the gathered batch plus queue,
reconstruction; AdamW with the warm-up + decayed cosine-restart schedule; a checkpoint reported
every epoch from rank 0 (all ranks report metrics); MLflow metrics from world rank 0 only.
A non-finite loss stops every rank at the same step (the loss values are all-reduced each step)
and the driver raises :class:`NonFiniteLossError` naming epoch, step and loss — without Ray
Train retrying a deterministic failure.

Layout under RUN_URI: Ray Train's ``checkpoint_*`` folders (each holding ``checkpoint.pt`` and
``info.json``), ``conclugen/run.json`` (MLflow run id) and ``conclugen/summary.json`` at the end.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import random
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conclugen import storage
from conclugen.config import Config
from conclugen.errors import ConCluGenError
from conclugen.features.store import FeatureMeta, FeatureStoreError, check_meta, features_uri, read_meta
from conclugen.runtime import ensure_ray  # noqa: F401 - re-exported for entry points
from conclugen.training.run_folder import (
    CHECKPOINT_FILE,
    STATE_DIR,
    best_checkpoint,
    find_checkpoints,
    read_payload,
    save_checkpoint_dir,
    state_uri,
)

TRAIN_SPLITS = ("train", "unlabeled")
VAL_SPLITS = ("val",)
LOSS_NAMES = ("contrastive", "clustering", "reconstruction")


class PretrainError(ConCluGenError, RuntimeError):
    """Pretraining cannot start or had to stop; the message says why."""


class NonFiniteLossError(PretrainError):
    """A loss became NaN or infinite."""


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
    meta = read_meta(features_root, cfg.storage)
    check_meta(meta, cfg.model.modalities)
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


def _val_batch(n_val: int, global_batch: int, workers: int) -> int:
    """Validation batch: the training batch, capped by the val split (multiple of workers)."""
    return min(global_batch, (n_val // workers) * workers)


# ----------------------------------------------------------------------------- the step


class Stepper:
    """Model + losses + k-means + optimizer for one process: shared by the Ray Train loop and the
    plain-PyTorch baseline of the benchmark so both do exactly the same work per step."""

    def __init__(
        self,
        cfg: Config,
        input_dims: Mapping[str, int],
        device: torch.device | str = "cpu",
        distributed: bool = False,
    ) -> None:
        from conclugen.model.heads import ConCluGen
        from conclugen.model.kmeans import OnlineKMeans

        self.cfg = cfg
        self.device = torch.device(device)
        self.distributed = distributed
        self.modalities = list(cfg.model.modalities)
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.weights = {
            "contrastive": cfg.losses.contrastive,
            "clustering": cfg.losses.clustering,
            "reconstruction": cfg.losses.reconstruction,
        }
        self.model = ConCluGen.from_config(cfg.model, self.input_dims)
        L = cfg.losses

        def make_kmeans(queue: int) -> OnlineKMeans:
            return OnlineKMeans(
                cfg.model.k, queue_batches=queue, iters=L.kmeans_iters, tol=L.kmeans_tol,
                schedule=L.kmeans_schedule, refit_every=L.kmeans_refit_every, seed=cfg.train.seed,
                distributed=distributed,
            )

        self.kmeans = make_kmeans(L.queue_batches)
        # Validation clusters each batch on its own, so it never touches the training queue.
        self.val_kmeans = make_kmeans(0)
        self.counts = torch.zeros(cfg.model.k, dtype=torch.float64)

    def losses(self, module: torch.nn.Module, feats: Mapping[str, torch.Tensor], epoch: int, train: bool) -> dict[str, torch.Tensor]:
        from conclugen.model.losses import clustering, mms_contrastive, reconstruction

        L = self.cfg.losses
        out = module(feats)
        losses: dict[str, torch.Tensor] = {}
        if self.weights["contrastive"] > 0:
            losses["contrastive"] = mms_contrastive(out.projections, margin=L.margin, gather=self.distributed)
        if self.weights["clustering"] > 0 and epoch >= L.kmeans_start_epoch:
            fused = torch.stack([out.cluster_logits[m] for m in self.modalities]).mean(0).detach()
            # k-means on NaN/inf input fails obscurely (or hangs a collective): every rank learns
            # whether any rank has a non-finite vector and all skip together; the NaN loss is then
            # reported by the guard with epoch and step.
            from conclugen.model.distributed import all_reduce_sum

            bad = all_reduce_sum((~torch.isfinite(fused).all()).to(torch.float32).reshape(1))
            if float(bad.item()) > 0:
                losses["clustering"] = fused.new_tensor(float("nan"))
                if self.weights["reconstruction"] > 0:
                    losses["reconstruction"] = reconstruction(out.reconstructions, feats)
                return losses
            km = self.kmeans if train else self.val_kmeans
            if not train:
                km.reset()
            centroids, assignments = km(fused)
            losses["clustering"] = clustering(
                out.cluster_logits, centroids.to(fused.dtype), assignments, mode=L.mode, margin=L.cluster_margin
            )
            if train:
                self.counts += torch.bincount(assignments.long().cpu(), minlength=self.cfg.model.k).double()
        if self.weights["reconstruction"] > 0:
            losses["reconstruction"] = reconstruction(out.reconstructions, feats)
        return losses

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from conclugen.model.losses import combine

        return combine(losses, self.weights)

    def find_unused(self) -> bool:
        """DDP must tolerate parameters without gradient when a head's loss is (sometimes) off."""
        return min(self.weights.values()) == 0 or self.cfg.losses.kmeans_start_epoch > 0


def cluster_stats(counts: torch.Tensor) -> dict[str, float]:
    """Occupancy (share of clusters used) and normalised entropy (1 = uniform) of assignments."""
    total = float(counts.sum())
    if total <= 0:
        return {}
    p = counts / total
    nz = p[p > 0]
    k = counts.numel()
    ent = float(-(nz * nz.log()).sum()) / math.log(k) if k > 1 else 0.0
    return {"cluster_occupancy": float((counts > 0).double().mean()), "cluster_entropy": ent}


def _feats_from_batch(batch: Mapping[str, Any], modalities: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for m in modalities:
        col = batch[m]
        if isinstance(col, torch.Tensor):
            t = col
        else:
            arr = col if (isinstance(col, np.ndarray) and col.dtype != object) else np.stack(col)
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        out[m] = t.reshape(t.shape[0], -1).to(device=device, dtype=torch.float32, non_blocking=True)
    return out


def _iter_fixed(shard: Any, local_batch: int, steps: int, seed: int | None, modalities: list[str], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly ``steps`` full local batches. The shard is consumed to its end (breaking out of a
    streaming split early would stall the other ranks' next epoch)."""
    it = shard.iter_batches(
        batch_size=local_batch,
        batch_format="numpy",
        drop_last=True,
        prefetch_batches=1,
        local_shuffle_buffer_size=local_batch * 4 if seed is not None else None,
        local_shuffle_seed=seed,
    )
    n = 0
    for batch in it:
        if n < steps:
            yield _feats_from_batch(batch, modalities, device)
        n += 1
    if n < steps:
        raise PretrainError(f"this worker's data shard gave {n} full batches, expected {steps}")


class ShardCache:
    """A worker's whole shard as tensors, read once through Ray Data (first epoch) and then
    batched in memory like a plain PyTorch loop: a seeded permutation per epoch and fixed-size
    slices. Used when the datasets were small enough to materialise; each rank keeps its own rows
    (Ray Data's equal split), so the per-step cost is that of an in-process loop."""

    def __init__(self, shard: Any, modalities: list[str], device: torch.device) -> None:
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
        for batch in shard.iter_batches(batch_size=4096, batch_format="numpy", prefetch_batches=1):
            for m, t in _feats_from_batch(batch, modalities, torch.device("cpu")).items():
                parts[m].append(t)
        self.tensors = {m: torch.cat(v).to(device) for m, v in parts.items()}
        self.n = next(iter(self.tensors.values())).shape[0]

    def batches(self, local_batch: int, steps: int, seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        if self.n < steps * local_batch:
            raise PretrainError(f"this worker's data shard has {self.n} rows, expected ≥ {steps * local_batch}")
        if seed is None:
            order = torch.arange(self.n)
        else:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        device = next(iter(self.tensors.values())).device
        for s in range(steps):
            idx = order[s * local_batch : (s + 1) * local_batch].to(device)
            yield {m: t[idx] for m, t in self.tensors.items()}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- worker loop


def train_loop_per_worker(lc: dict[str, Any]) -> None:
    """The Ray Train loop; ``lc`` is built by :func:`fit`."""
    import ray.train
    import ray.train.torch

    from conclugen import tracking
    from conclugen.model.distributed import all_reduce_sum
    from conclugen.model.heads import to_sync_batchnorm
    from conclugen.training.schedule import lr_for, make_scheduler

    cfg = Config.model_validate(lc["config"])
    ctx = ray.train.get_context()
    rank, ws = ctx.get_world_rank(), ctx.get_world_size()
    distributed = ws > 1
    device = ray.train.torch.get_device() if lc["use_gpu"] else torch.device("cpu")
    T = cfg.train
    if not lc["use_gpu"]:
        # Exactly the CPUs this worker was given: more threads than cores only adds contention.
        torch.set_num_threads(max(1, int(T.cpus_per_worker)))
    _seed_all(T.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)

    stepper = Stepper(cfg, lc["input_dims"], device=device, distributed=distributed)
    model = stepper.model
    if cfg.model.sync_batchnorm:
        model = to_sync_batchnorm(model)  # GPU only; CPU keeps per-worker BatchNorm

    start_epoch, best, bad_epochs, stopped_early = 0, math.inf, 0, False
    ckpt = ray.train.get_checkpoint()
    payload: dict[str, Any] | None = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            payload = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        start_epoch = int(payload["epoch"]) + 1
        best = float(payload.get("best", math.inf))
        bad_epochs = int(payload.get("bad_epochs", 0))
        stopped_early = bool(payload.get("stopped_early", False))
        if rank == 0:
            print(f"[pretrain] resuming from epoch {payload['epoch']} checkpoint", flush=True)

    module = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": stepper.find_unused()}
    ) if distributed or lc["use_gpu"] else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=T.lr, weight_decay=T.weight_decay)
    scheduler = make_scheduler(optimizer, T)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if lc["n_val"] > 0 else None
    local_bs = lc["global_batch"] // ws
    steps = lc["n_train"] // (local_bs * ws)
    val_local = lc["val_batch"] // ws if val_shard is not None else 0
    val_steps = lc["n_val"] // lc["val_batch"] if val_shard is not None else 0
    has_val = val_shard is not None and val_steps > 0
    if lc.get("cache_shards"):
        train_cache = ShardCache(train_shard, stepper.modalities, device)
        val_cache = ShardCache(val_shard, stepper.modalities, device) if has_val else None

        def train_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            return train_cache.batches(local_bs, steps, T.seed + 1000 * epoch + rank)

        def val_batches() -> Iterator[dict[str, torch.Tensor]]:
            assert val_cache is not None
            return val_cache.batches(val_local, val_steps, None)
    else:

        def train_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            return _iter_fixed(train_shard, local_bs, steps, T.seed + epoch, stepper.modalities, device)

        def val_batches() -> Iterator[dict[str, torch.Tensor]]:
            return _iter_fixed(val_shard, val_local, val_steps, None, stepper.modalities, device)
    names = [n for n in LOSS_NAMES if stepper.weights[n] > 0]
    mlflow_uri, run_id = lc.get("tracking_uri"), lc.get("mlflow_run_id")
    pid_dir = lc.get("pid_dir")

    if stopped_early or start_epoch >= T.epochs:
        if rank == 0:
            print(f"[pretrain] nothing to do: {start_epoch} epochs done"
                  + (" (stopped early)" if stopped_early else ""), flush=True)
        return

    for epoch in range(start_epoch, T.epochs):
        module.train()
        stepper.kmeans.reset()
        stepper.counts.zero_()
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        t0, c0 = time.perf_counter(), time.process_time()
        lr = optimizer.param_groups[0]["lr"]
        for step, feats in enumerate(train_batches(epoch)):
            losses = stepper.losses(module, feats, epoch, train=True)
            total = stepper.total(losses)
            # One all-reduce per step: global loss values for logging, and every rank sees the
            # same NaN at the same step, so all stop together instead of hanging in a collective.
            vals = torch.stack([losses[n].detach() if n in losses else total.new_zeros(()) for n in names] + [total.detach()])
            vals = all_reduce_sum(vals.double()).cpu() / ws  # on the device: NCCL has no CPU tensors
            if not bool(torch.isfinite(vals).all()):
                bad = ", ".join(f"{n}={v:.4g}" for n, v in zip([*names, "total"], vals.tolist(), strict=True))
                msg = f"non-finite loss at epoch {epoch}, step {step}: {bad}"
                if rank == 0:
                    # Through the driver's filesystem object: workers may not have its credentials
                    # in their environment.
                    fs, run_path = lc["run_fs"]
                    fs.create_dir(posixpath.join(run_path, STATE_DIR), recursive=True)
                    with fs.open_output_stream(posixpath.join(run_path, STATE_DIR, "error.json")) as f:
                        f.write(json.dumps({"type": "nonfinite", "message": msg, "epoch": epoch, "step": step}).encode())
                    print(f"[pretrain] {msg}", flush=True)
                return
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            sums += vals
            if pid_dir and step == 0:
                Path(pid_dir).mkdir(parents=True, exist_ok=True)
                with open(Path(pid_dir, f"rank{rank}.jsonl"), "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), "epoch": epoch, "start_epoch": start_epoch}) + "\n")
        train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        scheduler.step()

        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr}
        for i, n in enumerate(names):
            if n != "clustering" or epoch >= cfg.losses.kmeans_start_epoch:
                metrics[n] = float(sums[i] / steps)
        metrics["loss"] = float(sums[-1] / steps)
        metrics["samples_per_s"] = steps * local_bs * ws / max(train_s, 1e-9)
        metrics["epoch_s"] = train_s
        # CPU seconds of all ranks: throughput per CPU-second does not depend on how much of the
        # machine other processes take (the benchmark compares loops on a shared machine).
        cpu_total = float(all_reduce_sum(torch.tensor([cpu_s], dtype=torch.float64, device=device)).item())
        metrics["samples_per_cpu_s"] = steps * local_bs * ws / max(cpu_total, 1e-9)
        counts = all_reduce_sum(stepper.counts.to(device)).cpu()
        metrics.update(cluster_stats(counts))

        if has_val:
            module.eval()
            vsums = torch.zeros(len(names) + 1, dtype=torch.float64)
            with torch.no_grad():
                for feats in val_batches():
                    losses = stepper.losses(module, feats, epoch, train=False)
                    total = stepper.total(losses)
                    vals = torch.stack([losses[n] if n in losses else total.new_zeros(()) for n in names] + [total])
                    vsums += all_reduce_sum(vals.double()).cpu() / ws
            for i, n in enumerate(names):
                if n != "clustering" or epoch >= cfg.losses.kmeans_start_epoch:
                    metrics[f"val_{n}"] = float(vsums[i] / val_steps)
            metrics["val_loss"] = float(vsums[-1] / val_steps)
            # Early stopping on the validation loss (identical on every rank after the all-reduce).
            if metrics["val_loss"] < best:
                best, bad_epochs = metrics["val_loss"], 0
            else:
                bad_epochs += 1
            stopped_early = bad_epochs >= T.patience
        score = metrics["val_loss"] if has_val else metrics["loss"]
        metrics["score"] = score
        metrics["next_lr"] = lr_for(epoch + 1, T)

        # MLflow from world rank 0 only; a tracking hiccup must not kill the training.
        if rank == 0 and mlflow_uri and run_id:
            try:
                tracking.log_metrics(mlflow_uri, run_id, {k: v for k, v in metrics.items() if k not in ("epoch", "next_lr", "score")}, step=epoch)
            except Exception as e:  # noqa: BLE001
                print(f"[pretrain] warning: MLflow logging failed: {type(e).__name__}: {e}", flush=True)

        if rank == 0:
            line = f"[pretrain] epoch {epoch + 1}/{T.epochs} loss {metrics['loss']:.4f}"
            if has_val:
                line += f" val {metrics['val_loss']:.4f}"
            line += " | " + " ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)
            line += f" | lr {lr:.2e} | {metrics['samples_per_s']:.0f} samples/s"
            if "cluster_occupancy" in metrics:
                line += f" | clusters {metrics['cluster_occupancy']:.2f} used, H {metrics['cluster_entropy']:.2f}"
            if stopped_early:
                line += f" | early stop (no val improvement for {T.patience} epochs)"
            print(line, flush=True)

        # Checkpoint: written by rank 0, reported by every rank (V2 needs all ranks to report).
        with tempfile.TemporaryDirectory(prefix="conclugen-ckpt-") as tmp:
            checkpoint = None
            if rank == 0:
                state = model.state_dict()
                info = {
                    "epoch": epoch, "score": score, "metrics": metrics, "stopped_early": stopped_early,
                    "mlflow_run_id": run_id,
                }
                save_checkpoint_dir(tmp, {
                    "model": state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "bad_epochs": bad_epochs,
                    "stopped_early": stopped_early,
                    "metrics": metrics,
                    "config": lc["config_public"],
                    "input_dims": stepper.input_dims,
                    "meta": lc["meta"],
                    "mlflow_run_id": run_id,
                }, info)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stopped_early:
            break


# ----------------------------------------------------------------------------- driver


def _storage_location(run_uri: str, cfg: Config) -> tuple[Any, str, str]:
    """RUN_URI → (pyarrow filesystem or None, storage_path, name) for RunConfig."""
    run_uri = str(run_uri).rstrip("/")
    if storage.is_s3(run_uri):
        fs, path = storage.resolve(run_uri, cfg.storage)
        parent, name = posixpath.split(path)
        if not parent or not name:
            raise PretrainError(f"RUN_URI {run_uri} must name a folder inside a bucket (s3://bucket/run)")
        return fs, parent, name
    _, path = storage.resolve(run_uri)
    p = Path(path)
    return None, str(p.parent), p.name


def _stack_vectors(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parquet list<float> columns → fixed-shape float32 [n, dim] tensor columns, done once in Ray
    Data so the training step receives ready matrices (no per-step np.stack of object arrays)."""
    return {k: (np.stack(v) if v.dtype == object else v).astype(np.float32, copy=False) for k, v in batch.items()}


def _datasets(features_root: str, cfg: Config, has_val: bool, stream: bool | None = None) -> dict[str, Any]:
    """Ray Data datasets ``train`` (and ``val``) with the split and modality columns only.

    When the feature files take under a quarter of the object store they are materialised once
    here, so epochs stream from the object store instead of re-reading Parquet each epoch
    (re-reads cost seconds of task start-up per epoch on a small machine); larger stores stream.
    """
    import pyarrow.fs as pafs
    import ray
    import ray.data

    fs, path = storage.resolve(features_uri(features_root), cfg.storage)
    files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    size = sum(f.size or 0 for f in files if f.path.endswith(".parquet"))
    from ray.data.expressions import col

    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(["split", *cfg.model.modalities])
    ds.context.enable_progress_bars = False  # the per-epoch line is the progress report
    store = ray.available_resources().get("object_store_memory", 0)
    # Parquet of float vectors barely compresses: file size ≈ memory. stream forces the choice.
    small = size * 4 < store if stream is None else not stream
    out = {}
    for key, splits in (("train", TRAIN_SPLITS), ("val", VAL_SPLITS)):
        if key == "val" and not has_val:
            continue
        part = ds.filter(expr=col("split").is_in(list(splits))).select_columns(
            list(cfg.model.modalities)
        ).map_batches(_stack_vectors, batch_format="numpy", zero_copy_batch=False)
        out[key] = part.materialize() if small else part
    return out


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
    pid_dir: str | None = None,
    callbacks: list[Any] | None = None,
    cache_shards: bool | None = None,
) -> Any:
    """Build and run the TorchTrainer on ready Ray datasets; returns Ray's ``Result``.

    The benchmark calls this with in-memory datasets; :func:`run_pretrain` with the feature store.
    """
    import ray
    from ray.data.dataset import MaterializedDataset
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    T = cfg.train
    use_gpu = T.use_gpu if T.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    workers = max(T.workers, 1)
    global_batch = (T.batch_size // workers) * workers
    fs, storage_path, name = _storage_location(run_uri, cfg)
    public = cfg.public_dict()
    lc = {
        "config": public,
        "config_public": public,
        "input_dims": dict(input_dims),
        "meta": dict(meta or {}),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "global_batch": global_batch,
        "val_batch": _val_batch(n_val, global_batch, workers) if n_val else 0,
        "use_gpu": bool(use_gpu),
        "run_uri": str(run_uri),
        "run_fs": storage.resolve(run_uri, cfg.storage),
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "pid_dir": pid_dir,
        # Materialised (small) datasets: each worker caches its shard in memory (ShardCache).
        "cache_shards": (
            all(isinstance(d, MaterializedDataset) for d in datasets.values())
            if cache_shards is None else bool(cache_shards)
        ),
    }
    resources = {"CPU": T.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=lc,
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
            callbacks=list(callbacks or []),  # e.g. conclugen.search.tune forwards per-epoch reports to Tune
        ),
        datasets=dict(datasets),
    )
    return trainer.fit()


def _to_uri(run_uri: str, fs_path: str) -> str:
    return "s3://" + fs_path.lstrip("/") if storage.is_s3(run_uri) else fs_path


def run_pretrain(
    features_uri_: str,
    run_uri: str,
    cfg: Config,
    *,
    run_name: str | None = None,
    pid_dir: str | None = None,
    log_model: bool = True,
    tags: Mapping[str, str] | None = None,
    callbacks: list[Any] | None = None,
    datasets: Mapping[str, Any] | None = None,
    stream: bool | None = None,
) -> PretrainResult:
    """Pretrain the heads on the features at ``features_uri_``; checkpoints under ``run_uri``.

    Re-running with the same ``run_uri`` continues from its last checkpoint (and the same MLflow
    run). Ray must be initialised by the caller (CLI / job). ``pid_dir``: after the first step of
    each epoch every worker appends {pid, epoch, start_epoch} to ``rank<N>.jsonl`` there (tests use
    it to kill a worker and to see where the restarted one resumed).
    ``tags``: extra tags on a new MLflow run (``mlflow.parentRunId`` nests it, as Tune trials do);
    ``callbacks``: Ray Train ``UserCallback``s for the trainer's RunConfig. ``datasets``: ready
    ``{"train", "val"}`` Ray datasets (as :func:`_datasets` builds them) shared by many runs,
    instead of reading the store again (Tune trials). ``stream``: None = features under a quarter
    of the object store are materialised and each worker caches its shard in memory, larger ones
    stream through Ray Data every epoch; True/False force streaming / caching.
    """
    from conclugen import tracking

    t_start = time.perf_counter()
    meta, counts = check_features(features_uri_, cfg)  # before any cluster work
    n_train = sum(counts.get(s, 0) for s in TRAIN_SPLITS)
    n_val = sum(counts.get(s, 0) for s in VAL_SPLITS)
    run_uri = str(run_uri).rstrip("/")
    storage.ensure_bucket(run_uri, cfg.storage)
    input_dims = {m: int(meta.dims[m]) for m in cfg.model.modalities}

    # Resume: the run folder must hold a run of the same model shape.
    previous = find_checkpoints(run_uri, cfg.storage)
    if previous:
        payload = read_payload(previous[-1]["uri"], cfg.storage)
        if payload["input_dims"] != input_dims or payload["config"]["model"] != json.loads(cfg.model.model_dump_json()):
            raise PretrainError(
                f"{run_uri} holds a run with a different model ({payload['input_dims']}, "
                f"{payload['config']['model']}); use another --out or the same settings"
            )
    run_state = state_uri(run_uri, "run.json")
    error_uri = state_uri(run_uri, "error.json")
    if storage.exists(error_uri, cfg.storage):
        storage.delete(error_uri, cfg.storage)

    run_tags = {"conclugen.run_uri": run_uri, "conclugen.features_uri": str(features_uri_),
                "conclugen.command": "pretrain", **dict(tags or {})}
    with tracking.tracked_run(cfg, run_name=run_name or Path(run_uri).name, tags=run_tags,
                              state_uri=run_state) as tracked:
        uri, run_id = tracked.uri, tracked.run_id
        if not tracked.reopened:
            tracking.log_text(uri, run_id, meta.to_json(), "feature_meta.json")
        datasets = dict(datasets) if datasets is not None else _datasets(features_uri_, cfg, n_val > 0, stream)
        fit(
            datasets, run_uri, cfg, input_dims, n_train, n_val,
            meta=json.loads(meta.to_json()), tracking_uri=uri, mlflow_run_id=run_id, pid_dir=pid_dir,
            callbacks=callbacks,
        )
        if storage.exists(error_uri, cfg.storage):
            err = json.loads(storage.read_text(error_uri, cfg.storage))
            raise NonFiniteLossError(err["message"] + " — lower train.lr or check the features")
        ckpts = find_checkpoints(run_uri, cfg.storage)
        if not ckpts:
            raise PretrainError(f"training ended without a checkpoint under {run_uri}")
        last = ckpts[-1]
        best_uri = best_checkpoint(run_uri, cfg.storage)
        best = next(c for c in ckpts if c["uri"] == best_uri)
        model_uri = None
        if log_model:
            local = tracking.local_copy(storage.join(best_uri, CHECKPOINT_FILE))
            model_uri = tracking.log_representation_model(uri, run_id, local, input_dims, cfg.model.d)
            if storage.is_s3(best_uri):
                os.unlink(local)
        tracking.set_tags(uri, run_id, {"conclugen.best_checkpoint": best_uri, "conclugen.best_epoch": best["epoch"]})
        result = PretrainResult(
            run_uri=run_uri,
            best_checkpoint=best_uri,
            last_checkpoint=last["uri"],
            epochs_done=int(last["epoch"]) + 1,
            metrics={k: v for k, v in last.get("metrics", {}).items() if isinstance(v, int | float)},
            best_metrics={k: v for k, v in best.get("metrics", {}).items() if isinstance(v, int | float)},
            mlflow_run_id=run_id,
            tracking_uri=uri,
            model_uri=model_uri,
            stopped_early=bool(last.get("stopped_early", False)),
            wall_s=time.perf_counter() - t_start,
        )
        storage.write_text(state_uri(run_uri, "summary.json"),
                           json.dumps(asdict(result), indent=2, default=str), cfg.storage)
        return result
