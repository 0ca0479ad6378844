"""Encoders: functions from per-modality feature arrays to the representation the probe sees.

An :data:`Encoder` maps ``{modality: float32 [N, dim]}`` to ``float32 [N, F]``. The three the
evaluation compares (``ENCODERS``): the pretrained heads (per-modality GEU outputs concatenated in
the model's modality order — the one place representations are concatenated), the raw backbone
features (concatenated), and randomly initialised heads of the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from conclugen.config import ModelConfig
from conclugen.errors import ConCluGenError
from conclugen.model.heads import ConCluGen

Encoder = Callable[[dict[str, np.ndarray]], np.ndarray]
ENCODERS = ("conclugen", "raw_features", "random_heads")


class EncoderError(ConCluGenError, ValueError):
    """An unknown encoder name."""


def raw_features_encoder(modalities: Sequence[str]) -> Encoder:
    """Baseline encoder: the backbone features themselves, concatenated in ``modalities`` order."""
    mods = list(modalities)

    def encode(feats: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(feats[m], dtype=np.float32) for m in mods], axis=1)

    return encode


def torch_encoder(
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch_size: int = 4096, width: int = 0
) -> Encoder:
    """Wrap a torch function of per-modality tensors (e.g. frozen heads whose outputs are
    concatenated) as an :data:`Encoder`: batched, under ``torch.no_grad()``, numpy in and out.
    ``width``: the output width of an empty input. Put modules in eval mode before wrapping them."""

    def encode(feats: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feats.values())))
        parts = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = {
                    m: torch.from_numpy(np.ascontiguousarray(a[start : start + batch_size], dtype=np.float32))
                    for m, a in feats.items()
                }
                parts.append(fn(batch).detach().cpu().float().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)

    return encode


def heads_encoder(model: ConCluGen, modalities: Sequence[str], batch: int = 4096) -> Encoder:
    """Encoder: the model's per-modality representations (``represent``) concatenated in
    ``modalities`` order — the one place representations are concatenated — computed in eval
    mode without gradients, in batches (memory stays flat)."""
    mods = list(modalities)

    def represent(x: dict[str, torch.Tensor]) -> torch.Tensor:
        reps = model.represent(x)
        return torch.cat([reps[m] for m in mods], dim=1)

    batched = torch_encoder(represent, batch, width=len(mods) * int(model.d))

    def encode(feats: Mapping[str, np.ndarray]) -> np.ndarray:
        model.eval()
        return batched({m: feats[m] for m in mods})

    return encode


def random_heads(model_cfg: ModelConfig, input_dims: Mapping[str, int], seed: int) -> ConCluGen:
    """The checkpoint's architecture with PyTorch's default random init, seeded (own RNG stream,
    so the caller's torch RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConCluGen.from_config(model_cfg, input_dims)
    return model.eval()


def build_encoders(
    model: ConCluGen, model_cfg: ModelConfig, input_dims: Mapping[str, int], seed: int,
    which: Sequence[str] = ENCODERS,
) -> dict[str, Encoder]:
    """The encoders named in ``which`` (of :data:`ENCODERS`) for the checkpoint's ``model``."""
    mods = list(model.modalities)
    out: dict[str, Encoder] = {}
    for name in which:
        if name == "conclugen":
            out[name] = heads_encoder(model, mods)
        elif name == "raw_features":
            out[name] = raw_features_encoder(mods)
        elif name == "random_heads":
            out[name] = heads_encoder(random_heads(model_cfg, input_dims, seed), mods)
        else:
            raise EncoderError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
    return out
