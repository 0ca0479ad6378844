"""The read + decode stage of the extraction pipeline: CPU tasks that turn manifest rows into
decoded pipeline rows (see :mod:`conclugen.features.rows`), or error rows with ``err_stage``
read | decode[:<media stage>]."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from conclugen import storage
from conclugen.config import Config, StorageConfig
from conclugen.features.heap import release_freed_memory
from conclugen.features.rows import DECODED_COLUMNS, pack
from conclugen.features.store import error_text

# A decode worker holds torch, PyAV and one decoded clip: ~300 MB. Reserving it also keeps Ray
# Data from fusing the decode tasks into the first backbone actor (see build_dataset).
DECODE_TASK_MEMORY = 512 * 1024**2


def decode_concurrency(requested: int, cluster_cpus: float, local_single_node: bool,
                       machine_cores: int | None) -> int | None:
    """How many decode tasks may run at once; None: as many as Ray's free CPUs allow.

    ``extract.decode_tasks`` when set (> 0). Otherwise a cluster that is this machine alone and
    declares more CPUs than it has cores (:func:`conclugen.runtime.start_local_ray` declares at
    least 8) runs at most one decode task per core: each more only adds a worker process (~270 MB
    with PyAV, OpenCV and torch loaded) contending for the same cores; on 2 cores, 6 of them held
    ~1.9 GB. A real cluster's CPUs are its cores: Ray's own limit is the right one there."""
    if requested > 0:
        return requested
    if local_single_node and machine_cores and cluster_cpus > machine_cores:
        return machine_cores
    return None


def read_and_decode(row: dict[str, Any], cfg: Config, storage_cfg: StorageConfig) -> dict[str, Any]:
    """One manifest row → the decode stage's output row (arrays packed as .npy bytes), or an error
    row with ``err_stage`` read | decode."""
    from conclugen.data.media import decode_clip

    out: dict[str, Any] = {"clip_id": row["clip_id"], "video_uri": row["video_uri"], "row": json.dumps(row),
                           "err_stage": "", "err": "", "faces": b"", "windows": b"", "audio": b"",
                           "facts": "{}", "text": row.get("transcript") or "",
                           "text_src": "manifest" if row.get("transcript") is not None else "none"}
    try:
        data = storage.read_bytes(row["video_uri"], storage_cfg, retries=cfg.extract.s3_read_retries)
    except storage.StorageUnavailableError:
        raise  # an outage, not a bad clip: the run stops (a rerun resumes) rather than mark the clip failed
    except Exception as e:  # missing file, permissions, a permanent storage error, ...
        out.update(err_stage="read", err=error_text(e))
        return out
    try:
        clip = decode_clip(data, cfg.extract, start_s=row.get("start_s"), end_s=row.get("end_s"),
                           max_seconds=cfg.corpus.max_clip_seconds)
    except Exception as e:
        reason = getattr(e, "reason", None)
        stage = "decode" if reason is None else f"decode:{getattr(e, 'stage', 'decode')}"
        out.update(err_stage=stage, err=error_text(e))
        return out
    del data
    facts = {"n_frames": clip.n_frames, "n_faces": int(clip.n_faces), "n_windows": clip.n_windows,
             "audio_seconds": clip.audio_seconds if clip.has_audio else 0.0,
             "duration_s": float(clip.duration_s), "truncated_to_s": clip.truncated_to_s,
             "has_audio": bool(clip.has_audio and len(clip.audio) > 0)}
    out.update(faces=pack(clip.face_frames), windows=pack(clip.windows),
               audio=pack(clip.audio if facts["has_audio"] else None), facts=json.dumps(facts))
    return out


def decode_batch(batch: pa.Table, cfg_json: str, storage_cfg: StorageConfig) -> dict[str, list[Any]]:
    """``map_batches`` function of the decode tasks (``batch_format="pyarrow"``): a batch of
    manifest rows (:data:`~conclugen.data.corpora.manifest.MANIFEST_SCHEMA` columns; Arrow keeps
    null start/end/transcript as None, where numpy would turn them into NaN)."""
    cfg = Config.model_validate_json(cfg_json)
    out: dict[str, list[Any]] = {k: [] for k in DECODED_COLUMNS}
    for row in batch.to_pylist():
        r = read_and_decode(row, cfg, storage_cfg)
        for k in out:
            out[k].append(r[k])
    release_freed_memory()  # the batch's decoded frames are packed: an idle worker keeps no heap
    return out
