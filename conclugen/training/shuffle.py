"""The per-epoch global shuffle of streamed training data (``train.shuffle=global``; see
docs/method.md, Pretraining).

Stores are written in manifest order (by speaker, by video), so batches cut from the files in
order would draw their contrastive negatives mostly from one speaker. Instead every rank reads its
training rows straight from the Parquet files (pyarrow, no Ray Data task per epoch), in an order
that is a pure function of (seed, epoch, rank, world size):

1. *Units* are the stores' Parquet row groups, restricted to the training splits (scanned once per
   process: footers and the ``split`` column).
2. Each epoch the units are permuted by (seed, epoch) and laid end to end, each unit's rows in a
   (seed, epoch, unit) permutation; rank r takes rows [r·R, (r+1)·R) of that sequence, R = steps ×
   local batch. So every used row is read by exactly one rank, every rank gets the same number of
   rows, and the rows past ``world_size``·R (fewer than a global batch) are a different random set
   each epoch.
3. A rank groups its consecutive units into *windows* of at most ``window_rows`` rows
   (``train.shuffle_window_mb`` of vectors; a single larger unit is a window of its own), reads
   the next window in a background thread while the current one is used (≤ 2 windows in memory),
   and cuts batches from each window's rows in a (seed, epoch, rank, window) permutation.

When a window holds the rank's whole share the batches are uniform random samples of it (the
order a full in-memory permutation would give); with smaller windows a batch mixes the rows of
the window's K units only, so two rows of one batch share a unit with probability ≈ 1/K: stores
of small row groups shuffle better in the same memory. Resume restarts at an epoch boundary and
recomputes the same order in a fresh process.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conclugen.training.errors import PretrainError

# Domains of the (seed, epoch, ...) random streams, so no two uses share one.
_UNIT_ORDER, _UNIT_ROWS, _WINDOW_ROWS = 0, 1, 2
_SEED_MOD = 2**63


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) % _SEED_MOD for p in parts])


TRAIN_FILES_KEY = "conclugen.train_files"  # DataContext config of a streamed train dataset: TrainFiles


@dataclass(frozen=True)
class TrainFiles:
    """What a rank needs to read the training rows itself: built on the driver
    (:func:`conclugen.training.data.build_datasets`), travelling with the train dataset."""

    fs: Any  # pyarrow FileSystem (the driver's, as Ray Data's read tasks get it)
    paths: tuple[str, ...]  # sorted: the unit numbering must not depend on listing order
    columns: tuple[str, ...]  # clip_id, the modalities (and their augmented columns)
    splits: tuple[str, ...]
    window_rows: int


@dataclass(frozen=True)
class Unit:
    """One Parquet row group's training rows."""

    file: int
    row_group: int
    rows: np.ndarray  # int64 indices of the training rows inside the row group


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of a unit's (seed, epoch) row permutation."""

    unit: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def scan_units(files: TrainFiles) -> list[Unit]:
    """Every row group that holds training rows, in (path, row group) order."""
    units = []
    for i, path in enumerate(files.paths):
        with files.fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            split = pf.read(columns=["split"]).column("split").to_numpy(zero_copy_only=False)
            keep = np.isin(split, list(files.splits))
            start = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                rows = np.nonzero(keep[start : start + n])[0]
                if len(rows):
                    units.append(Unit(i, g, rows.astype(np.int64)))
                start += n
    return units


def epoch_pieces(sizes: Sequence[int], seed: int, epoch: int, world_size: int, rank: int,
                 per_rank: int) -> list[Piece]:
    """Rank ``rank``'s share of the epoch (step 2 of the module docstring)."""
    sizes_ = np.asarray(sizes, dtype=np.int64)
    if per_rank * world_size > int(sizes_.sum()):
        raise PretrainError(f"the training files hold {int(sizes_.sum())} rows, fewer than the "
                            f"{world_size} × {per_rank} an epoch takes")
    order = _rng(_UNIT_ORDER, seed, epoch).permutation(len(sizes_))
    ends = np.cumsum(sizes_[order])
    starts = ends - sizes_[order]
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    hit = np.nonzero((ends > lo) & (starts < hi))[0]
    return [Piece(int(order[j]), int(max(starts[j], lo) - starts[j]), int(min(ends[j], hi) - starts[j]))
            for j in hit]


def group_windows(pieces: Sequence[Piece], window_rows: int) -> list[list[Piece]]:
    """Consecutive pieces in windows of at most ``window_rows`` rows (a larger piece alone)."""
    out: list[list[Piece]] = []
    cur: list[Piece] = []
    n = 0
    for p in pieces:
        if cur and n + p.rows > window_rows:
            out.append(cur)
            cur, n = [], 0
        cur.append(p)
        n += p.rows
    if cur:
        out.append(cur)
    return out


def column_array(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A vector column (list<float>) → float32 [n, dim]; any other column → a numpy array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), -1)
    return arr.to_numpy(zero_copy_only=False)


def read_window(files: TrainFiles, units: Sequence[Unit], pieces: Sequence[Piece], seed: int,
                epoch: int) -> dict[str, np.ndarray]:
    """The rows of a window's pieces, column → array (rows in piece order).

    Each file is opened once per window, and each piece's rows are gathered straight from the
    decoded row group into the window's preallocated arrays: one copy after Parquet decoding
    (an Arrow ``take`` on list columns and a final concatenation cost 3× the read)."""
    out: dict[str, np.ndarray] = {}
    total = sum(p.rows for p in pieces)
    by_file: dict[int, list[tuple[int, Piece]]] = {}
    pos = 0
    for p in pieces:
        by_file.setdefault(units[p.unit].file, []).append((pos, p))
        pos += p.rows
    for f, located in by_file.items():
        with files.fs.open_input_file(files.paths[f]) as fh:
            pf = pq.ParquetFile(fh)
            for pos, p in located:
                unit = units[p.unit]
                rows = unit.rows[_rng(_UNIT_ROWS, seed, epoch, p.unit).permutation(len(unit.rows))[p.start : p.stop]]
                table = pf.read_row_group(unit.row_group, columns=list(files.columns))
                for c in files.columns:
                    a = column_array(table.column(c))
                    if c not in out:
                        out[c] = np.empty((total, *a.shape[1:]), a.dtype)
                    np.take(a, rows, axis=0, out=out[c][pos : pos + p.rows])
    return out


_END = object()


def prefetched(loads: Sequence[Callable[[], Any]], depth: int = 2,
               then: Callable[[bool], None] | None = None) -> Iterator[Any]:
    """``load()`` results in order, computed in a background thread at most ``depth`` ahead of
    the one the caller is done with (pyarrow reads release the GIL, so reading overlaps the
    training step). Closing the iterator early stops the thread before its next load.

    ``then(True)`` runs in the same thread after the last load, once the caller is done with all
    but the last result (it takes that one's slot): the place to read ahead into the next epoch
    without holding more than ``depth`` results. After an early close or a failed load the
    thread calls ``then(False)`` instead; either way exactly once."""
    slots, out, stop = threading.Semaphore(depth), queue.Queue(), threading.Event()

    def run() -> None:
        go = False
        try:
            for load in loads:
                slots.acquire()
                if stop.is_set():
                    return
                out.put((True, load()))
            out.put((True, _END))
            slots.acquire()
            go = not stop.is_set()
        except BaseException as e:  # noqa: BLE001  handed to the consumer
            out.put((False, e))
        finally:
            if then is not None:
                then(go)

    threading.Thread(target=run, daemon=True, name="conclugen-shuffle-read").start()
    finished = False
    try:
        while True:
            ok, value = out.get()
            if not ok:
                raise value
            if value is _END:
                finished = True
                return
            yield value
            slots.release()
    finally:
        if not finished:
            stop.set()
        slots.release()  # a producer waiting for a slot wakes (and, after an early close, ends)


def fixed_batches(windows: Iterator[dict[str, np.ndarray]], local_batch: int, steps: int, seed: int,
                  epoch: int, rank: int) -> Iterator[dict[str, np.ndarray]]:
    """Exactly ``steps`` batches of ``local_batch`` rows: each window's rows in a (seed, epoch,
    rank, window) permutation, a batch may span two windows."""
    pending: list[dict[str, np.ndarray]] = []
    have = done = 0
    for w, arrays in enumerate(windows):
        m = len(next(iter(arrays.values())))
        perm = _rng(_WINDOW_ROWS, seed, epoch, rank, w).permutation(m)
        pos = 0
        while pos < m and done < steps:
            take = min(local_batch - have, m - pos)
            idx = perm[pos : pos + take]
            pending.append({c: a[idx] for c, a in arrays.items()})
            have, pos = have + take, pos + take
            if have == local_batch:
                yield pending[0] if len(pending) == 1 else {c: np.concatenate([p[c] for p in pending])
                                                            for c in arrays}
                pending, have, done = [], 0, done + 1
    if done < steps:
        raise PretrainError(f"this worker's training files gave {done} full batches, expected {steps}")


class RankReader:
    """One rank's training rows read from the files, per epoch (see the module docstring).

    While an epoch's last window is in use, the next epoch's first window is read in the
    background (same ≤ 2 windows in memory), so an epoch after the first starts without waiting
    for a read; a call with other arguments than the ones read ahead for discards it."""

    def __init__(self, files: TrainFiles) -> None:
        self.files = files
        self.units = scan_units(files)
        self.sizes = [len(u.rows) for u in self.units]
        self._ahead: tuple[tuple[int, ...], Future] | None = None

    @property
    def n_rows(self) -> int:
        return int(sum(self.sizes))

    def pieces(self, epoch: int, seed: int, rank: int, world_size: int, per_rank: int) -> list[list[Piece]]:
        """This rank's windows of the epoch."""
        return group_windows(epoch_pieces(self.sizes, seed, epoch, world_size, rank, per_rank),
                             self.files.window_rows)

    def batches(self, epoch: int, seed: int, rank: int, world_size: int, local_batch: int,
                steps: int, read_ahead: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """The epoch's ``steps`` numpy batches (column → [local_batch, ...]) for this rank;
        ``read_ahead``: read the next epoch's first window at the end (off for the last epoch)."""
        windows = self.pieces(epoch, seed, rank, world_size, local_batch * steps)
        loads = [functools.partial(read_window, self.files, self.units, w, seed, epoch) for w in windows]
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == (epoch, seed, rank, world_size, local_batch * steps):
            loads[0] = functools.partial(_ahead_or, [ahead[1]], loads[0])
        if not read_ahead:
            return fixed_batches(prefetched(loads), local_batch, steps, seed, epoch, rank)
        nxt = (epoch + 1, seed, rank, world_size, local_batch * steps)
        future: Future = Future()
        self._ahead = (nxt, future)

        def then(go: bool) -> None:
            if not go:
                future.cancel()
                return
            try:
                first = self.pieces(*nxt)[0]
                future.set_result(read_window(self.files, self.units, first, seed, epoch + 1))
            except BaseException as e:  # noqa: BLE001  raised where the next epoch asks for it
                future.set_exception(e)

        return fixed_batches(prefetched(loads, then=then), local_batch, steps, seed, epoch, rank)


def _ahead_or(box: list[Future], load: Callable[[], Any]) -> Any:
    """The window read ahead, or ``load()`` when that read was called off (an early close).
    The future leaves ``box`` first: the producer keeps this call for the whole epoch, and a
    future kept with it would keep the window in memory beside the next two."""
    future = box.pop()
    try:
        return future.result()
    except CancelledError:
        return load()


def train_files_of(shard: Any) -> TrainFiles | None:
    """The :class:`TrainFiles` a streamed train dataset built by :func:`conclugen.training.data.build_datasets` carries
    (None for other datasets and for fake shards)."""
    get_context = getattr(shard, "get_context", None)
    if get_context is None:
        return None
    files = get_context().get_config(TRAIN_FILES_KEY)
    return files if isinstance(files, TrainFiles) else None
