"""The extraction's write stage: Ray Data write tasks turn finished pipeline rows into feature and
error shards, so no vector passes through the driver.

:class:`FeatureSink` (a Ray Data ``Datasink``) asks Ray to bundle at least ``rows_per_shard``
rows per write task (:func:`rows_per_shard`: ``extract.shard_mb`` of vectors, capped by
``shard_rows`` when set). A write task assembles store rows block by block
(:func:`conclugen.features.rows.split_batch`, one small block of Python rows at a time), sorts
them by clip_id and writes shards of at most ``rows_per_shard`` rows named by
:func:`conclugen.features.store.shard_name` (a hash of the clip_ids): a retried task writes the
same rows under the same names, overwriting itself. Each task returns a small :class:`Tally`;
the driver sums them. Rows regrouped by a retry upstream can still land twice: the driver's final
duplicate check (:func:`conclugen.features.compact.dedupe_store`) removes them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from conclugen import storage
from conclugen.config import StorageConfig
from conclugen.features.rows import split_batch
from conclugen.features.store import ERROR_SCHEMA, ERRORS_DIR, FEATURES_DIR, shard_name, write_parquet
from conclugen.features.summary import error_reason

MB = 1024**2


def rows_per_shard(dims: dict[str, int], augmentations: int, shard_mb: float, shard_rows: int | None = None) -> int:
    """Rows per feature shard: ``shard_mb`` MB of float32 vectors (all modalities, plain plus
    ``augmentations`` versions), at most ``shard_rows`` when given. ``dims``: per backbone kind."""
    row_bytes = 4 * sum(dims.values()) * (1 + augmentations)
    n = max(1, int(shard_mb * MB // max(1, row_bytes)))
    return min(n, shard_rows) if shard_rows else n


@dataclass
class Tally:
    """What write tasks wrote: rows per kind, errors by reason, gaps, and the files."""

    features: int = 0
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    gaps: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)

    def add_rows(self, feats: list[dict[str, Any]], errs: list[dict[str, Any]]) -> None:
        self.features += len(feats)
        self.errors += len(errs)
        self.reasons.update(error_reason(e["stage"], e["error"]) for e in errs)
        self.gaps.update(g for f in feats for g in f["gaps"])

    def merge(self, other: Tally) -> None:
        self.features += other.features
        self.errors += other.errors
        self.reasons.update(other.reasons)
        self.gaps.update(other.gaps)
        self.files += other.files


def _write_shards(root: str, kind: str, table: pa.Table, per_shard: int, cfg: StorageConfig | None) -> list[str]:
    """``table`` sorted by clip_id and cut into equal shards of at most ``per_shard`` rows."""
    if table.num_rows == 0:
        return []
    table = table.sort_by("clip_id")
    n = math.ceil(table.num_rows / per_shard)
    size = math.ceil(table.num_rows / n)
    uris = []
    for start in range(0, table.num_rows, size):
        part = table.slice(start, size)
        uri = storage.join(root, kind, shard_name(part.column("clip_id").to_pylist()))
        write_parquet(uri, part, cfg)
        uris.append(uri)
    return uris


def write_rows(blocks: Iterable[dict[str, Any]], root: str, cfg: StorageConfig | None, schema: pa.Schema,
               dims: dict[str, int], augmentations: int, per_shard: int) -> Tally:
    """One write task's work: numpy batches of finished pipeline rows → shards of ``root``."""
    tally = Tally()
    parts: dict[str, list[pa.Table]] = {FEATURES_DIR: [], ERRORS_DIR: []}
    for batch in blocks:
        feats, errs = split_batch(batch, dims, augmentations)
        tally.add_rows(feats, errs)
        if feats:  # to Arrow right away: Python floats would take ~8x the vectors' memory
            parts[FEATURES_DIR].append(pa.Table.from_pylist(feats, schema=schema))
        if errs:
            parts[ERRORS_DIR].append(pa.Table.from_pylist(errs, schema=ERROR_SCHEMA))
    for kind, sch in ((FEATURES_DIR, schema), (ERRORS_DIR, ERROR_SCHEMA)):
        table = pa.concat_tables(parts[kind]) if parts[kind] else sch.empty_table()
        parts[kind] = []
        tally.files += _write_shards(root, kind, table, per_shard, cfg)
    return tally


def feature_sink(root: str, cfg: StorageConfig | None, schema: pa.Schema, dims: dict[str, int],
                 augmentations: int, per_shard: int) -> Any:
    """A :class:`FeatureSink` (built here: the class derives from Ray's ``Datasink``, imported
    only when a pipeline runs). After ``ds.write_datasink(sink)``, ``sink.tally`` holds the sum."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import Datasink

    class FeatureSink(Datasink):
        def __init__(self) -> None:
            self.tally = Tally()

        @property
        def min_rows_per_write(self) -> int:
            return per_shard

        def write(self, blocks: Iterable[Any], ctx: Any) -> Tally:
            batches = (BlockAccessor.for_block(b).to_batch_format("numpy") for b in blocks)
            return write_rows(batches, root, cfg, schema, dims, augmentations, per_shard)

        def on_write_complete(self, write_result: Any) -> None:
            for t in write_result.write_returns:
                self.tally.merge(t)

        def get_name(self) -> str:
            return "WriteShards"

    return FeatureSink()
