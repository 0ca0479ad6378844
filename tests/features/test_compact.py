"""Rewriting shards: the duplicate check (each clip in one row; features win over errors) and
``conclugen compact`` (same rows as a set, fewer files; an interruption at any step leaves a
readable store with each clip once, and a rerun completes or rolls back)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conclugen import storage
from conclugen.features import compact as C
from conclugen.features import store as F
from tests.helpers.features import write_feature_store

SPLITS = {"train": 30, "val": 6}


def _rows(root: Path, kind: str = F.FEATURES_DIR) -> list[tuple]:
    """Every row of ``kind`` as a hashable tuple (vectors included)."""
    table = F.read_table(str(root / kind))
    return [tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in table.to_pylist()]


def _store(tmp_path: Path, shards: int = 6) -> Path:
    root = tmp_path / "store"
    write_feature_store(str(root), splits=SPLITS, shards=shards)
    w = F.ShardWriter(str(root), None, tag="e")
    for k in range(3):
        w.write(F.ERRORS_DIR, [{"clip_id": f"bad{k}", "video_uri": "/x", "stage": "read", "error": "E"}])
    return root


def _ids(root: Path, kind: str) -> list[str]:
    return F.read_table(str(root / kind), columns=["clip_id"]).column("clip_id").to_pylist()


def test_dedupe_keeps_each_clip_once_and_features_over_errors(tmp_path: Path) -> None:
    root = _store(tmp_path)
    feats = sorted((root / "features").glob("*.parquet"))
    first = pq.read_table(feats[0])
    w = F.ShardWriter(str(root), None, tag="retry")
    w.write(F.FEATURES_DIR, first.slice(0, 2).to_pylist())  # a regrouped retry: two clips again
    w.write(F.FEATURES_DIR, first.slice(0, 2).to_pylist())  # and once more
    dup_err = {"clip_id": first.column("clip_id")[3].as_py(), "video_uri": "/x", "stage": "read", "error": "E"}
    w.write(F.ERRORS_DIR, [dup_err, {**dup_err, "clip_id": "bad0"}])  # in features, and an error twice
    before = set(_rows(root))

    removed = C.dedupe_store(str(root))
    assert removed == {F.FEATURES_DIR: 4, F.ERRORS_DIR: 2}
    ids = _ids(root, F.FEATURES_DIR)
    assert len(ids) == len(set(ids)) == sum(SPLITS.values())
    assert set(_rows(root)) == before  # the same rows as a set
    assert sorted(_ids(root, F.ERRORS_DIR)) == ["bad0", "bad1", "bad2"]
    assert C.dedupe_store(str(root)) == {F.FEATURES_DIR: 0, F.ERRORS_DIR: 0}


def test_compact_merges_shards_and_keeps_the_rows(tmp_path: Path) -> None:
    root = _store(tmp_path)
    before, errs = set(_rows(root)), set(_rows(root, F.ERRORS_DIR))
    s = C.compact_store(str(root), None, shard_mb=128.0)
    assert s.files_before == {F.FEATURES_DIR: 6, F.ERRORS_DIR: 3}
    assert s.files_after == {F.FEATURES_DIR: 1, F.ERRORS_DIR: 1}
    assert set(_rows(root)) == before and len(_rows(root)) == len(before)
    assert set(_rows(root, F.ERRORS_DIR)) == errs
    assert sorted(p.name for p in root.iterdir()) == ["errors", "features", "meta.json"]
    files = list((root / "features").iterdir())
    assert [f.name for f in files] == [F.shard_name(_ids(root, F.FEATURES_DIR))]

    # small files: 36 rows of 52 float32 (+ the other columns) at ~2 KB each → several files
    row_bytes = pq.read_table(files[0]).nbytes / len(before)
    s2 = C.compact_store(str(root), None, shard_mb=10 * row_bytes / C.MB)
    assert s2.files_before[F.FEATURES_DIR] == 1 and s2.files_after[F.FEATURES_DIR] == 1  # one file: left alone
    root2 = _store(tmp_path / "b")
    s3 = C.compact_store(str(root2), None, shard_mb=10 * row_bytes / C.MB)
    assert s3.files_after[F.FEATURES_DIR] == 4  # 10 rows per file
    assert set(_rows(root2)) == set(_rows(_store(tmp_path / "c")))


class _Stop(RuntimeError):
    pass


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, name: str, calls: int) -> None:
    """Make ``storage.<name>`` raise on its ``calls``+1-th call inside compact (a crash there)."""
    real = getattr(C.storage, name)
    count = {"n": 0}

    def fake(*a, **k):
        count["n"] += 1
        if count["n"] > calls:
            raise _Stop(name)
        return real(*a, **k)

    monkeypatch.setattr(C.storage, name, fake)


@pytest.mark.parametrize(("step", "calls", "outcome"), [
    ("write_bytes", 1, "rolled back"),  # the plan written, the first new file not
    ("write_bytes", 2, "rolled back"),  # the plan and the new features file written, not the errors one
    ("delete", 2, "rolled forward"),  # swapping: two old shards deleted, none renamed
    # 1 plan check + 9 old shards checked (and deleted) + the features file renamed: the errors one not
    ("exists", 11, "rolled forward"),
])
def test_an_interrupted_compaction_is_readable_then_completed_or_rolled_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, calls: int, outcome: str) -> None:
    root = _store(tmp_path)
    before = set(_rows(root))
    with monkeypatch.context() as m:
        _interrupt_after(m, step, calls)
        with pytest.raises(_Stop):
            C.compact_store(str(root), None, shard_mb=128.0)
    assert (root / C.PLAN_FILE).exists()
    ids = _ids(root, F.FEATURES_DIR)
    assert len(ids) == len(set(ids)) and set(_rows(root)) <= before  # never a clip twice
    assert json.loads((root / C.PLAN_FILE).read_text())["state"] == ("writing" if outcome == "rolled back" else "swapping")

    s = C.compact_store(str(root), None, shard_mb=128.0)
    assert s.recovered == outcome
    assert set(_rows(root)) == before and len(_ids(root, F.FEATURES_DIR)) == len(before)
    assert not (root / C.PLAN_FILE).exists()
    assert not [p for p in root.rglob("*") if p.name.endswith((C.PENDING_SUFFIX, ".tmp"))]


def test_cli_compact(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conclugen.cli import app

    root = _store(tmp_path)
    res = CliRunner().invoke(app, ["compact", str(root)])
    assert res.exit_code == 0, res.output
    assert "features        36 rows: 6 → 1 files" in res.output
    bad = CliRunner().invoke(app, ["compact", str(tmp_path / "nothing")])
    assert bad.exit_code == 1 and "holds no feature store" in bad.output
    assert not storage.exists(str(root / ".conclugen.lock"))
