"""The extraction pipeline's in-flight row, and its translation into feature-store rows.

A row, as the decode stage emits it and the backbone stages fill it in:

- ``clip_id``, ``video_uri``; ``row``: the manifest row as JSON;
- ``err_stage``, ``err``: set by the first stage that fails (the row then passes the later stages
  untouched and ends as an errors row);
- ``faces``, ``windows``, ``audio``: the decoded arrays as ``.npy`` bytes (:func:`pack`), each
  dropped by the backbone stage that consumes it;
- ``facts``: JSON of n_frames, n_faces, n_windows, audio_seconds, duration_s, truncated_to_s,
  has_audio; ``text``, ``text_src``: the transcript and where it came from (manifest | asr | none);
- ``v_image``, ``v_video3d``, ``v_audio``, ``v_text``: the backbone vectors (``.npy`` bytes);
  with ``extract.augmentations`` = N > 0 also ``v_<kind>_aug`` (:func:`aug_key`): the N augmented
  versions, ``[N, dim]``.

:func:`split_batch` turns a batch of them into :data:`~conclugen.features.store.FEATURE_SCHEMA`
rows (plus the ``<modality>_aug`` columns of :func:`~conclugen.features.store.feature_schema`
when N > 0) and :data:`~conclugen.features.store.ERROR_SCHEMA` rows.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from conclugen.features.store import aug_column, error_text

DECODED_COLUMNS = ("clip_id", "video_uri", "row", "err_stage", "err", "faces", "windows", "audio", "facts",
                   "text", "text_src")


def aug_key(col: str) -> str:
    """The in-flight column of ``col``'s augmented versions (``v_image`` → ``v_image_aug``)."""
    return col + "_aug"


def pack(arr: np.ndarray | None) -> bytes:
    """An array as ``.npy`` bytes (``b""`` for None): Arrow-friendly, no pickle."""
    if arr is None:
        return b""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def unpack(blob: bytes | None) -> np.ndarray | None:
    """Inverse of :func:`pack` (None for empty bytes)."""
    if blob is None or len(blob) == 0:
        return None
    return np.load(io.BytesIO(bytes(blob)), allow_pickle=False)


def feature_row(r: dict[str, Any], dims: dict[str, int], augmentations: int = 0) -> dict[str, Any]:
    """A finished pipeline row → a FEATURE_SCHEMA row (vectors joined, gaps recorded), plus the
    ``<modality>_aug`` columns when ``augmentations`` > 0. ``dims``: vector length per backbone
    kind (image, video3d, audio, text), for the zeros of a gap."""
    m = json.loads(r["row"])
    facts = json.loads(r["facts"])

    def vec(col: str, dim: int) -> np.ndarray:
        v = unpack(r.get(col))
        return np.zeros(dim, np.float32) if v is None else np.asarray(v, np.float32).reshape(-1)

    gaps = []
    image, video3d = vec("v_image", dims["image"]), vec("v_video3d", dims["video3d"])
    if facts.get("n_frames", 0) == 0 and facts.get("n_windows", 0) == 0:
        gaps.append("video")
    audio = vec("v_audio", dims["audio"])
    if not facts.get("has_audio", False):
        gaps.append("audio")
        audio = np.zeros(dims["audio"], np.float32)
    text_src = str(r["text_src"])
    text = vec("v_text", dims["text"])
    if text_src == "none":
        gaps.append("text")
        text = np.zeros(dims["text"], np.float32)
    row = {
        "clip_id": m["clip_id"], "split": m.get("split"), "labels": list(m.get("labels") or []),
        "intensities": m.get("intensities"), "corpus": m.get("corpus"),
        "video": np.concatenate([image, video3d]).tolist(), "audio": audio.tolist(), "text": text.tolist(),
        "n_frames": int(facts.get("n_frames", 0)), "n_faces": int(facts.get("n_faces", 0)),
        "n_windows": int(facts.get("n_windows", 0)), "audio_seconds": float(facts.get("audio_seconds", 0.0)),
        "duration_s": float(facts.get("duration_s", 0.0)), "truncated_to_s": facts.get("truncated_to_s"),
        "transcript_source": text_src, "gaps": gaps,
    }
    if augmentations > 0:
        row.update(_aug_columns(r, dims, augmentations, gaps))
    return row


def _aug_columns(r: dict[str, Any], dims: dict[str, int], n: int, gaps: list[str]) -> dict[str, list[float]]:
    """The ``<modality>_aug`` columns: N versions row-major [N, dim]; video = image ⊕ video3d per
    version; a gap modality is zeros in every version."""

    def views(kind: str) -> np.ndarray:
        v = unpack(r.get(aug_key("v_" + kind)))
        if v is None:
            return np.zeros((n, dims[kind]), np.float32)
        return np.asarray(v, np.float32).reshape(n, dims[kind])  # a wrong size raises: an errors row

    video = np.concatenate([views("image"), views("video3d")], axis=1)
    audio = np.zeros((n, dims["audio"]), np.float32) if "audio" in gaps else views("audio")
    text = np.zeros((n, dims["text"]), np.float32) if "text" in gaps else views("text")
    return {aug_column(m): a.reshape(-1).tolist() for m, a in (("video", video), ("audio", audio), ("text", text))}


def error_row(r: dict[str, Any], stage: str, error: str) -> dict[str, str]:
    """An ERROR_SCHEMA row for pipeline row ``r``."""
    return {"clip_id": str(r["clip_id"]), "video_uri": str(r["video_uri"]), "stage": stage, "error": error}


def split_batch(batch: dict[str, np.ndarray], dims: dict[str, int],
                augmentations: int = 0) -> tuple[list[dict], list[dict]]:
    """A batch of finished pipeline rows → (feature rows, error rows); every row lands in one."""
    feats, errs = [], []
    for i in range(len(batch["clip_id"])):
        r = {k: v[i] for k, v in batch.items()}
        if str(r["err_stage"]):
            errs.append(error_row(r, str(r["err_stage"]), str(r["err"])))
            continue
        try:
            feats.append(feature_row(r, dims, augmentations))
        except Exception as e:  # a malformed vector: still an errors row, never a silent drop
            errs.append(error_row(r, "assemble", error_text(e)))
    return feats, errs
