"""Speech recognition for clips without a transcript.

- ``offline:none``: no ASR (no registry package ships a usable offline ASR model for torch
  2.13); a clip without transcript gets a zero text vector and the gap ``text``.
- ``hf:<id>``: AutoFeatureExtractor + AutoTokenizer + AutoModelForSpeechSeq2Seq and
  ``generate`` (Speech2Text such as facebook/s2t-large-librispeech-asr, Whisper, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
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
