"""The pipeline's in-flight rows → store rows: vectors joined, gaps recorded, a malformed row
becomes an errors row instead of being dropped."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from conclugen.features.rows import aug_key, feature_row, pack, split_batch, unpack
from conclugen.features.store import ERROR_SCHEMA, FEATURE_SCHEMA, aug_column, feature_schema

DIMS = {"image": 2, "video3d": 3, "audio": 2, "text": 4}


def _row(cid: str, *, has_audio: bool = True, text_src: str = "manifest", err: str = "") -> dict:
    manifest = {"clip_id": cid, "split": "train", "labels": ["joy"], "corpus": "meld"}
    facts = {"n_frames": 2, "n_faces": 1, "n_windows": 1, "audio_seconds": 1.5, "duration_s": 2.0,
             "truncated_to_s": None, "has_audio": has_audio}
    return {"clip_id": cid, "video_uri": f"/c/{cid}.mp4", "row": json.dumps(manifest), "facts": json.dumps(facts),
            "err_stage": "read" if err else "", "err": err, "text": "hi", "text_src": text_src,
            "v_image": pack(np.ones(2)), "v_video3d": pack(np.full(3, 2.0)), "v_audio": pack(np.full(2, 3.0)),
            "v_text": pack(np.full(4, 4.0))}


def test_pack_round_trip() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(unpack(pack(a)), a)
    assert pack(None) == b"" and unpack(b"") is None and unpack(None) is None


def test_feature_row_joins_video_and_records_gaps() -> None:
    f = feature_row(_row("a"), DIMS)
    assert f["video"] == [1.0, 1.0, 2.0, 2.0, 2.0] and f["gaps"] == [] and f["transcript_source"] == "manifest"
    g = feature_row(_row("b", has_audio=False, text_src="none"), DIMS)
    assert g["gaps"] == ["audio", "text"] and g["audio"] == [0.0, 0.0] and g["text"] == [0.0] * 4
    pa.Table.from_pylist([f, g], schema=FEATURE_SCHEMA)  # fits the store's schema


def test_split_batch_every_row_lands_once() -> None:
    broken = _row("c")
    broken["facts"] = "{not json"
    rows = [_row("a"), _row("b", err="FileNotFoundError: gone"), broken]
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    feats, errs = split_batch(batch, DIMS)
    assert [f["clip_id"] for f in feats] == ["a"]
    assert [(e["clip_id"], e["stage"]) for e in errs] == [("b", "read"), ("c", "assemble")]
    assert errs[1]["error"].startswith("JSONDecodeError")
    pa.Table.from_pylist(errs, schema=ERROR_SCHEMA)


def _aug_row(cid: str, n: int, **kw: object) -> dict:
    r = _row(cid, **kw)
    for kind, dim in DIMS.items():  # version v of kind k: all values 10·v + dim
        r[aug_key("v_" + kind)] = pack(np.stack([np.full(dim, 10.0 * v + dim) for v in range(1, n + 1)]))
    return r


def test_feature_row_writes_versions_row_major_and_zeros_for_gaps() -> None:
    f = feature_row(_aug_row("a", 2), DIMS, augmentations=2)
    video = np.asarray(f[aug_column("video")]).reshape(2, 5)  # [N, image ⊕ video3d]
    np.testing.assert_array_equal(video, [[12, 12, 13, 13, 13], [22, 22, 23, 23, 23]])
    np.testing.assert_array_equal(np.asarray(f[aug_column("audio")]).reshape(2, 2), [[12, 12], [22, 22]])
    assert len(f[aug_column("text")]) == 2 * 4
    g = feature_row(_aug_row("b", 2, has_audio=False, text_src="none"), DIMS, augmentations=2)
    assert g[aug_column("audio")] == [0.0] * 4 and g[aug_column("text")] == [0.0] * 8
    assert aug_column("video") not in feature_row(_aug_row("a", 2), DIMS)  # N = 0: no versions
    pa.Table.from_pylist([f, g], schema=feature_schema(augmentations=2))


def test_split_batch_sends_a_wrong_sized_version_to_errors() -> None:
    bad = _aug_row("c", 3)  # 3 versions where the run has 2
    rows = [_aug_row("a", 2), bad]
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    feats, errs = split_batch(batch, DIMS, augmentations=2)
    assert [f["clip_id"] for f in feats] == ["a"] and [(e["clip_id"], e["stage"]) for e in errs] == [("c", "assemble")]
