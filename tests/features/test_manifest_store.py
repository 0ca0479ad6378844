"""The run's clips as Parquet: the Arrow todo filter (duplicates, resume, loader problems), the
read-task size rule, and the file read back as a Ray Dataset with one block per row group."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conclugen.config import load_config
from conclugen.data.corpora.manifest import Manifest, row
from conclugen.features import manifest_store as M


def _manifest(n: int, dup: tuple[int, ...] = (), problems: tuple[str, ...] = ()) -> Manifest:
    rows = [row(f"c{i:03d}", f"/v/{i}.mp4", "train", "t", ["joy"], transcript=f"t{i}",
                start_s=None if i % 2 else 1.5) for i in range(n)]
    rows += [row(f"c{i:03d}", f"/dup/{i}.mp4", "val", "t", ["joy"]) for i in dup]
    probs = [{"clip_id": p, "video_uri": "/x", "stage": "manifest", "error": "MissingClipError: x"} for p in problems]
    return Manifest(rows=rows, problems=probs, label_space=["joy"], multilabel=False, corpus="t")


def test_todo_drops_duplicates_written_clips_and_written_problems() -> None:
    man = _manifest(6, dup=(1, 4), problems=("p0", "p1", "c002"))
    todo, problems, every = M.todo_table(man, pa.array(["c000", "c003", "p1", "zzz"]))
    assert todo.column("clip_id").to_pylist() == ["c001", "c002", "c004", "c005"]  # manifest order kept
    assert todo.column("video_uri").to_pylist()[0] == "/v/1.mp4"  # the first of the duplicate rows
    assert todo.column("start_s").to_pylist() == [None, 1.5, 1.5, None]  # nulls stay nulls
    assert [p["clip_id"] for p in problems] == ["p0"]  # p1 written; c002 is also a row: the row wins
    assert sorted(every.to_pylist()) == [f"c{i:03d}" for i in range(6)] + ["p0", "p1"]
    empty, none, ids = M.todo_table(_manifest(0), pa.array([], pa.string()))
    assert empty.num_rows == 0 and none == [] and len(ids) == 0


@pytest.mark.parametrize(("n", "cpus", "fixed", "expect"), [
    (8, 8, 0, 4),  # few clips: at least decode_batch_size (4) per task
    (10_000, 8, 0, 256),  # capped
    (3_200, 8, 0, 100),  # 3200 / (8 CPUs * 4 tasks each)
    (10_000, 8, 7, 7),  # extract.task_clips wins
])
def test_task_clips_rule(n: int, cpus: int, fixed: int, expect: int) -> None:
    cfg = load_config(None, [f"extract.task_clips={fixed}"]).extract
    assert M.task_clips(n, cfg, cpus) == expect


def test_manifest_file_has_one_row_group_per_task(tmp_path: Path) -> None:
    todo, _, _ = M.todo_table(_manifest(10), pa.array([], pa.string()))
    uri = M.write_manifest(str(tmp_path), todo, "run1", 4, None)
    assert uri == str(tmp_path / "manifest" / "run1.parquet")
    meta = pq.ParquetFile(uri).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [4, 4, 2]
    M.clear_manifests(str(tmp_path))
    assert list((tmp_path / "manifest").iterdir()) == []


@pytest.mark.ray
def test_manifest_dataset_reads_one_block_per_row_group(ray_cluster: None, tmp_path: Path) -> None:
    todo, _, _ = M.todo_table(_manifest(10), pa.array([], pa.string()))
    uri = M.write_manifest(str(tmp_path), todo, "run1", 3, None)
    ds = M.manifest_dataset(uri, None)
    sizes = sorted(len(b["clip_id"]) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert sizes == [1, 3, 3, 3]
    assert sorted(r["clip_id"] for r in ds.take_all()) == todo.column("clip_id").to_pylist()
    rows = M.rows_dataset(todo.to_pylist(), 4).take_all()
    assert [r["clip_id"] for r in rows] == todo.column("clip_id").to_pylist()
