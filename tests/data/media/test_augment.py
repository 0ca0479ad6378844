"""The augmentations against their definitions written out in numpy: crop boxes inside the
reference's scale / ratio ranges, bilinear resize with half-pixel centres, one draw for all frames
of a clip, flip = reversed columns, the torchaudio mask draw and its fill, word swap keeping the
words, and determinism per (clip, version, stream)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from conclugen.data.media.augment import (
    CropParams,
    augment_frames,
    crop_params,
    mask_span,
    resized_crop,
    rng_for,
    spec_augment,
    swap_words,
    wave_time_mask,
)


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of [h, w, c], align_corners=False: source = (dst + 0.5)·scale − 0.5, clamped at 0."""
    h, w = img.shape[:2]
    out = np.zeros((out_h, out_w, img.shape[2]))
    for y in range(out_h):
        sy = max((y + 0.5) * h / out_h - 0.5, 0.0)
        y0 = int(sy)
        y1, wy = min(y0 + 1, h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * w / out_w - 0.5, 0.0)
            x0 = int(sx)
            x1, wx = min(x0 + 1, w - 1), sx - x0
            top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
            bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
            out[y, x] = top * (1 - wy) + bottom * wy
    return out


def test_rng_is_a_pure_function_of_clip_version_stream() -> None:
    a = rng_for("dia1_utt2", 3, "image").random(4)
    np.testing.assert_array_equal(a, rng_for("dia1_utt2", 3, "image").random(4))
    for other in (rng_for("dia1_utt2", 4, "image"), rng_for("dia1_utt2", 3, "video3d"), rng_for("dia1_utt3", 3, "image")):
        assert not np.array_equal(a, other.random(4))


@pytest.mark.parametrize(("h", "w"), [(180, 180), (112, 112), (90, 150)])
def test_crop_boxes_within_the_reference_scale_and_ratio(h: int, w: int) -> None:
    flips = 0
    centre = crop_params(rng_for("c", 0, "image"), h, w, scale=(2.0, 3.0))  # the fallback box
    for v in range(300):
        p = crop_params(rng_for("c", v, "image"), h, w)
        assert 0 <= p.top and p.top + p.height <= h and 0 <= p.left and p.left + p.width <= w
        flips += p.flip
        if (p.top, p.left, p.height, p.width) == (centre.top, centre.left, centre.height, centre.width):
            continue  # 10 draws missed (a wide image): pytorchvideo's centre crop
        # the box is (round(w*), round(h*)) with w*·h* in [0.8, 1]·area and w*/h* in [0.8, 1.2]
        assert p.height * p.width >= 0.8 * h * w - 0.5 * (p.height + p.width) and p.height * p.width <= h * w
        assert (p.width + 0.5) / (p.height - 0.5) >= 0.8 and (p.width - 0.5) / (p.height + 0.5) <= 1.2
    assert 100 < flips < 200  # p = 0.5


def test_crop_falls_back_to_the_centre_crop_of_the_nearest_ratio() -> None:
    # scale > 1 never fits: pytorchvideo's fallback, a centred crop of ratio max(ratio) for a wide image
    p = crop_params(rng_for("c", 1, "image"), 100, 300, scale=(2.0, 3.0))
    assert (p.top, p.left, p.height, p.width) == (0, 90, 100, 120)
    p = crop_params(rng_for("c", 1, "image"), 300, 100, scale=(2.0, 3.0))  # tall: ratio min(ratio)
    assert (p.top, p.left, p.height, p.width) == (87, 0, 125, 100)


def test_resized_crop_is_bilinear_of_the_box_and_flip_reverses_columns() -> None:
    frames = _frames(2, 20, 24)
    p = CropParams(top=2, left=3, height=15, width=17, flip=False)
    out = resized_crop(frames, p)
    assert out.shape == frames.shape and out.dtype == np.uint8
    for k in range(2):
        want = _bilinear(frames[k, 2:17, 3:20].astype(np.float64), 20, 24)
        assert np.abs(out[k].astype(np.float64) - want).max() <= 0.5 + 1e-6  # rounding to uint8
    flipped = resized_crop(frames, CropParams(2, 3, 15, 17, flip=True))
    np.testing.assert_array_equal(flipped, out[:, :, ::-1])
    np.testing.assert_array_equal(resized_crop(frames, CropParams(0, 0, 20, 24, flip=False)), frames)
    np.testing.assert_array_equal(resized_crop(frames, CropParams(0, 0, 20, 24, flip=True)), frames[:, :, ::-1])


def test_one_draw_holds_for_every_frame_of_a_clip() -> None:
    faces = _frames(5, 40, 40, seed=1)
    windows = np.random.default_rng(2).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    for clip, stream in ((faces, "image"), (windows, "video3d")):
        p = crop_params(rng_for("clip", 2, stream), clip.shape[-3], clip.shape[-2])
        out = augment_frames(clip, rng_for("clip", 2, stream))
        assert out.shape == clip.shape
        flat_in, flat_out = clip.reshape(-1, *clip.shape[-3:]), out.reshape(-1, *clip.shape[-3:])
        for k in range(len(flat_in)):  # each frame alone, with the clip's one box and flip
            np.testing.assert_array_equal(flat_out[k], resized_crop(flat_in[k : k + 1], p)[0])
    same = np.repeat(faces[:1], 4, axis=0)
    out = augment_frames(same, rng_for("clip", 5, "image"))
    assert all(np.array_equal(out[0], out[k]) for k in range(4))


def _mask_reference(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """AdaptiveTimeMasking([0.15, 0.35]) + torchaudio's mask_along_axis, written out."""
    param = int(rng.integers(int(0.15 * size), int(0.35 * size)))
    value = rng.random() * param
    lo = rng.random() * (size - value)
    return math.floor(lo), math.floor(lo) + math.floor(value)


@pytest.mark.parametrize("size", [32, 128, 301])
def test_mask_span_is_the_reference_draw(size: int) -> None:
    widths = []
    for v in range(400):
        s, e = mask_span(size, rng_for("m", v, "audio"))
        assert (s, e) == _mask_reference(size, rng_for("m", v, "audio"))
        assert 0 <= s <= e <= size and (e - s) < 0.35 * size
        widths.append((e - s) / size)
    # the 0.15–0.35 bounds the *maximum* width; the width itself is uniform below it
    assert min(widths) < 0.15 and max(widths) > 0.2
    assert 0.08 < float(np.mean(widths)) < 0.16  # ≈ E[u]·E[max] = 0.5 · 0.25 − floor effects


def test_spec_augment_masks_one_band_then_one_span_with_the_fill() -> None:
    spec = np.random.default_rng(3).normal(size=(64, 200)).astype(np.float32)
    for v in range(20):
        g = rng_for("s", v, "audio")
        (f0, f1), (t0, t1) = mask_span(64, g), mask_span(200, g)
        out = spec_augment(spec, rng_for("s", v, "audio"))
        want = spec.copy()
        want[f0:f1, :] = spec.min()
        want[:, t0:t1] = spec.min()
        np.testing.assert_array_equal(out, want)
        masked_rows = np.all(out == spec.min(), axis=1).sum()
        assert masked_rows == f1 - f0 and masked_rows / 64 < 0.35
    out = spec_augment(spec, rng_for("s", 0, "audio"), fill=-7.0)
    assert (out == -7.0).any() and not (spec == -7.0).any()
    np.testing.assert_array_equal(spec_augment(spec, rng_for("s", 1, "audio")), spec_augment(spec, rng_for("s", 1, "audio")))


def test_wave_time_mask_silences_one_span() -> None:
    wave = np.random.default_rng(4).uniform(0.1, 1.0, 16000).astype(np.float32)  # no zeros of its own
    for v in range(20):
        s, e = mask_span(16000, rng_for("w", v, "audio"))
        out = wave_time_mask(wave, rng_for("w", v, "audio"))
        zero = np.nonzero(out == 0)[0]
        assert len(zero) == e - s and (len(zero) == 0 or (zero[0], zero[-1] + 1) == (s, e))
        np.testing.assert_array_equal(np.delete(out, zero), np.delete(wave, zero))


def test_swap_words_keeps_the_words_and_swaps_neighbours() -> None:
    text = "we were on a break"
    words = text.split()
    swapped = 0
    for v in range(400):
        out = swap_words(text, rng_for("t", v, "text"))
        assert Counter(out.split()) == Counter(words)
        diff = [i for i, (a, b) in enumerate(zip(out.split(), words, strict=True)) if a != b]
        assert diff == [] or (len(diff) == 2 and diff[1] == diff[0] + 1)
        swapped += bool(diff)
        assert out == swap_words(text, rng_for("t", v, "text"))  # deterministic
    assert 150 < swapped < 250  # p = 0.5
    assert all(swap_words(text, rng_for("t", v, "text"), p=1.0) != text for v in range(50))
    assert all(swap_words(text, rng_for("t", v, "text"), p=0.0) == text for v in range(50))
    assert swap_words("hello", rng_for("t", 0, "text"), p=1.0) == "hello"  # no space: unchanged
    assert swap_words("hello there", rng_for("t", 0, "text"), p=1.0) == "there hello"
