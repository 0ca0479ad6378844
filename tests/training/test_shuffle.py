"""The per-epoch global shuffle of streamed training data (conclugen/training/shuffle.py), on
tiny stores written through the real ShardWriter and read back with pyarrow (no Ray): every
training row once per epoch across ranks, equal batches per rank, batches that mix speakers like
uniform random sampling on a store sorted by speaker, epochs that differ, the same order in a
fresh process, and rows that carry their own vectors, versions and clip keys."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from conclugen.features.store import features_uri, load_arrays
from conclugen.features.versions import clip_keys
from conclugen.training.data import CLIP_ID, CLIP_KEY, TRAIN_SPLITS, BatchPlan, Versions, WorkerBatches
from conclugen.training.errors import PretrainError
from conclugen.training.shuffle import RankReader, TrainFiles, epoch_pieces, group_windows, prefetched
from tests.helpers.features import write_feature_store

MODS = ["video", "audio"]
CPU = torch.device("cpu")
SPEAKER_ROWS = 64  # the store is sorted by speaker: clip i belongs to speaker i // 64
# 2048 training rows (train + unlabeled) among 2144, in 127 files of 17 rows (one row group each).
SPLITS = {"train": 1984, "unlabeled": 64, "val": 96}
N_TRAIN = 2048


def train_files(root: str, window_rows: int, columns=(CLIP_ID, *MODS)) -> TrainFiles:
    fs = pafs.LocalFileSystem()
    paths = sorted(str(p) for p in Path(features_uri(root)).glob("*.parquet"))
    return TrainFiles(fs, tuple(paths), tuple(columns), TRAIN_SPLITS, window_rows)


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("sorted") / "feats")
    write_feature_store(root, splits=SPLITS, dims={"video": 4, "audio": 3}, shards=128)
    return root


def speaker(ids) -> np.ndarray:
    return np.asarray([int(str(c)[4:]) // SPEAKER_ROWS for c in ids])


def epoch_ids(reader: RankReader, epoch: int, world: int, global_batch: int, seed: int = 7) -> list[list[np.ndarray]]:
    """Per rank, the epoch's batches as clip-id arrays."""
    steps = reader.n_rows // global_batch
    return [[b[CLIP_ID] for b in reader.batches(epoch, seed, r, world, global_batch // world, steps)]
            for r in range(world)]


def global_batches(per_rank: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Step s's global batch: the ranks' local batches of step s (what the all-gather sees)."""
    return [np.concatenate(step) for step in zip(*per_rank, strict=True)]


def same_speaker_share(batch_ids: np.ndarray) -> float:
    """Share of the batch's unordered row pairs that belong to one speaker."""
    _, counts = np.unique(speaker(batch_ids), return_counts=True)
    n = len(batch_ids)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("window", [100_000, 50])  # one window per rank / a window of ~3 files
def test_every_training_row_once_per_epoch_equal_batches_per_rank(sorted_store, world, window):
    reader = RankReader(train_files(sorted_store, window))
    assert reader.n_rows == N_TRAIN and len(reader.units) == len(reader.files.paths) > 100
    train_ids = set(load_arrays(sorted_store, MODS, splits=TRAIN_SPLITS)["clip_id"])
    epochs = []
    for epoch in (0, 1):
        per_rank = epoch_ids(reader, epoch, world, global_batch=64)
        assert [len(r) for r in per_rank] == [N_TRAIN // 64] * world  # the same steps on every rank
        assert all(len(b) == 64 // world for r in per_rank for b in r)
        flat = np.concatenate([b for r in per_rank for b in r])
        assert len(flat) == len(set(flat)) == N_TRAIN and set(flat) == train_ids  # each row once
        epochs.append(flat)
    # Two epochs order the rows differently (a random permutation fixes ~1 of 2048 positions).
    assert np.mean(epochs[0] == epochs[1]) < 0.02
    # A global batch that does not divide the rows: the epoch drops < one batch, a random set.
    dropped = [set(train_ids) - set(np.concatenate([b for r in epoch_ids(reader, e, world, 96) for b in r]))
               for e in (0, 1)]
    assert [len(d) for d in dropped] == [N_TRAIN % 96] * 2 and dropped[0] != dropped[1]


def test_batches_mix_speakers_like_uniform_random_sampling(sorted_store):
    """On a store sorted by speaker (contiguous 64-row runs over 17-row files), the same-speaker
    share of a global batch's pairs matches uniform random batching.

    Expected share: a batch of B rows drawn uniformly without replacement from N rows with n_s
    rows of speaker s has each of its pairs from one speaker with probability
    p = Σ_s n_s (n_s − 1) / (N (N − 1)), so the mean share over batches is p. Tolerance: 4 standard
    deviations of the mean of k independent batches' shares (σ simulated with numpy's own random
    batches; the batches of an epoch are drawn without replacement, which only lowers the spread).
    """
    ids = np.asarray(load_arrays(sorted_store, MODS, splits=TRAIN_SPLITS)["clip_id"])
    _, n_s = np.unique(speaker(ids), return_counts=True)
    n, batch = len(ids), 64
    p = float((n_s * (n_s - 1)).sum() / (n * (n - 1)))
    rng = np.random.default_rng(2024)
    sigma = np.std([same_speaker_share(rng.choice(ids, batch, replace=False)) for _ in range(4000)])
    # In file order a batch is about one speaker: the shuffle is what brings the share down to p.
    assert np.mean([same_speaker_share(ids[i : i + batch]) for i in range(0, n, batch)]) > 0.6
    reader = RankReader(train_files(sorted_store, 100_000))
    for world in (1, 2):
        shares = [same_speaker_share(b) for e in range(3) for b in global_batches(epoch_ids(reader, e, world, batch))]
        tol = 4 * sigma / np.sqrt(len(shares))
        assert abs(np.mean(shares) - p) < tol, (world, np.mean(shares), p, tol)


def test_small_windows_mix_their_units(sorted_store):
    """With windows of K ≈ 3 units a batch draws from those units only: far better than file
    order, not uniform (the documented cost of small windows)."""
    reader = RankReader(train_files(sorted_store, 50))
    shares = [same_speaker_share(b) for b in global_batches(epoch_ids(reader, 0, 1, 16))]
    assert 0.2 < np.mean(shares) < 0.8


def test_the_order_is_a_function_of_seed_and_epoch_only(sorted_store):
    reader = RankReader(train_files(sorted_store, 300))
    here = [b.tolist() for b in epoch_ids(reader, 3, 2, 64)[1]]
    # A fresh interpreter (as after a resume) computes the same order from (seed, epoch).
    child = (
        "import json, sys, numpy as np, pyarrow.fs as pafs\n"
        "from pathlib import Path\n"
        "from conclugen.features.store import features_uri\n"
        "from conclugen.training.shuffle import RankReader, TrainFiles\n"
        f"root = {sorted_store!r}\n"
        "paths = tuple(sorted(str(p) for p in Path(features_uri(root)).glob('*.parquet')))\n"
        "files = TrainFiles(pafs.LocalFileSystem(), paths, ('clip_id', 'video', 'audio'), ('train', 'unlabeled'), 300)\n"
        "r = RankReader(files)\n"
        "print(json.dumps([b['clip_id'].tolist() for b in r.batches(3, 7, 1, 2, 32, r.n_rows // 64)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == here
    assert here != [b.tolist() for b in epoch_ids(reader, 3, 2, 64, seed=8)[1]]  # the seed matters


def test_rows_carry_their_vectors_versions_and_clip_keys(tmp_path):
    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 40, "val": 8}, dims={"video": 4, "audio": 3}, shards=4,
                        augmentations=2)
    cols = (CLIP_ID, "video", "audio", "video_aug", "audio_aug")
    files = train_files(root, 16, cols)
    plan = BatchPlan.for_world(40, 0, 16, 0, world_size=2)
    versions = Versions(2, seed=5)
    store = load_arrays(root, MODS, splits=TRAIN_SPLITS, augmented=True)
    row = {c: i for i, c in enumerate(store["clip_id"])}
    for rank in (0, 1):
        wb = WorkerBatches(None, None, plan, MODS, CPU, seed=5, rank=rank, cache=False, versions=versions, keys=True,
                           files=files)
        ids = [b[CLIP_ID] for b in wb.reader.batches(1, 5, rank, 2, plan.local_batch, plan.steps)]
        got = list(wb.train(1))
        assert len(got) == plan.steps == 2
        for b, bid in zip(got, ids, strict=True):
            assert torch.equal(b[CLIP_KEY], torch.from_numpy(clip_keys(list(bid))))
            drawn = versions.draw(list(bid), MODS, 1)
            for m in MODS:
                want = store[f"{m}_aug"][[row[c] for c in bid], drawn[m] - 1]
                np.testing.assert_array_equal(b[m].numpy(), want)


def test_epoch_plan_errors_and_windows():
    with pytest.raises(PretrainError, match="hold 30 rows, fewer than the 2 × 16"):
        epoch_pieces([10, 20], seed=0, epoch=0, world_size=2, rank=0, per_rank=16)
    pieces = epoch_pieces([10, 20, 5], seed=1, epoch=0, world_size=2, rank=1, per_rank=16)
    assert sum(p.rows for p in pieces) == 16
    windows = group_windows(pieces, 12)
    assert [q for w in windows for q in w] == pieces
    assert all(sum(q.rows for q in w) <= 12 or len(w) == 1 for w in windows)


def test_prefetched_hands_on_errors_and_stops_early():
    loaded = []

    def load(i):
        loaded.append(i)
        if i == 3:
            raise OSError("disk gone")
        return i

    it = prefetched([lambda i=i: load(i) for i in range(5)], depth=2)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    read = []
    early = prefetched([lambda i=i: read.append(i) or i for i in range(100)], depth=2)
    assert next(early) == 0
    early.close()  # the producer stops instead of reading the remaining windows
    deadline = time.monotonic() + 30
    while any(t.name == "conclugen-shuffle-read" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read in ([0], [0, 1])  # at most the window after the one in use


def test_prefetched_calls_then_once_with_whether_the_caller_read_to_the_end():
    def wait_for(calls: list[bool], n: int) -> None:  # ``then`` runs in the producer thread, after the caller's end
        deadline = time.monotonic() + 30
        while len(calls) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    full: list[bool] = []
    assert list(prefetched([lambda i=i: i for i in range(4)], depth=2, then=full.append)) == [0, 1, 2, 3]
    wait_for(full, 1)
    early: list[bool] = []
    it = prefetched([lambda i=i: i for i in range(50)], depth=2, then=early.append)
    assert next(it) == 0
    it.close()
    wait_for(early, 1)
    time.sleep(0.05)  # a second call would come right after the first
    assert (full, early) == ([True], [False])


def _collect(batches) -> list[np.ndarray]:
    return [b[CLIP_ID] for b in batches]


def test_read_ahead_reads_the_next_epochs_first_window_early_and_changes_no_batch(sorted_store, monkeypatch):
    import conclugen.training.shuffle as shuffle

    files = train_files(sorted_store, 300)  # several windows per epoch
    fresh = [_collect(RankReader(files).batches(e, 7, 0, 1, 64, N_TRAIN // 64, read_ahead=False))
             for e in range(3)]
    read_epochs: list[int] = []
    real = shuffle.read_window
    monkeypatch.setattr(shuffle, "read_window", lambda *a: read_epochs.append(a[4]) or real(*a))
    reader = RankReader(files)
    got = [_collect(reader.batches(0, 7, 0, 1, 64, N_TRAIN // 64))]
    deadline = time.monotonic() + 30
    while 1 not in read_epochs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_epochs.count(1) == 1  # epoch 1's first window, before epoch 1 was asked for
    got.append(_collect(reader.batches(1, 7, 0, 1, 64, N_TRAIN // 64)))
    got.append(_collect(reader.batches(2, 7, 0, 1, 64, N_TRAIN // 64, read_ahead=False)))
    windows = [len(reader.pieces(e, 7, 0, 1, N_TRAIN // 64 * 64)) for e in range(3)]
    assert windows[0] > 1 and read_epochs.count(1) == windows[1]  # that window was not read twice
    assert read_epochs.count(3) == 0  # nothing read ahead after the last epoch
    for e in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(got[e], fresh[e], strict=True)), f"epoch {e} differs"


def test_an_epoch_closed_early_does_not_stall_the_next(sorted_store):
    files = train_files(sorted_store, 300)
    expected = _collect(RankReader(files).batches(1, 7, 0, 1, 64, N_TRAIN // 64, read_ahead=False))
    reader = RankReader(files)
    first = reader.batches(0, 7, 0, 1, 64, N_TRAIN // 64)
    next(first)
    first.close()  # e.g. a non-finite loss: the read-ahead into epoch 1 is called off
    got: list = []
    t = threading.Thread(target=lambda: got.append(_collect(reader.batches(1, 7, 0, 1, 64, N_TRAIN // 64))))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the next epoch waited for a read-ahead that never came"
    assert all(np.array_equal(a, b) for a, b in zip(got[0], expected, strict=True))
