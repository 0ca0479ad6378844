"""The feature-store contract shared by extraction, training, probing and prediction.

Layout under a FEATURES_URI (local path or s3://):

    features/*.parquet   one row per clip: clip_id, split, labels, corpus, one float32 vector per
                         modality (columns "video", "audio", "text"), per-clip facts
                         (n_frames, n_faces, n_windows, audio_seconds) and ``gaps`` (modalities
                         whose input was missing and whose vector is zeros)
    errors/*.parquet     one row per clip that failed: clip_id, video_uri, stage, error
    meta.json            backbones (name, source, dim, trained), dims per modality, label space,
                         multilabel flag, corpus — what training checks before any work starts
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from conclugen import storage
from conclugen.config import MODALITIES, StorageConfig
from conclugen.errors import ConCluGenError

FEATURES_DIR = "features"
ERRORS_DIR = "errors"
META_FILE = "meta.json"
SPLITS = ("train", "val", "test", "unlabeled")


class FeatureStoreError(ConCluGenError, ValueError):
    """A feature store is missing, incomplete or does not match what the caller expects."""


@dataclass
class BackboneInfo:
    name: str  # e.g. "hf:j-hartmann/emotion-english-distilroberta-base" or "offline:minilm"
    dim: int
    trained: bool = True  # False: a seeded, untrained stand-in (see README)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureMeta:
    corpus: str
    dims: dict[str, int]  # modality → vector length
    label_space: list[str]
    multilabel: bool = False
    backbones: dict[str, BackboneInfo] = field(default_factory=dict)
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureMeta:
        raw = json.loads(text)
        raw["backbones"] = {k: BackboneInfo(**v) for k, v in raw.get("backbones", {}).items()}
        return cls(**raw)


def features_uri(root: str) -> str:
    return storage.join(root, FEATURES_DIR)


def errors_uri(root: str) -> str:
    return storage.join(root, ERRORS_DIR)


def write_meta(root: str, meta: FeatureMeta, cfg: StorageConfig | None = None) -> None:
    storage.write_text(storage.join(root, META_FILE), meta.to_json(), cfg)


def read_meta(root: str, cfg: StorageConfig | None = None) -> FeatureMeta:
    uri = storage.join(root, META_FILE)
    try:
        return FeatureMeta.from_json(storage.read_text(uri, cfg))
    except FileNotFoundError:
        raise FeatureStoreError(f"{root} holds no feature store ({META_FILE} missing): run `conclugen extract` first") from None


def check_meta(meta: FeatureMeta, modalities: Sequence[str], expected_dims: dict[str, int] | None = None) -> None:
    """Stop with a clear error when the features cannot feed a model of these modalities/dims."""
    missing = [m for m in modalities if m not in meta.dims]
    if missing:
        raise FeatureStoreError(f"features have no {', '.join(missing)} vectors (have {sorted(meta.dims)})")
    for m, d in (expected_dims or {}).items():
        if m in meta.dims and meta.dims[m] != d:
            raise FeatureStoreError(f"feature dim mismatch for {m}: features have {meta.dims[m]}, expected {d}")


def write_table(uri: str, table: pa.Table, name: str, cfg: StorageConfig | None = None) -> None:
    """Write one Parquet file ``name`` under ``uri``."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(uri, name), buf.getvalue(), cfg)


def read_table(uri: str, cfg: StorageConfig | None = None, columns: Iterable[str] | None = None) -> pa.Table:
    """All Parquet files under ``uri`` as one table (empty table when there are none)."""
    files = storage.list_files(uri, cfg, suffixes=(".parquet",))
    if not files:
        return pa.table({})
    fs, _ = storage.resolve(uri, cfg)
    paths = [storage.resolve(f, cfg)[1] for f in files]
    return pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=list(columns) if columns else None)


def load_arrays(
    root: str,
    modalities: Sequence[str] = MODALITIES,
    splits: Sequence[str] | None = None,
    cfg: StorageConfig | None = None,
) -> dict[str, Any]:
    """Features as numpy: {"clip_id", "split", "labels", <modality>: float32 [N, dim]}, sorted by clip_id."""
    table = read_table(features_uri(root), cfg)
    if table.num_rows == 0:
        raise FeatureStoreError(f"{root} has no feature rows")
    if splits is not None:
        mask = np.isin(np.asarray(table.column("split").to_pylist(), dtype=object), list(splits))
        table = table.filter(pa.array(mask))
    table = table.sort_by("clip_id")
    out: dict[str, Any] = {
        "clip_id": table.column("clip_id").to_pylist(),
        "split": np.asarray(table.column("split").to_pylist(), dtype=object),
        "labels": table.column("labels").to_pylist(),
    }
    for m in modalities:
        col = table.column(m).to_pylist()
        out[m] = np.asarray(col, dtype=np.float32).reshape(len(col), -1)
    return out
