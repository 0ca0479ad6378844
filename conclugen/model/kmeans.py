"""Cosine k-means, single-process or distributed, and the online clustering used in training.

Cosine k-means as in docs/method.md, Clustering: points are assigned to the centroid of highest
cosine similarity; centroids are the (un-normalised) means of their assigned points; stop after
``iters`` iterations or when the squared centroid shift ``Σ‖C_new − C‖²`` is ≤ ``tol`` (the
criterion of fast-pytorch-kmeans, the reference's library).

Distributed (SwAV / DeepCluster-v2 style): the initial centroids are chosen on rank 0 and
broadcast; each rank assigns its local points; per-cluster sums and counts are summed with one
``all_reduce``; every rank therefore holds the same centroids, equal (up to float summation
order) to the single-process run on the concatenated data with the same init.

Empty clusters are re-seeded deterministically: the i-th empty cluster (in cluster order) gets the
i-th point in the order (lowest similarity to its centroid, then global index) — the points worst
served by the current centroids; cycling when there are more empty clusters than points (K may
exceed the number of points in tiny runs). Distributed, each rank offers its best candidates and
the choice is made on the gathered candidates, so it matches the single-process choice.

The assignment backend (torch matmul or faiss, see ``_use_faiss``) is part of the result: the two
agree except on float near-ties, so compare runs with the same ``backend``.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from conclugen.model.distributed import (
    all_gather_nograd,
    all_reduce_sum,
    broadcast_,
    gather_sizes,
    is_distributed,
    world,
)

try:  # faiss is optional: it only speeds up the assignment step on CPU.
    import faiss  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - faiss is installed in this project
    faiss = None

# Measured on 2 CPU cores: single-threaded (a Ray worker with OMP_NUM_THREADS=1, a benchmark
# rank) faiss's IndexFlatIP search beats torch's matmul + max by 20–40% at every size tried; with
# several threads torch wins below about this many similarity entries (points × clusters).
_FAISS_MIN_WORK = 1 << 20


def _use_faiss(x: Tensor, k: int, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "faiss":
        if faiss is None:
            raise ImportError("backend='faiss' needs faiss-cpu")
        return True
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    return (
        faiss is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and (torch.get_num_threads() == 1 or x.shape[0] * k >= _FAISS_MIN_WORK)
    )


def assign(xn: Tensor, centroids: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(similarity to the best centroid, its index) for L2-normalised points ``xn`` [N, d]."""
    cn = F.normalize(centroids, dim=1)
    if _use_faiss(xn, centroids.shape[0], backend):
        index = faiss.IndexFlatIP(cn.shape[1])
        index.add(np.ascontiguousarray(cn.numpy()))
        sim, idx = index.search(np.ascontiguousarray(xn.numpy()), 1)
        return torch.from_numpy(sim[:, 0]), torch.from_numpy(idx[:, 0]).long()
    sim, idx = (xn @ cn.T).max(dim=1)
    return sim, idx


def random_init(x: Tensor, k: int, seed: int) -> Tensor:
    """k distinct random points (cycled when k exceeds the number of points)."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    if k > x.shape[0]:
        perm = perm.repeat(math.ceil(k / x.shape[0]))
    return x[perm[:k]].clone()


def _reseed(x: Tensor, sim: Tensor, n_empty: int, dist_on: bool) -> Tensor:
    """n_empty points, ordered by (similarity to their centroid ascending, global index)."""
    n = x.shape[0]
    m = min(n_empty, n)
    # Stable sort keeps index order among equal similarities.
    order = torch.sort(sim, stable=True).indices[:m]
    cand_sim, cand_x = sim[order], x[order]
    if dist_on:
        rank, _ = world()
        sizes = gather_sizes(n, x.device)
        offset = sum(sizes[:rank])
        cand_idx = (order + offset).to(torch.float64)
        # Pad to n_empty rows so that gloo gathers equal shapes; padding sorts last.
        pad = n_empty - m
        if pad:
            cand_sim = torch.cat([cand_sim, cand_sim.new_full((pad,), math.inf)])
            cand_x = torch.cat([cand_x, cand_x.new_zeros((pad, x.shape[1]))])
            cand_idx = torch.cat([cand_idx, cand_idx.new_full((pad,), math.inf)])
        cand_sim = all_gather_nograd(cand_sim.contiguous())
        cand_x = all_gather_nograd(cand_x.contiguous())
        cand_idx = all_gather_nograd(cand_idx.contiguous())
        valid = torch.isfinite(cand_idx)
        cand_sim, cand_x, cand_idx = cand_sim[valid], cand_x[valid], cand_idx[valid]
        by_idx = torch.sort(cand_idx, stable=True).indices
        by_sim = torch.sort(cand_sim[by_idx], stable=True).indices
        cand_x = cand_x[by_idx][by_sim]
    reps = math.ceil(n_empty / cand_x.shape[0])
    return cand_x.repeat(reps, 1)[:n_empty]


@torch.no_grad()
def kmeans(
    x: Tensor,
    k: int,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: Tensor | None = None,
    distributed: bool = False,
    backend: str = "auto",
    stats: dict[str, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Cosine k-means on ``x`` [N, d] → (centroids [k, d], assignments [N] of ``x``).

    ``init``: starting centroids (else ``k`` random points of ``x``, seeded by ``seed``; rank 0's
    points when distributed). ``distributed=True`` under torch.distributed clusters the union of
    every rank's ``x`` (which may differ in size); the returned centroids are identical on every
    rank and the assignments are those of the local points. The returned centroids are the means
    of the points carrying the returned assignments (plus re-seeded empty clusters).
    ``stats``, when given, receives ``iters`` (iterations run) and ``shift`` (the last one).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty [N, d] tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dtype = x.dtype
    x = x.detach().float()
    dist_on = distributed and is_distributed()
    rank, _ = world()
    d = x.shape[1]
    if init is not None:
        if tuple(init.shape) != (k, d):
            raise ValueError(f"init must have shape {(k, d)}, got {tuple(init.shape)}")
        c = init.detach().float().clone().to(x.device)
    elif not dist_on or rank == 0:
        c = random_init(x, k, seed)
    else:
        c = x.new_empty((k, d))
    if dist_on:
        broadcast_(c, src=0)
    xn = F.normalize(x, dim=1)
    # A column of ones: one index_add gives per-cluster sums and counts (faster than bincount),
    # and one all_reduce carries both.
    x_aug = torch.cat([x, x.new_ones((x.shape[0], 1))], dim=1)
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    shift, n_iter = math.inf, 0
    while n_iter < max(iters, 1):
        n_iter += 1
        sim, labels = assign(xn, c, backend)
        acc = x.new_zeros((k, d + 1)).index_add_(0, labels, x_aug)
        if dist_on:
            all_reduce_sum(acc)
        counts = acc[:, d]
        new = acc[:, :d] / counts.clamp(min=1)[:, None]
        empty = counts == 0
        n_empty = int(empty.sum())
        if n_empty:
            new[empty] = _reseed(x, sim, n_empty, dist_on)
        shift = float((new - c).pow(2).sum())
        c = new
        if shift <= tol:
            break
    if stats is not None:
        stats.update(iters=n_iter, shift=shift)
    return c.to(dtype), labels


class OnlineKMeans:
    """Per-step clustering of the detached fused vectors, with a queue of past batches.

    ``schedule="every_step"`` (the reference): every call refits from scratch (random init,
    seeded by ``seed + step``) on queue + batch. ``schedule="warm"`` *(ours)*: refit every
    ``refit_every`` calls (and on the first call after ``reset``) on the whole queue + batch,
    warm-started from the previous centroids; in between, only assign the batch to the current
    centroids. The queue keeps the last ``queue_batches`` local batches and joins the k-means input
    only once full (the reference's rule); ``reset()`` empties it (call it at each epoch start).
    Distributed: k-means runs over every rank's queue + batch.
    """

    def __init__(
        self,
        k: int,
        *,
        queue_batches: int = 20,
        iters: int = 100,
        tol: float = 1e-4,
        schedule: str = "every_step",
        refit_every: int = 10,
        seed: int = 0,
        distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        if schedule not in ("every_step", "warm"):
            raise ValueError(f"schedule must be 'every_step' or 'warm', got {schedule!r}")
        if refit_every < 1 or queue_batches < 0:
            raise ValueError("refit_every must be >= 1 and queue_batches >= 0")
        self.k = k
        self.queue_batches = queue_batches
        self.iters, self.tol = iters, tol
        self.schedule, self.refit_every = schedule, refit_every
        self.seed, self.distributed, self.backend = seed, distributed, backend
        self.step = 0
        self.centroids: Tensor | None = None
        self._since_refit = 0
        self._refit_due = True
        self._queue: deque[Tensor] = deque(maxlen=max(queue_batches, 1))
        self.last_stats: dict[str, float] = {}

    def reset(self) -> None:
        """Epoch start: empty the queue (the next call refits; warm starts keep the centroids)."""
        self._queue.clear()
        self._refit_due = True

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach()
        refit = (
            self.schedule == "every_step"
            or self.centroids is None
            or self._refit_due
            or self._since_refit >= self.refit_every
        )
        self.last_stats = {"iters": 0}  # k-means iterations of this call (0: assignment only)
        if refit:
            # As the reference: the queue is prepended only once it is completely full (see
            # docs/method.md, Clustering), so a queue longer than an epoch is never used.
            full = self.queue_batches > 0 and len(self._queue) == self.queue_batches
            data = torch.cat([*self._queue, x]) if full else x
            init = self.centroids if self.schedule == "warm" else None
            c, labels = kmeans(
                data,
                self.k,
                iters=self.iters,
                tol=self.tol,
                seed=self.seed + self.step,
                init=init,
                distributed=self.distributed,
                backend=self.backend,
                stats=self.last_stats,
            )
            assignments = labels[data.shape[0] - x.shape[0] :]
            self.centroids, self._since_refit, self._refit_due = c, 0, False
        else:
            assert self.centroids is not None
            c = self.centroids
            assignments = assign(F.normalize(x.float(), dim=1), c.float(), self.backend)[1]
        self._since_refit += 1
        self.step += 1
        if self.queue_batches > 0:
            self._queue.append(x.clone())
        return c, assignments
