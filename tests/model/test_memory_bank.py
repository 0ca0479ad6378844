"""The memory bank (losses.kmeans_schedule=memory_bank): the epoch k-means against numpy written
from docs/method.md (Losses: memory bank), the lookup table, the shard bookkeeping, and the bank
sharded over two gloo processes against the single-process run on the same bank."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conclugen.model.memory_bank import (
    BankClusters,
    MemoryBank,
    NonFiniteBankError,
    bank_init,
    cluster_bank,
    key_scores,
)
from tests.helpers.gloo import spawn_ranks

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _splitmix(key: int, seed: int) -> int:
    """splitmix64 of key ⊕ (seed · golden), top bit dropped, in plain Python integers."""
    z = key ^ (((seed & 0xFFFF_FFFF) * GOLDEN) & M64)
    z = (z + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _np_epoch_kmeans(keys: np.ndarray, x: np.ndarray, k: int, seed: int, iters: int, tol: float):
    """Init: the k rows smallest by (score, key); then cosine k-means: label = argmax cosine to the
    centroids, centroid = mean of its (raw) points, an empty cluster takes the worst-served point;
    stop once Σ‖ΔC‖² ≤ tol."""
    scores = [_splitmix(int(kk), seed) for kk in keys]
    order = sorted(range(len(keys)), key=lambda i: (scores[i], int(keys[i])))
    c = x[[order[i % len(order)] for i in range(k)]].astype(np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for _ in range(iters):
        s = xn @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
        lab = s.argmax(1)
        worst = np.argsort(s[np.arange(len(x)), lab], kind="stable")
        new = np.stack([x[lab == j].mean(0) if (lab == j).any() else np.zeros(x.shape[1]) for j in range(k)])
        for i, j in enumerate([j for j in range(k) if not (lab == j).any()]):
            new[j] = x[worst[i % len(x)]]
        shift = ((new - c) ** 2).sum()
        c = new
        if shift <= tol:
            break
    return c, lab


def _bank(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    keys = rng.choice(1 << 62, size=n, replace=False).astype(np.int64)
    return torch.from_numpy(keys), torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))


def test_key_scores_are_splitmix64_of_key_and_seed() -> None:
    keys, _ = _bank(50, 2, 0)
    for seed in (0, 127, 2**40 + 3):
        got = key_scores(keys, seed).tolist()
        assert got == [_splitmix(int(k), seed) for k in keys]
    assert key_scores(keys, 1).tolist() != key_scores(keys, 2).tolist()


@pytest.mark.parametrize("seed", [0, 5])
def test_epoch_kmeans_matches_numpy_reference(seed: int) -> None:
    keys, x = _bank(300, 6, seed)
    got = cluster_bank(keys, x, 7, iters=50, tol=1e-6, seed=seed, backend="torch")
    c_ref, lab_ref = _np_epoch_kmeans(keys.numpy(), x.numpy().astype(np.float64), 7, seed, 50, 1e-6)
    labels, found = got.lookup(keys)
    assert bool(found.all())
    assert np.array_equal(labels.numpy(), lab_ref)
    assert np.abs(got.centroids.numpy() - c_ref).max() <= 1e-5
    assert len(set(lab_ref.tolist())) == 7  # not vacuous: every cluster used


def test_init_depends_on_the_bank_not_on_its_order_and_cycles() -> None:
    keys, x = _bank(40, 3, 1)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    a, b = bank_init(keys, x, 5, seed=9), bank_init(keys[perm], x[perm], 5, seed=9)
    assert torch.equal(a, b)
    assert not torch.equal(a, bank_init(keys, x, 5, seed=10))
    small = bank_init(keys[:3], x[:3], 7, seed=9)  # 3 rows, 7 clusters: the 3 rows cycled
    assert torch.equal(small[3:6], small[:3]) and torch.equal(small[6], small[0])


def test_lookup_table_round_trip_and_unknown_keys() -> None:
    rng = np.random.default_rng(3)
    keys = torch.from_numpy(rng.choice(1000, size=30, replace=False).astype(np.int64))
    labels = torch.from_numpy(rng.integers(0, 4, size=30))
    table = BankClusters.from_shards(torch.zeros(4, 4), keys, labels)
    assert torch.equal(table.table_keys, torch.sort(keys).values)
    q = torch.cat([keys.flip(0), torch.tensor([1000, -5, 2000])])
    got, found = table.lookup(q)
    assert found.tolist() == [True] * 30 + [False] * 3
    assert torch.equal(got[:30], labels.flip(0)) and got[30:].tolist() == [0, 0, 0]
    empty = BankClusters.from_shards(torch.zeros(4, 4), keys[:0], labels[:0])
    assert empty.lookup(keys)[1].sum() == 0


def test_bank_keeps_the_last_vector_per_clip_in_recording_order() -> None:
    bank = MemoryBank(3, backend="torch")
    bank.add(torch.tensor([5, 1, 9]), torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    bank.add(torch.tensor([1, 7]), torch.tensor([[2.0, 2, 2], [3.0, 3, 3]]))
    keys, vecs = bank.shard()
    assert keys.tolist() == [5, 9, 1, 7]
    assert vecs[2].tolist() == [2.0, 2, 2] and len(bank) == 5
    assert bank.lookup(keys)[1].sum() == 0  # nothing before the first clustering
    clusters = bank.recluster(0)
    assert clusters is not None and len(bank) == 0 and bank.clusters is clusters
    assert bank.lookup(torch.tensor([9, 4]))[1].tolist() == [True, False]
    assert bank.recluster(1) is None and bank.clusters is None  # nothing recorded in epoch 0
    with pytest.raises(ValueError, match="2 clip keys for 1"):
        bank.add(torch.tensor([1, 2]), torch.zeros(1, 3))
    bank.add(torch.tensor([1]), torch.tensor([[float("nan"), 0, 0]]))
    with pytest.raises(NonFiniteBankError, match="epoch 2"):
        bank.recluster(2)


# ----------------------------------------------------------------------------- two gloo processes

WS, K, D = 2, 5, 4
SIZES = (70, 45)  # unequal shards


def _shards() -> list[tuple[torch.Tensor, torch.Tensor]]:
    keys, x = _bank(sum(SIZES), D, 11)
    return [(keys[:SIZES[0]], x[:SIZES[0]]), (keys[SIZES[0]:], x[SIZES[0]:])]


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WS)
    res: dict[str, Any] = {}
    try:
        keys, x = _shards()[rank]
        bank = MemoryBank(K, iters=60, tol=1e-7, seed=20, distributed=True, backend="torch")
        # recorded in three steps; a stale vector of the first clip is recorded first, then replaced
        bank.add(keys[:1], x[:1] + 5.0)
        for part in (slice(0, 30), slice(30, None)):
            bank.add(keys[part], x[part])
        res["init"] = bank_init(keys, x, K, 23, distributed=True)
        c = bank.recluster(3)
        res["clusters"] = (c.centroids, c.table_keys, c.table_labels)
        res["other"] = bank.lookup(_shards()[1 - rank][0])  # clips the other rank trained
        res["empty"] = bank.recluster(4)  # nothing recorded since: None on every rank
    finally:
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_ranks(_worker, tmp_path_factory.mktemp("gloo-bank"), WS)


@pytest.mark.slow
def test_sharded_bank_equals_single_process_on_the_same_bank(ranks: list[dict[str, Any]]) -> None:
    shards = _shards()
    keys, x = torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])
    ref = cluster_bank(keys, x, K, iters=60, tol=1e-7, seed=23, backend="torch")
    (c0, k0, l0), (c1, k1, l1) = ranks[0]["clusters"], ranks[1]["clusters"]
    assert torch.equal(c0, c1) and torch.equal(k0, k1) and torch.equal(l0, l1)  # the same on every rank
    assert torch.equal(k0, ref.table_keys) and torch.equal(l0, ref.table_labels)  # identical labels
    dev = float((c0 - ref.centroids).abs().max())
    print(f"\n[max deviation] sharded bank vs single process: centroids {dev:.3g}, labels equal")
    assert dev <= 1e-5
    assert len(set(ref.table_labels.tolist())) == K  # not vacuous
    for r in range(WS):  # any rank looks up the other rank's clips
        labels, found = ranks[r]["other"]
        want, _ = ref.lookup(shards[1 - r][0])
        assert bool(found.all()) and torch.equal(labels, want)
        assert ranks[r]["empty"] is None
    assert torch.equal(ranks[0]["init"], ranks[1]["init"])
    assert torch.equal(ranks[0]["init"], bank_init(keys, x, K, 23))
