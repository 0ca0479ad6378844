"""The extraction's write stage without Ray: shards cut by bytes of vectors (and at most
``shard_rows``), named by their clip_ids so a retried write overwrites itself, and the tallies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conclugen.features import store as F
from conclugen.features.rows import pack
from conclugen.features.sink import MB, rows_per_shard, write_rows

DIMS = {"image": 3, "video3d": 2, "audio": 4, "text": 5}


def _batch(ids: list[str], failed: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Finished pipeline rows as the last backbone stage emits them (numpy object columns)."""
    def col(values: list) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    facts = json.dumps({"n_frames": 2, "n_faces": 1, "n_windows": 1, "audio_seconds": 1.0, "duration_s": 1.0,
                        "truncated_to_s": None, "has_audio": True})
    rng = np.random.default_rng(len(ids))
    cols: dict[str, list] = {"clip_id": ids, "video_uri": [f"/c/{i}.mp4" for i in ids],
                             "row": [json.dumps({"clip_id": i, "split": "train", "labels": ["joy"], "corpus": "t"})
                                     for i in ids],
                             "err_stage": ["read" if i in failed else "" for i in ids],
                             "err": ["StorageNotFoundError: gone" if i in failed else "" for i in ids],
                             "facts": [facts] * len(ids), "text": ["hi"] * len(ids), "text_src": ["manifest"] * len(ids)}
    for kind, d in DIMS.items():
        cols["v_" + kind] = [b"" if i in failed else pack(rng.random(d, dtype=np.float32)) for i in ids]
    return {k: col(v) for k, v in cols.items()}


def test_rows_per_shard_is_megabytes_of_vectors_capped_by_rows() -> None:
    floats = sum(DIMS.values())  # 14 float32 per row, 56 bytes
    assert rows_per_shard(DIMS, 0, 1.0) == MB // (4 * floats)
    assert rows_per_shard(DIMS, 2, 1.0) == MB // (4 * floats * 3)  # plain + 2 versions
    assert rows_per_shard(DIMS, 0, 1.0, shard_rows=7) == 7
    assert rows_per_shard(DIMS, 0, 1e-9) == 1


def test_write_rows_cuts_sorted_shards_and_a_retry_overwrites(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    ids = [f"c{i:02d}" for i in range(10)]
    blocks = [_batch(ids[5:], failed=("c07",)), _batch(ids[:5])]  # out of order, as blocks arrive

    t = write_rows(iter(blocks), root, None, F.FEATURE_SCHEMA, DIMS, 0, per_shard=4)
    assert (t.features, t.errors) == (9, 1)
    assert dict(t.reasons) == {"read / StorageNotFoundError": 1} and dict(t.gaps) == {}
    feats = sorted((tmp_path / "store" / "features").glob("*.parquet"))
    assert len(feats) == 3  # 9 rows, at most 4 per shard: 3 equal shards of 3
    got = [pq.read_table(f).column("clip_id").to_pylist() for f in feats]
    assert all(len(g) == 3 and g == sorted(g) for g in got)
    assert sorted(c for g in got for c in g) == [i for i in ids if i != "c07"]
    for f, g in zip(feats, got, strict=True):
        assert f.name == F.shard_name(g)
        table = pq.read_table(f)
        assert table.schema == F.FEATURE_SCHEMA and len(table.column("video")[0]) == 5
    assert [p.name for p in (tmp_path / "store" / "errors").iterdir()] == [F.shard_name(["c07"])]

    # a retried task (same rows, blocks in another order) writes the same files, nothing more
    again = write_rows(iter(blocks[::-1]), root, None, F.FEATURE_SCHEMA, DIMS, 0, per_shard=4)
    assert sorted(again.files) == sorted(t.files)
    assert sorted((tmp_path / "store" / "features").glob("*.parquet")) == feats
    assert not list((tmp_path / "store").rglob("*.tmp"))
    assert F.written_ids(root) == ({i for i in ids if i != "c07"}, {"c07"})


def test_one_shard_when_the_rows_fit(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    write_rows(iter([_batch(["a", "b"]), _batch(["c"])]), root, None, F.FEATURE_SCHEMA, DIMS, 0,
               per_shard=rows_per_shard(DIMS, 0, 128.0))
    assert len(list((tmp_path / "store" / "features").glob("*.parquet"))) == 1
    assert not (tmp_path / "store" / "errors").exists()


@pytest.mark.parametrize("n", [1, 5])
def test_shard_name_depends_on_the_set_of_ids_only(n: int) -> None:
    ids = [f"x{i}" for i in range(n)]
    assert F.shard_name(ids) == F.shard_name(ids[::-1])
    assert F.shard_name(ids) != F.shard_name([*ids, "y"])
