"""Audio backbones on a clip's mono 16 kHz waveform, averaged over time.

``embed(waves)`` takes one float32 waveform ``[T]`` in [-1, 1] per clip and returns float32
``[B, dim]``. Clips shorter than one second are zero-padded to one second (the models' receptive
fields need it); an empty waveform gives zeros (the pipeline records the gap).

- ``offline:audio`` = ``offline:speech-embedding``: Google's speech_embedding model (trained on
  ~200M YouTube speech clips) as the two ONNX graphs shipped inside ``openwakeword==0.4.0``
  (melspectrogram.onnx → 32-bin mel, embedding_model.onnx → 96-d per 76-frame window, step 8),
  run with onnxruntime exactly as openwakeword feeds them; mean over windows → 96-d.
- ``offline:seeded-audio``: a seeded, untrained CNN over the 128-bin log-mel (128-d).
- ``hf:<id>``: AutoFeatureExtractor + AutoModel (e.g. facebook/wav2vec2-base → 768-d), mean of
  the last hidden state over time.

``embed_versions(waves, transforms)`` embeds each clip plus its augmented versions (float32
``[B, 1 + V, dim]``, version 0 plain) in one forward per clip. ``input_form`` says what the
transforms act on: ``"mel"`` backbones apply them to their own spectrogram (``[freq, time]``,
computed once per clip), ``"waveform"`` backbones to the samples (see docs/method.md, Backbones
and features, Augmentation).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from conclugen.features.backbones.image import seeded_init
from conclugen.features.backbones.registry import Backbone, BackboneError, hf_parts

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE  # pad shorter clips to 1 s


def _padded(wave: np.ndarray | None) -> np.ndarray | None:
    if wave is None or len(wave) == 0:
        return None
    wave = np.asarray(wave, np.float32)
    if len(wave) < MIN_SAMPLES:
        wave = np.pad(wave, (0, MIN_SAMPLES - len(wave)))
    return wave


Transforms = Sequence[Sequence[Callable[[np.ndarray], np.ndarray]]]


def _n_versions(transforms: Transforms) -> int:
    return 1 + max((len(t) for t in transforms), default=0)


def _threads() -> int:
    return max(1, torch.get_num_threads())


class SpeechEmbedding(Backbone):
    kind = "audio"
    dim = 96
    trained = True
    WINDOW, STEP = 76, 8

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None) -> None:
        import importlib.util

        import onnxruntime as ort

        super().__init__(name, device)
        spec = importlib.util.find_spec("openwakeword")
        if spec is None or not spec.submodule_search_locations:
            raise BackboneError("offline:audio needs openwakeword==0.4.0 (it ships the ONNX models)")
        base = os.path.join(list(spec.submodule_search_locations)[0], "resources", "models")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.mel = ort.InferenceSession(os.path.join(base, "melspectrogram.onnx"), opts, providers=providers)
        self.emb = ort.InferenceSession(os.path.join(base, "embedding_model.onnx"), opts, providers=providers)
        self.details = {"source": "openwakeword==0.4.0 melspectrogram.onnx + embedding_model.onnx "
                        "(Google speech_embedding)", "window": "76 mel frames, step 8"}

    input_form = "mel"

    def _spec(self, wave: np.ndarray) -> np.ndarray:
        """The model's mel input, [frames, 32]."""
        # 16-bit PCM values, as openwakeword feeds the model
        pcm = np.clip(wave * 32767.0, -32768, 32767).astype(np.int16).astype(np.float32)[None]
        return np.squeeze(self.mel.run(None, {"input": pcm})[0]) / 10.0 + 2.0  # openwakeword's transform

    def _windows(self, spec: np.ndarray) -> np.ndarray:
        starts = range(0, max(1, spec.shape[0] - self.WINDOW + 1), self.STEP)
        return np.stack([spec[i : i + self.WINDOW] for i in starts if i + self.WINDOW <= spec.shape[0]])

    def _embed_specs(self, specs: list[np.ndarray]) -> np.ndarray:
        """Each spectrogram's mean window embedding, all windows in one run: [len(specs), dim]."""
        windows = [self._windows(s) for s in specs]
        flat = np.concatenate(windows) if len(windows) > 1 else windows[0]
        out = self.emb.run(None, {"input_1": flat[..., None].astype(np.float32)})[0].reshape(len(flat), -1)
        bounds = np.cumsum([0] + [len(w) for w in windows])
        return np.stack([out[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    def embed_versions(self, items: Sequence[np.ndarray | None], transforms: Transforms) -> np.ndarray:
        out = np.zeros((len(items), _n_versions(transforms), self.dim), np.float32)
        for i, w in enumerate(items):
            w = _padded(w)
            if w is None:
                continue
            spec = self._spec(w)
            out[i] = self._embed_specs([spec] + [t(spec.T).T for t in transforms[i]])  # masks on [freq, time]
        return out

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_versions(items, [()] * len(items))[:, 0]


class SeededAudio(Backbone):
    kind = "audio"
    dim = 128
    trained = False

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        self.n_mels = int(getattr(cfg, "n_mels", 128) or 128)
        self.model = seeded_init(
            nn.Sequential(
                nn.Conv1d(self.n_mels, 128, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv1d(128, 128, 5, stride=2, padding=2), nn.ReLU(),
            ),
            seed=3,
        ).to(device)
        self.details = {"source": "seeded 1D CNN over log-mel (seed 3), untrained"}

    input_form = "mel"

    @torch.inference_mode()
    def embed_versions(self, items: Sequence[np.ndarray | None], transforms: Transforms) -> np.ndarray:
        from conclugen.data.media import log_mel

        out = np.zeros((len(items), _n_versions(transforms), self.dim), np.float32)
        for i, w in enumerate(items):
            w = _padded(w)
            if w is None:
                continue
            mel = torch.as_tensor(log_mel(w, SAMPLE_RATE, n_mels=self.n_mels)).float()
            mels = [mel] + [torch.from_numpy(t(mel.numpy())) for t in transforms[i]]
            out[i] = self.model(torch.stack(mels).to(self.device)).mean(dim=2).cpu().numpy()
        return out

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_versions(items, [()] * len(items))[:, 0]


class HFAudio(Backbone):
    kind = "audio"
    trained = True

    def __init__(self, name: str, path: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        config, self.extractor, self.model = hf_parts(path, device, "AutoFeatureExtractor")
        self.sample_rate = int(getattr(self.extractor, "sampling_rate", SAMPLE_RATE) or SAMPLE_RATE)
        if self.sample_rate != SAMPLE_RATE:
            raise BackboneError(f"{name} expects {self.sample_rate} Hz audio; the pipeline decodes 16 kHz")
        self.dim = int(config.hidden_size)
        self.details = {"source": name, "class": type(self.model).__name__}

    input_form = "waveform"

    @torch.inference_mode()
    def embed_versions(self, items: Sequence[np.ndarray | None], transforms: Transforms) -> np.ndarray:
        out = np.zeros((len(items), _n_versions(transforms), self.dim), np.float32)
        for i, w in enumerate(items):  # one clip at a time: lengths differ, no padding bias in the mean
            if w is None or len(w) == 0:
                continue
            raw = np.asarray(w, np.float32)
            # a clip's versions share its length: one batch, no padding
            waves = [_padded(x) for x in [raw] + [t(raw) for t in transforms[i]]]
            inputs = self.extractor(waves if len(waves) > 1 else waves[0], sampling_rate=SAMPLE_RATE,
                                    return_tensors="pt")
            inputs = self.on_device(inputs)
            h = self.model(**inputs).last_hidden_state
            out[i] = h.mean(dim=1).float().cpu().numpy()
        return out

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_versions(items, [()] * len(items))[:, 0]
