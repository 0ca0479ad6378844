"""Decoding one clip with PyAV: open the container, pick the streams, seek, demux until video and
audio have passed the clip's end, check the result is whole, and assemble a :class:`DecodedClip`
(sampling rules and reason codes in :mod:`conclugen.data.media`)."""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from conclugen.data.faces import FaceDetector
from conclugen.data.media.audio import AudioTrack
from conclugen.data.media.integrity import (
    MediaError,
    cut_evidence,
    damage_reason,
    declared_video_end,
    failure_reason,
    has_video_signature,
)
from conclugen.data.media.sampling import EPS, FrameTimeline, VideoSampler, stack_windows

if TYPE_CHECKING:
    from conclugen.config import ExtractConfig

SEEK_MIN_S = 0.5  # segments starting earlier decode from the file's start

Failure = tuple[str, Exception]  # (where: read | video, the error) of a read/decode failure


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


@dataclass
class _Request:
    """What to decode: the segment (seconds from the container's start; None = open end)."""

    start_s: float | None
    end_s: float | None
    max_seconds: float


class _SeekMissed(Exception):
    """Seeking to a segment's start did not land on a frame at or before it."""


@functools.lru_cache(maxsize=1)
def _default_detector() -> FaceDetector:
    return FaceDetector()  # one per process: it holds an OpenCV cascade


def decode_clip(
    data: bytes,
    cfg: ExtractConfig,
    start_s: float | None = None,
    end_s: float | None = None,
    max_seconds: float = 60.0,
    detector: FaceDetector | None = None,
) -> DecodedClip:
    """Decode ``data`` (a whole video file) or its ``[start_s, end_s)`` segment; see
    :mod:`conclugen.data.media` for the sampling rules. Raises :class:`MediaError` for input that
    cannot be used."""
    if data is None or len(data) == 0:
        raise MediaError("decode", "empty_file", "the file has 0 bytes")
    req = _request(start_s, end_s, max_seconds)
    if detector is None and getattr(cfg, "face_detector", "haar") == "haar":
        detector = _default_detector()
    cut = cut_evidence(data)
    container = _open(data, cut)
    try:
        return _decode(container, cfg, req, detector, cut, allow_seek=True)
    except _SeekMissed:
        container.close()
        container = av.open(io.BytesIO(data), mode="r")
        return _decode(container, cfg, req, detector, cut, allow_seek=False)
    finally:
        container.close()


def _request(start_s: float | None, end_s: float | None, max_seconds: float) -> _Request:
    # Null bounds may arrive as NaN (Parquet nulls through pandas/numpy): NaN means "no bound".
    start_s = None if start_s is None or not math.isfinite(float(start_s)) else max(0.0, float(start_s))
    end_s = None if end_s is None or math.isnan(float(end_s)) or end_s == math.inf else float(end_s)
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise MediaError("decode", "bad_segment", f"end {end_s:.3f}s is not after start {start_s:.3f}s")
    if max_seconds <= 0:
        raise ValueError("max_seconds must be > 0")
    return _Request(start_s, end_s, float(max_seconds))


def _open(data: bytes, cut: bool | None) -> Any:
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as e:
        if has_video_signature(bytes(data[:200])):
            raise MediaError("decode", damage_reason(cut), f"cannot open: {e}") from None
        raise MediaError("decode", "not_a_video", f"no media format recognised ({e})") from None
    except Exception as e:  # PyAV can raise plain errors on very odd input
        raise MediaError("decode", "not_a_video", f"{type(e).__name__}: {e}") from None


def _video_stream(container: Any) -> Any:
    """The first real video stream, or the MediaError that says why there is none."""
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
    return vs


def _decode(
    container: Any,
    cfg: ExtractConfig,
    req: _Request,
    detector: FaceDetector | None,
    cut: bool | None,
    allow_seek: bool,
) -> DecodedClip:
    vs = _video_stream(container)
    a_stream = container.streams.audio[0] if container.streams.audio else None
    rate = float(vs.average_rate or vs.guessed_rate or 25)
    declared_end = declared_video_end(container, vs)
    # Segment times count from the container's start, as players show them (MPEG-TS files often
    # start at 1.4 s); frame timestamps are absolute.
    offset = container.start_time / 1_000_000 if container.start_time else 0.0
    start_s = None if req.start_s is None else req.start_s + offset
    end_s = None if req.end_s is None else req.end_s + offset
    if start_s is not None and declared_end is not None and start_s >= declared_end - EPS:
        raise MediaError(
            "video",
            "segment_out_of_range",
            f"start {start_s:.3f}s is at/after the video's end {declared_end:.3f}s",
        )
    seeked = allow_seek and start_s is not None and start_s > SEEK_MIN_S
    if seeked:
        try:
            container.seek(int(start_s / vs.time_base), stream=vs, backward=True)
        except av.error.FFmpegError:
            raise _SeekMissed() from None
    video = VideoSampler(cfg, detector, start_s, end_s, req.max_seconds, rate)
    audio = AudioTrack(a_stream, int(cfg.audio_sample_rate)) if a_stream is not None else None
    failure = _demux(container, vs, video, audio, rate)
    timeline = video.timeline
    if seeked and (timeline.n_seen == 0 or timeline.first_t > start_s + EPS):  # type: ignore[operator]
        # The seek missed (an imprecise index, a landing after start_s, no keyframe to start
        # from, as in some MPEG-TS files): decode from the beginning instead.
        raise _SeekMissed()
    if timeline.n_seen == 0:
        if failure is not None:
            raise MediaError("decode", failure_reason(failure[1], cut), f"{failure[0]}: {failure[1]}")
        raise MediaError("video", "no_frames", "the video stream has no decodable frame")
    video.finish()
    _check_whole(timeline, declared_end, end_s, failure, audio, rate, cut)
    if timeline.duration <= 0:
        raise MediaError(
            "video",
            "segment_out_of_range",
            f"no video in [{start_s}, {end_s}) (video ends at {timeline.last_end:.3f}s)",
        )
    return _assemble(cfg, video, audio, req.max_seconds)


def _demux(
    container: Any, vs: Any, video: VideoSampler, audio: AudioTrack | None, rate: float
) -> Failure | None:
    """Feed packets to the video sampler and the audio track until both have passed the clip's
    end (or the data ends); the read/decode failure that stopped it, if any."""
    timeline = video.timeline  # its end_req is set by the first frame

    def audio_done() -> bool:
        return audio is None or audio.done(timeline.end_req)

    streams = [vs] + ([audio.stream] if audio is not None else [])
    packets = container.demux(*streams)
    video_done = False
    index = 0
    while True:
        # demux() ends with an empty packet per stream, whose decode() flushes delayed frames.
        try:
            packet = next(packets)
        except StopIteration:
            return None
        except av.error.FFmpegError as e:
            return ("read", e)
        if packet.stream.type == "video":
            if video_done:
                if audio_done():
                    return None
                continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                return ("video", e)
            for frame in frames:
                t = float(frame.time) if frame.time is not None else index / rate
                if video.push(frame, t):
                    video_done = True
                    break
                index += 1
        elif audio is not None and not audio_done():
            try:
                audio.push_packet(packet)
            except av.error.FFmpegError as e:
                # A broken audio track loses the audio (a recorded gap), not the clip, unless
                # the video turns out to be cut short as well (then the file is truncated).
                audio.fail(e)
        if video_done and audio_done():
            return None


def _check_whole(
    timeline: FrameTimeline,
    declared_end: float | None,
    end_s: float | None,
    failure: Failure | None,
    audio: AudioTrack | None,
    rate: float,
    cut: bool | None,
) -> None:
    """Raise when the video stopped well before the length its header declares (cut short or
    damaged), or when a read/decode failure ended it."""
    audio_error = audio.error if audio is not None else None
    if declared_end is not None and not timeline.stopped_early:
        expected = declared_end if end_s is None else min(end_s, declared_end)
        expected_len = expected - timeline.start
        shortfall = expected - timeline.last_end
        # Healthy files' headers can be off by a little; after a read error, any real gap counts.
        allowed = (
            2.0 / rate if failure is not None or audio_error is not None else max(1.0, 0.1 * expected_len)
        )
        if expected_len > 0 and shortfall > allowed:
            why = f" ({failure[0]}: {failure[1]})" if failure else ""
            if audio_error is not None:
                why += f" (audio: {audio_error})"
            raise MediaError(
                "decode",
                damage_reason(cut),  # whole file but short video: damage
                f"video ends at {timeline.last_end:.2f}s but the header declares {declared_end:.2f}s{why}",
            )
    if failure is not None:
        raise MediaError(
            "decode",
            failure_reason(failure[1], cut),
            f"{failure[0]} failed at {timeline.last_end:.2f}s: {failure[1]}",
        )


def _assemble(
    cfg: ExtractConfig, video: VideoSampler, audio: AudioTrack | None, max_seconds: float
) -> DecodedClip:
    timeline, frames = video.timeline, video.frames
    assert frames is not None  # a frame was seen
    faces = np.stack(frames.faces).astype(np.uint8, copy=False)
    wins = stack_windows(frames.win_frames, int(cfg.window_frames))
    if audio is not None:
        samples = audio.finish(timeline.start, timeline.duration)
    else:
        samples = np.zeros(0, dtype=np.float32)
    face_size, win_size = int(cfg.face_size), int(cfg.window_size)
    assert faces.shape[1:] == (face_size, face_size, 3) and wins.shape[2:] == (win_size, win_size, 3)
    return DecodedClip(
        face_frames=faces,
        n_faces=frames.n_faces,
        windows=wins,
        audio=samples,
        has_audio=bool(samples.size > 0),
        duration_s=float(timeline.duration),
        truncated_to_s=max_seconds if timeline.truncated else None,
        sample_rate=int(cfg.audio_sample_rate),
        n_window_frames=len(frames.win_frames),
        audio_error=None if audio is None else audio.error,
    )
