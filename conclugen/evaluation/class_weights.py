"""The probe's loss weights: the reference constants (MELD, MOSEI) or weights from label counts.

See docs/method.md, Linear probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS
from conclugen.evaluation.probe_data import ProbeError, encode_targets

# The reference's MELD weights are listed as [4, 15, 15, 3, 1, 6, 3]. Read in the order of
# MELD_EMOTIONS (neutral, joy, sadness, anger, surprise, fear, disgust) they would give the most
# frequent class (neutral, 4710 of 9989 training utterances) weight 4 and surprise (1205) weight
# 1, while fear and disgust (268 and 271, the rarest) would get 6 and 3. Read in **alphabetical**
# order — the order of sorted class names, as a label encoder produces — they are close to
# max_count / count of the official train split (anger 4.2, disgust 17.4, fear 17.6, joy 2.7,
# neutral 1, sadness 6.9, surprise 3.9). So they are keyed by name here, alphabetically.
MELD_REFERENCE_WEIGHTS: dict[str, float] = {
    "anger": 4.0,
    "disgust": 15.0,
    "fear": 15.0,
    "joy": 3.0,
    "neutral": 1.0,
    "sadness": 6.0,
    "surprise": 3.0,
}
# MOSEI pos_weight in the order of MOSEI_EMOTIONS (happiness, sadness, anger, fear, disgust,
# surprise). Unlike MELD's weights this mapping could not be checked against label counts.
MOSEI_POS_WEIGHT: dict[str, float] = {
    "happiness": 1.05,
    "sadness": 5.22,
    "anger": 5.34,
    "fear": 19.49,
    "disgust": 7.04,
    "surprise": 23.69,
}
assert set(MELD_REFERENCE_WEIGHTS) == set(MELD_EMOTIONS)
assert set(MOSEI_POS_WEIGHT) == set(MOSEI_EMOTIONS)


def frequency_weights(
    train_labels: Sequence[Sequence[str]], label_space: Sequence[str], multilabel: bool
) -> list[float]:
    """Weights from the training labels.

    Single-label: ``max_count / count`` (the most frequent class gets 1 — the scale of the MELD
    reference weights; the loss is a weighted mean, so only ratios matter). Multi-label: the
    BCE ``pos_weight`` convention ``negatives / positives`` per label. Absent classes get 1.
    """
    y = encode_targets(train_labels, label_space, multilabel)
    if multilabel:
        pos = y.sum(0, dtype=np.float64)
        neg = y.shape[0] - pos
        return [float(n / p) if p > 0 else 1.0 for p, n in zip(pos, neg, strict=True)]
    counts = np.bincount(y, minlength=len(label_space)).astype(np.float64)
    top = counts.max() if counts.size else 0.0
    return [float(top / c) if c > 0 else 1.0 for c in counts]


def class_weights_for(
    corpus: str,
    label_space: Sequence[str],
    train_labels: Sequence[Sequence[str]],
    multilabel: bool | None = None,
    source: Literal["auto", "reference", "data", "none"] = "auto",
) -> list[float]:
    """Loss weights in ``label_space`` order.

    ``auto``: the reference constants where the reference gives them (corpus "meld" with the 7
    emotions: CE weights; "mosei": BCE pos_weight), else from the training labels (CAER,
    synthetic, MELD sentiment, anything else). ``reference`` insists on the constants,
    ``data`` always computes from ``train_labels``, ``none`` gives all ones.

    The synthetic corpus is written in MELD's layout, so its feature store says corpus "meld":
    callers that know the features are synthetic pass ``corpus="synthetic"`` (or
    ``source="data"``); the MELD constants encode MELD's imbalance, not the synthetic balance.
    """
    name = corpus.lower()
    space = list(label_space)
    if multilabel is None:
        multilabel = name == "mosei"
    if source == "none":
        return [1.0] * len(space)
    if source != "data":
        if name == "meld" and not multilabel and set(space) == set(MELD_REFERENCE_WEIGHTS):
            return [MELD_REFERENCE_WEIGHTS[lab] for lab in space]
        if name == "mosei" and multilabel and set(space) == set(MOSEI_POS_WEIGHT):
            return [MOSEI_POS_WEIGHT[lab] for lab in space]
        if source == "reference":
            raise ProbeError(f"no reference weights for corpus {corpus!r} with labels {space}")
    return frequency_weights(train_labels, space, multilabel)


def train_class_weights(
    corpus: str, label_space: Sequence[str], train_labels: Sequence[Sequence[str]], multilabel: bool
) -> list[float]:
    """:func:`class_weights_for` of a training split as it comes from a feature store: rows
    without a label are left out of single-label counts (the probe drops them too)."""
    rows = [list(r) for r in train_labels]
    if not multilabel:
        rows = [r for r in rows if r]
    return class_weights_for(corpus, label_space, rows, multilabel)
