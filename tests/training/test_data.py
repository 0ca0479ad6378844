"""Each worker's batches: fixed-size local batches from a streamed or cached shard, the batch
plan, and the conversion of Ray Data batches to tensors (fake shards, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conclugen.training.data import (
    BatchPlan,
    ShardCache,
    WorkerBatches,
    feats_from_batch,
    iter_fixed,
    stack_vectors,
    val_batch_size,
)
from conclugen.training.errors import PretrainError

CPU = torch.device("cpu")
MODS = ["video", "audio"]


class FakeShard:
    """``iter_batches`` as Ray Data's DataIterator answers it (no shuffling); counts the rows read."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.arrays = {"video": rng.random((n, 4), dtype=np.float32), "audio": rng.random((n, 3), dtype=np.float32)}
        self.n, self.read = n, 0

    def iter_batches(self, batch_size: int, batch_format: str, drop_last: bool = False, **_: object):
        for i in range(0, self.n, batch_size):
            if drop_last and i + batch_size > self.n:
                return
            rows = min(batch_size, self.n - i)
            self.read += rows
            yield {m: v[i : i + rows] for m, v in self.arrays.items()}


def test_stack_vectors_and_feats_from_batch():
    obj = np.empty(2, dtype=object)
    obj[:] = [np.ones(3), np.zeros(3)]
    out = stack_vectors({"video": obj, "audio": np.ones((2, 5), dtype=np.float64)})
    assert out["video"].shape == (2, 3) and out["video"].dtype == np.float32 and out["audio"].dtype == np.float32
    t = feats_from_batch({"video": obj, "audio": np.ones((2, 1, 5))}, MODS, CPU)
    assert t["video"].shape == (2, 3) and t["audio"].shape == (2, 5) and t["audio"].dtype == torch.float32


def test_iter_fixed_takes_steps_batches_and_reads_the_shard_to_its_end():
    shard = FakeShard(50)
    got = list(iter_fixed(shard, 8, 3, None, MODS, CPU))
    assert len(got) == 3 and all(b["video"].shape == (8, 4) for b in got)
    assert shard.read == 48  # all six full batches were read, three were used
    with pytest.raises(PretrainError, match="gave 6 full batches, expected 7"):
        list(iter_fixed(FakeShard(50), 8, 7, None, MODS, CPU))


def test_shard_cache_permutes_per_seed():
    cache = ShardCache(FakeShard(20), MODS, CPU)
    assert cache.n == 20
    a, b = list(cache.batches(8, 2, seed=1)), list(cache.batches(8, 2, seed=1))
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b, strict=True))
    c = list(cache.batches(8, 2, seed=2))
    assert not torch.equal(a[0]["video"], c[0]["video"])
    plain = list(cache.batches(8, 2, seed=None))
    assert torch.equal(plain[0]["video"], torch.from_numpy(FakeShard(20).arrays["video"][:8]))
    with pytest.raises(PretrainError, match="has 20 rows, expected ≥ 24"):
        list(cache.batches(8, 3, seed=None))


def test_batch_plan_and_worker_batches():
    assert val_batch_size(10, 32, 4) == 8 and val_batch_size(100, 32, 4) == 32
    plan = BatchPlan.for_world(n_train=70, n_val=10, global_batch=16, val_batch=8, world_size=2)
    assert plan == BatchPlan(local_batch=8, steps=4, val_local=4, val_steps=1) and plan.has_val
    assert not BatchPlan.for_world(70, 0, 16, 0, 2).has_val
    for cache in (False, True):
        wb = WorkerBatches(FakeShard(35), FakeShard(5), plan, MODS, CPU, seed=0, rank=1, cache=cache)
        train, val = list(wb.train(0)), list(wb.val())
        assert [b["audio"].shape for b in train] == [(8, 3)] * 4
        assert [b["video"].shape for b in val] == [(4, 4)]
    no_val = WorkerBatches(FakeShard(35), FakeShard(5), BatchPlan(8, 4), MODS, CPU, seed=0, rank=0, cache=True)
    assert no_val.val_shard is None and no_val.val_cache is None
