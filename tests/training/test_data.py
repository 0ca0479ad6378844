"""Each worker's batches: fixed-size local batches from a streamed or cached shard, the batch
plan, the conversion of Ray Data batches to tensors, and the choice of augmented versions (fake
shards, no Ray); the datasets built from a store with augmented versions (Ray Data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conclugen.config import load_config
from conclugen.features.store import aug_column
from conclugen.training.data import (
    CLIP_ID,
    BatchPlan,
    ShardCache,
    Versions,
    WorkerBatches,
    build_datasets,
    feats_from_batch,
    feature_stats,
    iter_fixed,
    second_view_key,
    stack_vectors,
    val_batch_size,
)
from conclugen.training.errors import PretrainError
from conclugen.training.shuffle import train_files_of

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
    assert plan == BatchPlan(local_batch=8, steps=4, val_local=4, val_steps=1, world_size=2) and plan.has_val
    assert not BatchPlan.for_world(70, 0, 16, 0, 2).has_val
    for cache in (False, True):
        wb = WorkerBatches(FakeShard(35), FakeShard(5), plan, MODS, CPU, seed=0, rank=1, cache=cache)
        train, val = list(wb.train(0)), list(wb.val())
        assert [b["audio"].shape for b in train] == [(8, 3)] * 4
        assert [b["video"].shape for b in val] == [(4, 4)]
    no_val = WorkerBatches(FakeShard(35), FakeShard(5), BatchPlan(8, 4), MODS, CPU, seed=0, rank=0, cache=True)
    assert no_val.val_shard is None and no_val.val_cache is None


# ----------------------------------------------------------------------------- augmented versions

N_AUG = 4


class AugShard(FakeShard):
    """Rows of clips ``ids`` (indices) whose every value tells clip and version apart: version v
    (0 = plain) of clip i is filled with ``1000·i + v``."""

    def __init__(self, ids: list[int], n_aug: int = N_AUG) -> None:
        self.n, self.read = len(ids), 0
        base = np.asarray(ids, dtype=np.float32)[:, None] * 1000
        self.arrays = {CLIP_ID: np.asarray([f"clip{i:04d}" for i in ids], dtype=object)}
        for m, d in (("video", 4), ("audio", 3)):
            self.arrays[m] = np.repeat(base, d, axis=1)
            versions = base[:, :, None] + np.arange(1, n_aug + 1, dtype=np.float32)[None, :, None]
            self.arrays[aug_column(m)] = np.repeat(versions, d, axis=2).reshape(len(ids), n_aug * d)


def drawn(batches) -> dict[str, dict[int, int]]:
    """Batch key → {clip index: version} over all rows of ``batches`` (every entry of a row agrees)."""
    out: dict[str, dict[int, int]] = {}
    for b in batches:
        for key, t in b.items():
            assert torch.equal(t, t[:, :1].expand_as(t)), key  # one version per row, whole vectors
            for v in t[:, 0].tolist():
                out.setdefault(key, {})[int(v) // 1000] = int(v) % 1000
    return out


def cached(ids: list[int], local: int, versions: Versions, epoch: int, seed: int | None = 5) -> dict:
    cache = ShardCache(AugShard(ids), MODS, CPU, versions)
    return drawn(cache.batches(local, len(ids) // local, seed, epoch))


def streamed(ids: list[int], local: int, versions: Versions, epoch: int) -> dict:
    return drawn(iter_fixed(AugShard(ids), local, len(ids) // local, None, MODS, CPU, versions, epoch))


def test_training_rows_draw_an_augmented_version_per_modality_and_epoch():
    ids = list(range(64))
    v = Versions(N_AUG, seed=127)
    e0, e1 = cached(ids, 8, v, epoch=0), cached(ids, 8, v, epoch=1)
    for got in (e0, e1):
        assert set(got) == {"video", "audio"} and set(got["video"]) == set(ids)  # every clip, once
        assert all(1 <= x <= N_AUG for m in got for x in got[m].values())  # never the plain version
        assert len(set(got["video"].values())) == N_AUG  # all four versions occur
    # Two epochs draw differently (independent draws over 4 agree on about a quarter of the clips).
    assert np.mean([e0["video"][i] == e1["video"][i] for i in ids]) < 0.6
    assert np.mean([e0["video"][i] == e0["audio"][i] for i in ids]) < 0.6  # and modalities independently
    # The same seed draws the same whatever the permutation, the batch size or the path.
    assert cached(ids, 16, v, epoch=0, seed=99) == e0 == streamed(ids, 8, v, epoch=0)
    assert cached(ids, 8, Versions(N_AUG, seed=128), epoch=0) != e0


def test_two_workers_shards_draw_what_one_process_draws():
    ids = list(range(48))
    v = Versions(N_AUG, seed=3, second=("video",))
    whole = cached(ids, 8, v, epoch=2)
    for draw in (cached, streamed):
        halves = [draw(ids[r::2], 4, v, epoch=2) for r in range(2)]  # Ray Data's split: any rows per rank
        merged = {k: {**halves[0][k], **halves[1][k]} for k in whole}
        assert merged == whole


def test_second_view_is_another_version():
    ids = list(range(200))
    got = cached(ids, 8, Versions(N_AUG, seed=1, second=("video",)), epoch=0)
    second = got[second_view_key("video")]
    assert second_view_key("audio") not in got
    assert all(1 <= second[i] <= N_AUG and second[i] != got["video"][i] for i in ids)
    pairs = {(got["video"][i], second[i]) for i in ids}
    assert len(pairs) == N_AUG * (N_AUG - 1)  # every ordered pair of distinct versions occurs
    # One augmented version: the views are version 1 and the plain vector.
    one = drawn(ShardCache(AugShard(ids[:16], n_aug=1), MODS, CPU, Versions(1, 1, ("video",))).batches(8, 2, 0))
    assert set(one["video"].values()) == {1} and set(one[second_view_key("video")].values()) == {0}


def test_validation_and_stores_without_versions_read_the_plain_vectors():
    plan = BatchPlan(local_batch=8, steps=2, val_local=8, val_steps=2)
    v = Versions(N_AUG, seed=0, second=("video",))
    for cache in (False, True):
        wb = WorkerBatches(AugShard(list(range(16))), AugShard(list(range(100, 116))), plan, MODS, CPU,
                           seed=0, rank=0, cache=cache, versions=v)
        val = drawn(wb.val())
        assert set(val) == {"video", "audio"} and set(val["video"].values()) == {0}
        assert set(drawn(wb.train(0))["video"].values()) <= set(range(1, N_AUG + 1))
        plain = WorkerBatches(AugShard(list(range(16))), None, BatchPlan(8, 2), MODS, CPU, seed=0, rank=0,
                              cache=cache, versions=Versions(0, seed=0))
        assert set(drawn(plain.train(0))["video"].values()) == {0}


@pytest.mark.ray
@pytest.mark.parametrize("stream", [False, True])
def test_datasets_carry_clip_ids_and_versions_for_training_only(ray_cluster, tmp_path, stream):
    from tests.helpers.features import write_feature_store

    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 24, "val": 8}, dims={"video": 6, "audio": 3}, augmentations=2)
    cfg = load_config(None, [f"workdir={tmp_path}", "model.modalities=[video, audio]"])
    ds = build_datasets(root, cfg, has_val=True, stream=stream)
    assert set(ds["train"].columns()) == {CLIP_ID, "video", "audio", "video_aug", "audio_aug"}
    assert set(ds["val"].columns()) == {"video", "audio"}
    wb = WorkerBatches(ds["train"], ds["val"], BatchPlan(8, 3, 8, 1), MODS, CPU, seed=0, rank=0,
                       cache=not stream, versions=Versions(2, seed=0, second=("video",)))
    train = list(wb.train(0))
    assert [sorted(b) for b in train] == [sorted(["video", "audio", second_view_key("video")])] * 3
    assert all(b["video"].shape == (8, 6) and b["audio"].shape == (8, 3) for b in train)
    assert all(not torch.equal(b["video"], b[second_view_key("video")]) for b in train)
    assert [sorted(b) for b in wb.val()] == [["audio", "video"]]
    # A store without versions: the training dataset has the clip ids and the modality columns.
    write_feature_store(str(tmp_path / "plain"), splits={"train": 24}, dims={"video": 6, "audio": 3})
    plain = build_datasets(str(tmp_path / "plain"), cfg, has_val=False, stream=stream)["train"]
    assert plain.columns() == [CLIP_ID, *MODS]
    # Streamed, the train dataset carries the training files for the global shuffle.
    files = train_files_of(plain.streaming_split(1)[0]) if stream else None
    assert (files is not None) == stream
    if stream:
        assert files.columns == (CLIP_ID, *MODS) and len(files.paths) == 2 and files.splits == ("train", "unlabeled")
        local = load_config(None, [f"workdir={tmp_path}", "model.modalities=[video, audio]", "train.shuffle=local"])
        local_ds = build_datasets(str(tmp_path / "plain"), local, has_val=False, stream=True)["train"]
        assert train_files_of(local_ds.streaming_split(1)[0]) is None


@pytest.mark.ray
def test_feature_stats_match_numpy_over_the_training_rows(ray_cluster, tmp_path):
    """The input standardisation's statistics: per-dimension mean and (population) std of the
    plain vectors of the training rows (train + unlabeled), constant dimensions std 1."""
    from conclugen.features.store import load_arrays
    from tests.helpers.features import write_feature_store

    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 30, "unlabeled": 20, "val": 8}, dims={"video": 6, "audio": 3})
    cfg = load_config(None, [f"workdir={tmp_path}", "model.modalities=[video, audio]"])
    ds = build_datasets(root, cfg, has_val=True, stream=True)
    stats = feature_stats(ds["train"], MODS)
    rows = load_arrays(root, MODS, splits=("train", "unlabeled"))
    for m in MODS:
        x = rows[m].astype(np.float64)
        np.testing.assert_allclose(stats[m][0], x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[m][1], x.std(0), rtol=1e-5, atol=1e-6)
    const = _items_dataset({"video": np.ones((5, 2), np.float32)})
    mean, std = feature_stats(const, ["video"])["video"]
    assert mean.tolist() == [1.0, 1.0] and std.tolist() == [1.0, 1.0]


def _items_dataset(cols: dict[str, np.ndarray]):
    import ray.data

    return ray.data.from_items([{k: v[i] for k, v in cols.items()} for i in range(len(next(iter(cols.values()))))])
