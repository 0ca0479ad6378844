"""A synthetic multimodal emotion corpus in MELD's distributed layout.

The real corpora cannot be downloaded here, so every test, benchmark and the demo use this one.
Each clip is a 2–4 s mp4 (H.264 160×160 at 25 fps + AAC mono) of a drawn talking face:

- **video**: the expression (mouth curve/opening/width, brow height and tilt, eye opening, nose
  wrinkle) follows the clip's face emotion at a per-clip intensity, with an onset ramp, blinks
  and a mouth that moves with the speech envelope; identity (face shape, aspect, skin, hair
  colour and style, eye colour, clothes) comes from a recurring speaker, and per clip position,
  size, head motion, lighting and a cluttered background vary. The faces are drawn so that
  OpenCV's Haar cascade (:mod:`conclugen.data.faces`) finds them in most frames.
- **audio**: espeak-ng speech with emotion-dependent pitch, pitch range, rate, volume and voice
  variant; without espeak-ng a small numpy formant synthesiser stands in (announced in the
  summary; the corpus then differs from an espeak-ng one of the same seed).
- **text**: the transcript from emotion-conditioned sentence templates.

``difficulty`` (0…1) sets how often each modality is neutral or misleading (independently per
modality) and how weak the expressions are, so that no single modality gives the label away.

Output is byte-for-byte deterministic for a seed (given the same espeak-ng, x264 and
libavformat versions): each clip draws from its own ``SeedSequence([seed, index])``, x264 runs
single-threaded and the mp4 muxer runs in bitexact mode with no creation time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import cv2
import numpy as np

from conclugen import storage
from conclugen.data.corpora.manifest import SYNTH_MARKER
from conclugen.data.corpora.meld import MELD_COLUMNS

if TYPE_CHECKING:
    from conclugen.config import StorageConfig

EMOTIONS: tuple[str, ...] = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
MELD_HEADER: tuple[str, ...] = MELD_COLUMNS
SPLITS: dict[str, tuple[str, str]] = {  # split → (csv name, clip folder), as MELD.Raw ships them
    "train": ("train_sent_emo.csv", "train/train_splits"),
    "dev": ("dev_sent_emo.csv", "dev/dev_splits_complete"),
    "test": ("test_sent_emo.csv", "test/output_repeated_splits_test"),
}
SPLIT_SHARES = (0.7, 0.1, 0.2)

FPS = 25
SIZE = 160  # frame width and height
SAMPLE_RATE = 22050  # espeak-ng's native rate
MIN_SECONDS, MAX_SECONDS = 2.0, 4.0

# ---------------------------------------------------------------------------------------------
# Expressions: parameters at full intensity; a clip shows neutral + intensity·(target − neutral).
# eye: eye opening 0..1; brow: raise (−1 lowered … 1 raised); tilt: inner brow ends up (+) or
# down (−); curve: mouth corners up (+) or down (−); open: jaw opening; width: mouth width
# factor; wrinkle: nose wrinkle; asym: one-sided upper-lip raise; teeth: show teeth when open.
EXPR_KEYS = ("eye", "brow", "tilt", "curve", "open", "width", "wrinkle", "asym", "teeth")
EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": dict(eye=0.6, brow=0.0, tilt=0.0, curve=0.0, open=0.0, width=1.0, wrinkle=0, asym=0, teeth=0),
    "joy": dict(eye=0.35, brow=0.15, tilt=0.0, curve=1.0, open=0.45, width=1.25, wrinkle=0, asym=0, teeth=1),
    "sadness": dict(
        eye=0.3, brow=0.1, tilt=1.0, curve=-0.85, open=0.0, width=0.9, wrinkle=0, asym=0, teeth=0
    ),
    "anger": dict(
        eye=0.4, brow=-0.7, tilt=-1.0, curve=-0.35, open=0.3, width=1.05, wrinkle=0.3, asym=0, teeth=1
    ),
    "surprise": dict(eye=1.0, brow=1.0, tilt=0.0, curve=0.0, open=1.0, width=0.7, wrinkle=0, asym=0, teeth=0),
    "fear": dict(eye=0.95, brow=0.7, tilt=0.8, curve=-0.3, open=0.55, width=1.25, wrinkle=0, asym=0, teeth=1),
    "disgust": dict(
        eye=0.3, brow=-0.35, tilt=-0.3, curve=-0.5, open=0.15, width=0.9, wrinkle=1.0, asym=1.0, teeth=0
    ),
}

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

# ---------------------------------------------------------------------------------------------
# Transcripts. Surprise comes in a pleasant and an unpleasant flavour so that MELD's Sentiment
# column stays consistent with the sentence.
NAMES = (
    "Alex",
    "Sam",
    "Jordan",
    "Casey",
    "Riley",
    "Morgan",
    "Taylor",
    "Jamie",
    "Robin",
    "Drew",
    "Quinn",
    "Avery",
    "Charlie",
    "Emery",
    "Harper",
    "Kendall",
)
THINGS = (
    "the car",
    "the apartment",
    "the job",
    "the tickets",
    "the dinner",
    "the letter",
    "the party",
    "the interview",
    "the package",
    "the exam",
    "the trip",
    "the coffee machine",
)
TIMES = ("tonight", "tomorrow", "this morning", "on Friday", "next week", "at noon")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "I'll pick up {thing} {time}.",
        "Did you check {thing} already?",
        "{name} said it starts {time}.",
        "We can talk about {thing} later.",
        "It's on the table next to the door.",
        "The meeting moved to {time}.",
        "Can you pass me the remote?",
        "I think {name} has {thing}.",
        "Okay, let me write that down.",
        "It takes about twenty minutes from here.",
    ),
    "joy": (
        "This is the best day ever!",
        "I can't believe we got {thing}, that's wonderful!",
        "{name}, I'm so happy for you!",
        "Yes! We did it!",
        "I love it, thank you so much!",
        "That's fantastic news about {thing}!",
        "Oh, this is going to be so much fun {time}!",
        "Ha, you always make me laugh, {name}.",
    ),
    "sadness": (
        "I really miss {name}.",
        "I just feel so alone lately.",
        "We lost {thing}, it's gone.",
        "Nothing ever works out for me.",
        "I'm sorry, I can't stop crying.",
        "{name} isn't coming back, is she?",
        "It used to mean so much to me.",
        "I guess it's over now.",
    ),
    "anger": (
        "How could you do this to me?",
        "Get out of my apartment, {name}!",
        "You broke {thing} again? Unbelievable!",
        "I am sick of your excuses!",
        "Don't you dare touch {thing}!",
        "Stop lying to me, {name}!",
        "This is the last time I cover for you!",
        "Who do you think you are?",
    ),
    "surprise+": (
        "Wait, you bought {thing} for me?",
        "No way! {name} is here?",
        "Whoa, you got the job?",
        "Really? We won {thing}?",
        "Oh my God, is that a ring?",
        "You planned all this for me?",
    ),
    "surprise-": (
        "What? {thing} is gone?",
        "Wait, {name} quit?",
        "You sold {thing} without asking?",
        "What do you mean it's cancelled?",
        "Are you serious? {time}?",
        "Hold on, you lied to me?",
    ),
    "fear": (
        "Did you hear that noise?",
        "Please don't leave me here alone.",
        "I think someone is following us.",
        "What if {name} finds out?",
        "I'm scared, I can't do {thing}.",
        "Oh no, we're going to be late!",
        "There's something in the dark, {name}.",
        "Don't open that door!",
    ),
    "disgust": (
        "Ugh, what is that smell?",
        "That is absolutely gross.",
        "Eww, don't eat that!",
        "I can't believe you'd wear that.",
        "This {thing} is disgusting.",
        "Yuck, it's all sticky.",
        "How can you stand {name}?",
        "That's revolting, put it away.",
    ),
}

SKINS = (
    (255, 224, 189),
    (241, 194, 125),
    (224, 172, 105),
    (198, 134, 66),
    (161, 102, 48),
    (141, 85, 36),
    (110, 68, 34),
    (92, 56, 30),
)
HAIRS = (
    (25, 18, 12),
    (60, 40, 25),
    (110, 75, 40),
    (200, 160, 90),
    (150, 50, 25),
    (130, 130, 130),
    (230, 220, 200),
)
LIGHT_HAIRS = (3, 5, 6)  # blonde, grey, white
IRISES = ((60, 40, 20), (40, 90, 140), (70, 110, 60), (100, 70, 40))
ESPEAK_LANGS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")


# ---------------------------------------------------------------------------------------------
@dataclass
class SynthSummary:
    """What :func:`synthesize` made."""

    out: str
    seed: int
    difficulty: float
    clips_per_split: dict[str, int]
    clips_per_emotion: dict[str, dict[str, int]]  # split → emotion → count
    seconds: float
    workers: int
    voice: str  # "espeak-ng <version>" or "numpy fallback (...)"
    media_seconds: float
    total_bytes: int
    files: list[str] = field(default_factory=list)  # paths relative to ``out``

    @property
    def clips(self) -> int:
        return sum(self.clips_per_split.values())

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        lines = [
            f"synthetic corpus (MELD layout) → {self.out}",
            f"  {self.clips} clips ({self.media_seconds:.1f} s of media, {self.total_bytes / 1e6:.1f} MB)"
            f" in {self.seconds:.1f} s = {self.clips_per_s:.2f} clips/s with {self.workers} worker(s)",
            f"  seed {self.seed}, difficulty {self.difficulty:g}; voice: {self.voice}",
            "  split   clips  " + " ".join(f"{e[:8]:>8}" for e in EMOTIONS),
        ]
        for split, n in self.clips_per_split.items():
            per = self.clips_per_emotion.get(split, {})
            lines.append(f"  {split:<6} {n:>6}  " + " ".join(f"{per.get(e, 0):>8}" for e in EMOTIONS))
        return "\n".join(lines)


def sentiment_of(emotion: str, surprise_positive: bool = True) -> str:
    if emotion == "neutral":
        return "neutral"
    if emotion == "joy":
        return "positive"
    if emotion == "surprise":
        return "positive" if surprise_positive else "negative"
    return "negative"


def meld_time(seconds: float) -> str:
    """``hh:mm:ss,mmm`` as in MELD's StartTime/EndTime columns."""
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def espeak_version() -> str | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return m.group(1) if m else "unknown"


# ---------------------------------------------------------------------------------------------
# Planning (main process; cheap; all randomness from one generator seeded with ``seed``).
def _split_sizes(n: int) -> dict[str, int]:
    sizes = [int(round(n * s)) for s in SPLIT_SHARES]
    if n >= 3:
        sizes = [max(1, s) for s in sizes]
    while sum(sizes) > n:
        sizes[int(np.argmax(sizes))] -= 1
    sizes[0] += n - sum(sizes)
    return dict(zip(SPLITS, sizes, strict=True))


def _make_speakers(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    names = list(rng.permutation(NAMES))
    speakers = []
    for i in range(n):
        female = bool(rng.random() < 0.5)
        skin = int(rng.integers(len(SKINS)))
        # Hair brighter than a dark skin (blonde, grey, white) defeats the Haar cascade (measured:
        # 20-60% of frames found), so those pairs are not drawn.
        hair_choices = [h for h in range(len(HAIRS)) if skin < 4 or h not in LIGHT_HAIRS]
        hair = hair_choices[int(rng.integers(len(hair_choices)))]
        speakers.append(
            dict(
                name=str(names[i % len(names)]) + ("" if i < len(names) else f" {i // len(names) + 1}"),
                female=female,
                skin=SKINS[skin],
                hair=HAIRS[hair],
                hair_style=int(rng.integers(4)),  # 0 short, 1 long, 2 bun, 3 cropped
                iris=IRISES[int(rng.integers(len(IRISES)))],
                shirt=tuple(int(x) for x in rng.integers(30, 230, 3)),
                aspect=float(rng.uniform(1.15, 1.4)),
                squareness=float(rng.uniform(1.8, 2.6)),  # superellipse exponent of the face
                chin=float(rng.uniform(0.0, 0.25)),
                brow_thick=float(rng.uniform(0.06, 0.1)),
                lip=float(rng.uniform(0.0, 1.0)),
                rest=dict(curve=float(rng.uniform(-0.12, 0.12)), eye=float(rng.uniform(-0.08, 0.08))),
                lang=ESPEAK_LANGS[int(rng.integers(len(ESPEAK_LANGS)))],
                variant=str(rng.choice(FEMALE_VARIANTS if female else MALE_VARIANTS)),
                pitch=int(rng.integers(52, 72) if female else rng.integers(28, 48)),
                rate=int(rng.integers(150, 185)),
                f0=float(rng.uniform(180, 240) if female else rng.uniform(95, 140)),
            )
        )
    return speakers


def _sentence(rng: np.random.Generator, key: str, speaker_names: list[str]) -> str:
    t = TEMPLATES[key][int(rng.integers(len(TEMPLATES[key])))]
    return t.format(
        name=speaker_names[int(rng.integers(len(speaker_names)))],
        thing=THINGS[int(rng.integers(len(THINGS)))],
        time=TIMES[int(rng.integers(len(TIMES)))],
    )


def _other(rng: np.random.Generator, emotion: str) -> str:
    return str(rng.choice([e for e in EMOTIONS if e != emotion]))


def _plan(clips: int, seed: int, difficulty: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    d = float(np.clip(difficulty, 0.0, 1.0))
    speakers = _make_speakers(rng, int(np.clip(clips // 6, 3, 16)))
    names = [s["name"] for s in speakers]
    plans: list[dict[str, Any]] = []
    index = 0
    for split, size in _split_sizes(clips).items():
        offset = int(rng.integers(len(EMOTIONS)))
        labels = [EMOTIONS[(k + offset) % len(EMOTIONS)] for k in range(size)]
        labels = [labels[i] for i in rng.permutation(size)]
        dia, k = 0, 0
        while k < size:
            n_utt = min(size - k, int(rng.integers(1, 7)))
            cast = rng.choice(len(speakers), size=min(len(speakers), int(rng.integers(2, 4))), replace=False)
            season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
            t0 = float(rng.uniform(10, 1200))
            for u in range(n_utt):
                emotion = labels[k]
                spk = speakers[int(cast[u % len(cast)])]
                surprise_pos = bool(rng.random() < 0.5)

                # Each modality independently: the label's emotion, or neutral, or another one.
                def pick(p_neutral: float, p_other: float, emotion: str = emotion) -> str:
                    r = rng.random()
                    if r < p_neutral:
                        return "neutral"
                    if r < p_neutral + p_other:
                        return _other(rng, emotion)
                    return emotion

                face_e = pick(0.25 * d, 0.15 * d)
                voice_e = pick(0.3 * d, 0.2 * d)
                text_e = pick(0.5 * d, 0.2 * d)
                if text_e == "surprise":
                    key = "surprise+" if (surprise_pos or emotion != "surprise") else "surprise-"
                else:
                    key = text_e
                intensity = float(rng.uniform(0.45, 1.0))
                plans.append(
                    dict(
                        index=index,
                        split=split,
                        dialogue=dia,
                        utterance=u,
                        season=season,
                        episode=episode,
                        t0=t0,
                        gap=float(rng.uniform(0.2, 1.5)),
                        emotion=emotion,
                        sentiment=sentiment_of(emotion, surprise_pos),
                        speaker=spk,
                        text=_sentence(rng, key, names),
                        text_emotion=text_e,
                        face_emotion=face_e,
                        face_intensity=float(
                            np.clip(intensity * (1 - 0.45 * d) + rng.normal(0, 0.05), 0.2, 1)
                        ),
                        voice_emotion=voice_e,
                        voice_intensity=float(
                            np.clip(intensity * (1 - 0.3 * d) + rng.normal(0, 0.1), 0.2, 1)
                        ),
                    )
                )
                index += 1
                k += 1
            dia += 1
    return plans


# ---------------------------------------------------------------------------------------------
# Speech.
def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
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


def _prosody(plan: dict[str, Any]) -> dict[str, Any]:
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


def _espeak(text: str, pro: dict[str, Any], rate: int) -> np.ndarray:
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
    samples, sr = _wav_samples(res.stdout)
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


def _numpy_speech(text: str, pro: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
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
            n = int(syl_s * sr * rng.uniform(0.8, 1.2))
            t = np.arange(n) / sr
            pos = k / n_syl
            f0 = (
                pro["f0"]
                * (1.08 - 0.16 * pos)
                * (1 + 0.08 * pro["range_factor"] * np.sin(2 * np.pi * (pos * 1.7 + t / syl_s / 2)))
            )
            f0 *= 1 + 0.01 * rng.standard_normal()  # jitter
            phase = 2 * np.pi * np.cumsum(f0) / sr
            formants = FORMANTS[grp[0]]
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
            out.append((sig * env).astype(np.float32))
            k += 1
        out.append(np.zeros(int(0.04 * sr), np.float32))
    wav = np.concatenate(out)
    peak = 0.15 + 0.35 * min(pro["amp_factor"], 1.6) / 1.6  # louder for anger/joy, soft for sadness
    wav = wav / (np.abs(wav).max() + 1e-9) * peak
    return wav.astype(np.float32)


def _speech(plan: dict[str, Any], engine: str, rng: np.random.Generator) -> np.ndarray:
    pro = _prosody(plan)
    if engine == "numpy":
        wav = _numpy_speech(plan["text"], pro, rng)
        if len(wav) > (MAX_SECONDS - 0.4) * SAMPLE_RATE:
            pro = dict(pro, rate_factor=pro["rate_factor"] * len(wav) / ((MAX_SECONDS - 0.45) * SAMPLE_RATE))
            wav = _numpy_speech(plan["text"], pro, rng)
        return wav
    wav = _espeak(plan["text"], pro, pro["rate"])
    limit = (MAX_SECONDS - 0.4) * SAMPLE_RATE
    if len(wav) > limit:  # too long for a 4 s clip: speak faster rather than cut words off
        wav = _espeak(plan["text"], pro, int(min(450, pro["rate"] * len(wav) / limit * 1.05)))
    return wav


# ---------------------------------------------------------------------------------------------
# Drawing. The face is drawn upright in "face units" (u right, v down, face half-width 1) on a
# 2× supersampled patch, downscaled once, then placed per frame with a similarity warp (head
# motion). Patches are cached per quantised expression state, so a clip draws only a handful.
PATCH_R = 40  # face half-width in patch pixels (1×)
PATCH_W, PATCH_H = int(3.2 * PATCH_R), int(4.6 * PATCH_R)
PATCH_CX, PATCH_CY = PATCH_W / 2, 1.9 * PATCH_R
SS = 2
# Tuned against the Haar cascade (a darker eye band against brighter cheeks and forehead):
# highlight strength towards white, eye-socket shade factor, sclera colour (toned down).
HIGHLIGHT, SOCKET_SHADE, SCLERA = 0.5, 0.45, (150, 146, 142)


def _shade(col: tuple[int, ...], f: float, add: float = 0.0) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * f + add, 0, 255)) for c in col)  # type: ignore[return-value]


def draw_face_patch(
    spk: dict[str, Any], ex: dict[str, float], cache: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB patch, alpha mask) of an upright face with expression ``ex`` (keys EXPR_KEYS).

    ``cache`` (one dict per speaker) keeps the expression-independent layers between calls."""
    s = PATCH_R * SS
    img = np.zeros((PATCH_H * SS, PATCH_W * SS, 3), np.uint8)
    mask = np.zeros((PATCH_H * SS, PATCH_W * SS), np.uint8)
    ox, oy = PATCH_CX * SS, PATCH_CY * SS

    def P(u: np.ndarray | list, v: np.ndarray | list) -> np.ndarray:
        return np.round(
            np.stack([ox + s * np.asarray(u, float), oy + s * np.asarray(v, float)], -1) * 16
        ).astype(np.int32)

    def poly(u: Any, v: Any, col: tuple[int, ...], in_mask: bool = False) -> None:
        pts = P(u, v)
        cv2.fillPoly(img, [pts], col, cv2.LINE_AA, shift=4)
        if in_mask:
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift=4)

    def ell(u0: float, v0: float, a: float, b: float, col: tuple[int, ...], in_mask: bool = False) -> None:
        t = np.linspace(0, 2 * np.pi, 36, endpoint=False)
        poly(u0 + a * np.cos(t), v0 + b * np.sin(t), col, in_mask)

    def line(u: Any, v: Any, col: tuple[int, ...], th: float) -> None:
        cv2.polylines(img, [P(u, v)], False, col, max(1, int(round(th * s))), cv2.LINE_AA, shift=4)

    H = spk["aspect"]
    skin, hair = spk["skin"], spk["hair"]
    style = spk["hair_style"]
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if cache is not None and "base" in cache:
        img[:], mask[:] = cache["base"]
    else:
        # Back hair and body.
        if style == 1:  # long
            poly([-1.15, 1.15, 1.25, -1.25], [-0.3 * H, -0.3 * H, 1.3 * H, 1.3 * H], hair, True)
        if style == 3:  # cropped: hair hugs the skull
            ell(0, -0.18 * H, 1.06, 0.96 * H, hair, True)
        else:
            ell(0, -0.22 * H, 1.13, 0.98 * H, hair, True)
        if style == 2:  # bun
            ell(0, -1.2 * H, 0.4, 0.3, hair, True)
        poly([-1.6, 1.6, 1.8, -1.8], [1.45 * H, 1.45 * H, 2.7 * H, 2.7 * H], spk["shirt"], True)
        ell(0, 1.45 * H, 1.6, 0.35 * H, spk["shirt"], True)
        poly([-0.38, 0.38, 0.42, -0.42], [0.5 * H, 0.5 * H, 1.5 * H, 1.5 * H], _shade(skin, 0.78), True)
        for sx in (-1, 1):  # ears
            ell(sx * 0.98, 0.02 * H, 0.14, 0.22, _shade(skin, 0.85), True)
        # Face: a superellipse whose lower half narrows to the chin.
        p = spk["squareness"]
        cu, sv = np.cos(t), np.sin(t)
        u = np.sign(cu) * np.abs(cu) ** (2 / p)
        v = np.sign(sv) * np.abs(sv) ** (2 / p)
        u = u * (1 - spk["chin"] * np.clip(v, 0, 1) ** 2)
        poly(u, v * H, skin, True)
        # Highlights where light falls on a rounded face (forehead, cheeks, nose bridge): the Haar
        # cascade keys on bright cheeks/forehead against a darker eye band.
        hl = tuple(int(c + (255 - c) * HIGHLIGHT) for c in skin)
        shine = np.zeros_like(img)
        sm = np.zeros_like(mask)
        for u0, v0, a, b in [
            (0, -0.55 * H, 0.6, 0.22 * H),
            (-0.45, 0.22 * H, 0.25, 0.16 * H),
            (0.45, 0.22 * H, 0.25, 0.16 * H),
            (0, 0.05 * H, 0.07, 0.22 * H),
        ]:
            tt = np.linspace(0, 2 * np.pi, 36, endpoint=False)
            pts = P(u0 + a * np.cos(tt), v0 + b * np.sin(tt))
            cv2.fillPoly(shine, [pts], hl, cv2.LINE_AA, shift=4)
            cv2.fillPoly(sm, [pts], 255, cv2.LINE_AA, shift=4)
        # Soft-edged highlights: blur the highlight layer, then blend it in.
        sm = cv2.GaussianBlur(sm, (0, 0), 0.08 * s).astype(np.float32)[..., None] / 255.0
        shine = cv2.GaussianBlur(shine, (0, 0), 0.08 * s)
        img[:] = np.clip(img * (1 - sm) + shine.astype(np.float32) * 1.0, 0, 255).astype(np.uint8)
        # Fringe / hairline (cropped hair: a high hairline).
        a = np.linspace(np.pi, 2 * np.pi, 24)
        drop = {0: 0.6, 1: 0.55, 2: 0.68, 3: 0.8}[style]
        poly(
            np.concatenate([np.cos(a) * 1.03, [0.92, 0.3, -0.3, -0.92]]),
            np.concatenate(
                [
                    -0.3 * H + np.sin(a) * H * 0.75,
                    [-drop * H, -(drop + 0.06) * H, -(drop + 0.1) * H, -drop * H],
                ]
            ),
            hair,
        )
    if cache is not None and "base" not in cache:
        cache["base"] = (img.copy(), mask.copy())
    # Eyes and brows.
    eo = float(np.clip(ex["eye"], 0.02, 1.1))
    # Brows always darker than the skin (blonde or white hair still has visible brows).
    brow_col = tuple(int(min(h * 0.55, c * 0.45)) for h, c in zip(hair, skin, strict=True))
    for sx in (-1, 1):
        ex_, ey = sx * 0.38, -0.1 * H
        ell(ex_, ey, 0.26, 0.12 + 0.08 * eo, _shade(skin, SOCKET_SHADE))  # socket shadow
        ell(ex_, ey, 0.17, 0.035 + 0.07 * eo, (25, 20, 20))  # lash line
        ell(ex_, ey, 0.14, 0.025 + 0.06 * eo, SCLERA)  # sclera
        ell(ex_, ey, 0.085, min(0.085, 0.025 + 0.07 * eo), spk["iris"])
        ell(ex_, ey, 0.04, min(0.04, 0.015 + 0.04 * eo), (10, 10, 10))
        yb = ey - 0.2 - 0.13 * ex["brow"]
        tilt = ex["tilt"]
        inner, outer = ex_ - sx * 0.18, ex_ + sx * 0.21
        line(
            [inner, ex_, outer],
            [yb - 0.09 * tilt, yb - 0.03 - 0.01 * tilt, yb + 0.05 * tilt],
            brow_col,
            spk["brow_thick"],
        )
    # Nose.
    poly([0, -0.12, 0.12], [-0.05 * H, 0.3 * H, 0.3 * H], _shade(skin, 0.85))
    ell(0, 0.3 * H, 0.15, 0.055, _shade(skin, 0.7))
    for sx in (-1, 1):
        ell(sx * 0.06, 0.31 * H, 0.035, 0.02, _shade(skin, 0.35))
    if ex["wrinkle"] > 0.05:
        for sx in (-1, 1):
            line([sx * 0.05, sx * 0.14], [0.02 * H, 0.1 * H], _shade(skin, 0.6), 0.02 + 0.02 * ex["wrinkle"])
            line([sx * 0.06, sx * 0.16], [0.1 * H, 0.17 * H], _shade(skin, 0.6), 0.02 * ex["wrinkle"])
    # Mouth: upper and lower lip curves; corners lifted by curve, jaw opening by open.
    my = 0.58 * H
    mw = 0.36 * ex["width"]
    curve, op = ex["curve"], max(0.0, ex["open"])
    xs = np.linspace(-mw, mw, 17)
    k = (xs / mw) ** 2
    asym = ex["asym"] * 0.06 * np.clip(xs / mw, 0, 1)
    upper_v = my - curve * 0.15 * k - 0.02 - op * 0.05 - asym
    lower_v = my - curve * 0.15 * k + 0.02 + op * 0.22 * (1 - k)
    lip = _shade((180, 70, 75), 0.6 + 0.4 * spk["lip"], 0) if np.mean(skin) > 120 else _shade(skin, 0.6, 20)
    poly(np.concatenate([xs, xs[::-1]]), np.concatenate([upper_v - 0.035, (lower_v + 0.045)[::-1]]), lip)
    poly(np.concatenate([xs, xs[::-1]]), np.concatenate([upper_v, lower_v[::-1]]), (60, 20, 25))
    if ex["teeth"] > 0.5 and op > 0.2:
        tv = upper_v + 0.35 * (lower_v - upper_v)
        inner_xs = xs[2:-2]
        poly(
            np.concatenate([inner_xs, inner_xs[::-1]]),
            np.concatenate([upper_v[2:-2] + 0.005, tv[2:-2][::-1]]),
            (235, 230, 220),
        )
    # Downscale once (supersampling = anti-aliasing).
    img = cv2.resize(img, (PATCH_W, PATCH_H), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (PATCH_W, PATCH_H), interpolation=cv2.INTER_AREA)
    return img, mask


def expression(emotion: str, intensity: float, rest: dict[str, float] | None = None) -> dict[str, float]:
    """Expression parameters: neutral (plus the speaker's resting face) moved towards the
    emotion's target by ``intensity``."""
    base, target = EXPRESSIONS["neutral"], EXPRESSIONS[emotion]
    ex = {k: base[k] + intensity * (target[k] - base[k]) for k in EXPR_KEYS}
    ex["teeth"] = target["teeth"]
    for k, dv in (rest or {}).items():
        ex[k] += dv
    return ex


def draw_background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A cluttered room-like background: gradient wall, shapes, frames, lines."""
    c1 = rng.integers(40, 220, 3).astype(np.float32)
    c2 = np.clip(c1 + rng.integers(-60, 60, 3), 0, 255).astype(np.float32)
    g = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    bg = np.ascontiguousarray((c1 * (1 - g) + c2 * g).repeat(size, axis=1).astype(np.uint8))
    for _ in range(int(rng.integers(4, 11))):
        col = tuple(int(x) for x in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(4, 30))
        kind = int(rng.integers(4))
        if kind == 0:
            cv2.circle(bg, (x, y), r, col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(bg, (x, y), (x + r, y + int(rng.integers(4, 40))), col, -1)
        elif kind == 2:  # picture frame
            cv2.rectangle(bg, (x, y), (x + r + 10, y + r), col, 3)
        else:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(bg, (x, y), (x2, y2), col, int(rng.integers(1, 4)), cv2.LINE_AA)
    return bg


def _frames(
    plan: dict[str, Any], n_frames: int, speech: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    spk = plan["speaker"]
    bg = draw_background(rng)
    fw = float(rng.uniform(60, 86))  # face width in frame pixels
    scale0 = fw / (2 * PATCH_R)
    cx0 = SIZE / 2 + rng.uniform(-0.22, 0.22) * (SIZE - fw)
    cy0 = SIZE / 2 - 6 + rng.uniform(-0.15, 0.15) * (SIZE - fw * spk["aspect"])
    gain = float(rng.uniform(0.8, 1.12))
    # Head motion: a few slow sinusoids (sway, nod, roll, breathing zoom).
    amp = rng.uniform([1.5, 1.0, 0.03, 0.015], [5.0, 3.5, 0.11, 0.04])
    freq = rng.uniform([0.2, 0.3, 0.15, 0.2], [0.7, 0.9, 0.5, 0.5])
    ph = rng.uniform(0, 2 * np.pi, 4)
    # Expression time course: onset ramp, blinks, mouth moving with the speech envelope.
    onset = float(rng.uniform(0.3, 0.9))
    blinks = set()
    tb = rng.uniform(0.3, 2.0)
    while tb * FPS < n_frames:
        blinks.update({int(tb * FPS), int(tb * FPS) + 1})
        tb += rng.uniform(1.5, 3.5)
    hop = SAMPLE_RATE // FPS
    env = np.array(
        [
            np.sqrt(np.mean(speech[i * hop : (i + 1) * hop] ** 2)) if i * hop < len(speech) else 0.0
            for i in range(n_frames)
        ]
    )
    env = env / (env.max() + 1e-9)
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    base_cache: dict[str, Any] = {}
    bg16 = bg.astype(np.uint16)
    frames = []
    for i in range(n_frames):
        tt = i / FPS
        level = int(round(4 * min(1.0, 0.4 + 0.6 * tt / onset)))  # quantised intensity ramp
        talk = int(round(2 * env[i])) if env[i] > 0.15 else 0
        blink = int(i in blinks)
        key = (level, talk, blink)
        if key not in cache:
            ex = expression(plan["face_emotion"], plan["face_intensity"] * level / 4, spk["rest"])
            ex["open"] += 0.18 * talk
            if blink:
                ex["eye"] = 0.03
            patch, alpha = draw_face_patch(spk, ex, base_cache)
            cache[key] = np.dstack([patch, alpha])  # one warp moves colour and alpha together
        rgba = cache[key]
        s = math.sin
        dx = amp[0] * s(2 * np.pi * freq[0] * tt + ph[0])
        dy = amp[1] * s(2 * np.pi * freq[1] * tt + ph[1])
        rot = amp[2] * s(2 * np.pi * freq[2] * tt + ph[2])
        sc = scale0 * (1 + amp[3] * s(2 * np.pi * freq[3] * tt + ph[3]))
        c, sn = sc * math.cos(rot), sc * math.sin(rot)
        cx, cy = cx0 + dx, cy0 + dy
        M = np.array(
            [[c, -sn, cx - (c * PATCH_CX - sn * PATCH_CY)], [sn, c, cy - (sn * PATCH_CX + c * PATCH_CY)]]
        )
        w = cv2.warpAffine(rgba, M, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
        # The patch is premultiplied (black outside the mask, edges anti-aliased against black).
        inv = 255 - w[..., 3:].astype(np.uint16)
        frame = w[..., :3] + ((bg16 * inv + 127) // 255).astype(np.uint8)
        frames.append(cv2.convertScaleAbs(frame, alpha=gain))  # lighting; saturates at 255
    return frames


# ---------------------------------------------------------------------------------------------
# One clip: speech → duration → frames → mp4 bytes. Runs in worker processes.
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


def render_clip(plan: dict[str, Any], seed: int, engine: str) -> tuple[bytes, float]:
    """(mp4 bytes, duration in seconds) of one planned clip; deterministic in (plan, seed, engine)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, plan["index"]]))
    speech = _speech(plan, engine, rng)
    lead = float(rng.uniform(0.15, 0.45))
    tail = float(rng.uniform(0.2, 0.6))
    n_frames = int(
        np.clip(
            math.ceil((lead + len(speech) / SAMPLE_RATE + tail) * FPS), MIN_SECONDS * FPS, MAX_SECONDS * FPS
        )
    )
    duration = n_frames / FPS
    n_audio = int(round(duration * SAMPLE_RATE))
    audio = np.zeros(n_audio, np.float32)
    start = int(lead * SAMPLE_RATE)
    seg = speech[: max(0, n_audio - start)]
    audio[start : start + len(seg)] = seg
    if len(seg) < len(speech):  # cut: fade the last 50 ms rather than click
        f = min(len(seg), int(0.05 * SAMPLE_RATE))
        audio[start + len(seg) - f : start + len(seg)] *= np.linspace(1, 0, f, dtype=np.float32)
    audio += rng.normal(0, 0.002, n_audio).astype(np.float32)  # room noise floor
    audio = np.clip(audio, -1, 1)
    # The mouth follows the speech as heard in the clip, i.e. with the lead-in.
    frames = _frames(plan, n_frames, audio, rng)
    return _encode_mp4(frames, audio), duration


def _render_job(job: tuple[dict[str, Any], int, str]) -> tuple[bytes, float]:
    cv2.setNumThreads(1)
    return render_clip(*job)


# ---------------------------------------------------------------------------------------------
def clip_relpath(split: str, dialogue: int, utterance: int) -> str:
    return f"{SPLITS[split][1]}/dia{dialogue}_utt{utterance}.mp4"


def synthesize(
    out: str,
    clips: int = 70,
    seed: int = 0,
    difficulty: float = 0.3,
    storage_cfg: StorageConfig | None = None,
    *,
    workers: int | None = None,
    voice: str = "auto",
) -> SynthSummary:
    """Write a synthetic corpus of ``clips`` clips in MELD's layout to ``out`` (path or s3://).

    ``voice``: ``auto`` (espeak-ng when installed, else the numpy synthesiser), ``espeak-ng``
    or ``numpy``. ``workers``: processes (default: the usable CPUs, at most 8; 1 = in this
    process).
    """
    if clips < 1:
        raise ValueError("clips must be >= 1")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError("difficulty must be within [0, 1]")
    t_start = time.perf_counter()
    version = espeak_version()
    if voice == "auto":
        engine = "espeak-ng" if version else "numpy"
    elif voice in ("espeak-ng", "numpy"):
        engine = voice
        if engine == "espeak-ng" and not version:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng), use voice='numpy'")
    else:
        raise ValueError("voice must be auto, espeak-ng or numpy")
    voice_desc = (
        f"espeak-ng {version}"
        if engine == "espeak-ng"
        else "numpy fallback synthesiser"
        + ("" if version else " (espeak-ng not found; apt-get install espeak-ng)")
    )
    plans = _plan(clips, seed, difficulty)
    if workers is None:
        # CPUs this process may use (not the host's count), at most 8; a pool only pays for
        # its start-up (spawned interpreters) from a few clips per worker on.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(cpus, 8, max(1, len(plans) // 4))
    n_workers = max(1, min(int(workers), len(plans)))

    to_s3 = storage.is_s3(out)
    tmp = tempfile.TemporaryDirectory(prefix="conclugen-synth-") if to_s3 else None
    root = Path(tmp.name) if tmp else Path(storage.resolve(out)[1])
    try:
        root.mkdir(parents=True, exist_ok=True)
        jobs = [(p, seed, engine) for p in plans]
        if n_workers == 1:
            results = map(_render_job, jobs)
            pool = None
        else:
            import multiprocessing as mp

            # spawn: safe inside processes that hold threads (Ray, pytest plugins).
            pool = ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"))
            results = pool.map(_render_job, jobs, chunksize=1)
        files: list[str] = []
        total_bytes = 0
        durations: dict[int, float] = {}
        try:
            for p, (data, dur) in zip(plans, results, strict=True):
                rel = clip_relpath(p["split"], p["dialogue"], p["utterance"])
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
                files.append(rel)
                total_bytes += len(data)
                durations[p["index"]] = dur
        finally:
            if pool is not None:
                pool.shutdown()
        per_split: dict[str, int] = {}
        per_emotion: dict[str, dict[str, int]] = {}
        for split, (csv_name, _) in SPLITS.items():
            rows = [p for p in plans if p["split"] == split]
            per_split[split] = len(rows)
            per_emotion[split] = dict(Counter(p["emotion"] for p in rows))
            text = _csv_text(rows, durations)
            (root / csv_name).write_bytes(text.encode("utf-8"))
            files.append(csv_name)
            total_bytes += len(text)
        # Marks the corpus as synthetic for the MELD loader: the probe then weights classes from
        # the (balanced) data instead of MELD's reference weights, which encode MELD's imbalance.
        marker = json.dumps({"generator": "conclugen synth", "seed": seed, "clips": clips,
                             "difficulty": difficulty, "voice": engine}, sort_keys=True)
        (root / SYNTH_MARKER).write_text(marker + "\n")
        files.append(SYNTH_MARKER)
        if to_s3:
            storage.upload_dir(root, out, storage_cfg)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return SynthSummary(
        out=out,
        seed=seed,
        difficulty=difficulty,
        clips_per_split=per_split,
        clips_per_emotion=per_emotion,
        seconds=time.perf_counter() - t_start,
        workers=n_workers,
        voice=voice_desc,
        media_seconds=float(sum(durations.values())),
        total_bytes=total_bytes,
        files=sorted(files),
    )


def _csv_text(rows: list[dict[str, Any]], durations: dict[int, float]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MELD_HEADER)
    t_by_dialogue: dict[int, float] = {}
    for sr_no, p in enumerate(rows, start=1):
        start = t_by_dialogue.get(p["dialogue"], p["t0"])
        end = start + durations[p["index"]]
        t_by_dialogue[p["dialogue"]] = end + p["gap"]
        w.writerow(
            [
                sr_no,
                p["text"],
                p["speaker"]["name"],
                p["emotion"],
                p["sentiment"],
                p["dialogue"],
                p["utterance"],
                p["season"],
                p["episode"],
                meld_time(start),
                meld_time(end),
            ]
        )
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
def face_detection_rate(
    root: str, max_clips: int = 50, every: int = 1, detector: Any = None
) -> tuple[int, int]:
    """(frames with a face, frames checked) over the first ``max_clips`` clips (sorted paths) of a
    local synthetic corpus, checking every ``every``-th decoded frame with :class:`FaceDetector`."""
    import av

    from conclugen.data.faces import FaceDetector

    det = detector or FaceDetector()
    paths = sorted(Path(root).rglob("*.mp4"))[:max_clips]
    hit = total = 0
    for path in paths:
        with av.open(str(path)) as c:
            for i, fr in enumerate(c.decode(video=0)):
                if i % every:
                    continue
                total += 1
                hit += bool(det.detect(fr.to_ndarray(format="rgb24")))
    return hit, total


def main(argv: list[str] | None = None) -> int:
    """``python -m conclugen.data.synthetic face-rate DIR [--clips N] [--every K]``: the share
    of decoded frames in which :class:`~conclugen.data.faces.FaceDetector` finds a face."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m conclugen.data.synthetic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fr = sub.add_parser("face-rate", help="face detection rate over a local synthetic corpus")
    fr.add_argument("root")
    fr.add_argument("--clips", type=int, default=50)
    fr.add_argument("--every", type=int, default=1, help="check every K-th frame (25 = 1 fps)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    hit, total = face_detection_rate(args.root, args.clips, args.every)
    if total == 0:
        print(f"no mp4 frames under {args.root}")
        return 1
    n = min(args.clips, len(list(Path(args.root).rglob("*.mp4"))))
    print(
        f"faces found in {hit}/{total} frames = {hit / total:.1%} ({n} clips, every {args.every} frame(s), "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
