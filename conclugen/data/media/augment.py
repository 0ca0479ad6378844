"""The augmentations of the extraction's augmented versions (see docs/method.md, Backbones and
features, Augmentation), each a numpy function of the decoded input and a random generator.

Parameters are the reference's (its configs/data/*/..._augmented.yaml and src/data/transforms/):

- **Frames** (face frames and 3D windows): pytorchvideo's ``RandomResizedCrop`` (scale 0.8–1.0,
  aspect ratio 0.8–1.2 drawn log-uniformly, 10 tries then a centre crop, bilinear resize back to
  the input size) followed by torchvision's ``RandomHorizontalFlip`` (p 0.5). The reference
  applies both to a clip's whole frame tensor, so one draw holds for every frame of the clip.
- **Spectrogram**: ``AdaptiveFrequencyMasking`` then ``AdaptiveTimeMasking`` with [0.15, 0.35]:
  the *maximum* mask width is drawn from ``randint(int(0.15·n), int(0.35·n))`` and torchaudio's
  ``mask_along_axis`` then masks ``floor(u·max)`` bins (u uniform in [0, 1)) at a uniform start,
  so a mask covers between 0 and 35% of the bins / frames (:func:`mask_span`). The reference fills
  with 0 on a spectrogram min–max normalised per clip, i.e. with the clip's minimum, which is
  what :func:`spec_augment` fills with (ours, inferred: our spectrograms are not normalised).
- **Text**: ``RandomSwapWord`` (p 0.5, nlpaug ``RandomWordAug(action="swap", aug_max=1)``): with
  probability 0.5 one word swaps places with a neighbour; text without a space is left alone.

Randomness: :func:`rng_for` seeds a generator from (clip_id, version, stream), so a clip's
versions are the same in every run, retry and resume, whichever worker computes them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (0.8, 1.2)
CROP_TRIES = 10
FLIP_P = 0.5
MASK_FRACTION = (0.15, 0.35)
SWAP_P = 0.5
_RESIZE_CHUNK = 64  # frames per interpolation call: bounds the float copy of a long clip


def rng_for(clip_id: str, version: int, stream: str) -> np.random.Generator:
    """The generator of one clip's augmented ``version`` for ``stream`` (a backbone kind): a pure
    function of the three, independent of process, order and batch."""
    h = hashlib.blake2b(f"{clip_id}\x1f{version}\x1f{stream}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(h, "little"))


# ------------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class CropParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool


def crop_params(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float] = CROP_SCALE,
                ratio: tuple[float, float] = CROP_RATIO, flip_p: float = FLIP_P) -> CropParams:
    """pytorchvideo's ``_get_param_spatial_crop`` (log-uniform ratio, ``CROP_TRIES`` tries, then
    the centre crop of the nearest allowed ratio), then the flip draw."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    box = None
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            h, w = height, width
        box = ((height - h) // 2, (width - w) // 2, h, w)
    return CropParams(*box, flip=bool(rng.random() < flip_p))


def resized_crop(frames: np.ndarray, p: CropParams) -> np.ndarray:
    """Crop every frame of ``frames`` (uint8 ``[..., H, W, C]``) to ``p``'s box, resize it back to
    H×W (bilinear, half-pixel centres, as ``F.interpolate(align_corners=False)``), flip the
    columns when ``p.flip``; same shape and dtype out."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(frames)
    shape = arr.shape
    h, w, c = shape[-3:]
    flat = arr.reshape(-1, h, w, c)[:, p.top : p.top + p.height, p.left : p.left + p.width]
    if (p.height, p.width) != (h, w):
        parts = []
        for s in range(0, len(flat), _RESIZE_CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(flat[s : s + _RESIZE_CHUNK])).permute(0, 3, 1, 2).float()
            y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            parts.append(y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        flat = np.concatenate(parts) if parts else np.zeros((0, h, w, c), arr.dtype)
    if p.flip:
        flat = flat[:, :, ::-1]
    return np.ascontiguousarray(flat, dtype=arr.dtype).reshape(shape)


def augment_frames(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One clip's frames (face frames ``[F, H, W, 3]`` or windows ``[W, T, H, W, 3]``) with one
    crop + flip drawn for the whole clip."""
    arr = np.asarray(frames)
    return resized_crop(arr, crop_params(rng, arr.shape[-3], arr.shape[-2]))


# ------------------------------------------------------------------------------------- audio


def mask_span(size: int, rng: np.random.Generator, fraction: tuple[float, float] = MASK_FRACTION) -> tuple[int, int]:
    """[start, end) of one mask along an axis of ``size``: the reference's adaptive maximum width
    ``randint(int(lo·size), int(hi·size))``, then torchaudio's ``mask_along_axis`` draw."""
    lo, hi = int(fraction[0] * size), int(fraction[1] * size)
    # torch.randint raises for an empty range (an axis of < 1/0.35 bins); ours: the lower bound
    param = int(rng.integers(lo, hi)) if hi > lo else lo
    if param < 1:
        return 0, 0
    value = rng.random() * param
    start = int(rng.random() * (size - value))
    return start, start + int(value)


def spec_augment(spec: np.ndarray, rng: np.random.Generator, fill: float | None = None) -> np.ndarray:
    """Frequency then time masking of a ``[freq, time]`` spectrogram; masked cells get ``fill``
    (default: the spectrogram's minimum, see the module docstring)."""
    out = np.array(spec, dtype=np.float32, copy=True)
    if out.size == 0:
        return out
    value = float(out.min()) if fill is None else float(fill)
    f0, f1 = mask_span(out.shape[0], rng)
    out[f0:f1, :] = value
    t0, t1 = mask_span(out.shape[1], rng)
    out[:, t0:t1] = value
    return out


def wave_time_mask(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Time masking on a waveform (for backbones that take samples, not a spectrogram): one span
    of samples drawn as :func:`mask_span` is set to 0 (silence)."""
    out = np.array(wave, dtype=np.float32, copy=True)
    s, e = mask_span(len(out), rng)
    out[s:e] = 0.0
    return out


# -------------------------------------------------------------------------------------- text


def swap_words(text: str, rng: np.random.Generator, p: float = SWAP_P) -> str:
    """With probability ``p``, one word (uniform) swaps places with a neighbour (the first with
    the second, the last with the one before, others left or right at random), as nlpaug's
    swap with ``aug_max=1``. Words are whitespace-separated *(differs: nlpaug also splits off
    punctuation and moves capitalisation with the position)*; text without a space is returned
    unchanged, as in the reference."""
    if " " not in text or rng.random() >= p:
        return text
    words = text.split()
    if len(words) < 2:
        return text
    i = int(rng.integers(len(words)))
    if i == 0:
        j = 1
    elif i == len(words) - 1:
        j = i - 1
    else:
        j = i + (-1 if rng.random() < 0.5 else 1)
    words[i], words[j] = words[j], words[i]
    return " ".join(words)
