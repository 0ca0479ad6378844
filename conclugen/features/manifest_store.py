"""The clips an extraction run processes, as Parquet under the output, read back as a Ray Dataset.

Layout: ``<out>/manifest/<run tag>.parquet`` (:data:`~conclugen.data.corpora.manifest.MANIFEST_SCHEMA`
rows of the clips still to do), one row group per read task (``extract.task_clips`` rows). The
driver builds it once as an Arrow table (:func:`todo_table`: duplicates and clips already written
dropped with Arrow kernels, no Python set or dict per row), writes it (:func:`write_manifest`) and
plans one read task per row group (:func:`manifest_dataset`). Ray's ``read_parquet`` splits
work by file, not row group (Ray 2.60: ``ParquetDatasource.get_read_tasks`` splits the fragment
list), so one file would be one task; hence this small datasource over one file. The folder is
cleared when a run starts (the run holds the output's lock) and after it finishes; it is never
read as features or errors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conclugen import storage
from conclugen.config import ExtractConfig, StorageConfig
from conclugen.data.corpora.manifest import MANIFEST_SCHEMA
from conclugen.features.store import write_parquet

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
MAX_TASK_CLIPS = 256
TASKS_PER_CPU = 4  # "several times over": stragglers and retries do not leave CPUs idle


def task_clips(n_rows: int, cfg: ExtractConfig, cpus: float) -> int:
    """Manifest rows per read task: ``extract.task_clips``, or (0) enough tasks for
    ``TASKS_PER_CPU`` per CPU, at least ``decode_batch_size`` and at most ``MAX_TASK_CLIPS``."""
    if cfg.task_clips > 0:
        return cfg.task_clips
    per = math.ceil(n_rows / max(1.0, cpus * TASKS_PER_CPU))
    return max(1, min(MAX_TASK_CLIPS, max(cfg.decode_batch_size, per)))


def todo_table(manifest: Any, done: pa.Array) -> tuple[pa.Table, list[dict[str, Any]], pa.Array]:
    """(manifest rows to process, loader problems to record, every distinct manifest clip_id):
    duplicate clip_ids (first row kept) and clips in ``done`` (already written) are left out."""
    table = manifest.table()
    n = table.num_rows
    index = pa.table({"clip_id": table.column("clip_id"), "i": pa.array(range(n), pa.int64())})
    firsts = index.group_by("clip_id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    if len(firsts) < n:
        log.warning("%d duplicate clip_id rows in the manifest were ignored", n - len(firsts))
        table = table.take(pc.take(firsts, pc.array_sort_indices(firsts)))
    ids = table.column("clip_id").combine_chunks()
    todo = table.filter(pc.invert(pc.is_in(ids, value_set=done)))
    # loader problems (missing files, unknown labels) are few next to the rows: a list is fine
    pids = pa.array([p["clip_id"] for p in manifest.problems], pa.string())
    skip = pc.or_(pc.is_in(pids, value_set=done), pc.is_in(pids, value_set=ids)).to_pylist()
    problems = [p for p, s in zip(manifest.problems, skip, strict=True) if not s]
    return todo, problems, pc.unique(pa.concat_arrays([ids, pids]))


def manifest_uri(out_uri: str, tag: str) -> str:
    return storage.join(out_uri, MANIFEST_DIR, f"{tag}.parquet")


def clear_manifests(out_uri: str, cfg: StorageConfig | None = None) -> None:
    """Delete ``<out>/manifest/`` files (a finished run's, or a killed run's leftovers); only
    called under the output's lock."""
    for f in storage.list_files(storage.join(out_uri, MANIFEST_DIR), cfg):
        storage.delete(f, cfg)


def write_manifest(out_uri: str, table: pa.Table, tag: str, rows_per_task: int,
                   cfg: StorageConfig | None = None) -> str:
    """Write the run's clips as one Parquet file, one row group per read task; returns its URI."""
    uri = manifest_uri(out_uri, tag)
    storage.makedirs(storage.join(out_uri, MANIFEST_DIR), cfg)
    write_parquet(uri, table, cfg, row_group_size=rows_per_task)
    return uri


def _read_row_group(uri: str, group: int, cfg: StorageConfig | None) -> Iterable[pa.Table]:
    fs, path = storage.resolve(uri, cfg)

    def read() -> pa.Table:
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(fh).read_row_group(group)

    yield storage.with_retries(read, f"read {uri} (row group {group})")


def manifest_dataset(uri: str, cfg: StorageConfig | None) -> Any:
    """The manifest file at ``uri`` as a Ray Dataset, one read task (block) per row group.
    ``cfg``: storage settings as the workers need them (resolved on the driver)."""
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    fs, path = storage.resolve(uri, cfg)
    with fs.open_input_file(path) as fh:
        meta = pq.ParquetFile(fh).metadata
    groups = [(g, meta.row_group(g).num_rows, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)]

    class _Source(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(b for _, _, b in groups)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            return [ReadTask(lambda g=g: _read_row_group(uri, g, cfg),
                             BlockMetadata(num_rows=n, size_bytes=b, input_files=None, exec_stats=None),
                             schema=MANIFEST_SCHEMA)
                    for g, n, b in groups]

        def get_name(self) -> str:
            return "Manifest"

    return ray.data.read_datasource(_Source(), override_num_blocks=max(1, len(groups)))


def rows_dataset(rows: list[dict[str, Any]], rows_per_task: int) -> Any:
    """In-memory manifest rows (``conclugen predict``'s inputs) as a Ray Dataset of
    ``rows_per_task``-row blocks, the same columns :func:`manifest_dataset` gives."""
    import ray

    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    step = max(1, rows_per_task)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, max(1, table.num_rows), step)])
