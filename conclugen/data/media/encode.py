"""Writing clips: uint8 RGB frames (and mono audio) → a video file's bytes. Used by tests and
benchmarks to make inputs of known content."""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from typing import Any

import av
import numpy as np

from conclugen.data.media.sampling import fps_fraction

AUDIO_CHUNK = 1024  # samples per encoded audio frame


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
    the keyframe interval (frames); ``faststart`` puts the mp4 index first. ``frames=None``
    writes an audio-only file."""
    options = {"movflags": "faststart"} if faststart and fmt in ("mp4", "mov") else {}
    # faststart rewrites the file after writing it, which needs a real file, not a BytesIO.
    tmp = tempfile.NamedTemporaryFile(suffix=f".{fmt}", delete=False) if options else None
    buf = io.BytesIO()
    out = av.open(tmp.name if tmp else buf, mode="w", format=fmt, options=options)
    rate = fps if isinstance(fps, Fraction) else fps_fraction(float(fps))
    vstream = _add_video_stream(out, frames, fmt, rate, gop) if frames is not None else None
    astream = None
    if audio is not None:
        astream = out.add_stream("pcm_s16le" if fmt == "avi" else "aac", rate=sample_rate, layout="mono")
    out.start_encoding()  # open every encoder before the first mux writes the header
    if vstream is not None:
        _mux_video(out, vstream, frames, rate)  # type: ignore[arg-type]
    if astream is not None:
        _mux_audio(out, astream, audio, sample_rate)  # type: ignore[arg-type]
    out.close()
    if tmp is None:
        return buf.getvalue()
    tmp.close()
    try:
        with open(tmp.name, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp.name)


def _add_video_stream(out: Any, frames: np.ndarray, fmt: str, rate: Fraction, gop: int | None) -> Any:
    codec = "mpeg4" if fmt == "avi" else "libx264"
    # ultrafast keeps test corpora cheap to write (options must go to add_stream)
    vopts = {"preset": "ultrafast"} if codec == "libx264" else {}
    vstream = out.add_stream(codec, rate=rate, options=vopts)
    vstream.height, vstream.width = int(frames.shape[1]), int(frames.shape[2])
    vstream.pix_fmt = "yuv420p"
    vstream.time_base = 1 / rate
    if gop is not None:
        vstream.codec_context.gop_size = int(gop)
    return vstream


def _mux_video(out: Any, vstream: Any, frames: np.ndarray, rate: Fraction) -> None:
    for i, img in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
        vf.pts = i
        vf.time_base = 1 / rate  # the stream's own time_base turns into the muxer's once opened
        for packet in vstream.encode(vf):
            out.mux(packet)
    for packet in vstream.encode(None):
        out.mux(packet)


def _mux_audio(out: Any, astream: Any, audio: np.ndarray, sample_rate: int) -> None:
    a = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1, 1)
    pcm = astream.codec_context.name == "pcm_s16le"
    for i in range(0, len(a), AUDIO_CHUNK):
        chunk = a[i : i + AUDIO_CHUNK]
        if pcm:
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
