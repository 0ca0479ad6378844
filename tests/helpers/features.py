"""Tiny feature stores written through conclugen/features/store.py's own writer and schema, for
training/probe tests.

Rows are random but structured: each label has one centre per modality and a clip's vector is
its label's centre plus noise (non-negative, like post-ReLU backbone features), so the modalities
agree about which clips belong together and training has a signal to find. With
``augmentations`` = N > 0 each row also has N augmented versions per modality (the plain vector
plus fresh noise) in the ``<modality>_aug`` columns, as ``extract.augmentations`` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from conclugen.config import StorageConfig
from conclugen.features import store as F

DEFAULT_DIMS = {"video": 24, "audio": 12, "text": 16}
LABELS = ("anger", "joy", "sadness", "neutral")


def make_arrays(
    n: int,
    dims: Mapping[str, int] = DEFAULT_DIMS,
    labels: Sequence[str] = LABELS,
    noise: float = 0.3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """{"label": int [n], <modality>: float32 [n, dim]} drawn around per-label centres."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(labels), size=n)
    out: dict[str, np.ndarray] = {"label": y}
    for m, d in dims.items():
        centres = rng.normal(0.0, 1.0, size=(len(labels), d))
        x = centres[y] + noise * rng.normal(size=(n, d))
        out[m] = np.maximum(x, 0.0).astype(np.float32)
    return out


def write_feature_store(
    root: str,
    splits: Mapping[str, int] | None = None,
    dims: Mapping[str, int] = DEFAULT_DIMS,
    labels: Sequence[str] = LABELS,
    shards: int = 2,
    seed: int = 0,
    cfg: StorageConfig | None = None,
    noise: float = 0.3,
    augmentations: int = 0,
) -> F.FeatureMeta:
    """Write features/*.parquet (``shards`` files) and meta.json under ``root``; returns the meta.

    ``splits`` maps split name → row count (default: 96 train, 32 val, 16 test).
    ``augmentations``: N augmented versions per clip and modality (0 = plain columns only).
    """
    splits = dict(splits or {"train": 96, "val": 32, "test": 16})
    n = sum(splits.values())
    arr = make_arrays(n, dims, labels, noise=noise, seed=seed)
    split_col = [s for s, k in splits.items() for _ in range(k)]
    order = np.random.default_rng(seed + 1).permutation(n)  # splits interleaved across shards
    rows = [
        {"clip_id": f"clip{i:05d}", "split": split_col[order[i]], "labels": [labels[int(arr["label"][i])]],
         "corpus": "tiny", "n_frames": 4, "n_faces": 4, "n_windows": 1, "audio_seconds": 2.0,
         "duration_s": 2.0, "transcript_source": "manifest", "gaps": [],
         **{m: arr[m][i].tolist() for m in dims}}
        for i in range(n)
    ]
    if augmentations > 0:
        rng = np.random.default_rng(seed + 2)  # its own stream: the plain rows stay those without versions
        for m, d in dims.items():
            views = np.maximum(arr[m][:, None, :] + noise * rng.normal(size=(n, augmentations, d)), 0.0)
            for i, row in enumerate(rows):
                row[F.aug_column(m)] = views[i].astype(np.float32).reshape(-1).tolist()
    writer = F.ShardWriter(root, cfg, tag="tiny", schema=F.feature_schema(dims, augmentations=augmentations))
    per = -(-n // shards)
    for s in range(shards):
        writer.write(F.FEATURES_DIR, rows[s * per : (s + 1) * per])
    meta = F.FeatureMeta(
        corpus="tiny",
        dims=dict(dims),
        label_space=list(labels),
        multilabel=False,
        backbones={m: F.BackboneInfo(name=f"test:{m}", dim=d, trained=False) for m, d in dims.items()},
        augmentations=augmentations,
        augmentation={m: "test: the plain vector plus Gaussian noise" for m in dims} if augmentations else {},
    )
    F.write_meta(root, meta, cfg)
    return meta
