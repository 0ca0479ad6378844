"""Training data: Ray Data datasets from the feature store, and each worker's fixed-size batches.

The driver builds the ``train`` (splits train + unlabeled) and ``val`` (split val) datasets once
(:func:`build_datasets`); Ray Train gives every worker an equal shard of each. A worker takes
exactly ``steps`` equal local batches per epoch on every rank (gloo needs equal sizes: the last
partial global batch is dropped), streamed from its shard each epoch (:func:`iter_fixed`) or, for
materialised datasets, read once into memory and batched like a plain PyTorch loop
(:class:`ShardCache`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conclugen import storage
from conclugen.features.store import features_uri
from conclugen.training.errors import PretrainError

if TYPE_CHECKING:
    from conclugen.config import Config

TRAIN_SPLITS = ("train", "unlabeled")
VAL_SPLITS = ("val",)

Batch = dict[str, torch.Tensor]  # modality → float32 [local batch, dim]


def stack_vectors(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parquet list<float> columns → fixed-shape float32 [n, dim] tensor columns, done once in Ray
    Data so the training step receives ready matrices (no per-step np.stack of object arrays)."""
    return {k: (np.stack(v) if v.dtype == object else v).astype(np.float32, copy=False) for k, v in batch.items()}


def build_datasets(features_root: str, cfg: Config, has_val: bool, stream: bool | None = None) -> dict[str, Any]:
    """Ray Data datasets ``train`` (and ``val``) with the modality columns only.

    When the feature files take under a quarter of the object store they are materialised once
    here, so epochs stream from the object store instead of re-reading Parquet each epoch
    (re-reads cost seconds of task start-up per epoch on a small machine); larger stores stream.
    ``stream`` forces the choice (True: stream, False: materialise).
    """
    import pyarrow.fs as pafs
    import ray
    import ray.data
    from ray.data.expressions import col

    fs, path = storage.resolve(features_uri(features_root), cfg.storage)
    files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    size = sum(f.size or 0 for f in files if f.path.endswith(".parquet"))
    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(["split", *cfg.model.modalities])
    ds.context.enable_progress_bars = False  # the per-epoch line is the progress report
    store = ray.available_resources().get("object_store_memory", 0)
    # Parquet of float vectors barely compresses: file size ≈ memory.
    small = size * 4 < store if stream is None else not stream
    out = {}
    for key, splits in (("train", TRAIN_SPLITS), ("val", VAL_SPLITS)):
        if key == "val" and not has_val:
            continue
        part = ds.filter(expr=col("split").is_in(list(splits))).select_columns(
            list(cfg.model.modalities)
        ).map_batches(stack_vectors, batch_format="numpy", zero_copy_batch=False)
        out[key] = part.materialize() if small else part
    return out


def feats_from_batch(batch: Mapping[str, Any], modalities: list[str], device: torch.device) -> Batch:
    """A Ray Data numpy batch → float32 [n, dim] tensors on ``device``, one per modality."""
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


def iter_fixed(
    shard: Any, local_batch: int, steps: int, seed: int | None, modalities: list[str], device: torch.device
) -> Iterator[Batch]:
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
            yield feats_from_batch(batch, modalities, device)
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
            for m, t in feats_from_batch(batch, modalities, torch.device("cpu")).items():
                parts[m].append(t)
        self.tensors = {m: torch.cat(v).to(device) for m, v in parts.items()}
        self.n = next(iter(self.tensors.values())).shape[0]

    def batches(self, local_batch: int, steps: int, seed: int | None) -> Iterator[Batch]:
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


def val_batch_size(n_val: int, global_batch: int, workers: int) -> int:
    """Validation batch: the training batch, capped by the val split (multiple of workers)."""
    return min(global_batch, (n_val // workers) * workers)


@dataclass(frozen=True)
class BatchPlan:
    """One rank's batch sizes and step counts per epoch (the same on every rank)."""

    local_batch: int
    steps: int
    val_local: int = 0
    val_steps: int = 0

    @classmethod
    def for_world(cls, n_train: int, n_val: int, global_batch: int, val_batch: int, world_size: int) -> BatchPlan:
        local = global_batch // world_size
        if n_val <= 0:
            return cls(local, n_train // (local * world_size))
        return cls(local, n_train // (local * world_size), val_batch // world_size, n_val // val_batch)

    @property
    def has_val(self) -> bool:
        return self.val_steps > 0


class WorkerBatches:
    """A worker's batches for each epoch: its shards streamed through Ray Data every epoch, or
    (``cache``) read into memory once (:class:`ShardCache`) and permuted per epoch."""

    def __init__(
        self,
        train_shard: Any,
        val_shard: Any | None,
        plan: BatchPlan,
        modalities: list[str],
        device: torch.device,
        *,
        seed: int,
        rank: int,
        cache: bool,
    ) -> None:
        self.plan, self.modalities, self.device = plan, modalities, device
        self.seed, self.rank = seed, rank
        self.train_shard, self.val_shard = train_shard, val_shard if plan.has_val else None
        self.train_cache = ShardCache(train_shard, modalities, device) if cache else None
        self.val_cache = ShardCache(val_shard, modalities, device) if cache and self.val_shard is not None else None

    def train(self, epoch: int) -> Iterator[Batch]:
        p = self.plan
        if self.train_cache is not None:
            return self.train_cache.batches(p.local_batch, p.steps, self.seed + 1000 * epoch + self.rank)
        return iter_fixed(self.train_shard, p.local_batch, p.steps, self.seed + epoch, self.modalities, self.device)

    def val(self) -> Iterator[Batch]:
        p = self.plan
        if self.val_cache is not None:
            return self.val_cache.batches(p.val_local, p.val_steps, None)
        return iter_fixed(self.val_shard, p.val_local, p.val_steps, None, self.modalities, self.device)
