"""The feature-store contract shared by extraction, training, probing and prediction.

Layout under a FEATURES_URI (local path or s3://):

    features/*.parquet   one row per clip (:data:`FEATURE_SCHEMA`): clip_id, split, labels, corpus,
                         one float32 vector per modality (columns "video", "audio", "text"),
                         per-clip facts (n_frames, n_faces, n_windows, audio_seconds, ...) and
                         ``gaps`` (modalities whose input was missing and whose vector is zeros)
    errors/*.parquet     one row per clip that failed (:data:`ERROR_SCHEMA`): clip_id, video_uri,
                         stage, error (``"<Type>: message"``, see :func:`error_text`)
    manifest/            the clips an extraction run is processing (its own layout:
                         :mod:`conclugen.features.manifest_store`); never read as features
    compact.json         only while ``conclugen compact`` runs (:mod:`conclugen.features.compact`)
    <modality>_aug       (only when extracted with ``extract.augmentations`` = N > 0) the N augmented
                         versions of that modality's vector, flattened row-major [N, dim]; see
                         :mod:`conclugen.features.versions` for reading and choosing versions
    meta.json            backbones (name, source, dim, trained), dims per modality, label space,
                         multilabel flag, corpus — what training checks before any work starts

Shards are written by :class:`ShardWriter` (``part-<run tag>-<seq>``) or, from the extraction's
write tasks, under :func:`shard_name` (a hash of the shard's clip_ids: a retried task overwrites
its own file). Files are written atomically on local disks. :func:`written_ids` is the resume
scan: the clips already in features/ or errors/. This module is the only writer and reader of
that layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
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
from conclugen.features.versions import augmented_views

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
ERRORS_DIR = "errors"
META_FILE = "meta.json"
SPLITS = ("train", "val", "test", "unlabeled")

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("intensities", pa.list_(pa.float32())),
        pa.field("corpus", pa.string()),
        pa.field("video", pa.list_(pa.float32())),  # concat(image, video3d)
        pa.field("audio", pa.list_(pa.float32())),
        pa.field("text", pa.list_(pa.float32())),
        pa.field("n_frames", pa.int32()),  # face frames (1 fps)
        pa.field("n_faces", pa.int32()),  # of which a face was detected in
        pa.field("n_windows", pa.int32()),  # 16-frame windows
        pa.field("audio_seconds", pa.float32()),
        pa.field("duration_s", pa.float32()),
        pa.field("truncated_to_s", pa.float32()),  # null unless cut to max_clip_seconds
        pa.field("transcript_source", pa.string()),  # manifest | asr | none
        pa.field("gaps", pa.list_(pa.string())),  # modalities whose input was missing (zeros)
    ]
)
ERROR_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
    ]
)


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
    augmentations: int = 0  # augmented versions per clip in the <modality>_aug columns
    # modality → how its versions were made, or why that modality's versions equal the plain one
    augmentation: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureMeta:
        raw = json.loads(text)
        raw["backbones"] = {k: BackboneInfo(**v) for k, v in raw.get("backbones", {}).items()}
        return cls(**raw)


AUG_SUFFIX = "_aug"


def aug_column(modality: str) -> str:
    """The column holding ``modality``'s augmented versions (flattened [N, dim])."""
    return modality + AUG_SUFFIX


def feature_schema(modalities: Iterable[str] = MODALITIES, augmentations: int = 0) -> pa.Schema:
    """:data:`FEATURE_SCHEMA` with only these modality vector columns (extraction writes all
    three; a store for a subset of modalities leaves the others out), plus one
    ``<modality>_aug`` column per modality when ``augmentations`` > 0."""
    keep = [m for m in MODALITIES if m in set(modalities)]
    fields = [f for f in FEATURE_SCHEMA if f.name not in MODALITIES or f.name in keep]
    if augmentations > 0:
        fields += [pa.field(aug_column(m), pa.list_(pa.float32())) for m in keep]
    return pa.schema(fields)


def error_text(e: BaseException) -> str:
    """The ``error`` column of an errors row: ``"<Type>: message"``, credentials scrubbed."""
    msg = storage.scrub_secrets(str(e)).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


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


# ------------------------------------------------------------------------------------ shards


TMP_SUFFIX = ".tmp"


ROW_GROUP_BYTES = 4 * 1024**2


def write_parquet(uri: str, table: pa.Table, cfg: StorageConfig | None = None,
                  row_group_size: int | None = None) -> None:
    """Write one Parquet file; on local disks via a temp name + rename, so a crash never leaves
    half a Parquet file that a resume would trip over (S3 PUTs are atomic already). The temp name
    is unique per call: two attempts at one shard (a retried task whose first attempt still runs)
    never write into each other's temp file; the last rename wins with equal content.

    Row groups default to about :data:`ROW_GROUP_BYTES` each: training's global shuffle
    (:mod:`conclugen.training.shuffle`) permutes row groups, so a 128 MB shard written as one group
    would mix only a few groups per batch."""
    buf = io.BytesIO()
    if row_group_size is None and table.num_rows:
        row_group_size = max(1, int(ROW_GROUP_BYTES * table.num_rows // max(1, table.nbytes)))
    pq.write_table(table, buf, row_group_size=row_group_size)
    if storage.is_s3(uri):
        storage.write_bytes(uri, buf.getvalue(), cfg)
        return
    fs, path = storage.resolve(uri, cfg)
    tmp = f".{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    storage.write_bytes(uri + tmp, buf.getvalue(), cfg)
    fs.move(path + tmp, path)


def shard_name(clip_ids: Iterable[str]) -> str:
    """``part-<hash of the sorted clip_ids>.parquet``: the same rows always get the same name, so a
    retried write task (or a re-run that regroups nothing) overwrites instead of duplicating."""
    h = hashlib.sha256("\n".join(sorted(clip_ids)).encode()).hexdigest()[:24]
    return f"part-{h}.parquet"


def write_table(uri: str, table: pa.Table, name: str, cfg: StorageConfig | None = None) -> None:
    """Write one Parquet file ``name`` under ``uri``."""
    write_parquet(storage.join(uri, name), table, cfg)


class ShardWriter:
    """Writes features/ and errors/ shards named ``part-<tag>-<seq>.parquet``: ``tag`` is unique
    per run, so shards of an interrupted run and of its resume never collide."""

    def __init__(self, root: str, cfg: StorageConfig | None, tag: str,
                 schema: pa.Schema = FEATURE_SCHEMA) -> None:
        self.root, self.cfg, self.tag = root, cfg, tag
        self.schemas = {FEATURES_DIR: schema, ERRORS_DIR: ERROR_SCHEMA}
        self.seq = 0

    def write(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` (dicts of the schema's columns) as one shard of ``kind`` (FEATURES_DIR
        or ERRORS_DIR); nothing for no rows."""
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=self.schemas[kind])
        write_table(storage.join(self.root, kind), table, f"part-{self.tag}-{self.seq:05d}.parquet", self.cfg)
        self.seq += 1


def shard_ids(root: str, sub: str, cfg: StorageConfig | None = None) -> dict[str, pa.Array]:
    """shard URI → its clip_ids (Arrow) for every shard of ``root``/``sub`` (FEATURES_DIR or
    ERRORS_DIR). Leftover temp files and unreadable shards (a crash while writing to an object
    store that is not atomic) are deleted so their clips are redone."""
    out: dict[str, pa.Array] = {}
    for f in storage.list_files(storage.join(root, sub), cfg):
        if f.endswith(TMP_SUFFIX):
            storage.delete(f, cfg)
            continue
        if not f.endswith(".parquet"):
            continue
        fs, path = storage.resolve(f, cfg)

        def read(fs: Any = fs, path: str = path) -> pa.Array:
            with fs.open_input_file(path) as fh:
                return pq.read_table(fh, columns=["clip_id"]).column("clip_id").combine_chunks()

        try:  # I/O errors (OSError) are retried and, past the budget, raised: an outage deletes nothing
            out[f] = storage.with_retries(read, f"read {f}", **storage.retry_policy(f, cfg))
        except storage.StorageError:
            raise
        except Exception as e:  # a broken shard (not Parquet, truncated): redo its clips
            log.warning("unreadable shard %s (%s): deleting it, its clips are redone", f, error_text(e))
            storage.delete(f, cfg)
    return out


def written_id_arrays(root: str, cfg: StorageConfig | None = None) -> tuple[pa.Array, pa.Array]:
    """:func:`written_ids` as Arrow string arrays (features, errors), for filters at 1M clips."""
    def ids(sub: str) -> pa.Array:
        arrays = list(shard_ids(root, sub, cfg).values())
        return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())

    return ids(FEATURES_DIR), ids(ERRORS_DIR)


def written_ids(root: str, cfg: StorageConfig | None = None) -> tuple[set[str], set[str]]:
    """clip_ids already under ``root``'s features/ and errors/ (see :func:`shard_ids`)."""
    f, e = written_id_arrays(root, cfg)
    return set(f.to_pylist()), set(e.to_pylist())


# ----------------------------------------------------------------------------------- reading


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
    *,
    augmented: bool = False,
) -> dict[str, Any]:
    """Features as numpy: {"clip_id", "split", "labels", <modality>: float32 [N, dim]}, sorted by clip_id.

    ``augmented``: also ``<modality>_aug`` (:func:`aug_column`) as float32 [N, versions, dim] for
    each modality whose column the store has (a store without them: nothing added)."""
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
        if augmented and aug_column(m) in table.column_names:
            views = np.asarray(table.column(aug_column(m)).to_pylist(), dtype=np.float32)
            dim = out[m].shape[1]
            out[aug_column(m)] = augmented_views(views, views.shape[1] // dim if dim else 0, dim)
    return out
