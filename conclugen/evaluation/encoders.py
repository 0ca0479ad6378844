"""Encoders: functions from per-modality feature arrays to the representation the probe sees.

An :data:`Encoder` maps ``{modality: float32 [N, dim]}`` to ``float32 [N, F]``. The three the
evaluation compares (``ENCODERS``): the pretrained heads (per-modality GEU outputs concatenated in
the model's modality order — the one place representations are concatenated), the raw backbone
features (concatenated), and randomly initialised heads of the same architecture. Both baselines
read the checkpoint's standardised input (``model.input_norm``), so only the heads differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from conclugen.config import ModelConfig
from conclugen.errors import ConCluGenError
from conclugen.model.heads import ConCluGen

Encoder = Callable[[dict[str, np.ndarray]], np.ndarray]
ENCODERS = ("conclugen", "raw_features", "random_heads")


class EncoderError(ConCluGenError, ValueError):
    """An unknown encoder name, or an encoder that cannot do what is asked of it."""


@dataclass(frozen=True)
class ConcatEncoder:
    """An :data:`Encoder` made of per-modality parts: ``parts(feats)`` → ``{modality: [N, d_m]}``
    (each block a function of that modality's features only), concatenated in ``modalities``
    order — the one place representations are concatenated."""

    modalities: tuple[str, ...]
    parts: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

    def __call__(self, feats: Mapping[str, np.ndarray]) -> np.ndarray:
        blocks = self.parts(feats)
        return np.concatenate([np.asarray(blocks[m], dtype=np.float32) for m in self.modalities], axis=1)


def encode_versions(
    encoder: Encoder, plain: Mapping[str, np.ndarray], views: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every version of every row through ``encoder``: ``{modality: float32 [1 + N, rows, d_m]}``
    (version 0 from ``plain`` {m: [rows, dim]}, versions 1..N from ``views`` {m: [rows, N, dim]}).
    A modality without views repeats its plain block. Needs a :class:`ConcatEncoder`."""
    if not isinstance(encoder, ConcatEncoder):
        raise EncoderError("augmented versions need an encoder made of per-modality parts (ConcatEncoder)")
    n_aug = max((int(v.shape[1]) for v in views.values()), default=0)
    per_version = [encoder.parts(plain)]
    for k in range(n_aug):
        feats = {m: (views[m][:, k] if m in views else plain[m]) for m in encoder.modalities}
        per_version.append(encoder.parts(feats))
    return {m: np.stack([np.asarray(p[m], dtype=np.float32) for p in per_version]) for m in encoder.modalities}


def raw_features_encoder(
    modalities: Sequence[str], stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
) -> ConcatEncoder:
    """Baseline encoder: the backbone features themselves, concatenated in ``modalities`` order;
    with ``stats`` ({m: (mean, std)}) standardised as the heads' input is (so the baseline sees
    exactly what the heads see)."""
    mods = tuple(modalities)

    def parts(feats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {m: np.asarray(feats[m], dtype=np.float32) for m in mods}
        if stats:
            out = {m: (x - stats[m][0]) / stats[m][1] if m in stats else x for m, x in out.items()}
        return out

    return ConcatEncoder(mods, parts)


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


def heads_encoder(model: ConCluGen, modalities: Sequence[str], batch: int = 4096) -> ConcatEncoder:
    """Encoder: the model's per-modality representations (``represent``) concatenated in
    ``modalities`` order, computed in eval mode without gradients, in batches (memory stays
    flat)."""
    mods = tuple(modalities)
    d = int(model.d)

    def represent(x: dict[str, torch.Tensor]) -> torch.Tensor:
        reps = model.represent(x)
        return torch.cat([reps[m] for m in mods], dim=1)

    batched = torch_encoder(represent, batch, width=len(mods) * d)

    def parts(feats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model.eval()
        X = batched({m: feats[m] for m in mods})
        return {m: X[:, i * d : (i + 1) * d] for i, m in enumerate(mods)}

    return ConcatEncoder(mods, parts)


def random_heads(model_cfg: ModelConfig, input_dims: Mapping[str, int], seed: int) -> ConCluGen:
    """The checkpoint's architecture with PyTorch's default random init, seeded (own RNG stream,
    so the caller's torch RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConCluGen.from_config(model_cfg, input_dims)
    return model.eval()


def input_stats(model: ConCluGen) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The model's input standardisation {m: (mean, std)}; empty when it is the identity."""
    out = {}
    for m in model.modalities:
        norm = model.input_norms[m]
        mean, std = norm.mean.detach().cpu().numpy(), norm.std.detach().cpu().numpy()
        if np.any(mean != 0) or np.any(std != 1):
            out[m] = (mean, std)
    return out


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
            out[name] = raw_features_encoder(mods, input_stats(model))
        elif name == "random_heads":
            rand = random_heads(model_cfg, input_dims, seed)
            rand.input_norms.load_state_dict(model.input_norms.state_dict())  # same inputs, random heads
            out[name] = heads_encoder(rand, mods)
        else:
            raise EncoderError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
    return out
