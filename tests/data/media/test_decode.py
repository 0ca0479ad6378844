"""Decoding counts, timestamp sampling, segments, the cap, audio and bad input.

Clips are encoded in the test with PyAV (tiny sizes). Frames are flat grey with a level per source
frame index, so a decoded frame tells which source frame it came from.
"""

from __future__ import annotations

import io
import math
import pickle
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from conclugen.config import ExtractConfig
from conclugen.data.media import MediaError, decode_clip, encode_clip
from conclugen.data.media.integrity import cut_evidence

SR = 16000
AAC_FRAME = 1024  # tolerance on audio length: one AAC frame
CFG = ExtractConfig(face_detector="none", face_size=32, window_size=16)


def levels(n: int) -> np.ndarray:
    # Consecutive frames differ by >= 37 grey levels; all levels stay in [10, 240).
    return (np.arange(n) * 37) % 230 + 10


def grey_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.broadcast_to(levels(n)[:, None, None, None], (n, h, w, 3)).astype(np.uint8).copy()


def tone(seconds: float, rate: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def clip(n: int, fps: float | Fraction, audio: bool = True, **kw: object) -> bytes:
    a = tone(n / float(fps)) if audio else None
    return encode_clip(grey_frames(n), fps, a, **kw)


def frame_level(img: np.ndarray) -> float:
    return float(img.astype(np.float64).mean())


def source_index(t: float, fps: float | Fraction) -> int:
    # The frame on screen at time t: the last one with pts <= t (exact for these rational rates).
    return math.floor(Fraction(t).limit_denominator(10**6) * Fraction(fps) + Fraction(1, 10**9))


@pytest.mark.parametrize(
    ("n", "fps", "faces", "win_frames", "windows"),
    [
        (90, 30, 3, 48, 3),  # 3.0 s: exactly 3 windows, no padding-only window
        (90, Fraction(30000, 1001), 4, 49, 4),  # 29.97 fps: 3.003 s → t = 3.0 is still inside
        (21, 7, 3, 48, 3),  # 7 fps: slower than 16 fps, frames repeat
        (1, 30, 1, 1, 1),  # 1-frame clip: one face frame, one padded window
        (21, 20, 2, 17, 2),  # 1.05 s: 17 window frames → 2 windows, the last padded
    ],
)
def test_counts_and_timestamp_sampling(
    n: int, fps: float | Fraction, faces: int, win_frames: int, windows: int
) -> None:
    d = decode_clip(clip(n, fps), CFG)
    duration = n / float(fps)
    assert d.duration_s == pytest.approx(duration, abs=1e-6)
    assert d.face_frames.shape == (faces, 32, 32, 3) and d.face_frames.dtype == np.uint8
    assert faces == math.ceil(duration * 1 - 1e-9)
    assert d.n_window_frames == win_frames == math.ceil(duration * 16 - 1e-9)
    assert d.windows.shape == (windows, 16, 16, 16, 3)
    assert d.truncated_to_s is None and d.n_faces == 0
    assert d.has_audio and d.audio.dtype == np.float32
    assert abs(d.audio.shape[0] - duration * SR) <= AAC_FRAME
    lv = levels(n)
    for k in range(faces):
        assert frame_level(d.face_frames[k]) == pytest.approx(lv[source_index(k, fps)], abs=3)
    flat = d.windows.reshape(-1, 16, 16, 3)
    for k in range(win_frames):
        assert frame_level(flat[k]) == pytest.approx(lv[source_index(k / 16, fps)], abs=3)
    # Padding repeats the last real frame.
    for k in range(win_frames, flat.shape[0]):
        np.testing.assert_array_equal(flat[k], flat[win_frames - 1])


def test_segment_with_seek_and_audio_alignment() -> None:
    fps, n = 10, 120  # 12 s, keyframe every 10 frames so the demuxer really seeks
    sig = tone(n / fps, freq=3.0)  # slow tone: alignment shows in the samples themselves
    data = encode_clip(grey_frames(n), fps, sig, fmt="avi", gop=10)  # PCM audio: samples survive
    d = decode_clip(data, CFG, start_s=7.25, end_s=9.75)
    assert d.duration_s == pytest.approx(2.5)
    assert d.face_frames.shape[0] == 3 and d.n_window_frames == 40 and d.windows.shape[0] == 3
    lv = levels(n)
    assert frame_level(d.face_frames[0]) == pytest.approx(lv[72], abs=3)  # on screen at 7.25 s
    assert frame_level(d.face_frames[2]) == pytest.approx(lv[92], abs=3)  # 9.25 s
    flat = d.windows.reshape(-1, 16, 16, 3)
    assert frame_level(flat[39]) == pytest.approx(lv[source_index(7.25 + 39 / 16, fps)], abs=3)
    assert d.audio.shape[0] == 40000
    np.testing.assert_allclose(d.audio, sig[int(7.25 * SR) : int(9.75 * SR)], atol=2e-4)


def test_segment_in_mp4_and_whole_file_agree() -> None:
    data = clip(60, 20)  # 3 s
    seg = decode_clip(data, CFG, start_s=1.0, end_s=2.5)
    whole = decode_clip(data, CFG)
    assert seg.face_frames.shape[0] == 2 and seg.n_window_frames == 24
    np.testing.assert_array_equal(
        seg.windows.reshape(-1, 16, 16, 3)[:24], whole.windows.reshape(-1, 16, 16, 3)[16:40]
    )
    assert abs(seg.audio.shape[0] - 1.5 * SR) <= AAC_FRAME
    # start only / end only
    assert decode_clip(data, CFG, start_s=2.0).duration_s == pytest.approx(1.0)
    assert decode_clip(data, CFG, end_s=0.5).n_window_frames == 8
    # Null bounds that arrive as NaN (Parquet nulls through numpy) mean "whole file".
    assert decode_clip(data, CFG, start_s=float("nan"), end_s=float("nan")).duration_s == pytest.approx(3.0)


def test_cap_truncates_long_clips() -> None:
    data = clip(90, 30)  # 3 s
    d = decode_clip(data, CFG, max_seconds=1.0)
    assert d.truncated_to_s == 1.0 and d.duration_s == pytest.approx(1.0)
    assert d.face_frames.shape[0] == 1 and d.n_window_frames == 16 and d.windows.shape[0] == 1
    assert abs(d.audio.shape[0] - SR) <= AAC_FRAME
    assert decode_clip(data, CFG, max_seconds=3.0).truncated_to_s is None  # exactly the length: not cut
    # A segment shorter than the cap is not "truncated"; a longer one is cut at start + cap.
    assert decode_clip(data, CFG, start_s=0.5, end_s=2.0, max_seconds=2.0).truncated_to_s is None
    d = decode_clip(data, CFG, start_s=0.5, end_s=3.0, max_seconds=1.5)
    assert d.truncated_to_s == 1.5 and d.duration_s == pytest.approx(1.5)


def test_no_audio_track_is_a_gap_not_an_error() -> None:
    d = decode_clip(clip(30, 10, audio=False), CFG)
    assert not d.has_audio and d.audio.shape == (0,) and d.audio.dtype == np.float32
    assert d.face_frames.shape[0] == 3


def test_audio_resampled_to_16k_mono() -> None:
    rate = 44100
    sig = tone(2.0, rate=rate, freq=440.0)
    d = decode_clip(encode_clip(grey_frames(20), 10, sig, sample_rate=rate), CFG)
    assert abs(d.audio.shape[0] - 2 * SR) <= AAC_FRAME
    spec = np.abs(np.fft.rfft(d.audio[4000:20000]))
    peak_hz = np.argmax(spec) * SR / 16000
    assert abs(peak_hz - 440.0) <= 2.0


class BrightSquare:
    """A real (if simple) detector: the bounding box of pixels brighter than 200."""

    def detect(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        grey = frame if frame.ndim == 2 else frame[..., 0]  # decode_clip passes the luma plane
        ys, xs = np.nonzero(grey > 200)
        if len(xs) == 0:
            return []
        return [(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))]


def test_face_boxes_drive_face_and_window_crops() -> None:
    fps, n, h, w = 16, 48, 96, 128  # 3 s
    frames = np.full((n, h, w, 3), 40, np.uint8)
    # A white "face" at the left in second 0, at the right in second 1, none in second 2.
    frames[0:16, 30:62, 10:42] = 255
    frames[16:32, 30:62, 80:112] = 255
    cfg = ExtractConfig(face_detector="none", face_size=32, window_size=16)
    d = decode_clip(encode_clip(frames, fps), cfg, detector=BrightSquare())  # type: ignore[arg-type]
    assert d.face_frames.shape[0] == 3 and d.n_faces == 2
    # Face crops: the square fills the crop centre (box + 20% margin each side).
    for k in (0, 1):
        assert d.face_frames[k, 12:20, 12:20].mean() > 230
    assert abs(d.face_frames[2].astype(float).mean() - 40) < 4  # centre crop of a flat frame
    # Windows follow the box of their second: the square sits in the window crop's centre.
    for win in (0, 1):
        assert d.windows[win][:, 6:10, 6:10].mean() > 230
    assert d.windows[2].mean() < 60  # no face: centre crop of the dark frame


def test_haar_detector_default_path_counts_no_face_on_noise() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    d = decode_clip(encode_clip(frames, 10), ExtractConfig(face_size=32, window_size=16))
    assert d.n_faces == 0 and d.face_frames.shape == (2, 32, 32, 3)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_have_distinct_reasons() -> None:
    good = clip(60, 20)
    cases = {
        "empty_file": b"",
        "not_a_video": b"<html><body>403 Forbidden</body></html>\n" * 20,
        "truncated": good[: len(good) // 2],  # moov box at the end: the cut file does not open
        "no_video_stream": encode_clip(None, 20, tone(1.0)),
    }
    for reason, data in cases.items():
        with pytest.raises(MediaError) as e:
            decode_clip(data, CFG)
        assert e.value.reason == reason, (reason, str(e.value))


@pytest.mark.parametrize(("fmt", "faststart"), [("mp4", True), ("avi", False), ("matroska", False)])
@pytest.mark.parametrize("keep", [0.33, 0.97])
def test_truncated_files_that_still_open(fmt: str, faststart: bool, keep: float) -> None:
    """Cut copies of files whose headers come first: they open, then the data stops early."""
    data = encode_clip(grey_frames(200), 20, tone(10.0), fmt=fmt, faststart=faststart)  # 10 s
    whole = decode_clip(data, CFG)
    assert whole.n_window_frames == 160 and whole.has_audio and whole.audio_error is None
    cut = data[: int(len(data) * keep)]
    if keep < 0.5:
        with pytest.raises(MediaError) as e:
            decode_clip(cut, CFG)
        assert e.value.reason == "truncated", str(e.value)
    else:
        # Cut near the end: a clean read that ends within max(1 s, 10%) of the declared length is
        # accepted as is; a read error (a packet cut mid-way) makes any real shortfall "truncated".
        try:
            d = decode_clip(cut, CFG)
        except MediaError as e:
            assert e.reason == "truncated", str(e)
            assert any(f"({w}:" in str(e) for w in ("video", "audio", "read")), str(e)
        else:
            assert 9.0 < d.duration_s < 10.0


def test_images_and_empty_streams_are_not_videos() -> None:
    for ext in (".png", ".jpg"):
        img = cv2.imencode(ext, np.zeros((40, 40, 3), np.uint8))[1].tobytes()
        with pytest.raises(MediaError) as e:
            decode_clip(img, CFG)
        assert e.value.reason == "not_a_video"
    # A video stream that holds no frame at all (next to an audio track).
    buf = io.BytesIO()
    out = av.open(buf, "w", format="matroska")
    vs = out.add_stream("libx264", rate=10)
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    aus = out.add_stream("aac", rate=SR, layout="mono")
    out.start_encoding()
    af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    af.sample_rate, af.pts = SR, 0
    for packet in [*aus.encode(af), *aus.encode(None), *vs.encode(None)]:
        out.mux(packet)
    out.close()
    with pytest.raises(MediaError) as e:
        decode_clip(buf.getvalue(), CFG)
    assert e.value.reason == "no_frames"


@pytest.mark.parametrize(
    ("codec", "fmt", "w", "h", "pix"),
    [
        ("mjpeg", "avi", 63, 47, "yuvj420p"),
        ("ffv1", "matroska", 63, 47, "yuv420p"),
        ("libx264", "mp4", 64, 48, "yuv422p"),
    ],
)
def test_other_pixel_formats_and_odd_sizes(codec: str, fmt: str, w: int, h: int, pix: str) -> None:
    """Full-range, 4:2:2 and odd-sized video take the RGB crop path; counts and content hold."""
    n, fps = 25, 10  # 2.5 s
    buf = io.BytesIO()
    out = av.open(buf, "w", format=fmt)
    vs = out.add_stream(codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, pix
    for i, img in enumerate(grey_frames(n, h, w)):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        for packet in vs.encode(f):
            out.mux(packet)
    for packet in vs.encode(None):
        out.mux(packet)
    out.close()
    d = decode_clip(buf.getvalue(), CFG)
    assert d.face_frames.shape == (3, 32, 32, 3) and d.n_window_frames == 40 and d.windows.shape[0] == 3
    lv = levels(n)
    for k in range(3):
        assert frame_level(d.face_frames[k]) == pytest.approx(lv[10 * k], abs=4)
    assert frame_level(d.windows.reshape(-1, 16, 16, 3)[39]) == pytest.approx(
        lv[source_index(39 / 16, fps)], abs=4
    )


def test_bad_segments() -> None:
    data = clip(20, 10)  # 2 s
    with pytest.raises(MediaError) as e:
        decode_clip(data, CFG, start_s=5.0, end_s=6.0)
    assert e.value.reason == "segment_out_of_range"
    with pytest.raises(MediaError) as e:
        decode_clip(data, CFG, start_s=1.0, end_s=1.0)
    assert e.value.reason == "bad_segment"


def test_media_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(MediaError("decode", "truncated", "cut at 3 s")))
    assert (err.stage, err.reason, err.message) == ("decode", "truncated", "cut at 3 s")
    assert str(err) == "truncated: cut at 3 s"


def test_mpegts_segment_falls_back_when_the_seek_misses() -> None:
    """MPEG-TS has no index: a seek lands without a keyframe before start_s, so decoding restarts
    from the beginning (and frame timestamps do not start at 0)."""
    n, fps = 60, 20
    data = encode_clip(grey_frames(n), fps, tone(3.0), fmt="mpegts")
    first = next(av.open(io.BytesIO(data)).decode(video=0)).time
    d = decode_clip(data, CFG, start_s=1.0, end_s=2.0)
    assert d.duration_s == pytest.approx(1.0) and d.n_window_frames == 16 and d.face_frames.shape[0] == 1
    assert frame_level(d.face_frames[0]) == pytest.approx(levels(n)[math.floor((1.0 - first) * fps)], abs=3)
    assert abs(d.audio.shape[0] - SR) <= AAC_FRAME


def test_corrupt_is_told_apart_from_truncated() -> None:
    """Damage inside a whole file is "corrupt"; a file cut short is "truncated"."""
    rng = np.random.default_rng(3)
    good = encode_clip(rng.integers(0, 255, (40, 96, 96, 3), dtype=np.uint8), 10, tone(4.0))
    n = len(good)
    assert cut_evidence(good) is False and cut_evidence(good[: n // 2]) is True
    avi = encode_clip(grey_frames(20), 10, fmt="avi")
    assert cut_evidence(avi) is False and cut_evidence(avi[:-100]) is True
    assert cut_evidence(b"\x1a\x45\xdf\xa3" + bytes(100)) is None  # Matroska: not checked
    noise = lambda k: bytes(rng.integers(0, 255, k, dtype=np.uint8))  # noqa: E731
    damaged = {
        "index overwritten": good[:2000] + noise(n - 4000) + good[-2000:],
        "middle third overwritten": good[: n // 3] + noise(n // 3) + good[2 * (n // 3) :],
    }
    for what, data in damaged.items():
        assert len(data) == n
        with pytest.raises(MediaError) as e:
            decode_clip(data, CFG)
        assert e.value.reason == "corrupt", (what, str(e.value))
    with pytest.raises(MediaError) as e:
        decode_clip(good[: n // 2], CFG)
    assert e.value.reason == "truncated"


def test_broken_audio_track_is_a_gap_with_the_error_recorded() -> None:
    """Whole video, garbage AAC packets: the clip decodes, without audio, and says why."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    out = av.open(buf, "w", format="matroska")
    vs = out.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    aus = out.add_stream("aac", rate=SR, layout="mono")
    out.start_encoding()
    packets = []
    for i, img in enumerate(grey_frames(20)):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts, f.time_base = i, Fraction(1, 10)
        packets += vs.encode(f)
    for p in packets + list(vs.encode(None)):
        out.mux(p)
    for i in range(31):
        p = av.Packet(bytes(rng.integers(0, 255, 200, dtype=np.uint8)))
        p.stream, p.time_base, p.pts, p.dts = aus, Fraction(1, SR), i * 1024, i * 1024
        out.mux(p)
    out.close()
    d = decode_clip(buf.getvalue(), CFG)
    assert d.duration_s == pytest.approx(2.0) and d.n_window_frames == 32
    assert not d.has_audio and d.audio.shape == (0,) and d.audio_error and "InvalidData" in d.audio_error
