"""One clip: speech → duration → frames → mp4 bytes. Runs in worker processes.

Each clip draws from its own ``SeedSequence([seed, index])``, so clips render in any order (or
process) with the same result. Per clip the face's position, size, head motion, lighting and a
cluttered background vary; the expression ramps in, the eyes blink and the mouth moves with the
speech envelope. x264 runs single-threaded and the mp4 muxer in bitexact mode with no creation
time, so the bytes are the same on every run.
"""

from __future__ import annotations

import io
import math
from typing import Any

import cv2
import numpy as np

from conclugen.data.synthetic.face import (
    PATCH_CX,
    PATCH_CY,
    PATCH_R,
    draw_background,
    draw_face_patch,
    expression,
)
from conclugen.data.synthetic.plan import FPS, MAX_SECONDS, MIN_SECONDS, SAMPLE_RATE, SIZE
from conclugen.data.synthetic.speech import speech


def render_clip(plan: dict[str, Any], seed: int, engine: str) -> tuple[bytes, float]:
    """(mp4 bytes, duration in seconds) of one planned clip; deterministic in (plan, seed, engine)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, plan["index"]]))
    voice = speech(plan, engine, rng)
    lead = float(rng.uniform(0.15, 0.45))
    tail = float(rng.uniform(0.2, 0.6))
    n_frames = int(
        np.clip(
            math.ceil((lead + len(voice) / SAMPLE_RATE + tail) * FPS), MIN_SECONDS * FPS, MAX_SECONDS * FPS
        )
    )
    duration = n_frames / FPS
    audio = _soundtrack(voice, lead, int(round(duration * SAMPLE_RATE)), rng)
    # The mouth follows the speech as heard in the clip, i.e. with the lead-in.
    frames = render_frames(plan, n_frames, audio, rng)
    return _encode_mp4(frames, audio), duration


def render_job(job: tuple[dict[str, Any], int, str]) -> tuple[bytes, float]:
    """:func:`render_clip` for a process pool: one OpenCV thread per worker."""
    cv2.setNumThreads(1)
    return render_clip(*job)


def _soundtrack(voice: np.ndarray, lead: float, n_audio: int, rng: np.random.Generator) -> np.ndarray:
    """The clip's audio: silence, the speech from ``lead`` seconds on (cut and faded at the clip's
    end if too long), and a room noise floor."""
    audio = np.zeros(n_audio, np.float32)
    start = int(lead * SAMPLE_RATE)
    seg = voice[: max(0, n_audio - start)]
    audio[start : start + len(seg)] = seg
    if len(seg) < len(voice):  # cut: fade the last 50 ms rather than click
        f = min(len(seg), int(0.05 * SAMPLE_RATE))
        audio[start + len(seg) - f : start + len(seg)] *= np.linspace(1, 0, f, dtype=np.float32)
    audio += rng.normal(0, 0.002, n_audio).astype(np.float32)  # room noise floor
    return np.clip(audio, -1, 1)


class _Placement:
    """Where the face sits per frame: a base position and size, slow sinusoids for sway, nod,
    roll and a breathing zoom, and a lighting gain."""

    def __init__(self, rng: np.random.Generator, aspect: float) -> None:
        fw = float(rng.uniform(60, 86))  # face width in frame pixels
        self.scale0 = fw / (2 * PATCH_R)
        self.cx0 = SIZE / 2 + rng.uniform(-0.22, 0.22) * (SIZE - fw)
        self.cy0 = SIZE / 2 - 6 + rng.uniform(-0.15, 0.15) * (SIZE - fw * aspect)
        self.gain = float(rng.uniform(0.8, 1.12))
        self.amp = rng.uniform([1.5, 1.0, 0.03, 0.015], [5.0, 3.5, 0.11, 0.04])
        self.freq = rng.uniform([0.2, 0.3, 0.15, 0.2], [0.7, 0.9, 0.5, 0.5])
        self.ph = rng.uniform(0, 2 * np.pi, 4)

    def matrix(self, tt: float) -> np.ndarray:
        """The similarity warp (patch → frame) at time ``tt``."""
        amp, freq, ph, s = self.amp, self.freq, self.ph, math.sin
        dx = amp[0] * s(2 * np.pi * freq[0] * tt + ph[0])
        dy = amp[1] * s(2 * np.pi * freq[1] * tt + ph[1])
        rot = amp[2] * s(2 * np.pi * freq[2] * tt + ph[2])
        sc = self.scale0 * (1 + amp[3] * s(2 * np.pi * freq[3] * tt + ph[3]))
        c, sn = sc * math.cos(rot), sc * math.sin(rot)
        cx, cy = self.cx0 + dx, self.cy0 + dy
        return np.array(
            [[c, -sn, cx - (c * PATCH_CX - sn * PATCH_CY)], [sn, c, cy - (sn * PATCH_CX + c * PATCH_CY)]]
        )


def _blinks(rng: np.random.Generator, n_frames: int) -> set[int]:
    """Frames with the eyes closed: two-frame blinks every 1.5-3.5 s."""
    blinks = set()
    tb = rng.uniform(0.3, 2.0)
    while tb * FPS < n_frames:
        blinks.update({int(tb * FPS), int(tb * FPS) + 1})
        tb += rng.uniform(1.5, 3.5)
    return blinks


def _envelope(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS of the audio per video frame, peak 1."""
    hop = SAMPLE_RATE // FPS
    env = np.array(
        [
            np.sqrt(np.mean(audio[i * hop : (i + 1) * hop] ** 2)) if i * hop < len(audio) else 0.0
            for i in range(n_frames)
        ]
    )
    return env / (env.max() + 1e-9)


def render_frames(
    plan: dict[str, Any], n_frames: int, audio: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """The clip's uint8 RGB frames [SIZE, SIZE, 3]: the speaker's face with the plan's face
    emotion over a background, its mouth moving with ``audio``."""
    spk = plan["speaker"]
    bg = draw_background(rng)
    place = _Placement(rng, spk["aspect"])
    onset = float(rng.uniform(0.3, 0.9))  # seconds until the expression is at full intensity
    blinks = _blinks(rng, n_frames)
    env = _envelope(audio, n_frames)
    # Patches are cached per quantised expression state, so a clip draws only a handful.
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    base_cache: dict[str, Any] = {}
    bg16 = bg.astype(np.uint16)
    frames = []
    for i in range(n_frames):
        tt = i / FPS
        level = int(round(4 * min(1.0, 0.4 + 0.6 * tt / onset)))  # quantised intensity ramp
        talk = int(round(2 * env[i])) if env[i] > 0.15 else 0
        key = (level, talk, int(i in blinks))
        if key not in cache:
            ex = expression(plan["face_emotion"], plan["face_intensity"] * level / 4, spk["rest"])
            ex["open"] += 0.18 * talk
            if key[2]:
                ex["eye"] = 0.03
            patch, alpha = draw_face_patch(spk, ex, base_cache)
            cache[key] = np.dstack([patch, alpha])  # one warp moves colour and alpha together
        w = cv2.warpAffine(
            cache[key], place.matrix(tt), (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0)
        )
        # The patch is premultiplied (black outside the mask, edges anti-aliased against black).
        inv = 255 - w[..., 3:].astype(np.uint16)
        frame = w[..., :3] + ((bg16 * inv + 127) // 255).astype(np.uint8)
        frames.append(cv2.convertScaleAbs(frame, alpha=place.gain))  # lighting; saturates at 255
    return frames


def _encode_mp4(frames: list[np.ndarray], audio: np.ndarray) -> bytes:
    import av

    buf = io.BytesIO()
    # bitexact: no encoder version strings; no creation_time → identical bytes on every run.
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream("libx264", rate=FPS, options={"crf": "26", "preset": "superfast"})
        vs.width, vs.height, vs.pix_fmt = SIZE, SIZE, "yuv420p"
        # One x264 thread, and preset superfast: with "veryfast" (hex motion search, subme 2)
        # this x264 build gave different bytes for the same frames now and then (an
        # uninitialised read, gone with asm=0); superfast was stable in every check.
        vs.codec_context.thread_count = 1
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono", options={"aac_coder": "fast"})
        aus.bit_rate = 48000
        aus.codec_context.thread_count = 1
        for i, fr in enumerate(frames):
            # OpenCV's RGB→I420 is several times faster than swscale's here.
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(fr, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts = i
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
        fsz = 1024
        for j in range(0, len(audio), fsz):
            chunk = audio[j : j + fsz]
            af = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="fltp", layout="mono")
            af.sample_rate = SAMPLE_RATE
            af.pts = j
            for pkt in aus.encode(af):
                out.mux(pkt)
        for pkt in aus.encode(None):
            out.mux(pkt)
    return buf.getvalue()
