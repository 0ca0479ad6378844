"""The clip's audio: the first audio stream resampled by libswresample to mono float32 and cut
to the clip's time span (see :mod:`conclugen.data.media`, Audio)."""

from __future__ import annotations

import math
from typing import Any

import av
import numpy as np


class AudioTrack:
    """Collects one audio stream's decoded packets, resampled to ``sample_rate`` mono."""

    def __init__(self, stream: Any, sample_rate: int) -> None:
        self.stream = stream
        self.rate = sample_rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.first_t: float | None = None
        self.last_t = -math.inf
        self.n_in = 0
        self.error: str | None = None  # the track exists but failed to decode (a gap)

    def done(self, end: float) -> bool:
        """Whether the audio has passed ``end`` (or failed): no more packets are needed."""
        return self.last_t >= end

    def push_packet(self, packet: Any) -> None:
        for frame in packet.decode():
            self._push(frame)

    def fail(self, err: Exception) -> None:
        self.error = f"{type(err).__name__}: {err}"
        self.chunks = []
        self.last_t = math.inf  # done: no more audio is read

    def _push(self, frame: Any) -> None:
        if frame.time is not None:
            t = float(frame.time)
        else:
            t = (self.first_t or 0.0) + self.n_in / float(frame.sample_rate or self.rate)
        if self.first_t is None:
            self.first_t = t
        self.n_in += frame.samples
        self.last_t = t
        frame.pts = None  # resample by sample count: container timestamps may jump
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self, start: float, duration: float) -> np.ndarray:
        """The samples of ``[start, start + duration)``: ``round(duration * rate)`` of them, fewer
        when the track is shorter; leading silence is zero-filled when audio starts after ``start``."""
        if self.error is not None:
            return np.zeros(0, dtype=np.float32)
        try:
            for out in self.resampler.resample(None):
                self.chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError):
            pass
        if not self.chunks or self.first_t is None:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(self.chunks).astype(np.float32, copy=False)
        i0 = int(round((start - self.first_t) * self.rate))
        n = int(round(duration * self.rate))
        if i0 < 0:  # audio starts after the video: align by leading silence
            audio = np.concatenate([np.zeros(-i0, dtype=np.float32), audio])
            i0 = 0
        return np.ascontiguousarray(audio[i0 : i0 + n])
