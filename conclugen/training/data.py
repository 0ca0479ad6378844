"""Training data: Ray Data datasets from the feature store, and each worker's fixed-size batches.

The driver builds the ``train`` (splits train + unlabeled) and ``val`` (split val) datasets once
(:func:`build_datasets`); Ray Train gives every worker an equal shard of each. A worker takes
exactly ``steps`` equal local batches per epoch on every rank (gloo needs equal sizes: the last
partial global batch is dropped). Materialised (small) datasets are read once into memory and
batched like a plain PyTorch loop (:class:`ShardCache`). Streamed (large) ones are, with
``train.shuffle=global``, read by every rank straight from the Parquet files in a per-epoch global
shuffle (:mod:`conclugen.training.shuffle`; the train dataset carries the file list in its
DataContext, :data:`~conclugen.training.shuffle.TRAIN_FILES_KEY`), or, with ``local``, streamed from the rank's Ray Data shard
with a small local shuffle buffer (:func:`iter_fixed`).

Training rows always carry ``clip_id``; with ``keys`` a batch also has ``clip_key`` (int64 [n],
:func:`conclugen.features.versions.clip_keys`), e.g. for the memory bank.

A store extracted with ``extract.augmentations`` = N > 0 also carries the ``<modality>_aug``
columns and ``clip_id`` into the training dataset; each training row then gets one augmented
version per modality and epoch (:class:`Versions`, drawn from (seed, epoch, modality, clip_id),
so the draw does not depend on the rank, the shard or the batch a row lands in). Validation
always reads the plain vectors. See docs/method.md, Pretraining.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conclugen import storage
from conclugen.features.store import aug_column, features_uri, read_meta
from conclugen.features.versions import clip_keys, version_index
from conclugen.training.errors import PretrainError
from conclugen.training.shuffle import TRAIN_FILES_KEY, RankReader, TrainFiles, train_files_of

if TYPE_CHECKING:
    from conclugen.config import Config

TRAIN_SPLITS = ("train", "unlabeled")
VAL_SPLITS = ("val",)
CLIP_ID = "clip_id"
CLIP_KEY = "clip_key"  # batch key of the rows' clip keys (WorkerBatches keys=True)

Batch = dict[str, torch.Tensor]  # modality (or second_view_key(modality)) → float32 [local batch, dim]


def second_view_key(modality: str) -> str:
    """The batch key of a modality's second version (the SimCLR view; see :class:`Versions`)."""
    return f"{modality}@view2"


def stack_vectors(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parquet list<float> columns → fixed-shape float32 [n, dim] tensor columns, done once in Ray
    Data so the training step receives ready matrices (no per-step np.stack of object arrays).
    ``clip_id`` passes through unchanged."""
    return {k: v if k == CLIP_ID else (np.stack(v) if v.dtype == object else v).astype(np.float32, copy=False)
            for k, v in batch.items()}


def build_datasets(features_root: str, cfg: Config, has_val: bool, stream: bool | None = None) -> dict[str, Any]:
    """Ray Data datasets ``train`` (``clip_id`` and the modality columns, plus the
    ``<modality>_aug`` columns when the store holds augmented versions, meta.json
    ``augmentations`` > 0) and ``val`` (the modality columns).

    When the feature files take under a quarter of the object store they are materialised once
    here, so epochs stream from the object store instead of re-reading Parquet each epoch
    (re-reads cost seconds of task start-up per epoch on a small machine); larger stores stream.
    ``stream`` forces the choice (True: stream, False: materialise). A streamed ``train`` with
    ``train.shuffle=global`` carries :class:`~conclugen.training.shuffle.TrainFiles` under
    :data:`~conclugen.training.shuffle.TRAIN_FILES_KEY` in its DataContext: the workers then read the files themselves
    (the Ray Data plan still serves ``feature_stats``).
    """
    import pyarrow.fs as pafs
    import ray
    import ray.data
    from ray.data.expressions import col

    mods = list(cfg.model.modalities)
    meta = read_meta(features_root, cfg.storage)
    augmented = meta.augmentations > 0
    train_cols = [CLIP_ID, *mods, *((aug_column(m) for m in mods) if augmented else ())]
    fs, path = storage.resolve(features_uri(features_root), cfg.storage)
    files = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.path.endswith(".parquet")]
    size = sum(f.size or 0 for f in files)
    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(list(dict.fromkeys(["split", *train_cols])))
    ds.context.enable_progress_bars = False  # the per-epoch line is the progress report
    store = ray.available_resources().get("object_store_memory", 0)
    # Parquet of float vectors barely compresses: file size ≈ memory.
    small = size * 4 < store if stream is None else not stream
    out = {}
    for key, splits, cols in (("train", TRAIN_SPLITS, train_cols), ("val", VAL_SPLITS, mods)):
        if key == "val" and not has_val:
            continue
        part = ds.filter(expr=col("split").is_in(list(splits))).select_columns(list(cols)).map_batches(
            stack_vectors, batch_format="numpy", zero_copy_batch=False
        )
        out[key] = part.materialize() if small else part
    if not small and cfg.train.shuffle == "global":
        # Shared with val's context (one parent plan); only WorkerBatches' train side reads it.
        row_bytes = 4 * sum(meta.dims[m] * (1 + meta.augmentations if augmented else 1) for m in mods)
        window = max(1, int(cfg.train.shuffle_window_mb * 2**20 // max(row_bytes, 1)))
        out["train"].context.set_config(TRAIN_FILES_KEY, TrainFiles(
            fs, tuple(sorted(f.path for f in files)), tuple(train_cols), TRAIN_SPLITS, window))
    return out


def feature_stats(ds: Any, modalities: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension mean and standard deviation of each modality's plain vectors over the Ray
    dataset ``ds`` (the pretraining rows), for the model's input standardisation
    (``model.input_norm``). Partial sums are computed per batch inside Ray Data; the driver only
    adds one small row per batch. Constant dimensions get std 1 (they stay centred at 0)."""
    mods = list(modalities)

    def partial(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for m in mods:
            x = np.asarray(np.stack(batch[m]) if batch[m].dtype == object else batch[m], np.float64)
            x = x.reshape(len(x), -1)
            out["n"] = np.array([len(x)], np.int64)
            bad = ~np.isfinite(x).all(axis=1)
            out[m + ".bad"] = np.array([int(bad.sum())], np.int64)
            x = np.where(bad[:, None], 0.0, x)
            out[m + ".sum"], out[m + ".sq"] = x.sum(0)[None], (x * x).sum(0)[None]
        return out

    rows = ds.select_columns(mods).map_batches(partial, batch_format="numpy", batch_size=4096).take_all()
    n = sum(int(r["n"]) for r in rows)
    if n == 0:
        raise PretrainError("no training rows to compute the input statistics from")
    stats = {}
    for m in mods:
        bad = sum(int(r[m + ".bad"]) for r in rows)
        if bad:
            raise PretrainError(f"{m} features are not finite in {bad} of {n} training rows, so the input "
                                "statistics (model.input_norm=standardize) cannot be computed: re-extract those "
                                "clips, or train with model.input_norm=none")
        mean = sum(np.asarray(r[m + ".sum"], np.float64) for r in rows) / n
        var = sum(np.asarray(r[m + ".sq"], np.float64) for r in rows) / n - mean * mean
        std = np.sqrt(np.clip(var, 0.0, None))
        std[std < 1e-6] = 1.0
        stats[m] = (mean.astype(np.float32), std.astype(np.float32))
    return stats


def _tensor(col: Any, device: torch.device) -> torch.Tensor:
    """One numeric batch column → float32 [n, width] on ``device``."""
    if isinstance(col, torch.Tensor):
        t = col
    else:
        arr = col if (isinstance(col, np.ndarray) and col.dtype != object) else np.stack(col)
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t.reshape(t.shape[0], -1).to(device=device, dtype=torch.float32, non_blocking=True)


def feats_from_batch(batch: Mapping[str, Any], modalities: list[str], device: torch.device) -> Batch:
    """A Ray Data numpy batch → float32 [n, dim] tensors on ``device``, one per modality."""
    return {m: _tensor(batch[m], device) for m in modalities}


def pick(plain: torch.Tensor, views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Row i's version ``index[i]``: 0 = ``plain[i]`` [n, dim], v ≥ 1 = ``views[i, v-1]`` [n, N, dim]
    (:func:`conclugen.features.versions.select_versions` on tensors, so cached rows stay on their
    device)."""
    rows = torch.arange(plain.shape[0], device=plain.device)
    chosen = views[rows, (index - 1).clamp(min=0)]
    return torch.where((index > 0)[:, None], chosen, plain)


@dataclass(frozen=True)
class Versions:
    """Which version of each training row a worker uses (docs/method.md, Pretraining).

    ``n``: augmented versions in the store (meta.json ``augmentations``; 0 = none, plain only).
    Every training row gets, per modality and epoch, one of the augmented versions 1..N, drawn
    by :func:`conclugen.features.versions.version_index` from (``seed``, epoch, modality,
    clip_id). The plain version is not among the choices: the reference's training split lists
    only the augmented feature folders (aug1..aug10) and draws among them, while val/test read
    the plain features (src/data/datasets/video_dataset.py,
    ``PrecomputedFeaturesVideoClassificationDataset._load_possibly_augmented_samples``, and
    src/data/datamodules/video_datamodule.py, ``_add_augmented_data_key``).

    ``second``: modalities that also get a second, different version under
    :func:`second_view_key` (the SimCLR views). It is drawn uniformly among the other N − 1
    augmented versions (the reference pops two distinct indices from the augmented list); with
    N = 1 the only other version is the plain one *(ours: the reference needs N ≥ 2)*.
    """

    n: int = 0
    seed: int = 0
    second: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.n > 0

    def draw(self, clip_ids: Sequence[str], modalities: Sequence[str], epoch: int) -> dict[str, np.ndarray]:
        """Batch key → the version of every row (see the class docstring)."""
        out: dict[str, np.ndarray] = {}
        for m in modalities:
            first = version_index(clip_ids, m, epoch, self.seed, range(1, self.n + 1))
            out[m] = first
            if m in self.second:
                if self.n == 1:
                    out[second_view_key(m)] = np.zeros_like(first)
                else:  # a shift of 1..N-1 within the augmented versions: never the first one
                    shift = version_index(clip_ids, second_view_key(m), epoch, self.seed, range(1, self.n))
                    out[second_view_key(m)] = (first - 1 + shift) % self.n + 1
        return out

    def select(self, tensors: Mapping[str, torch.Tensor], clip_ids: Sequence[str], modalities: Sequence[str],
               epoch: int) -> Batch:
        """Rows' plain vectors (``tensors[m]`` [n, dim]) and their augmented versions
        (``tensors[aug_column(m)]`` [n, N·dim]) → the drawn version per batch key."""
        of = {**{m: m for m in modalities}, **{second_view_key(m): m for m in modalities}}
        out: Batch = {}
        for key, index in self.draw(clip_ids, modalities, epoch).items():
            m = of[key]
            plain = tensors[m]
            views = tensors[aug_column(m)].reshape(plain.shape[0], self.n, -1)
            out[key] = pick(plain, views, torch.from_numpy(index).to(plain.device))
        return out


def _clip_ids(batch: Mapping[str, Any]) -> list[str]:
    if CLIP_ID not in batch:
        raise PretrainError("the training data has no clip_id column: a store with augmented versions "
                            "needs datasets built by conclugen.training.data.build_datasets")
    return [str(c) for c in batch[CLIP_ID]]


def _with_keys(out: Batch, clip_ids: Sequence[str], device: torch.device) -> Batch:
    out[CLIP_KEY] = torch.from_numpy(clip_keys(clip_ids)).to(device)
    return out


def _train_batch(batch: Mapping[str, Any], modalities: list[str], device: torch.device,
                 versions: Versions | None, epoch: int, keys: bool = False) -> Batch:
    """A numpy batch → the step's tensors: plain vectors, or each row's drawn versions (and,
    with ``keys``, the rows' ``clip_key``)."""
    if versions is None or not versions.active:
        out = feats_from_batch(batch, modalities, device)
    else:
        tensors = {c: _tensor(batch[c], device) for m in modalities for c in (m, aug_column(m))}
        out = versions.select(tensors, _clip_ids(batch), modalities, epoch)
    return _with_keys(out, _clip_ids(batch), device) if keys else out


def iter_fixed(
    shard: Any, local_batch: int, steps: int, seed: int | None, modalities: list[str], device: torch.device,
    versions: Versions | None = None, epoch: int = 0, keys: bool = False,
) -> Iterator[Batch]:
    """Exactly ``steps`` full local batches (with ``versions``: each row's version for ``epoch``).
    The shard is consumed to its end (breaking out of a streaming split early would stall the
    other ranks' next epoch)."""
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
            yield _train_batch(batch, modalities, device, versions, epoch, keys)
        n += 1
    if n < steps:
        raise PretrainError(f"this worker's data shard gave {n} full batches, expected {steps}")


class ShardCache:
    """A worker's whole shard as tensors, read once through Ray Data (first epoch) and then
    batched in memory like a plain PyTorch loop: a seeded permutation per epoch and fixed-size
    slices. Used when the datasets were small enough to materialise; each rank keeps its own rows
    (Ray Data's equal split), so the per-step cost is that of an in-process loop. With
    ``versions`` it also keeps the augmented columns and the clip ids, and each batch gets the
    rows' versions for the epoch; with ``keys`` each batch also has the rows' ``clip_key``."""

    def __init__(self, shard: Any, modalities: list[str], device: torch.device,
                 versions: Versions | None = None, keys: bool = False) -> None:
        self.modalities, self.versions = modalities, versions if versions is not None and versions.active else None
        self.keys = keys
        cols = [c for m in modalities for c in ((m, aug_column(m)) if self.versions else (m,))]
        parts: dict[str, list[torch.Tensor]] = {c: [] for c in cols}
        ids: list[str] = []
        for batch in shard.iter_batches(batch_size=4096, batch_format="numpy", prefetch_batches=1):
            for c in cols:
                parts[c].append(_tensor(batch[c], torch.device("cpu")))
            if self.versions or keys:
                ids += _clip_ids(batch)
        self.tensors = {c: torch.cat(v).to(device) for c, v in parts.items()}
        self.clip_ids = np.asarray(ids, dtype=object)
        self.clip_keys = torch.from_numpy(clip_keys(ids)).to(device) if keys else None
        self.n = next(iter(self.tensors.values())).shape[0]

    def batches(self, local_batch: int, steps: int, seed: int | None, epoch: int = 0) -> Iterator[Batch]:
        if self.n < steps * local_batch:
            raise PretrainError(f"this worker's data shard has {self.n} rows, expected ≥ {steps * local_batch}")
        if seed is None:
            order = torch.arange(self.n)
        else:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        device = next(iter(self.tensors.values())).device
        for s in range(steps):
            rows = order[s * local_batch : (s + 1) * local_batch]
            idx = rows.to(device)
            if self.versions is None:
                out = {m: self.tensors[m][idx] for m in self.modalities}
            else:
                sub = {c: t[idx] for c, t in self.tensors.items()}
                out = self.versions.select(sub, list(self.clip_ids[rows.numpy()]), self.modalities, epoch)
            if self.clip_keys is not None:
                out[CLIP_KEY] = self.clip_keys[idx]
            yield out


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
    world_size: int = 1

    @classmethod
    def for_world(cls, n_train: int, n_val: int, global_batch: int, val_batch: int, world_size: int) -> BatchPlan:
        local = global_batch // world_size
        steps = n_train // (local * world_size)
        if n_val <= 0:
            return cls(local, steps, world_size=world_size)
        return cls(local, steps, val_batch // world_size, n_val // val_batch, world_size)

    @property
    def has_val(self) -> bool:
        return self.val_steps > 0


class WorkerBatches:
    """A worker's batches for each epoch: read into memory once (``cache``, :class:`ShardCache`)
    and permuted per epoch; or, streamed, read from the training files in the per-epoch global
    shuffle (``files``, by default those the train shard carries, :func:`train_files_of`;
    :mod:`conclugen.training.shuffle`), else from the Ray Data shard with a local shuffle buffer
    (:func:`iter_fixed`). Training rows get their versions for the epoch from ``versions`` (when
    the store has augmented versions) and, with ``keys``, their ``clip_key``; validation reads
    the plain vectors. ``epochs``: the run's (the reader reads ahead into a next epoch)."""

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
        versions: Versions | None = None,
        keys: bool = False,
        files: TrainFiles | None = None,
        epochs: int | None = None,
    ) -> None:
        self.plan, self.modalities, self.device, self.epochs = plan, modalities, device, epochs
        self.seed, self.rank, self.keys = seed, rank, keys
        self.versions = versions if versions is not None and versions.active else None
        self.train_shard, self.val_shard = train_shard, val_shard if plan.has_val else None
        self.train_cache = ShardCache(train_shard, modalities, device, self.versions, keys) if cache else None
        self.val_cache = ShardCache(val_shard, modalities, device) if cache and self.val_shard is not None else None
        files = files if files is not None or cache else train_files_of(train_shard)
        if files is not None and not (self.versions or keys):  # the clip ids are only read when used
            files = replace(files, columns=tuple(c for c in files.columns if c != CLIP_ID))
        self.reader = RankReader(files) if files is not None and not cache else None

    def train(self, epoch: int) -> Iterator[Batch]:
        p = self.plan
        if self.train_cache is not None:
            return self.train_cache.batches(p.local_batch, p.steps, self.seed + 1000 * epoch + self.rank, epoch)
        if self.reader is not None:
            ahead = self.epochs is None or epoch + 1 < self.epochs
            rows = self.reader.batches(epoch, self.seed, self.rank, p.world_size, p.local_batch, p.steps, ahead)
            return (_train_batch(b, self.modalities, self.device, self.versions, epoch, self.keys) for b in rows)
        return iter_fixed(self.train_shard, p.local_batch, p.steps, self.seed + epoch, self.modalities, self.device,
                          self.versions, epoch, self.keys)

    def val(self) -> Iterator[Batch]:
        p = self.plan
        if self.val_cache is not None:
            return self.val_cache.batches(p.val_local, p.val_steps, None)
        return iter_fixed(self.val_shard, p.val_local, p.val_steps, None, self.modalities, self.device)
