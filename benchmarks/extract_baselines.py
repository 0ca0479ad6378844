"""The hand-written baselines of benchmarks/extract.py: a sequential loop and a process pool,
each doing read + decode + every backbone's forward, timing each part.

The pool runs at batch 1 (per clip, what a user scripts by hand) and, for the bound, at the
pipeline's backbone batch: the actors forward ``extract.backbone_batch_size`` clips at a time,
which costs less per clip than one at a time, so a bound from batch-1 costs is too low.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any


def load_models(cfg: Any) -> dict[str, Any]:
    from conclugen.features.backbone_stage import active_kinds
    from conclugen.features.backbones import load_backbone

    return {k: load_backbone(k, getattr(cfg.extract.backbones, k), "cpu", cfg.extract) for k in active_kinds(cfg.extract)}


def decode_work(row: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Read + decode one clip: the model inputs and the seconds it took."""
    from conclugen import storage
    from conclugen.data.media import decode_clip

    t0 = time.perf_counter()
    data = storage.read_bytes(row["video_uri"], cfg.storage)
    clip = decode_clip(data, cfg.extract, row.get("start_s"), row.get("end_s"), cfg.corpus.max_clip_seconds)
    audio = clip.audio if clip.has_audio and len(clip.audio) else None
    return {"image": clip.face_frames, "video3d": clip.windows, "audio": audio, "text": row.get("transcript"),
            "t_decode": time.perf_counter() - t0}


def forward_work(items: list[dict[str, Any]], models: dict[str, Any]) -> dict[str, float]:
    """Every backbone's forward over the decoded ``items`` as one batch (ASR only for clips
    without a transcript, as the pipeline); seconds per backbone."""
    fwd: dict[str, float] = {}
    t = time.perf_counter()
    for kind, model in models.items():
        if kind == "asr":
            todo = [it for it in items if it["text"] is None and it["audio"] is not None]
            if todo:
                for it, text in zip(todo, model.transcribe([it["audio"] for it in todo]), strict=True):
                    it["text"] = text
        else:
            model.embed([it[kind] for it in items])
        now = time.perf_counter()
        fwd[kind], t = now - t, now
    return fwd


def batch_work(rows: list[dict[str, Any]], cfg: Any, models: dict[str, Any]) -> dict[str, Any]:
    """Read + decode each clip of ``rows``, then the forward passes over them as one batch."""
    items = [decode_work(r, cfg) for r in rows]
    fwd = forward_work(items, models)
    return {"clips": len(rows), "t_decode": sum(it["t_decode"] for it in items), "t_forward": sum(fwd.values()),
            "by_kind": fwd}


def sum_work(parts: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, float] = {}
    for p in parts:
        for k, v in p["by_kind"].items():
            by_kind[k] = by_kind.get(k, 0.0) + v
    return {"clips": sum(p["clips"] for p in parts), "t_decode": sum(p["t_decode"] for p in parts),
            "t_forward": sum(p["t_forward"] for p in parts), "by_kind": by_kind}


def loop_run(cfg_json: str, rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """The sequential loop, per clip (run in a fresh process so the caller holds no models)."""
    import torch

    from conclugen.config import Config

    if threads:
        torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    models = load_models(cfg)
    t0 = time.perf_counter()
    out = sum_work([batch_work([r], cfg, models) for r in rows])
    return out | {"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


_POOL: dict[str, Any] = {}


def _pool_init(cfg_json: str) -> None:
    import cv2
    import torch

    from conclugen.config import Config

    torch.set_num_threads(1)  # one process per core: any more threads would only contend
    cv2.setNumThreads(1)
    _POOL["cfg"] = cfg = Config.model_validate_json(cfg_json)
    _POOL["models"] = load_models(cfg)


def _pool_batch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = batch_work(rows, _POOL["cfg"], _POOL["models"])
    first, _POOL["first"] = _POOL.get("first", True), False
    # CLOCK_MONOTONIC: one clock for every process
    return out | {"done_at": time.monotonic(), "first": first}


def pool_run(cfg_json: str, rows: list[dict[str, Any]], procs: int, batch: int = 1) -> dict[str, Any]:
    """The process pool, ``batch`` clips per task: end to end from creating it (start-up
    included) to the last clip. Each process records its decode / forward wall times: measured
    while every core is busy, they are the stage costs of a saturated machine; ``warm`` sums them
    without each process's first task, whose first forward pass also builds oneDNN's kernels
    (the pipeline's steady window starts after its actors did that)."""
    t0 = time.monotonic()
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn"), initializer=_pool_init,
                             initargs=(cfg_json,)) as ex:
        parts = list(ex.map(_pool_batch, chunks))
    seconds = time.monotonic() - t0
    done, n, completions = sorted((p["done_at"] - t0, p["clips"]) for p in parts), 0, []
    for t, k in done:
        n += k
        completions.append((t, n))
    warm = [p for p in parts if not p["first"]] or parts  # a run of one task per process has no other
    return sum_work(parts) | {"seconds": seconds, "procs": procs, "batch": batch, "completions": completions,
                              "warm": sum_work(warm)}


def in_fresh_process(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()
