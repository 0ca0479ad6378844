"""The log-mel spectrogram the audio backbones take (see docs/method.md, Backbones and features)."""

from __future__ import annotations

import functools

import numpy as np
import torch


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular HTK-scale filters, [n_mels, n_fft // 2 + 1], peak 1 (torchaudio's defaults:
    mel_scale='htk', norm=None)."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(
    audio: np.ndarray | torch.Tensor, sample_rate: int, n_mels: int = 128, n_fft: int = 400, hop: int = 160
) -> torch.Tensor:
    """Log power mel spectrogram, [n_mels, 1 + T // hop]: Hann-windowed STFT (centred, zero
    padded so any length works, even 0), |X|², HTK mel filters, natural log of (mel + 1e-6)."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, torch.Tensor) else audio)
    x = x.to(torch.float32).reshape(-1)
    if x.numel() == 0:
        x = torch.zeros(1)
    spec = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop,
        win_length=n_fft,
        window=torch.hann_window(n_fft, periodic=True),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.real.pow(2) + spec.imag.pow(2)  # [n_fft//2+1, frames]
    fb = torch.from_numpy(mel_filterbank(int(sample_rate), int(n_fft), int(n_mels)))
    return torch.log(fb @ power + 1e-6)
