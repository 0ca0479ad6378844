"""Augmented feature versions: reading them from a store's ``<modality>_aug`` columns and
choosing one per sample.

A store extracted with ``extract.augmentations`` = N holds, per clip and modality, the plain
vector (column ``<modality>``, version 0) and N augmented vectors (column ``<modality>_aug``,
flattened [N, dim], versions 1..N). Training and the probe's training split draw one version per
sample, per modality, per epoch (see docs/method.md, Backbones and features); validation and test
use version 0.

The draw is a pure function of (seed, epoch, modality, clip_id), not of an RNG stream: every
rank, every retry and every resume draws the same versions without sharing any state, and the
draw does not depend on which worker reads which block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def augmented_views(column: np.ndarray | Sequence, n: int, dim: int) -> np.ndarray:
    """A ``<modality>_aug`` column (rows of N·dim floats) → float32 [rows, N, dim]."""
    arr = column if isinstance(column, np.ndarray) and column.dtype != object else np.stack(list(column))
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != n * dim:
        raise ValueError(f"augmented column has shape {arr.shape}, expected [rows, {n}·{dim}]")
    return arr.reshape(len(arr), n, dim)


def version_index(
    clip_ids: Sequence[str], modality: str, epoch: int, seed: int, choices: Sequence[int]
) -> np.ndarray:
    """One version per clip, uniform over ``choices`` (e.g. ``range(0, N + 1)``), deterministic in
    (seed, epoch, modality, clip_id)."""
    opts = np.asarray(list(choices), dtype=np.int64)
    if len(opts) == 0:
        raise ValueError("no versions to choose from")
    out = np.empty(len(clip_ids), dtype=np.int64)
    for i, cid in enumerate(clip_ids):
        h = hashlib.blake2b(f"{seed}:{epoch}:{modality}:{cid}".encode(), digest_size=8).digest()
        out[i] = opts[int.from_bytes(h, "little") % len(opts)]
    return out


def select_versions(plain: np.ndarray, views: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row i's vector of version ``index[i]`` (0 = ``plain[i]``, v ≥ 1 = ``views[i, v-1]``)."""
    index = np.asarray(index)
    out = np.array(plain, dtype=np.float32, copy=True)
    aug = index > 0
    if aug.any():
        rows = np.nonzero(aug)[0]
        out[rows] = views[rows, index[rows] - 1]
    return out


def clip_keys(clip_ids: Sequence[str]) -> np.ndarray:
    """A stable int64 key per clip_id (blake2b, 63 bits so it stays non-negative): how tensors
    name a clip (e.g. the memory bank's pseudo-labels), the same on every rank and every run."""
    out = np.empty(len(clip_ids), dtype=np.int64)
    for i, cid in enumerate(clip_ids):
        h = hashlib.blake2b(f"clip:{cid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF
    return out
