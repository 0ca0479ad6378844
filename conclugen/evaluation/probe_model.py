"""The fitted probe as plain arrays, and the one decision rule from scores to labels.

Decision rule (see docs/method.md, Linear probe): multi-label, a label is predicted when its
sigmoid reaches the threshold; single-label, the class with the highest score.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from conclugen import storage

if TYPE_CHECKING:
    from conclugen.config import StorageConfig


def decide(scores: np.ndarray, multilabel: bool, threshold: float) -> np.ndarray:
    """Scores [N, C] → an int64 indicator [N, C] (multi-label: probabilities ≥ ``threshold``) or
    class indices [N] (single-label: argmax; probabilities or logits, the order is the same)."""
    scores = np.asarray(scores)
    return (scores >= threshold).astype(np.int64) if multilabel else scores.argmax(1)


def labels_of(decided: np.ndarray, label_space: Sequence[str], multilabel: bool) -> list[list[str]]:
    """The label lists of :func:`decide`'s output."""
    if multilabel:
        return [[label_space[j] for j in np.flatnonzero(row)] for row in decided]
    return [[label_space[int(j)]] for j in decided]


@dataclass
class ProbeModel:
    """The fitted probe as plain arrays: enough to classify new representations without torch."""

    label_space: list[str]
    multilabel: bool
    mean: np.ndarray  # [F] training mean (zeros when not standardised)
    std: np.ndarray  # [F] training std (ones when not standardised)
    weight: np.ndarray  # [C, F]
    bias: np.ndarray  # [C]
    threshold: float = 0.5

    def logits(self, X: np.ndarray) -> np.ndarray:
        z = (np.asarray(X, dtype=np.float32) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax over classes (rows sum to 1) or per-label sigmoids (multi-label)."""
        lo = self.logits(X).astype(np.float64)
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-lo))
        lo -= lo.max(1, keepdims=True)
        e = np.exp(lo)
        return e / e.sum(1, keepdims=True)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] → indicator [N, C] or class indices [N] (:func:`decide`)."""
        return decide(proba, self.multilabel, self.threshold)

    def labels_of(self, decided: np.ndarray) -> list[list[str]]:
        return labels_of(decided, self.label_space, self.multilabel)

    def predict_indices(self, X: np.ndarray) -> np.ndarray:
        return self.decide(self.predict_proba(X))

    def predict(self, X: np.ndarray) -> list[list[str]]:
        return self.labels_of(self.predict_indices(X))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = {"label_space": self.label_space, "multilabel": self.multilabel, "threshold": self.threshold}
        np.savez(
            buf,
            mean=self.mean,
            std=self.std,
            weight=self.weight,
            bias=self.bias,
            meta=np.array(json.dumps(meta)),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProbeModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                label_space=list(meta["label_space"]),
                multilabel=bool(meta["multilabel"]),
                threshold=float(meta["threshold"]),
                mean=z["mean"],
                std=z["std"],
                weight=z["weight"],
                bias=z["bias"],
            )

    def save(self, uri: str | Path, storage_cfg: StorageConfig | None = None) -> None:
        storage.write_bytes(str(uri), self.to_bytes(), storage_cfg)

    @classmethod
    def load(cls, uri: str | Path, storage_cfg: StorageConfig | None = None) -> ProbeModel:
        return cls.from_bytes(storage.read_bytes(str(uri), storage_cfg))
