"""Speech recognition for clips without a transcript (docs/method.md, Backbones and features).

- ``offline:pocketsphinx`` (the default): CMU PocketSphinx with the en-us acoustic model,
  dictionary and language model its wheel ships (no download); one decoder per actor.
- ``offline:none``: no ASR; a clip without transcript gets a zero text vector and the gap ``text``.
- ``hf:<id>``: AutoFeatureExtractor + AutoTokenizer + AutoModelForSpeechSeq2Seq and
  ``generate`` (Speech2Text such as facebook/s2t-large-librispeech-asr, Whisper, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conclugen.features.backbones.registry import Backbone, BackboneError, chunks, hf_parts

SAMPLE_RATE = 16000
ASR_CHUNK = 4
MAX_NEW_TOKENS = 128


class HFASR(Backbone):
    kind = "asr"
    dim = 0
    trained = True

    def __init__(self, name: str, path: str, device: str = "cpu", cfg: Any = None) -> None:
        from transformers import AutoTokenizer

        super().__init__(name, device)
        _, self.extractor, self.model = hf_parts(path, device, "AutoFeatureExtractor", "AutoModelForSpeechSeq2Seq")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        sr = int(getattr(self.extractor, "sampling_rate", SAMPLE_RATE) or SAMPLE_RATE)
        if sr != SAMPLE_RATE:
            raise BackboneError(f"{name} expects {sr} Hz audio; the pipeline decodes 16 kHz")
        # generated tokens + start/prompt tokens must fit the decoder's positions
        limit = getattr(self.model.config, "max_target_positions", None)
        self.max_new_tokens = MAX_NEW_TOKENS if not limit else max(1, min(MAX_NEW_TOKENS, int(limit) - 4))
        self.details = {"source": name, "class": type(self.model).__name__}

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        return np.zeros((len(items), 0), np.float32)

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray | None]) -> list[str | None]:
        out: list[str | None] = [None] * len(waves)
        idx = [i for i, w in enumerate(waves) if w is not None and len(w)]
        for s in chunks(len(idx), ASR_CHUNK):
            rows = idx[s]
            batch = [np.asarray(waves[i], np.float32) for i in rows]
            inputs = self.extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True,
                                    return_attention_mask=True)
            inputs = self.on_device(inputs)
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            for i, text in zip(rows, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out


# PocketSphinx's acoustic model is trained on 16 kHz speech; the decoder reads int16 PCM.
PS_RATE = 16000
# The VAD's frames are 30 ms: fewer speech frames than this (150 ms) is silence, not decoded
# (the decoder hypothesises a word even on digital silence).
MIN_SPEECH_FRAMES = 5
_ALT = re.compile(r"\(\d+\)$")  # cmudict alternate pronunciations: "read(2)"


def to_pcm16(wave: np.ndarray, rate: int, target: int = PS_RATE) -> bytes:
    """Mono float samples in [-1, 1] at ``rate`` Hz → int16 little-endian PCM at ``target`` Hz
    (polyphase resampling with its anti-aliasing filter when the rates differ)."""
    x = np.asarray(wave, np.float64).reshape(-1)
    if rate != target:
        from scipy.signal import resample_poly

        g = gcd(int(target), int(rate))
        x = resample_poly(x, target // g, rate // g)
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class PocketSphinxASR(Backbone):
    """``offline:pocketsphinx``: transcribes each clip's audio as one utterance; returns
    lower-case words, or None when the VAD finds no speech or the decoder no word (the clip then
    keeps its text gap)."""

    kind = "asr"
    dim = 0
    trained = True

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None) -> None:
        import pocketsphinx

        super().__init__(name, device)
        model = Path(pocketsphinx.get_model_path()) / "en-us"
        files = {"hmm": model / "en-us", "lm": model / "en-us.lm.bin", "dict": model / "cmudict-en-us.dict"}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise BackboneError(f"{name}: the pocketsphinx wheel lacks its en-us model ({', '.join(missing)})")
        self.rate = int(getattr(cfg, "audio_sample_rate", PS_RATE) or PS_RATE)
        self.decoder = pocketsphinx.Decoder(samprate=PS_RATE, loglevel="FATAL",
                                            **{k: str(v) for k, v in files.items()})
        self.vad = pocketsphinx.Vad(sample_rate=PS_RATE)
        from importlib.metadata import version

        self.details = {"source": f"pocketsphinx {version('pocketsphinx')}", "model": "en-us (bundled)",
                        "language_model": files["lm"].name, "dictionary": files["dict"].name,
                        "sample_rate": PS_RATE}

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        return np.zeros((len(items), 0), np.float32)

    def speech_frames(self, pcm: bytes) -> int:
        """How many of the VAD's frames in ``pcm`` hold speech."""
        n = self.vad.frame_bytes
        return sum(self.vad.is_speech(pcm[i : i + n]) for i in range(0, len(pcm) - n + 1, n))

    def decode(self, pcm: bytes) -> str:
        """One utterance through the decoder: its best hypothesis, lower-case ('' for none)."""
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        words = [_ALT.sub("", w) for w in (hyp.hypstr if hyp is not None else "").lower().split()]
        return " ".join(words)

    def transcribe(self, waves: Sequence[np.ndarray | None]) -> list[str | None]:
        out: list[str | None] = []
        for w in waves:
            if w is None or not len(w):
                out.append(None)
                continue
            pcm = to_pcm16(w, self.rate)
            text = self.decode(pcm) if self.speech_frames(pcm) >= MIN_SPEECH_FRAMES else ""
            out.append(text or None)
        return out
