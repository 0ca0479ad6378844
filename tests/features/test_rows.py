"""The pipeline's in-flight rows → store rows: vectors joined, gaps recorded, a malformed row
becomes an errors row instead of being dropped."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from conclugen.features.rows import feature_row, pack, split_batch, unpack
from conclugen.features.store import ERROR_SCHEMA, FEATURE_SCHEMA

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
