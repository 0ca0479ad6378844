"""Timestamp sampling: decoded frames in, 1-fps face frames and 16-fps window frames out.

A target time ``t`` takes the frame on screen at ``t`` (the last frame with ``pts <= t``), so the
counts depend on the clip's duration only, never on its frame rate (see :mod:`conclugen.data.media`
for the rules). :class:`FrameTimeline` holds one frame back to know the span each frame covers;
:class:`FrameSampler` fills the targets in that span; :class:`VideoSampler` joins the two.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from conclugen.data.media.crops import FrameView

if TYPE_CHECKING:
    from conclugen.config import ExtractConfig
    from conclugen.data.faces import Box, FaceDetector

EPS = 1e-6  # seconds; absorbs float error when a target time equals a frame time


def fps_fraction(value: float) -> Fraction:
    """A frame rate as an exact fraction (29.97 → 30000/1001)."""
    return Fraction(value).limit_denominator(1_000_000)


class Targets:
    """Times ``start + k / fps`` for k = 0, 1, ... (exact rational arithmetic for the k/fps part)."""

    def __init__(self, start: float, fps: float) -> None:
        self.start = start
        self.period = 1 / fps_fraction(fps)
        self.k = 0

    def peek(self) -> float:
        return self.start + float(self.k * self.period)

    def take(self, t0: float, t1: float) -> Iterator[float]:
        """The targets in ``[t0, t1)``, consumed; earlier ones (only right after a seek) are skipped."""
        while self.peek() < t1 - EPS:
            t = self.peek()
            self.k += 1
            if t + EPS >= t0:
                yield t


class FrameSpan(NamedTuple):
    """A frame and the part of the clip it is on screen for, ``[t0, t1)``."""

    frame: Any
    t0: float
    t1: float


class FrameTimeline:
    """The clip's time line from decoded frame times, holding one frame back: a frame covers its
    pts up to the next frame's pts (the last one, its own duration). The clip starts at
    ``max(start_s, first frame)`` and ends at the earliest of ``end_s``, ``start + max_seconds``
    and the end of the last frame."""

    def __init__(self, start_s: float | None, end_s: float | None, max_seconds: float, rate: float) -> None:
        self.start_s, self.end_s, self.max_seconds = start_s, end_s, max_seconds
        self.rate = rate  # the stream's nominal rate, for a lone frame without a duration
        self.start = 0.0
        self.first_t = 0.0
        self.end_req = math.inf
        self.n_seen = 0
        self.last_end = 0.0
        self.duration = 0.0
        self.truncated = False
        self.stopped_early = False
        self._prev: Any = None
        self._prev_t = 0.0
        self._prev_dt: float | None = None

    def push(self, frame: Any, t: float) -> tuple[FrameSpan | None, bool]:
        """Take the next decoded frame: (the span of the frame held back, if it is complete now;
        whether the clip's end has been reached)."""
        if self.n_seen == 0:
            self.first_t = t
            self.start = t if self.start_s is None else max(self.start_s, t)
            cap = self.start + self.max_seconds
            self.end_req = cap if self.end_s is None else min(self.end_s, cap)
        self.n_seen += 1
        span = None
        if self._prev is not None:
            if t <= self._prev_t:  # out-of-order or duplicate timestamps: keep the newer picture
                self._prev = frame
                return None, False
            self._prev_dt = t - self._prev_t
            span = FrameSpan(self._prev, self._prev_t, min(t, self.end_req))
        if t >= self.end_req - EPS:
            # The video goes on past the clip's end: stop here.
            self.last_end = t
            self.stopped_early = True
            self.truncated = self._capped()
            self.duration = self.end_req - self.start
            self._prev = None
            return span, True
        self._prev, self._prev_t = frame, t
        return span, False

    def finish(self) -> FrameSpan | None:
        """End of the stream: the last frame's span (it lasts its own duration)."""
        if self.stopped_early or self._prev is None:
            return None
        end = self._prev_t + self._frame_duration(self._prev)
        self.last_end = end
        span = FrameSpan(self._prev, self._prev_t, min(end, self.end_req))
        if end > self.end_req + EPS:
            self.truncated = self._capped()
            end = self.end_req
        self.duration = max(0.0, end - self.start)
        self._prev = None
        return span

    def _capped(self) -> bool:
        """Whether the clip ends at the max_seconds cap rather than at the segment's end."""
        return self.end_s is None or self.end_s > self.start + self.max_seconds + EPS

    def _frame_duration(self, frame: Any) -> float:
        if frame.duration and frame.time_base:
            return float(frame.duration * frame.time_base)
        if self._prev_dt:
            return self._prev_dt
        return 1.0 / self.rate


class FrameSampler:
    """Fills face targets (``face_fps``) and window targets (``window_fps``) from frame spans.
    Each window frame is cropped around the face box of the latest face frame at or before it
    (centre crop when none), so the 3D model sees the face as the 2D model does, with detection
    run only at ``face_fps``. Frames that no target falls on are never converted."""

    def __init__(self, cfg: ExtractConfig, detector: FaceDetector | None, start: float) -> None:
        self.face_size, self.window_size = int(cfg.face_size), int(cfg.window_size)
        self.detector = detector
        self.face_targets = Targets(start, float(cfg.face_fps))
        self.window_targets = Targets(start, float(cfg.window_fps))
        self.faces: list[np.ndarray] = []
        self.face_boxes: list[tuple[float, Box | None]] = []  # (face target time, box)
        self.n_faces = 0
        self.win_frames: list[np.ndarray] = []

    def sample(self, span: FrameSpan) -> None:
        """Fill every face / window target in the span from its frame."""
        frame, t0, t1 = span
        if self.face_targets.peek() >= t1 - EPS and self.window_targets.peek() >= t1 - EPS:
            return  # a frame no target falls on is never converted
        view = FrameView(frame, self.window_size)
        for t in self.face_targets.take(t0, t1):
            box = view.detect(self.detector) if self.detector is not None else None
            self.n_faces += box is not None
            self.faces.append(view.face_crop(box, self.face_size))
            self.face_boxes.append((t, box))
        for t in self.window_targets.take(t0, t1):
            self.win_frames.append(view.window_crop(self._box_at(t)))

    def _box_at(self, t: float) -> Box | None:
        for tf, box in reversed(self.face_boxes):
            if tf <= t + EPS:
                return box
        return None


class VideoSampler:
    """Decoded frames in (in decode order, with their times), sampled frames out."""

    def __init__(
        self,
        cfg: ExtractConfig,
        detector: FaceDetector | None,
        start_s: float | None,
        end_s: float | None,
        max_seconds: float,
        rate: float,
    ) -> None:
        self.cfg, self.detector = cfg, detector
        self.timeline = FrameTimeline(start_s, end_s, max_seconds, rate)
        self.frames: FrameSampler | None = None  # made on the first frame, which fixes the start

    def push(self, frame: Any, t: float) -> bool:
        """Take the next decoded frame; True when the clip's end has been reached."""
        span, done = self.timeline.push(frame, t)
        if self.frames is None:
            self.frames = FrameSampler(self.cfg, self.detector, self.timeline.start)
        if span is not None:
            self.frames.sample(span)
        return done

    def finish(self) -> None:
        span = self.timeline.finish()
        if span is not None and self.frames is not None:
            self.frames.sample(span)


def stack_windows(frames: list[np.ndarray], window_frames: int) -> np.ndarray:
    """Consecutive windows of ``window_frames`` frames, stride ``window_frames``; the last one is
    padded by repeating its last real frame (so no window is padding only)."""
    n = len(frames)
    n_windows = max(1, math.ceil(n / window_frames))
    padded = frames + [frames[-1]] * (n_windows * window_frames - n)
    arr = np.stack(padded).astype(np.uint8, copy=False)
    return arr.reshape(n_windows, window_frames, *arr.shape[1:])
