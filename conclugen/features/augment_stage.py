"""Augmented versions inside the backbone stage: each clip's plain input plus its N augmented
copies (:mod:`conclugen.data.media.augment`) go through the backbone together, and come out as
float32 ``[1 + N, dim]`` per clip (version 0 plain). See docs/method.md, Backbones and features,
Augmentation.

The copies are built here, in the backbone actor, from the decoded input the decode stage sent
once: nothing N times larger crosses the object store. Frames are augmented lazily and handed to
the backbone in groups of at most :data:`ITEM_BUDGET` items (plain and augmented versions mixed),
so memory stays bounded whatever N and the clip lengths, and forward chunks stay full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from conclugen.data.media.augment import augment_frames, rng_for, spec_augment, swap_words, wave_time_mask
from conclugen.features.rows import unpack

# items (face frames / windows) per embed call when versions are built
ITEM_BUDGET = {"image": 256, "video3d": 32}
_INPUT = {"image": "faces", "video3d": "windows"}


def version_vectors(kind: str, model: Any, out: dict[str, np.ndarray], rows: list[int], n: int) -> list[np.ndarray]:
    """``[1 + n, dim]`` per row of ``rows`` (indices into the batch ``out``) for backbone ``kind``."""
    if kind in _INPUT:
        return _stack_versions(kind, model, out, rows, n)
    if kind == "audio":
        return _audio_versions(model, out, rows, n)
    if kind == "text":
        return _text_versions(model, out, rows, n)
    raise ValueError(f"no augmented versions for backbone kind {kind!r}")


def _stack_versions(kind: str, model: Any, out: dict[str, np.ndarray], rows: list[int], n: int) -> list[np.ndarray]:
    res = np.zeros((len(rows), n + 1, int(model.dim)), np.float32)
    group: list[np.ndarray | None] = []
    keys: list[tuple[int, int]] = []
    size = 0

    def flush() -> None:
        nonlocal group, keys, size
        if group:
            for (k, v), vec in zip(keys, model.embed(group), strict=True):
                res[k, v] = vec
        group, keys, size = [], [], 0

    for k, i in enumerate(rows):
        plain = unpack(out[_INPUT[kind]][i])
        cid = str(out["clip_id"][i])
        for v in range(n + 1):
            empty = plain is None or len(plain) == 0
            group.append(plain if v == 0 or empty else augment_frames(plain, rng_for(cid, v, kind)))
            keys.append((k, v))
            size += 0 if empty else len(plain)
            if size >= ITEM_BUDGET[kind]:
                flush()
    flush()
    return list(res)


def _audio_versions(model: Any, out: dict[str, np.ndarray], rows: list[int], n: int) -> list[np.ndarray]:
    if int(model.dim) == 0 or not hasattr(model, "embed_versions"):  # offline:none: nothing to embed
        return list(np.zeros((len(rows), n + 1, int(model.dim)), np.float32))
    fn = spec_augment if getattr(model, "input_form", "waveform") == "mel" else wave_time_mask

    def transform(cid: str, v: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: fn(x, rng_for(cid, v, "audio"))  # a fresh generator per call: idempotent

    waves = [unpack(out["audio"][i]) for i in rows]
    transforms = [[transform(str(out["clip_id"][i]), v) for v in range(1, n + 1)] for i in rows]
    return list(model.embed_versions(waves, transforms))


def _text_versions(model: Any, out: dict[str, np.ndarray], rows: list[int], n: int) -> list[np.ndarray]:
    """Swapped transcripts; each distinct text is embedded once per batch, so a version the swap
    left unchanged is exactly the plain vector."""
    versions: list[list[str | None]] = []
    for i in rows:
        text = str(out["text"][i]) if out["text_src"][i] != "none" else None
        cid = str(out["clip_id"][i])
        versions.append([text] + [None if text is None else swap_words(text, rng_for(cid, v, "text"))
                                  for v in range(1, n + 1)])
    distinct = list(dict.fromkeys(t for vs in versions for t in vs if t is not None))
    vecs = dict(zip(distinct, model.embed(distinct), strict=True)) if distinct else {}
    zero = np.zeros(int(model.dim), np.float32)
    return [np.stack([zero if t is None else np.asarray(vecs[t], np.float32) for t in vs]) for vs in versions]


def augmentation_notes(n: int, audio_spec: str, audio_form: str) -> dict[str, str]:
    """``FeatureMeta.augmentation``: per modality, how its N versions were made ({} for n = 0)."""
    if n <= 0:
        return {}
    gap = " A clip whose input is missing (a gap) has zeros in every version."
    mask = ("frequency masking then time masking (reference AdaptiveFrequencyMasking / AdaptiveTimeMasking, "
            "[0.15, 0.35]: the maximum width is randint(int(0.15·n), int(0.35·n)), the mask covers "
            "floor(u·max) bins / frames, u uniform, as torchaudio's mask_along_axis)")
    if audio_form == "mel":
        audio = f"{mask} on the mel spectrogram {audio_spec} computes, filled with the clip's spectrogram minimum."
    elif audio_form == "waveform":
        audio = (f"time masking only, on the waveform samples (same span draw as the reference's time mask), "
                 f"filled with 0: {audio_spec} takes the raw waveform, so frequency masking (which needs a "
                 f"spectrogram) is not applied.")
    else:
        audio = f"no audio backbone ({audio_spec}): every version is zeros."
    return {
        "video": ("RandomResizedCrop (scale 0.8–1.0, aspect ratio 0.8–1.2 log-uniform, pytorchvideo's sampler) "
                  "resized back to the input size, then a horizontal flip with p 0.5; one draw per clip and "
                  "version for all its frames, drawn separately for the face frames (image) and the windows "
                  "(video3d)." + gap),
        "audio": audio + gap,
        "text": ("random swap of one word with a neighbour, applied with p 0.5 (reference RandomSwapWord: nlpaug "
                 "swap, aug_max 1), whitespace-separated words; a transcript without a space, and the versions "
                 "the draw leaves unswapped (about half), equal the plain vector." + gap),
    }
