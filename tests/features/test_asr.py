"""``offline:pocketsphinx``: espeak-ng speech of known sentences transcribed within a word error
rate bound, silence gives no text, other sample rates are resampled to 16 kHz, and the ASR stage
never runs the decoder on clips that already have a transcript."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conclugen.config import ExtractConfig
from conclugen.evaluation.wer import corpus_wer
from conclugen.features.backbones import load_backbone
from conclugen.features.backbones.asr import PS_RATE, PocketSphinxASR, to_pcm16

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SENTENCES = ("that is wonderful news", "I am so happy to see you today", "the weather is nice today")
# Measured with espeak-ng 1.51 (voice en-us+f2, 140 words/min) and pocketsphinx 5.1.1: 0 errors in
# these 17 words at 22.05 kHz and at 16 kHz. The synthetic corpus's other voices do much worse
# (en-us, en-us+m1: WER ~0.9 on such sentences), so the bound leaves room for another espeak-ng
# build's waveform while a decoder fed broken audio (wrong rate, wrong scale) fails it.
WER_BOUND = 0.35
ESPEAK_RATE = 22050  # espeak-ng's voices' native rate (conclugen.data.synthetic.plan.SAMPLE_RATE)


def _speech(text: str) -> np.ndarray:
    from conclugen.data.synthetic.speech import espeak

    return espeak(text, dict(voice="en-us+f2", pitch=50, amp=100, range="medium"), 140)


def _interp_to_16k(w: np.ndarray) -> np.ndarray:
    """Linear-interpolation resampling, independent of the backbone's polyphase resampler."""
    n = int(len(w) * PS_RATE / ESPEAK_RATE)
    return np.interp(np.arange(n) * ESPEAK_RATE / PS_RATE, np.arange(len(w)), w).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    return [_speech(s) for s in SENTENCES]


@needs_espeak
def test_transcribes_known_sentences_at_16k(speech: list[np.ndarray]) -> None:
    asr = load_backbone("asr", "offline:pocketsphinx", "cpu", ExtractConfig())
    assert isinstance(asr, PocketSphinxASR) and asr.rate == PS_RATE
    hyps = asr.transcribe([_interp_to_16k(w) for w in speech])
    assert all(h == h.lower() for h in hyps if h)
    result = corpus_wer(zip(SENTENCES, hyps, strict=True))
    assert result.ref_words == 17 and result.wer <= WER_BOUND, hyps


@needs_espeak
def test_other_sample_rate_is_resampled(speech: list[np.ndarray]) -> None:
    asr = load_backbone("asr", "offline:pocketsphinx", "cpu", ExtractConfig(audio_sample_rate=ESPEAK_RATE))
    assert asr.rate == ESPEAK_RATE
    hyps = asr.transcribe(speech)  # the 22.05 kHz samples as the pipeline would decode them
    assert corpus_wer(zip(SENTENCES, hyps, strict=True)).wer <= WER_BOUND, hyps


def test_to_pcm16_resamples_keeping_pitch_and_length() -> None:
    rate, f, seconds = 48000, 440.0, 1.5
    t = np.arange(int(rate * seconds)) / rate
    pcm = np.frombuffer(to_pcm16(0.5 * np.sin(2 * np.pi * f * t), rate), dtype="<i2")
    assert abs(len(pcm) - PS_RATE * seconds) <= 1
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * PS_RATE / len(pcm)
    assert abs(peak_hz - f) < 2.0
    assert 0.45 * 32767 < np.abs(pcm).max() <= 0.5 * 32767 + 300  # scale kept (filter ripple aside)
    same = np.frombuffer(to_pcm16(np.array([0.0, 0.5, -1.0, 2.0]), PS_RATE), dtype="<i2")
    assert same.tolist() == [0, 16383, -32767, 32767]  # no resampling at 16 kHz; clipped to [-1, 1]


def test_silence_and_missing_audio_give_no_text() -> None:
    asr = load_backbone("asr", "offline:pocketsphinx")
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(2 * PS_RATE) * 1e-3).astype(np.float32)
    # the decoder alone hypothesises a word on digital silence; the VAD keeps it from being asked
    assert asr.decode(to_pcm16(np.zeros(PS_RATE, np.float32), PS_RATE)) != ""
    assert asr.transcribe([np.zeros(2 * PS_RATE, np.float32), quiet, None, np.zeros(0, np.float32)]) == [None] * 4


@needs_espeak
def test_asr_stage_decodes_only_clips_without_transcript(speech: list[np.ndarray]) -> None:
    from conclugen.features.backbone_stage import active_kinds, apply_backbone
    from conclugen.features.rows import pack

    asr = load_backbone("asr", "offline:pocketsphinx")
    calls: list[bytes] = []
    decode = asr.decode
    asr.decode = lambda pcm: calls.append(pcm) or decode(pcm)  # type: ignore[method-assign]

    def batch(src: list[str]) -> dict[str, np.ndarray]:
        n = len(src)
        return {"clip_id": np.asarray([f"c{i}" for i in range(n)], dtype=object),
                "err_stage": np.asarray([""] * n, dtype=object), "err": np.asarray([""] * n, dtype=object),
                "audio": np.asarray([pack(_interp_to_16k(speech[i % 3])) for i in range(n)], dtype=object),
                "text": np.asarray(["given text" if s == "manifest" else "" for s in src], dtype=object),
                "text_src": np.asarray(src, dtype=object)}

    transcribed = batch(["manifest"] * 4)  # a corpus with every transcript (MELD, MOSEI)
    apply_backbone("asr", asr, transcribed)
    assert calls == [] and list(transcribed["text"]) == ["given text"] * 4
    assert list(transcribed["text_src"]) == ["manifest"] * 4
    mixed = batch(["manifest", "none"])
    apply_backbone("asr", asr, mixed)
    assert len(calls) == 1 and mixed["text_src"].tolist() == ["manifest", "asr"]
    assert mixed["text"][0] == "given text" and corpus_wer([(SENTENCES[1], mixed["text"][1])]).wer <= WER_BOUND
    # on by default, off with offline:none
    cfg = ExtractConfig()
    assert cfg.backbones.asr == "offline:pocketsphinx" and "asr" in active_kinds(cfg)
    off = cfg.model_copy(update={"backbones": cfg.backbones.model_copy(update={"asr": "offline:none"})})
    assert "asr" not in active_kinds(off)


def test_info_names_the_bundled_model() -> None:
    info = load_backbone("asr", "offline:pocketsphinx").info()
    assert info["name"] == "offline:pocketsphinx" and info["dim"] == 0 and info["trained"] is True
    d = info["details"]
    assert d["source"].startswith("pocketsphinx ") and d["language_model"] == "en-us.lm.bin"
    assert d["dictionary"] == "cmudict-en-us.dict" and d["sample_rate"] == PS_RATE
