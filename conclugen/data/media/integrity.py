"""Telling bad input apart: :class:`MediaError` and its reason codes (listed in
:mod:`conclugen.data.media`), container signatures, whether a file's own structure says it was cut
short, and the video length its headers declare."""

from __future__ import annotations

from typing import Any

import av

from conclugen.errors import ConCluGenError

ISO_BOX_KINDS = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # ISO BMFF / QuickTime


class MediaError(ConCluGenError):
    """A clip that cannot be decoded. ``stage`` is where it failed ("decode", "video", "audio"),
    ``reason`` a short code (see :mod:`conclugen.data.media`), ``message`` the details."""

    def __init__(self, stage: str, reason: str, message: str = "") -> None:
        self.stage = stage
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}" if message else reason)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray workers
        return (MediaError, (self.stage, self.reason, self.message))


def has_video_signature(head: bytes) -> bool:
    """Whether ``head`` (a file's first ~200 bytes) starts like a video container. Such bytes
    that do not open are truncated, not "not a video" (an mp4 cut before its moov box does not
    open at all)."""
    return (
        head[4:8] in ISO_BOX_KINDS
        or (head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"))  # AVI
        or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska / WebM
        or head[:3] == b"FLV"
        or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")  # MPEG-PS / MPEG-1/2 video
        or (head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47")  # MPEG-TS
    )


def cut_evidence(data: bytes) -> bool | None:
    """Whether the file's own structure says it was cut short: True (a top-level box or the RIFF
    chunk runs past the end of the data), False (the structure is complete: damage, if any, is
    inside), None (a format whose structure is not checked here)."""
    if data[4:8] in ISO_BOX_KINDS:
        return _iso_boxes_cut(data)
    if data[:4] == b"RIFF" and data[8:12] in (b"AVI ", b"AVIX"):
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    return None


def _iso_boxes_cut(data: bytes) -> bool:
    """Walk an mp4's top-level boxes: True when the last one runs past the end of the data."""
    n = len(data)
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


def damage_reason(cut: bool | None) -> str:
    """A file that fails inside: "corrupt" when its structure is whole, else "truncated"."""
    return "corrupt" if cut is False else "truncated"


def failure_reason(err: Exception, cut: bool | None) -> str:
    """Invalid data is "truncated" when the file's structure shows it was cut (or cannot tell),
    "corrupt" when the file is whole; other FFmpeg failures are "decode_error"."""
    if isinstance(err, (av.error.InvalidDataError, av.error.EOFError)):
        return damage_reason(cut)
    return "decode_error"


def declared_video_end(container: Any, vs: Any) -> float | None:
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
