"""The clip's voice: espeak-ng speech with emotion-dependent pitch, pitch range, rate, volume and
voice variant; without espeak-ng a small numpy formant synthesiser stands in (the corpus then
differs from an espeak-ng one of the same seed)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from conclugen.data.synthetic.plan import MAX_SECONDS, SAMPLE_RATE

# Prosody offsets per emotion: espeak pitch (0–99) delta, rate factor, amplitude factor,
# pitch range (SSML), voice variant family. Identity supplies the base pitch/rate/variant.
PROSODY: dict[str, dict[str, Any]] = {
    "neutral": dict(pitch=0, rate=1.0, amp=1.0, range="medium", variant=None),
    "joy": dict(pitch=14, rate=1.12, amp=1.25, range="x-high", variant=None),
    "sadness": dict(pitch=-14, rate=0.75, amp=0.6, range="x-low", variant="whisper"),
    "anger": dict(pitch=6, rate=1.15, amp=1.6, range="high", variant="croak"),
    "surprise": dict(pitch=24, rate=1.05, amp=1.3, range="x-high", variant=None),
    "fear": dict(pitch=18, rate=1.3, amp=0.85, range="low", variant=None),
    "disgust": dict(pitch=-8, rate=0.85, amp=1.05, range="low", variant="croak"),
}


def espeak_version() -> str | None:
    """The installed espeak-ng's version, or None when it is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return m.group(1) if m else "unknown"


def resolve_voice(voice: str) -> tuple[str, str]:
    """(engine, description for the summary) for ``voice``: ``auto`` (espeak-ng when installed,
    else numpy), ``espeak-ng`` or ``numpy``."""
    version = espeak_version()
    if voice == "auto":
        engine = "espeak-ng" if version else "numpy"
    elif voice in ("espeak-ng", "numpy"):
        engine = voice
        if engine == "espeak-ng" and not version:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng), use voice='numpy'")
    else:
        raise ValueError("voice must be auto, espeak-ng or numpy")
    if engine == "espeak-ng":
        return engine, f"espeak-ng {version}"
    return engine, "numpy fallback synthesiser" + (
        "" if version else " (espeak-ng not found; apt-get install espeak-ng)"
    )


def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """int16 mono samples of espeak-ng's streamed WAV (its RIFF sizes are placeholders)."""
    if data[:4] != b"RIFF":
        raise RuntimeError("espeak-ng did not return WAV data")
    rate = int.from_bytes(data[24:28], "little")
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if cid == b"data":
            body = data[pos + 8 :]
            body = body[: len(body) // 2 * 2]
            return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0, rate
        pos += 8 + size
    raise RuntimeError("espeak-ng WAV has no data chunk")


def prosody(plan: dict[str, Any]) -> dict[str, Any]:
    """espeak-ng settings (voice, pitch, rate, amplitude, SSML range) and the numpy synthesiser's
    factors for a clip: the speaker's voice moved by its voice emotion at its intensity."""
    spk, e, k = plan["speaker"], plan["voice_emotion"], plan["voice_intensity"]
    p = PROSODY[e]
    variant = spk["variant"]
    if p["variant"] is not None and k > 0.55:
        variant = p["variant"] + ("f" if (p["variant"] == "whisper" and spk["female"]) else "")
    return dict(
        voice=f"{spk['lang']}+{variant}",
        pitch=int(np.clip(spk["pitch"] + k * p["pitch"], 0, 99)),
        rate=int(np.clip(spk["rate"] * (1 + k * (p["rate"] - 1)), 80, 400)),
        amp=int(np.clip(100 * (1 + k * (p["amp"] - 1)), 10, 200)),
        range=p["range"] if k > 0.4 else "medium",
        f0=spk["f0"] * (1 + 0.012 * k * p["pitch"]),
        rate_factor=1 + k * (p["rate"] - 1),
        amp_factor=1 + k * (p["amp"] - 1),
        range_factor={"x-low": 0.3, "low": 0.6, "medium": 1.0, "high": 1.5, "x-high": 2.0}[p["range"]],
    )


def espeak(text: str, pro: dict[str, Any], rate: int) -> np.ndarray:
    """``text`` spoken by espeak-ng with prosody ``pro`` at ``rate`` words/min, float32 at SAMPLE_RATE."""
    ssml = f'<speak><prosody range="{pro["range"]}">{escape(text)}</prosody></speak>'
    cmd = [
        "espeak-ng",
        "-m",
        "-v",
        pro["voice"],
        "-p",
        str(pro["pitch"]),
        "-s",
        str(rate),
        "-a",
        str(pro["amp"]),
        "--stdout",
        ssml,
    ]
    res = subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    samples, sr = wav_samples(res.stdout)
    if sr != SAMPLE_RATE:  # espeak-ng's voices all run at 22050 Hz; resample defensively
        n = int(round(len(samples) * SAMPLE_RATE / sr))
        samples = np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples)
    return samples.astype(np.float32)


FORMANTS = {  # vowel → (F1, F2, F3) Hz, adult averages
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (300, 2250, 3000),
    "o": (570, 840, 2410),
    "u": (320, 900, 2240),
    "y": (300, 2100, 2900),
}


def numpy_speech(text: str, pro: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """A crude formant synthesiser: one voiced syllable per vowel group, noise for consonants,
    f0 contour with declination whose height and range follow the prosody."""
    sr = SAMPLE_RATE
    syl_s = 0.19 / pro["rate_factor"]
    out: list[np.ndarray] = [np.zeros(int(0.05 * sr), np.float32)]
    words = re.findall(r"[A-Za-z']+|[.,!?]", text)
    n_syl = max(1, sum(len(re.findall(r"[aeiouy]+", w.lower())) for w in words))
    k = 0
    for w in words:
        if w in ".,!?":
            out.append(np.zeros(int((0.25 if w != "," else 0.12) * sr), np.float32))
            continue
        for grp in re.findall(r"[aeiouy]+", w.lower()) or ["a"]:
            out.append(_syllable(FORMANTS[grp[0]], k / n_syl, syl_s, pro, rng))
            k += 1
        out.append(np.zeros(int(0.04 * sr), np.float32))
    wav = np.concatenate(out)
    peak = 0.15 + 0.35 * min(pro["amp_factor"], 1.6) / 1.6  # louder for anger/joy, soft for sadness
    wav = wav / (np.abs(wav).max() + 1e-9) * peak
    return wav.astype(np.float32)


def _syllable(
    formants: tuple[int, int, int], pos: float, syl_s: float, pro: dict[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """One voiced syllable at ``pos`` (0..1) through the sentence: harmonics of a declining,
    jittered f0 shaped by the vowel's formants, with a noise burst for the consonant."""
    sr = SAMPLE_RATE
    n = int(syl_s * sr * rng.uniform(0.8, 1.2))
    t = np.arange(n) / sr
    f0 = (
        pro["f0"]
        * (1.08 - 0.16 * pos)
        * (1 + 0.08 * pro["range_factor"] * np.sin(2 * np.pi * (pos * 1.7 + t / syl_s / 2)))
    )
    f0 *= 1 + 0.01 * rng.standard_normal()  # jitter
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = np.zeros(n, np.float64)
    for h in range(1, int(4000 / pro["f0"]) + 1):
        fh = h * pro["f0"]
        amp = sum(math.exp(-(((fh - f) / (80 + 0.08 * f)) ** 2)) for f in formants) / math.sqrt(h)
        if amp > 1e-3:
            sig += amp * np.cos(h * phase)
    env = np.sin(np.pi * np.clip(t / (n / sr), 0, 1)) ** 0.6
    burst = int(0.03 * sr)
    noise = np.diff(rng.standard_normal(burst + 1)) * 0.15 * np.linspace(1, 0, burst)
    sig[:burst] += noise
    return (sig * env).astype(np.float32)


def speech(plan: dict[str, Any], engine: str, rng: np.random.Generator) -> np.ndarray:
    """A clip's speech with ``engine`` (espeak-ng | numpy), sped up to fit a 4 s clip if needed."""
    pro = prosody(plan)
    if engine == "numpy":
        wav = numpy_speech(plan["text"], pro, rng)
        if len(wav) > (MAX_SECONDS - 0.4) * SAMPLE_RATE:
            pro = dict(pro, rate_factor=pro["rate_factor"] * len(wav) / ((MAX_SECONDS - 0.45) * SAMPLE_RATE))
            wav = numpy_speech(plan["text"], pro, rng)
        return wav
    wav = espeak(plan["text"], pro, pro["rate"])
    limit = (MAX_SECONDS - 0.4) * SAMPLE_RATE
    if len(wav) > limit:  # too long for a 4 s clip: speak faster rather than cut words off
        wav = espeak(plan["text"], pro, int(min(450, pro["rate"] * len(wav) / limit * 1.05)))
    return wav
