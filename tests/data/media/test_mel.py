"""The log-mel spectrogram against one written from the equations in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conclugen.data.media import log_mel

SR = 16000


def numpy_log_mel(x: np.ndarray, sr: int, n_mels: int, n_fft: int, hop: int) -> np.ndarray:
    """Written from the equations: centred zero-padded frames, periodic Hann, |rfft|², HTK mel
    triangles over linearly spaced bins, log(. + 1e-6)."""
    x = np.pad(x.astype(np.float64), (n_fft // 2, n_fft // 2))
    n_frames = 1 + (len(x) - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i * hop : i * hop + n_fft] * win for i in range(n_frames)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = inv(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for j, f in enumerate(bins):
            if lo <= f <= c:
                fb[m, j] = (f - lo) / (c - lo)
            elif c < f <= hi:
                fb[m, j] = (hi - f) / (hi - c)
    return np.log(fb @ power + 1e-6)


@pytest.mark.parametrize(
    ("n", "n_mels", "n_fft", "hop"), [(4000, 40, 400, 160), (1234, 128, 512, 128), (100, 16, 400, 160)]
)
def test_log_mel_matches_numpy(n: int, n_mels: int, n_fft: int, hop: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    got = log_mel(x, SR, n_mels=n_mels, n_fft=n_fft, hop=hop)
    want = numpy_log_mel(x, SR, n_mels, n_fft, hop)
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (n_mels, 1 + n // hop) == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-3)


def test_log_mel_of_empty_audio() -> None:
    out = log_mel(np.zeros(0, np.float32), SR)
    assert tuple(out.shape) == (128, 1) and torch.isfinite(out).all()
