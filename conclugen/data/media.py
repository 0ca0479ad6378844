"""Clip decoding with PyAV: face frames for the 2D model, frame windows for the 3D model, 16 kHz
mono audio, and the log-mel spectrogram the audio models take.

Decisions (README material):

* **Bytes in.** Clips come from object storage, so :func:`decode_clip` reads ``bytes`` through
  ``io.BytesIO``; nothing touches the local disk.
* **Sampling by timestamps, not frame index.** A target time ``t`` takes the frame that is on
  screen at ``t`` (the last frame with ``pts <= t``). Face frames are taken at
  ``start + k / face_fps`` and window frames at ``start + k / window_fps`` for every such time
  before the clip's end, so a clip of duration ``d`` gives ``ceil(d * face_fps)`` face frames and
  ``ceil(d * window_fps)`` window frames whatever its own frame rate (29.97, 7, variable, ...).
  A source slower than ``window_fps`` repeats frames; a faster one skips them.
* **Clip time line.** The clip starts at ``max(start_s, first frame)`` (first frame for a whole
  file) and ends at the earliest of ``end_s``, ``start + max_seconds`` and the end of the last
  frame (its pts plus its duration). A 1-frame clip therefore lasts one frame period and gives one
  face frame and one (padded) window.
* **Windows.** ``window_frames`` consecutive window frames, stride ``window_frames``; the last
  window is padded by repeating its last real frame. Windows are cut from real frames only, so no
  window is ever padding only (the reference drops such windows; here they cannot arise).
* **Face crop for windows too.** Each window frame is cropped around the face box found on the
  latest 1-fps face frame at or before it (centre crop when none), so the 3D model sees the face
  as the 2D model does, with detection run only at ``face_fps``.
* **Cheap crops.** For yuv420p video (nearly all H.264/MPEG-4 files) crops are cut from the
  decoder's Y/U/V planes, scaled with OpenCV, and only then converted to RGB (``_Planes``): a
  whole-frame RGB conversion costs about as much as decoding. Face detection runs on the luma
  plane (the detector's grey input). Other pixel formats, odd sizes and crops that leave the frame
  take the RGB path (``faces.crop_face``, window frames pre-scaled to a shorter side of
  ``2 * window_size``). Frames that no target falls on are decoded but never converted.
* **Seek and stop early.** For a segment starting after 0.5 s the demuxer seeks to the keyframe
  before ``start_s``; demuxing stops as soon as video and audio have passed the clip's end. Long
  clips are cut to ``max_seconds`` (``truncated_to_s`` records it).
* **Audio.** The first audio stream is resampled by libswresample to mono float32 at
  ``audio_sample_rate`` and cut to the clip's time span (``round(duration * rate)`` samples, fewer
  when the track is shorter; leading silence is zero-filled when audio starts after the video).
  No audio stream (or no audio in the span) is not an error: ``has_audio=False`` and an empty
  array; extraction records the gap. An audio track that fails to decode while the video is
  whole is the same gap, with the failure in ``DecodedClip.audio_error``.
* **Bad input raises :class:`MediaError`** with a short reason code:

  - ``empty_file``: 0 bytes.
  - ``not_a_video``: no container format recognised (text, HTML error pages, random bytes), or a
    still image (PNG/JPEG open as one-frame streams).
  - ``truncated``: the file was cut short. A video container signature is there but the file
    does not open (an mp4 cut before its index), or the video ends before the length its headers
    declare — by more than max(1 s, 10%) for a clean read (healthy headers can be that far off),
    by more than two frames after a read/decode error — and the file's structure agrees (an
    mp4's last top-level box or AVI's RIFF chunk runs past the end of the data; formats not
    checked, such as Matroska, count as cut).
  - ``corrupt``: the same failures in a file whose structure is complete (damage inside, e.g.
    overwritten bytes), so it was not cut.
  - ``no_video_stream``: audio-only file (cover art in an audio file does not count as video).
  - ``no_decoder``: the video codec is not supported.
  - ``no_frames``: a video stream without one decodable frame.
  - ``segment_out_of_range``: ``start_s`` at or after the end of the video.
  - ``bad_segment``: ``end_s <= start_s``.
  - ``decode_error``: any other FFmpeg failure.

  ``MediaError.stage`` says where: ``decode`` (container / read), ``video``.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import torch

from conclugen.data.faces import FaceDetector, crop_face
from conclugen.errors import ConCluGenError

if TYPE_CHECKING:
    from conclugen.config import ExtractConfig

_EPS = 1e-6  # seconds; absorbs float error when a target time equals a frame time
_SEEK_MIN_S = 0.5  # segments starting earlier decode from the file's start


class MediaError(ConCluGenError):
    """A clip that cannot be decoded. ``stage`` is where it failed ("decode", "video", "audio"),
    ``reason`` a short code (see the module docstring), ``message`` the details."""

    def __init__(self, stage: str, reason: str, message: str = "") -> None:
        self.stage = stage
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}" if message else reason)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray workers
        return (MediaError, (self.stage, self.reason, self.message))


@dataclass
class DecodedClip:
    face_frames: np.ndarray  # uint8 [F, face_size, face_size, 3] RGB, F >= 1
    n_faces: int  # face frames where a face was detected
    windows: np.ndarray  # uint8 [W, window_frames, window_size, window_size, 3], W >= 1
    audio: np.ndarray  # float32 mono [T] at the configured rate; length 0 without audio
    has_audio: bool
    duration_s: float  # decoded duration, after the max_seconds cap
    truncated_to_s: float | None  # max_seconds when the clip was cut, else None
    sample_rate: int = 16000
    n_window_frames: int = 0  # real (unpadded) window frames
    audio_error: str | None = None  # the audio track exists but could not be decoded (a gap)

    @property
    def n_frames(self) -> int:
        return int(self.face_frames.shape[0])

    @property
    def n_windows(self) -> int:
        return int(self.windows.shape[0])

    @property
    def audio_seconds(self) -> float:
        return float(self.audio.shape[0]) / float(self.sample_rate)


# Container signatures: bytes that start like a video file but do not open are truncated, not
# "not a video" (an mp4 cut before its moov box does not open at all).
def _has_video_signature(head: bytes) -> bool:
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # ISO BMFF / QuickTime
        or (head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"))  # AVI
        or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska / WebM
        or head[:3] == b"FLV"
        or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")  # MPEG-PS / MPEG-1/2 video
        or (head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47")  # MPEG-TS
    )


def _cut_evidence(data: bytes) -> bool | None:
    """Whether the file's own structure says it was cut short: True (a top-level box or the RIFF
    chunk runs past the end of the data), False (the structure is complete: damage, if any, is
    inside), None (a format whose structure is not checked here)."""
    n = len(data)
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        pos = 0
        while pos < n:
            if pos + 8 > n:
                return True  # cut inside a box header
            size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
            if size == 1:  # 64-bit size follows
                if pos + 16 > n:
                    return True
                size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            elif size == 0:  # the box runs to the end of the file
                return False
            if size < 8 or not all(32 <= b < 127 for b in kind):
                return False  # garbage where a box should start: damaged, not cut
            pos += size
        return pos > n
    if data[:4] == b"RIFF" and data[8:12] in (b"AVI ", b"AVIX"):
        return int.from_bytes(data[4:8], "little") + 8 > n
    return None


@functools.lru_cache(maxsize=1)
def _default_detector() -> FaceDetector:
    return FaceDetector()  # one per process: it holds an OpenCV cascade


def _fps(value: float) -> Fraction:
    return Fraction(value).limit_denominator(1_000_000)


class _Targets:
    """Times ``start + k / fps`` for k = 0, 1, ... (exact rational arithmetic for the k/fps part)."""

    def __init__(self, start: float, fps: float) -> None:
        self.start = start
        self.period = 1 / _fps(fps)
        self.k = 0

    def peek(self) -> float:
        return self.start + float(self.k * self.period)


def decode_clip(
    data: bytes,
    cfg: ExtractConfig,
    start_s: float | None = None,
    end_s: float | None = None,
    max_seconds: float = 60.0,
    detector: FaceDetector | None = None,
) -> DecodedClip:
    """Decode ``data`` (a whole video file) or its ``[start_s, end_s)`` segment; see the module
    docstring for the sampling rules. Raises :class:`MediaError` for input that cannot be used."""
    if data is None or len(data) == 0:
        raise MediaError("decode", "empty_file", "the file has 0 bytes")
    # Null bounds may arrive as NaN (Parquet nulls through pandas/numpy): NaN means "no bound".
    start_s = None if start_s is None or not math.isfinite(float(start_s)) else max(0.0, float(start_s))
    end_s = None if end_s is None or math.isnan(float(end_s)) or end_s == math.inf else float(end_s)
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise MediaError("decode", "bad_segment", f"end {end_s:.3f}s is not after start {start_s:.3f}s")
    if max_seconds <= 0:
        raise ValueError("max_seconds must be > 0")
    if detector is None and getattr(cfg, "face_detector", "haar") == "haar":
        detector = _default_detector()

    cut = _cut_evidence(data)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as e:
        if _has_video_signature(bytes(data[:200])):
            reason = "corrupt" if cut is False else "truncated"
            raise MediaError("decode", reason, f"cannot open: {e}") from None
        raise MediaError("decode", "not_a_video", f"no media format recognised ({e})") from None
    except Exception as e:  # PyAV can raise plain errors on very odd input
        raise MediaError("decode", "not_a_video", f"{type(e).__name__}: {e}") from None
    try:
        return _decode(container, cfg, start_s, end_s, float(max_seconds), detector, cut, allow_seek=True)
    except _SeekMissed:
        container.close()
        container = av.open(io.BytesIO(data), mode="r")
        return _decode(container, cfg, start_s, end_s, float(max_seconds), detector, cut, allow_seek=False)
    finally:
        container.close()


class _SeekMissed(Exception):
    """Seeking to a segment's start did not land on a frame at or before it."""


def _frame_time(frame: Any, index: int, rate: float) -> float:
    t = frame.time
    return float(t) if t is not None else index / rate


def _decode(
    container: Any,
    cfg: ExtractConfig,
    start_s: float | None,
    end_s: float | None,
    max_seconds: float,
    detector: FaceDetector | None,
    cut: bool | None = None,
    allow_seek: bool = True,
) -> DecodedClip:
    fmt_name = container.format.name if container.format is not None else ""
    if fmt_name.endswith("_pipe") or fmt_name in ("image2", "image2pipe"):
        # A still image (PNG, JPEG, ...) opens as a one-frame stream: it is not a video.
        raise MediaError("decode", "not_a_video", f"an image ({fmt_name}), not a video")
    # Cover art in audio files (mp3/m4a) shows up as a one-picture "video" stream: not a video.
    videos = [v for v in container.streams.video if not (v.disposition & av.stream.Disposition.attached_pic)]
    if not videos:
        raise MediaError("video", "no_video_stream", "the file has no video stream")
    vs = videos[0]
    if vs.codec_context is None:
        raise MediaError(
            "video", "no_decoder", f"no decoder for video codec {vs.codec.name if vs.codec else '?'}"
        )
    a_stream = container.streams.audio[0] if container.streams.audio else None
    rate = float(vs.average_rate or vs.guessed_rate or 25)
    declared_end = _declared_video_end(container, vs)
    # Segment times count from the container's start, as players show them (MPEG-TS files often
    # start at 1.4 s); frame timestamps are absolute.
    offset = container.start_time / 1_000_000 if container.start_time else 0.0
    start_s = None if start_s is None else start_s + offset
    end_s = None if end_s is None else end_s + offset

    if start_s is not None and declared_end is not None and start_s >= declared_end - _EPS:
        raise MediaError(
            "video",
            "segment_out_of_range",
            f"start {start_s:.3f}s is at/after the video's end {declared_end:.3f}s",
        )
    seeked = False
    if allow_seek and start_s is not None and start_s > _SEEK_MIN_S:
        try:
            container.seek(int(start_s / vs.time_base), stream=vs, backward=True)
            seeked = True
        except av.error.FFmpegError:
            raise _SeekMissed() from None

    sample_rate = int(cfg.audio_sample_rate)
    face_size, win_size = int(cfg.face_size), int(cfg.window_size)
    state = _VideoState(cfg, detector, start_s, end_s, max_seconds)
    state.rate = rate
    audio = _AudioState(a_stream, sample_rate) if a_stream is not None else None

    streams = [vs] + ([a_stream] if a_stream is not None else [])
    video_done = False
    index = 0
    failure: tuple[str, Exception] | None = None  # (where, error) of a read/decode failure
    packets = container.demux(*streams)
    while True:
        # demux() ends with an empty packet per stream, whose decode() flushes delayed frames.
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:
            failure = ("read", e)
            break
        if packet.stream.type == "video":
            if video_done:
                if audio is None or audio.done(state.end_req):
                    break
                continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                failure = ("video", e)
                break
            for frame in frames:
                if state.push(frame, _frame_time(frame, index, rate)):
                    video_done = True
                    break
                index += 1
        elif audio is not None and not audio.done(state.end_req):
            try:
                audio.push_packet(packet)
            except av.error.FFmpegError as e:
                # A broken audio track loses the audio (a recorded gap), not the clip, unless
                # the video turns out to be cut short as well (then the file is truncated).
                audio.fail(e)
        if video_done and (audio is None or audio.done(state.end_req)):
            break

    if seeked and (state.n_seen == 0 or state.first_t > start_s + _EPS):
        # The seek missed (an imprecise index, a landing after start_s, no keyframe to start
        # from, as in some MPEG-TS files): decode from the beginning instead.
        raise _SeekMissed()
    if state.n_seen == 0:
        if failure is not None:
            raise MediaError("decode", _failure_reason(failure[1], cut), f"{failure[0]}: {failure[1]}")
        raise MediaError("video", "no_frames", "the video stream has no decodable frame")
    state.finish()
    # A video that stops well before the length its header declares was cut short.
    if declared_end is not None and not state.stopped_early:
        expected = declared_end if end_s is None else min(end_s, declared_end)
        expected_len = expected - state.start
        shortfall = expected - state.last_end
        # Healthy files' headers can be off by a little; after a read error, any real gap counts.
        errored = failure is not None or (audio is not None and audio.error is not None)
        allowed = 2.0 / rate if errored else max(1.0, 0.1 * expected_len)
        if expected_len > 0 and shortfall > allowed:
            why = f" ({failure[0]}: {failure[1]})" if failure else ""
            if audio is not None and audio.error is not None:
                why += f" (audio: {audio.error})"
            raise MediaError(
                "decode",
                "corrupt" if cut is False else "truncated",  # whole file but short video: damage
                f"video ends at {state.last_end:.2f}s but the header declares {declared_end:.2f}s{why}",
            )
    if failure is not None:
        raise MediaError(
            "decode",
            _failure_reason(failure[1], cut),
            f"{failure[0]} failed at {state.last_end:.2f}s: {failure[1]}",
        )
    if state.duration <= 0:
        raise MediaError(
            "video",
            "segment_out_of_range",
            f"no video in [{start_s}, {end_s}) (video ends at {state.last_end:.3f}s)",
        )

    faces = np.stack(state.faces).astype(np.uint8, copy=False)
    wins = _windows(state.win_frames, int(cfg.window_frames))
    if audio is not None:
        samples = audio.finish(state.start, state.duration)
    else:
        samples = np.zeros(0, dtype=np.float32)
    assert faces.shape[1:] == (face_size, face_size, 3) and wins.shape[2:] == (win_size, win_size, 3)
    return DecodedClip(
        face_frames=faces,
        n_faces=state.n_faces,
        windows=wins,
        audio=samples,
        has_audio=bool(samples.size > 0),
        duration_s=float(state.duration),
        truncated_to_s=max_seconds if state.truncated else None,
        sample_rate=sample_rate,
        n_window_frames=len(state.win_frames),
        audio_error=None if audio is None else audio.error,
    )


def _failure_reason(err: Exception, cut: bool | None) -> str:
    """Invalid data is "truncated" when the file's structure shows it was cut (or cannot tell),
    "corrupt" when the file is whole; other FFmpeg failures are "decode_error"."""
    if isinstance(err, (av.error.InvalidDataError, av.error.EOFError)):
        return "corrupt" if cut is False else "truncated"
    return "decode_error"


def _declared_video_end(container: Any, vs: Any) -> float | None:
    """The video's length as its headers declare it: the longest of the stream's duration and its
    frame count over its rate (AVI's header keeps the count when the index at the end is cut off
    and the duration is re-estimated from the file size); the container's duration when the
    stream declares none (Matroska)."""
    ends = []
    try:
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        if vs.duration is not None and vs.time_base is not None:
            ends.append(start + float(vs.duration * vs.time_base))
        if vs.frames and vs.average_rate:
            ends.append(start + float(vs.frames / vs.average_rate))
        if not ends and container.duration:
            ends.append(container.duration / 1_000_000)
    except (TypeError, ZeroDivisionError):
        return None
    return max(ends) if ends else None


class _VideoState:
    """Streams decoded frames into face frames and window frames, holding one frame back:
    a frame covers the targets between its pts and the next frame's pts."""

    def __init__(
        self,
        cfg: ExtractConfig,
        detector: FaceDetector | None,
        start_s: float | None,
        end_s: float | None,
        max_seconds: float,
    ) -> None:
        self.face_fps, self.window_fps = float(cfg.face_fps), float(cfg.window_fps)
        self.face_size, self.window_size = int(cfg.face_size), int(cfg.window_size)
        self.detector = detector
        self.rate = 25.0  # the stream's nominal rate, for a lone frame without a duration
        self.start_s, self.end_s, self.max_seconds = start_s, end_s, max_seconds
        self.prev: Any = None
        self.prev_t = 0.0
        self.prev_dt: float | None = None
        self.start = 0.0
        self.first_t = 0.0
        self.end_req = math.inf
        self.faces: list[np.ndarray] = []
        self.face_boxes: list[tuple[float, Any, tuple[int, int]]] = []  # (time, box, frame (h, w))
        self.n_faces = 0
        self.win_frames: list[np.ndarray] = []
        self.n_seen = 0
        self.last_end = 0.0
        self.duration = 0.0
        self.truncated = False
        self.stopped_early = False
        self._face_t: _Targets | None = None
        self._win_t: _Targets | None = None

    def push(self, frame: Any, t: float) -> bool:
        """Take the next decoded frame; True when the clip's end has been reached."""
        if self.n_seen == 0:
            self.first_t = t
            self.start = t if self.start_s is None else max(self.start_s, t)
            cap = self.start + self.max_seconds
            self.end_req = cap if self.end_s is None else min(self.end_s, cap)
            self._face_t = _Targets(self.start, self.face_fps)
            self._win_t = _Targets(self.start, self.window_fps)
        self.n_seen += 1
        if self.prev is not None:
            if t <= self.prev_t:  # out-of-order or duplicate timestamps: keep the newer picture
                self.prev = frame
                return False
            self.prev_dt = t - self.prev_t
            self._emit(self.prev, self.prev_t, min(t, self.end_req))
        if t >= self.end_req - _EPS:
            # The video goes on past the clip's end: stop here.
            self.last_end = t
            self.stopped_early = True
            self.truncated = self.end_s is None or self.end_s > self.start + self.max_seconds + _EPS
            self.duration = self.end_req - self.start
            self.prev = None
            return True
        self.prev, self.prev_t = frame, t
        return False

    def finish(self) -> None:
        if self.stopped_early:
            return
        if self.prev is None:
            return
        dt = self._frame_duration(self.prev)
        end = self.prev_t + dt
        self.last_end = end
        self._emit(self.prev, self.prev_t, min(end, self.end_req))
        if end > self.end_req + _EPS:
            self.truncated = self.end_s is None or self.end_s > self.start + self.max_seconds + _EPS
            end = self.end_req
        self.duration = max(0.0, end - self.start)
        self.prev = None

    def _frame_duration(self, frame: Any) -> float:
        if frame.duration and frame.time_base:
            return float(frame.duration * frame.time_base)
        if self.prev_dt:
            return self.prev_dt
        return 1.0 / self.rate

    def _emit(self, frame: Any, t0: float, t1: float) -> None:
        """Fill every face / window target in [t0, t1) from ``frame``."""
        assert self._face_t is not None and self._win_t is not None
        ft, wt = self._face_t, self._win_t
        if ft.peek() >= t1 - _EPS and wt.peek() >= t1 - _EPS:
            return  # a frame no target falls on is never converted
        planes = _Planes.of(frame)
        full: np.ndarray | None = None
        while ft.peek() < t1 - _EPS:
            if ft.peek() + _EPS < t0:  # target before this frame (only right after a seek)
                ft.k += 1
                continue
            box = None
            if self.detector is not None:
                # The cascade works on grey levels: the decoder's luma plane is one, for free.
                if planes is not None:
                    found = self.detector.detect(planes.y)
                else:
                    full = frame.to_ndarray(format="rgb24") if full is None else full
                    found = self.detector.detect(full)
                box = found[0] if found else None
            self.n_faces += box is not None
            crop = planes.crop(box, self.face_size) if planes is not None else None
            if crop is None:
                full = frame.to_ndarray(format="rgb24") if full is None else full
                crop = crop_face(full, box, self.face_size)
            self.faces.append(crop)
            self.face_boxes.append((ft.peek(), box, (frame.height, frame.width)))
            ft.k += 1
        small: np.ndarray | None = None
        scale = 1.0
        while wt.peek() < t1 - _EPS:
            if wt.peek() + _EPS < t0:
                wt.k += 1
                continue
            box = self._box_at(wt.peek())
            crop = planes.crop(box, self.window_size) if planes is not None else None
            if crop is None:
                if small is None:
                    small, scale = self._working_frame(frame)
                sbox = None if box is None else tuple(int(round(v * scale)) for v in box)
                crop = crop_face(small, sbox, self.window_size)
            self.win_frames.append(crop)
            wt.k += 1

    def _working_frame(self, frame: Any) -> tuple[np.ndarray, float]:
        w, h = frame.width, frame.height
        short = min(w, h)
        target = 2 * self.window_size
        if short <= target:
            return frame.to_ndarray(format="rgb24"), 1.0
        scale = target / short
        nw, nh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
        arr = frame.to_ndarray(format="rgb24", width=nw, height=nh)
        return arr, nw / w

    def _box_at(self, t: float) -> Any:
        box = None
        for tf, b, _ in reversed(self.face_boxes):
            if tf <= t + _EPS:
                box = b
                break
        return box


class _Planes:
    """The Y, U, V planes of a yuv420p frame (the common case), to crop and scale before the
    colour conversion: converting a whole HD frame to RGB costs more than decoding it."""

    def __init__(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        self.y, self.u, self.v = y, u, v
        self.h, self.w = y.shape

    @classmethod
    def of(cls, frame: Any) -> _Planes | None:
        w, h = frame.width, frame.height
        if frame.format.name != "yuv420p" or w % 2 or h % 2:
            return None  # full-range, 4:2:2, odd sizes, ...: the RGB path handles them
        flat = frame.to_ndarray().reshape(-1)  # planes packed: Y (h*w), U, V (h/2 * w/2 each)
        q = (h // 2) * (w // 2)
        return cls(
            flat[: h * w].reshape(h, w),
            flat[h * w : h * w + q].reshape(h // 2, w // 2),
            flat[h * w + q : h * w + 2 * q].reshape(h // 2, w // 2),
        )

    def crop(self, box: Any, size: int, margin: float = 0.2) -> np.ndarray | None:
        """The square ``faces.crop_face`` takes (same geometry, to within one pixel for chroma
        alignment) as uint8 RGB [size, size, 3]; None when it leaves the frame or size is odd."""
        h, w = self.h, self.w
        if size % 2:
            return None
        if box is None:
            side = min(h, w)
            x0, y0 = (w - side) // 2, (h - side) // 2
        else:
            x, y, bw, bh = (int(v) for v in box)
            x, y = min(max(x, -bw // 2), w - 1 - bw // 2), min(max(y, -bh // 2), h - 1 - bh // 2)
            side = max(1, int(round(max(bw, bh) * (1.0 + 2.0 * margin))))
            x0, y0 = int(round(x + bw / 2.0 - side / 2.0)), int(round(y + bh / 2.0 - side / 2.0))
        x0, y0, side = x0 - x0 % 2, y0 - y0 % 2, side + side % 2
        if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h or side < 2:
            return None  # crop_face pads by edge replication there
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        ys = cv2.resize(self.y[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=interp)
        c0, c1, cs, half = y0 // 2, x0 // 2, side // 2, size // 2
        us = cv2.resize(self.u[c0 : c0 + cs, c1 : c1 + cs], (half, half), interpolation=interp)
        vs = cv2.resize(self.v[c0 : c0 + cs, c1 : c1 + cs], (half, half), interpolation=interp)
        i420 = np.concatenate([ys.reshape(-1), us.reshape(-1), vs.reshape(-1)]).reshape(size * 3 // 2, size)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)


def _windows(frames: list[np.ndarray], window_frames: int) -> np.ndarray:
    n = len(frames)
    n_windows = max(1, math.ceil(n / window_frames))
    padded = frames + [frames[-1]] * (n_windows * window_frames - n)
    arr = np.stack(padded).astype(np.uint8, copy=False)
    return arr.reshape(n_windows, window_frames, *arr.shape[1:])


class _AudioState:
    def __init__(self, stream: Any, sample_rate: int) -> None:
        self.stream = stream
        self.rate = sample_rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.first_t: float | None = None
        self.last_t = -math.inf
        self.n_in = 0
        self.error: str | None = None

    def done(self, end: float) -> bool:
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


# ----------------------------------------------------------------------------------- log-mel


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
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


# ----------------------------------------------------------------------------------- encoding


def encode_clip(
    frames: np.ndarray | None,
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    fmt: str = "mp4",
    faststart: bool = False,
    gop: int | None = None,
) -> bytes:
    """Encode uint8 RGB frames [N, H, W, 3] (and optional mono float audio in [-1, 1]) into a
    video file's bytes: H.264 + AAC in mp4/mkv, MPEG-4 part 2 + 16-bit PCM in AVI. ``gop`` sets
    the keyframe interval (frames); ``faststart`` puts the mp4 index first. Used by tests and
    synthetic corpora; ``frames=None`` writes an audio-only file."""
    options = {"movflags": "faststart"} if faststart and fmt in ("mp4", "mov") else {}
    # faststart rewrites the file after writing it, which needs a real file, not a BytesIO.
    tmp = tempfile.NamedTemporaryFile(suffix=f".{fmt}", delete=False) if options else None
    buf = io.BytesIO()
    out = av.open(tmp.name if tmp else buf, mode="w", format=fmt, options=options)
    rate = fps if isinstance(fps, Fraction) else _fps(float(fps))
    vstream = astream = None
    if frames is not None:
        codec = "mpeg4" if fmt == "avi" else "libx264"
        # ultrafast keeps test and synthetic corpora cheap to write (options must go to add_stream)
        vopts = {"preset": "ultrafast"} if codec == "libx264" else {}
        vstream = out.add_stream(codec, rate=rate, options=vopts)
        vstream.height, vstream.width = int(frames.shape[1]), int(frames.shape[2])
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = 1 / rate
        if gop is not None:
            vstream.codec_context.gop_size = int(gop)
    if audio is not None:
        acodec = "pcm_s16le" if fmt == "avi" else "aac"
        astream = out.add_stream(acodec, rate=sample_rate, layout="mono")
    out.start_encoding()  # open every encoder before the first mux writes the header
    if vstream is not None:
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
            vf.pts = i
            vf.time_base = 1 / rate  # the stream's own time_base turns into the muxer's once opened
            for packet in vstream.encode(vf):
                out.mux(packet)
        for packet in vstream.encode(None):
            out.mux(packet)
    if astream is not None:
        a = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1, 1)
        step = 1024
        fmt_name = "s16" if astream.codec_context.name == "pcm_s16le" else "fltp"
        for i in range(0, len(a), step):
            chunk = a[i : i + step]
            if fmt_name == "s16":
                af = av.AudioFrame.from_ndarray(
                    (chunk * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
                )
            else:
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            af.sample_rate = sample_rate
            af.pts = i
            af.time_base = Fraction(1, sample_rate)
            for packet in astream.encode(af):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    out.close()
    if tmp is not None:
        tmp.close()
        try:
            with open(tmp.name, "rb") as f:
                return f.read()
        finally:
            os.unlink(tmp.name)
    return buf.getvalue()


__all__ = ["DecodedClip", "MediaError", "decode_clip", "encode_clip", "log_mel", "mel_filterbank"]
