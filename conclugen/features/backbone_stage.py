"""The backbone stage of the extraction pipeline: Ray Data actors that hold frozen backbones and
embed decoded pipeline rows (see :mod:`conclugen.features.rows`), plus what the driver needs to
plan them (dims, stage grouping, GPUs per actor)."""

from __future__ import annotations

from typing import Any

import numpy as np

from conclugen.config import ExtractConfig, StorageConfig
from conclugen.features.augment_stage import version_vectors
from conclugen.features.heap import release_freed_memory
from conclugen.features.rows import aug_key, pack, unpack
from conclugen.features.store import BackboneInfo, error_text

# applied in this order: ASR fills in missing transcripts before the text encoder runs
STAGE_KINDS = ("image", "video3d", "asr", "audio", "text")

# stage kind → (input column, output column)
_IO = {"image": ("faces", "v_image"), "video3d": ("windows", "v_video3d"), "audio": ("audio", "v_audio"),
       "text": ("text", "v_text"), "asr": ("audio", "text")}


class BackboneStage:
    """An actor holding one or more backbones (``kinds``, applied in order): loads the models
    once, then embeds batches. Rows that already failed pass through; a batch whose forward fails
    is retried clip by clip, so only the bad clip becomes an errors row (stage = backbone kind).
    With ``augmentations`` = N > 0 each embedding backbone also fills ``<column>_aug`` with the N
    augmented versions (:mod:`conclugen.features.augment_stage`).

    ``progress``: the pipeline's last stage gets the progress handle
    (:func:`conclugen.features.progress.start_progress`) and reports each finished batch's rows to
    its counter actor (failed rows too: they are finished)."""

    def __init__(self, kinds: list[str], specs: dict[str, str], extract_json: str, storage_cfg: StorageConfig,
                 device: str = "cpu", threads: int = 0, progress: Any = None) -> None:
        import torch

        from conclugen.features.backbones import load_backbone
        from conclugen.features.backbones.registry import torch_device

        if threads > 0:
            torch.set_num_threads(threads)
        cfg = ExtractConfig.model_validate_json(extract_json)
        dev = torch_device(device)
        self.models = [(k, load_backbone(k, specs[k], dev, cfg, storage_cfg)) for k in kinds]
        self.augmentations = int(cfg.augmentations)
        self.counter = getattr(progress, "counter", None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items()}
        out["err_stage"] = np.asarray([str(s) for s in batch["err_stage"]], dtype=object)
        out["err"] = np.asarray([str(s) for s in batch["err"]], dtype=object)
        for kind, model in self.models:
            apply_backbone(kind, model, out, self.augmentations)
        release_freed_memory()  # the frames and activations of the batch are gone by now
        if self.counter is not None:  # fire and forget: progress never slows the pipeline down
            self.counter.add.remote(len(out["clip_id"]))
        return out


def apply_backbone(kind: str, model: Any, out: dict[str, np.ndarray], augmentations: int = 0) -> None:
    """Run one backbone over the batch ``out`` in place: vectors (or, for ASR, transcripts) for
    the rows without an error; a failing clip gets ``err_stage`` = ``kind``. With
    ``augmentations`` = N > 0 (not ASR: it transcribes the plain audio) the N augmented versions go
    into ``<column>_aug`` ([N, dim]); a clip's versions all succeed or the clip fails."""
    n = len(out["clip_id"])
    ok = [i for i in range(n) if not out["err_stage"][i]]
    if kind == "asr":  # only clips without text that have audio
        ok = [i for i in ok if out["text_src"][i] == "none" and len(out["audio"][i])]
    n_aug = 0 if kind == "asr" else augmentations
    results = _forward(kind, model, out, ok, n_aug)
    if kind == "asr":
        _merge_transcripts(out, results)
        return
    inp, col = _IO[kind]

    def packed(part: slice | int) -> np.ndarray:
        return np.asarray(
            [pack(np.asarray(results[i], np.float32)[part]) if i in results and not out["err_stage"][i] else b""
             for i in range(n)],
            dtype=object,
        )

    if n_aug:
        out[col], out[aug_key(col)] = packed(0), packed(slice(1, None))
    else:
        out[col] = packed(slice(None))
    if kind in ("image", "video3d", "audio"):
        out.pop(inp, None)  # consumed: later stages do not carry frames or samples


def _forward(kind: str, model: Any, out: dict[str, np.ndarray], rows: list[int], n_aug: int = 0) -> dict[int, Any]:
    """Backbone outputs of ``rows`` ([dim], or [1 + n_aug, dim] with versions): one batched call,
    else clip by clip so only the bad clip(s) fail (their error is recorded in ``out``)."""
    inp = _IO[kind][0]

    def run(idx: list[int]) -> list[Any]:
        if n_aug:
            return version_vectors(kind, model, out, idx, n_aug)
        if kind == "text":
            x = [str(out["text"][i]) if out["text_src"][i] != "none" else None for i in idx]
        else:
            x = [unpack(out[inp][i]) for i in idx]
        return list(model.transcribe(x)) if kind == "asr" else list(model.embed(x))

    try:
        return dict(zip(rows, run(rows), strict=True))
    except Exception:
        results: dict[int, Any] = {}
        for i in rows:
            try:
                results[i] = run([i])[0]
            except Exception as e:
                out["err_stage"][i], out["err"][i] = kind, error_text(e)
        return results


def _merge_transcripts(out: dict[str, np.ndarray], results: dict[int, Any]) -> None:
    text = np.asarray([str(t) for t in out["text"]], dtype=object)
    src = np.asarray([str(s) for s in out["text_src"]], dtype=object)
    for i, t in results.items():
        if t is not None and not out["err_stage"][i]:
            text[i], src[i] = t, "asr"
    out["text"], out["text_src"] = text, src


# ------------------------------------------------------------------------------------ planning


def active_kinds(cfg: ExtractConfig) -> list[str]:
    """The backbone kinds the pipeline runs (ASR only when one is configured)."""
    return [k for k in STAGE_KINDS if not (k == "asr" and cfg.backbones.asr == "offline:none")]


def stage_groups(cfg: ExtractConfig) -> list[list[str]]:
    """"fused" (the default): one actor pool holding every backbone (one process per actor to
    start, all models on one GPU); "separate": one actor pool per backbone, so the stages
    overlap on a bigger machine."""
    kinds = active_kinds(cfg)
    return [kinds] if cfg.backbone_stages == "fused" else [[k] for k in kinds]


def backbone_infos(cfg: ExtractConfig, storage_cfg: StorageConfig) -> dict[str, BackboneInfo]:
    """Load each configured backbone once on the driver: fails early on a bad spec, gives dims."""
    from conclugen.features.backbones import load_backbone

    infos = {}
    for kind in STAGE_KINDS:
        spec = getattr(cfg.backbones, kind)
        b = load_backbone(kind, spec, "cpu", cfg, storage_cfg)
        infos[kind] = BackboneInfo(name=spec, dim=int(b.dim), trained=bool(b.trained), details=dict(b.details))
        del b
    return infos


def modality_dims(infos: dict[str, BackboneInfo]) -> dict[str, int]:
    """Vector length per modality in the store: video = image ⊕ video3d."""
    return {"video": infos["image"].dim + infos["video3d"].dim, "audio": infos["audio"].dim,
            "text": infos["text"].dim}


def gpus_per_actor(cfg: ExtractConfig, n_pools: int) -> float:
    """``num_gpus_per_actor`` when set; else the cluster's GPUs shared by every backbone actor
    (each a slice, at most one GPU), 0 without GPUs."""
    import ray

    if cfg.num_gpus_per_actor > 0:
        return float(cfg.num_gpus_per_actor)
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus <= 0:
        return 0.0
    return min(1.0, gpus / max(1, n_pools * cfg.backbone_actors))
