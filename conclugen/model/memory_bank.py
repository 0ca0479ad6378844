"""The memory bank behind ``losses.kmeans_schedule=memory_bank`` *(ours, DeepCluster-v2 style;
docs/method.md, Losses)*.

Every rank keeps its shard of the bank: the detached fused cluster-head output (the vector the
per-step schedules feed to k-means) of every row it trained in the last epoch, keyed by the clip's
int64 key (:func:`conclugen.features.versions.clip_keys`). At an epoch start the union of the
shards is clustered once (:func:`cluster_bank`): the initial centroids are the bank rows with the
smallest seeded hash of their key (a choice that depends on the bank's contents only, not on how
it is sharded), then :func:`conclugen.model.kmeans.kmeans` with each rank assigning its own rows and
per-cluster sums and counts all-reduced. The (clip key → label) table is all-gathered, because
the per-epoch shuffle moves clips between ranks, so every rank can look up any clip. The epoch's
steps then train against those labels and centroids; a clip not in the table (new, or dropped by
the last partial batch of the previous epoch) is skipped by the clustering term.

Works with and without torch.distributed, like :mod:`conclugen.model.kmeans`: distributed, the
result on every rank equals the single-process result on the concatenation of the shards in
rank order (identical labels, centroids up to float summation order).

Memory: a bank entry is K floats (the cluster head's width), so 1M clips at K = 128 take 512 MB
of float32 in all, 1/world of it per rank, on the worker's device; the table costs 16 bytes per
clip on every rank (16 MB at 1M clips).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from conclugen.errors import ConCluGenError
from conclugen.model.distributed import all_gather_nograd, all_reduce_sum, gather_sizes, is_distributed
from conclugen.model.kmeans import kmeans

_MASK63 = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


class NonFiniteBankError(ConCluGenError, ValueError):
    """The bank holds a non-finite vector (raised on every rank at once)."""


def key_scores(keys: Tensor, seed: int) -> Tensor:
    """A seeded pseudo-random int64 score per clip key (splitmix64 of key ⊕ seed, 63 bits): the
    order in which bank rows are offered as initial centroids. A function of (key, seed) only."""
    z = keys.detach().cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z ^ (np.uint64(seed & 0xFFFF_FFFF) * np.uint64(0x9E37_79B9_7F4A_7C15))
        z = z + np.uint64(0x9E37_79B9_7F4A_7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z & _MASK63).astype(np.int64)).to(keys.device)


def _smallest(scores: Tensor, keys: Tensor, m: int) -> Tensor:
    """Indices of the m rows smallest by (score, key)."""
    s, k = scores.cpu().numpy(), keys.cpu().numpy()
    return torch.from_numpy(np.lexsort((k, s))[:m].copy()).to(scores.device)


def bank_init(keys: Tensor, x: Tensor, k: int, seed: int, distributed: bool = False) -> Tensor:
    """k initial centroids: the bank rows smallest by (:func:`key_scores`, key) over every rank's
    shard (cycled when the bank has fewer than k rows). Identical on every rank."""
    scores = key_scores(keys, seed)
    own = _smallest(scores, keys, min(k, x.shape[0]))
    s, kk, xx = scores[own], keys[own], x[own]
    if distributed and is_distributed():
        sizes = gather_sizes(xx.shape[0], x.device)
        s, kk, xx = (all_gather_nograd(t.contiguous(), sizes) for t in (s, kk, xx))
    chosen = _smallest(s, kk, min(k, xx.shape[0]))
    reps = -(-k // chosen.shape[0])
    return xx[chosen.repeat(reps)[:k]].clone()


@dataclass
class BankClusters:
    """One epoch's clustering of the bank: the centroids [K, d] and the (clip key → label) table,
    sorted by key, the same on every rank."""

    centroids: Tensor
    table_keys: Tensor  # int64 [M], sorted
    table_labels: Tensor  # int64 [M]

    @classmethod
    def from_shards(cls, centroids: Tensor, keys: Tensor, labels: Tensor, distributed: bool = False) -> BankClusters:
        """The table from each rank's (keys, labels), all-gathered when distributed."""
        if distributed and is_distributed():
            sizes = gather_sizes(keys.shape[0], keys.device)
            keys, labels = all_gather_nograd(keys.contiguous(), sizes), all_gather_nograd(labels.contiguous(), sizes)
        order = torch.sort(keys, stable=True).indices
        return cls(centroids, keys[order], labels[order].long())

    def lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """(label [n], found [n] bool) of each clip key; the label of a key not found is 0."""
        keys = keys.to(self.table_keys.device)
        if self.table_keys.numel() == 0:
            return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self.table_keys, keys).clamp(max=self.table_keys.numel() - 1)
        found = self.table_keys[pos] == keys
        return torch.where(found, self.table_labels[pos], torch.zeros_like(pos)), found


@torch.no_grad()
def cluster_bank(
    keys: Tensor, x: Tensor, k: int, *, iters: int = 100, tol: float = 1e-4, seed: int = 0,
    distributed: bool = False, backend: str = "auto", stats: dict[str, float] | None = None,
) -> BankClusters:
    """Cosine k-means over the union of every rank's bank shard (``keys`` [n] int64, ``x`` [n, d])
    from :func:`bank_init`; every rank's shard must be non-empty. ``stats``: as for ``kmeans``."""
    init = bank_init(keys, x, k, seed, distributed)
    centroids, labels = kmeans(x, k, iters=iters, tol=tol, init=init, distributed=distributed, backend=backend,
                               stats=stats)
    return BankClusters.from_shards(centroids, keys, labels, distributed)


class MemoryBank:
    """This rank's shard of the bank and the epoch's clustering (see the module docstring).

    :meth:`add` records a step's (keys, detached fused vectors); :meth:`recluster` (every rank, at
    the epoch start) clusters what the ranks recorded since the last call and starts a new shard;
    :meth:`lookup` gives the labels of the epoch. A clip recorded twice keeps its last vector."""

    def __init__(self, k: int, *, iters: int = 100, tol: float = 1e-4, seed: int = 0,
                 distributed: bool = False, backend: str = "auto", device: torch.device | str = "cpu") -> None:
        self.k, self.iters, self.tol = k, iters, tol
        self.device = torch.device(device)  # where the collectives' flags live (NCCL: the GPU)
        self.seed, self.distributed, self.backend = seed, distributed, backend
        self._keys: list[Tensor] = []
        self._vecs: list[Tensor] = []
        self.clusters: BankClusters | None = None
        self.last_stats: dict[str, float] = {}  # the last clustering's k-means iterations and shift

    def __len__(self) -> int:
        return sum(t.shape[0] for t in self._keys)

    def add(self, keys: Tensor, fused: Tensor) -> None:
        if keys.shape[0] != fused.shape[0]:
            raise ValueError(f"{keys.shape[0]} clip keys for {fused.shape[0]} fused vectors")
        self._keys.append(keys.detach().to(device=fused.device, dtype=torch.int64).clone())
        self._vecs.append(fused.detach().float().clone())

    def shard(self) -> tuple[Tensor, Tensor]:
        """(keys [n], vectors [n, d]) recorded since the last :meth:`recluster`, in recording
        order, one row per clip (its last record)."""
        if not self._keys:
            return torch.zeros(0, dtype=torch.int64, device=self.device), torch.zeros(0, 0, device=self.device)
        keys, vecs = torch.cat(self._keys), torch.cat(self._vecs)
        order = torch.sort(keys, stable=True).indices  # equal keys stay in recording order
        sk = keys[order]
        last = torch.ones_like(sk, dtype=torch.bool)
        last[:-1] = sk[1:] != sk[:-1]
        keep = torch.sort(order[last]).values
        return keys[keep], vecs[keep]

    def recluster(self, epoch: int) -> BankClusters | None:
        """Cluster the bank (seed ``seed + epoch``) and start an empty shard for this epoch; a
        collective on every rank. None (and no clustering) when every rank's shard is empty.
        :class:`NonFiniteBankError` on every rank when the bank holds a non-finite vector;
        ValueError on every rank when some ranks have rows and others none."""
        keys, x = self.shard()
        self._keys, self._vecs = [], []
        nonfinite = float((~torch.isfinite(x)).any()) if x.numel() else 0.0
        flags = torch.tensor([float(x.shape[0] > 0), float(x.shape[0] == 0), nonfinite], device=self.device)
        if self.distributed:
            all_reduce_sum(flags)
        filled, empty, nonfinite = flags.tolist()
        if nonfinite:
            raise NonFiniteBankError(f"the memory bank holds non-finite fused vectors at epoch {epoch}")
        if not filled:
            self.clusters = None
            return None
        if empty:
            raise ValueError(f"{int(empty)} rank(s) have an empty memory-bank shard at epoch {epoch}")
        self.clusters = cluster_bank(keys, x, self.k, iters=self.iters, tol=self.tol, seed=self.seed + epoch,
                                     distributed=self.distributed, backend=self.backend, stats=self.last_stats)
        return self.clusters

    def lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`BankClusters.lookup` of the epoch (nothing found before the first clustering)."""
        if self.clusters is None:
            return torch.zeros_like(keys, dtype=torch.int64), torch.zeros_like(keys, dtype=torch.bool)
        return self.clusters.lookup(keys)
