"""Per-clip pooling shared by the backbones: a clip is a stack of items (face frames, 16-frame
windows), each embedded on its own; the clip's vector is their mean."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from conclugen.features.backbones.registry import Backbone, chunks

if TYPE_CHECKING:
    import torch


def mean_per_clip(vecs: np.ndarray | None, counts: list[int], dim: int) -> np.ndarray:
    """[sum(counts), dim] item vectors → [len(counts), dim] per-clip means (zeros for no items)."""
    out = np.zeros((len(counts), dim), np.float32)
    i = 0
    for k, n in enumerate(counts):
        if n and vecs is not None:
            out[k] = vecs[i : i + n].mean(axis=0)
        i += n
    return out


def embed_stacks(clips: Sequence[np.ndarray | None], item_vectors: Callable[[np.ndarray], np.ndarray],
                 chunk: int, dim: int) -> np.ndarray:
    """Embed every item of every clip with ``item_vectors`` (``chunk`` items per call), then mean
    per clip: float32 [len(clips), dim]."""
    counts = [0 if c is None else int(len(c)) for c in clips]
    parts = [np.asarray(c) for c in clips if c is not None and len(c)]
    if not parts:
        return np.zeros((len(clips), dim), np.float32)
    items = np.concatenate(parts)
    vecs = np.concatenate([item_vectors(items[s]) for s in chunks(len(items), chunk)])
    return mean_per_clip(vecs, counts, dim)


class StackBackbone(Backbone):
    """A backbone over stacks: ``embed`` takes one array of items per clip (face frames
    ``[F, H, W, 3]``, windows ``[W, T, H, W, 3]``), embeds the items ``chunk`` at a time with
    :meth:`item_vectors` and returns their mean per clip."""

    chunk: int = 8

    def item_vectors(self, items: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """float32 [N, dim] for N items."""
        raise NotImplementedError

    def embed(self, items: Sequence[np.ndarray | None]) -> np.ndarray:
        return embed_stacks(items, self.item_vectors, self.chunk, self.dim)


def pool_output(out: Any) -> torch.Tensor:
    """One vector per input of a transformers model: the pooler output when the model has one,
    else the mean of the last hidden state over space ([B, C, H, W]) or tokens ([B, T, C])."""
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    h = out.last_hidden_state
    return h.mean(dim=(2, 3)) if h.dim() == 4 else h.mean(dim=1)
