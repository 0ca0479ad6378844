"""The feature-store contract: shards written through ShardWriter in the store's schemas, the
resume scan (written_ids) and its clean-up of broken shards, meta round trip."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conclugen.features import store as F


def _feature(cid: str, dims: dict[str, int]) -> dict:
    return {"clip_id": cid, "split": "train", "labels": ["joy"], "corpus": "tiny", "gaps": [],
            **{m: [0.5] * d for m, d in dims.items()}}


def test_shards_follow_the_schemas_and_feed_the_resume_scan(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    dims = {"video": 4, "audio": 3, "text": 2}
    w = F.ShardWriter(root, None, tag="t1")
    w.write(F.FEATURES_DIR, [_feature("a", dims), _feature("b", dims)])
    w.write(F.ERRORS_DIR, [{"clip_id": "c", "video_uri": "/x/c.mp4", "stage": "read", "error": "FileNotFoundError"}])
    w.write(F.FEATURES_DIR, [])  # nothing, no empty shard
    files = sorted(p.name for p in (tmp_path / "store").rglob("*.parquet"))
    assert files == ["part-t1-00000.parquet", "part-t1-00001.parquet"]
    assert pq.read_schema(tmp_path / "store" / "features" / files[0]) == F.FEATURE_SCHEMA
    assert pq.read_schema(tmp_path / "store" / "errors" / files[1]) == F.ERROR_SCHEMA
    assert F.written_ids(root) == ({"a", "b"}, {"c"})
    arrays = F.load_arrays(root)
    assert arrays["clip_id"] == ["a", "b"] and arrays["video"].shape == (2, 4)
    assert not list((tmp_path / "store").rglob("*.tmp"))  # written via temp name + rename


def test_resume_scan_deletes_leftovers_and_broken_shards(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    F.ShardWriter(root, None, tag="ok").write(F.FEATURES_DIR, [_feature("a", {"video": 2, "audio": 2, "text": 2})])
    feats = tmp_path / "store" / "features"
    (feats / "part-crash-00000.parquet.tmp").write_bytes(b"half a shard")
    (feats / "part-bad-00000.parquet").write_bytes(b"not parquet")
    assert F.written_ids(root) == ({"a"}, set())
    assert sorted(p.name for p in feats.iterdir()) == ["part-ok-00000.parquet"]


def test_feature_schema_subset_and_meta_round_trip(tmp_path: Path) -> None:
    schema = F.feature_schema(["video", "audio"])
    assert "text" not in schema.names and {"video", "audio", "clip_id", "gaps"} <= set(schema.names)
    root = str(tmp_path / "store")
    with pytest.raises(F.FeatureStoreError, match="meta.json missing"):
        F.read_meta(root)
    meta = F.FeatureMeta(corpus="tiny", dims={"video": 2}, label_space=["joy"],
                         backbones={"image": F.BackboneInfo(name="offline:image", dim=2)})
    F.write_meta(root, meta)
    assert F.read_meta(root) == meta
    with pytest.raises(F.FeatureStoreError, match="no audio"):
        F.check_meta(meta, ["video", "audio"])
    with pytest.raises(F.FeatureStoreError, match="dim mismatch"):
        F.check_meta(meta, ["video"], {"video": 3})


def test_error_text_names_the_type() -> None:
    assert F.error_text(ValueError("bad clip ")) == "ValueError: bad clip"
    assert F.error_text(KeyError()) == "KeyError"
