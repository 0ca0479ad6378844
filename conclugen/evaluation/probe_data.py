"""The probe's inputs: one split's features and label lists, label encoding, split clean-up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conclugen.errors import ConCluGenError
from conclugen.features.versions import version_index


class ProbeError(ConCluGenError, ValueError):
    """The probe's inputs are inconsistent (unknown label, wrong shapes, empty split)."""


@dataclass
class ProbeData:
    """One split: features X float32 [N, F] and per-row label lists (canonical names).

    ``versions`` (training splits of a store with augmented versions): per modality, the
    representations of every version, float32 [V, N, d_m] (V = 1 + augmentations, version 0 =
    plain); the blocks, in dict order, are X's columns. None: plain features only.
    """

    X: np.ndarray
    labels: list[list[str]]
    clip_ids: list[str] | None = None
    versions: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        if self.X.ndim != 2:
            raise ProbeError(f"X must be [N, F], got shape {self.X.shape}")
        self.labels = [list(lab) if lab is not None else [] for lab in self.labels]
        if len(self.labels) != self.X.shape[0]:
            raise ProbeError(f"{self.X.shape[0]} feature rows but {len(self.labels)} label rows")
        if self.clip_ids is not None:
            self.clip_ids = [str(c) for c in self.clip_ids]
            if len(self.clip_ids) != self.X.shape[0]:
                raise ProbeError(f"{self.X.shape[0]} feature rows but {len(self.clip_ids)} clip ids")
        if self.versions is not None:
            self._check_versions()

    def _check_versions(self) -> None:
        assert self.versions is not None
        self.versions = {m: np.asarray(v, dtype=np.float32) for m, v in self.versions.items()}
        shapes = {m: v.shape for m, v in self.versions.items()}
        n, v0 = self.X.shape[0], next(iter(shapes.values()), (0,))[0]
        if any(len(s) != 3 or s[0] != v0 or s[1] != n for s in shapes.values()):
            raise ProbeError(f"versions must be [V, {n}, d] with one V for every modality, got {shapes}")
        if sum(s[2] for s in shapes.values()) != self.X.shape[1]:
            raise ProbeError(f"versions have {sum(s[2] for s in shapes.values())} columns, X has {self.X.shape[1]}")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_versions(self) -> int:
        """V: 1 (plain only) or 1 + augmentations."""
        return 1 if not self.versions else int(next(iter(self.versions.values())).shape[0])

    def subset(self, idx: np.ndarray) -> ProbeData:
        ids = None if self.clip_ids is None else [self.clip_ids[i] for i in idx]
        vers = None if self.versions is None else {m: v[:, idx] for m, v in self.versions.items()}
        return ProbeData(self.X[idx], [self.labels[i] for i in idx], ids, vers)


def encode_targets(
    labels: Sequence[Sequence[str]], label_space: Sequence[str], multilabel: bool
) -> np.ndarray:
    """Label lists → int64 class indices [N] (single-label) or a float32 indicator [N, C].

    Single-label rows must hold exactly one label; unknown names stop with a ProbeError.
    """
    index = {name: i for i, name in enumerate(label_space)}
    unknown = sorted({lab for row in labels for lab in row if lab not in index})
    if unknown:
        raise ProbeError(f"labels {unknown} are not in the label space {list(label_space)}")
    if multilabel:
        y = np.zeros((len(labels), len(label_space)), dtype=np.float32)
        for i, row in enumerate(labels):
            for lab in row:
                y[i, index[lab]] = 1.0
        return y
    bad = [i for i, row in enumerate(labels) if len(row) != 1]
    if bad:
        raise ProbeError(
            f"single-label probe: {len(bad)} rows do not hold exactly one label (first: row {bad[0]})"
        )
    return np.asarray([index[row[0]] for row in labels], dtype=np.int64)


def holdout_val(train: ProbeData, frac: float, seed: int) -> tuple[ProbeData, ProbeData]:
    """(train, val): a seeded hold-out of ``frac`` of ``train``, stratified by the first label;
    every stratum of at least 2 rows gives at least one."""
    rng = np.random.default_rng(seed)
    keys = np.asarray([row[0] if row else "" for row in train.labels], dtype=object)
    val_idx: list[int] = []
    for k in sorted(set(keys.tolist())):
        idx = np.flatnonzero(keys == k)
        rng.shuffle(idx)
        take = int(round(frac * len(idx))) if len(idx) >= 2 else 0
        if take == 0 and len(idx) >= 2:
            take = 1
        val_idx.extend(idx[:take].tolist())
    mask = np.zeros(len(train), dtype=bool)
    mask[val_idx] = True
    return train.subset(np.flatnonzero(~mask)), train.subset(np.flatnonzero(mask))


def drop_unlabeled(d: ProbeData, name: str, notes: list[str]) -> ProbeData:
    """``d`` without its rows that hold no label (a note in ``notes`` says how many went)."""
    keep = np.asarray([len(row) > 0 for row in d.labels], dtype=bool)
    if keep.all():
        return d
    notes.append(f"{name}: {int((~keep).sum())} rows without a label left out")
    return d.subset(np.flatnonzero(keep))


def train_version_choices(n_versions: int) -> range:
    """The versions a training sample is drawn from: the augmented ones only, 1..N. The
    reference's PrecomputedFeaturesVideoClassificationDataset (src/data/datasets/video_dataset.py,
    ``_load_possibly_augmented_samples``) picks among the augmented feature folders of a
    modality (``_add_augmented_data_key`` in video_datamodule.py replaces the plain folder by
    aug1..aug10); val and test read the plain features."""
    return range(1, n_versions) if n_versions > 1 else range(0, 1)


def epoch_features(data: ProbeData, epoch: int, seed: int) -> np.ndarray:
    """The training features of ``epoch``: per sample and modality one version drawn by
    :func:`conclugen.features.versions.version_index` (a pure function of seed, epoch, modality
    and clip id), the modalities' blocks concatenated in X's column order. Plain X when ``data``
    has no versions. Rows without a clip id are keyed by their position."""
    if not data.versions or data.n_versions < 2:
        return data.X
    ids = data.clip_ids if data.clip_ids is not None else [str(i) for i in range(len(data))]
    rows = np.arange(len(data))
    choices = train_version_choices(data.n_versions)
    parts = [v[version_index(ids, m, epoch, seed, choices), rows] for m, v in data.versions.items()]
    return np.concatenate(parts, axis=1)
