"""The probe's loss weights under each protocol (see docs/method.md, Linear probe).

``reference`` — what the authors' code does (tub-cv-group/conclugen):

- MELD, 7 emotions: the constants ``[4, 15, 15, 3, 1, 6, 3]`` of
  src/data/datamodules/meld_datamodule.py (``_compute_class_weights``), indexed by the label
  order of configs/data/meld/meld_cropped_precomp_augmented.yaml,
  ``[neutral, surprise, fear, sadness, joy, disgust, anger]`` (the datamodule encodes
  ``self.labels.index(line['Emotion'])``). The same list weighs the train, val and test losses.
- CMU-MOSEI, 6 emotions (multi-label): BCE ``pos_weight`` constants of
  src/data/datamodules/cmu_mosei_datamodule.py, by position in the SDK's label order
  ``[happy, sad, anger, surprise, disgust, fear]`` (``labels[i][1:]`` of ``CMU_MOSEI_Labels``).
- CAER (and any other single-label emotion corpus): ``count / total`` per class of the split
  itself (caer_video_datamodule.py ``_compute_class_weights``: frequent classes weigh more);
  prepare_data in video_datamodule.py computes them for train, val and test separately, and
  callbacks/set_class_weights_on_model.py puts each split's weights on that split's loss.
- MELD / MOSEI 3-class sentiment: ``N / count`` normalised to sum 1, per split (the else branch
  of both datamodules; their counts start from ``np.arange(C)`` instead of zeros — an offset of
  at most 2 per class that is not copied here).
- Any other multi-label corpus: the reference has none; ``negatives / positives`` *(ours)*.

``balanced`` *(ours)*: always from the training labels — ``max_count / count`` (single-label,
the most frequent class gets 1) or ``negatives / positives`` (multi-label BCE pos_weight) — and
the validation loss uses the training weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS
from conclugen.evaluation.probe_data import ProbeError, encode_targets

Protocol = Literal["reference", "balanced"]
PROTOCOLS: tuple[str, ...] = ("reference", "balanced")

MELD_REFERENCE_WEIGHTS: dict[str, float] = dict(
    zip(("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
        (4.0, 15.0, 15.0, 3.0, 1.0, 6.0, 3.0), strict=True)
)
# "Hard-coded weights from Enrico" (cmu_mosei_datamodule.py), in the SDK's order, mapped to
# this project's names (config.MOSEI_EMOTIONS).
MOSEI_POS_WEIGHT: dict[str, float] = dict(
    zip(("happiness", "sadness", "anger", "surprise", "disgust", "fear"),
        (1.0528500080108643, 5.215074062347412, 5.3373003005981445, 19.48985481262207,
         7.0448384284973145, 23.688003540039062), strict=True)
)
SENTIMENTS = frozenset({"negative", "neutral", "positive"})
assert set(MELD_REFERENCE_WEIGHTS) == set(MELD_EMOTIONS)
assert set(MOSEI_POS_WEIGHT) == set(MOSEI_EMOTIONS)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ProbeError(f"unknown probe protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")


def _counts(labels: Sequence[Sequence[str]], label_space: Sequence[str]) -> np.ndarray:
    y = encode_targets(labels, label_space, False)
    return np.bincount(y, minlength=len(label_space)).astype(np.float64)


def frequency_weights(
    train_labels: Sequence[Sequence[str]], label_space: Sequence[str], multilabel: bool
) -> list[float]:
    """The ``balanced`` weights. Single-label: ``max_count / count`` (the most frequent class gets
    1; the loss is a weighted mean, so only ratios matter). Multi-label: the BCE ``pos_weight``
    convention ``negatives / positives`` per label. Absent classes get 1."""
    if multilabel:
        y = encode_targets(train_labels, label_space, True)
        pos = y.sum(0, dtype=np.float64)
        neg = y.shape[0] - pos
        return [float(n / p) if p > 0 else 1.0 for p, n in zip(pos, neg, strict=True)]
    counts = _counts(train_labels, label_space)
    top = counts.max() if counts.size else 0.0
    return [float(top / c) if c > 0 else 1.0 for c in counts]


def count_share_weights(labels: Sequence[Sequence[str]], label_space: Sequence[str]) -> list[float]:
    """CAER's reference weights: ``count / total`` per class (absent classes get 0)."""
    counts = _counts(labels, label_space)
    total = counts.sum()
    return [float(c / total) if total > 0 else 0.0 for c in counts]


def inverse_share_weights(labels: Sequence[Sequence[str]], label_space: Sequence[str]) -> list[float]:
    """The reference's sentiment weights: ``N / count`` normalised to sum 1 (absent classes: 0)."""
    counts = _counts(labels, label_space)
    inv = np.where(counts > 0, counts.sum() / np.maximum(counts, 1.0), 0.0)
    total = inv.sum()
    return [float(w / total) if total > 0 else 0.0 for w in inv]


def _reference_constants(name: str, space: list[str], multilabel: bool) -> list[float] | None:
    if name == "meld" and not multilabel and set(space) == set(MELD_REFERENCE_WEIGHTS):
        return [MELD_REFERENCE_WEIGHTS[lab] for lab in space]
    if name == "mosei" and multilabel and set(space) == set(MOSEI_POS_WEIGHT):
        return [MOSEI_POS_WEIGHT[lab] for lab in space]
    return None


def _reference_from_data(name: str, labels: Sequence[Sequence[str]], space: list[str], multilabel: bool) -> list[float]:
    if multilabel:
        return frequency_weights(labels, space, True)  # no reference rule *(ours)*
    if name in ("meld", "mosei") and set(space) == SENTIMENTS:
        return inverse_share_weights(labels, space)
    return count_share_weights(labels, space)


def class_weights_for(
    corpus: str,
    label_space: Sequence[str],
    train_labels: Sequence[Sequence[str]],
    multilabel: bool | None = None,
    source: Literal["auto", "reference", "data", "none"] = "auto",
    *,
    protocol: str = "reference",
) -> list[float]:
    """Loss weights in ``label_space`` order for the split whose labels are ``train_labels``.

    ``auto``: the protocol's rule (module docstring). ``reference`` insists on the reference
    constants (MELD emotions, MOSEI) whatever the protocol; ``data`` computes from the labels by
    the protocol's data rule; ``none`` gives all ones.

    The synthetic corpus is written in MELD's layout, so its feature store says corpus "meld":
    callers that know the features are synthetic pass ``corpus="synthetic"`` (or
    ``source="data"``); the MELD constants encode MELD's imbalance, not the synthetic balance.
    """
    _check_protocol(protocol)
    name = corpus.lower()
    space = list(label_space)
    if multilabel is None:
        multilabel = name == "mosei"
    if source == "none":
        return [1.0] * len(space)
    constants = _reference_constants(name, space, multilabel)
    if source == "reference":
        if constants is None:
            raise ProbeError(f"no reference weights for corpus {corpus!r} with labels {space}")
        return constants
    if protocol == "balanced":
        return frequency_weights(train_labels, space, multilabel)
    if source == "auto" and constants is not None:
        return constants
    return _reference_from_data(name, train_labels, space, multilabel)


def split_labels(labels: Sequence[Sequence[str]], multilabel: bool) -> list[list[str]]:
    """A split's labels as a feature store gives them, without the rows the probe drops
    (single-label rows without a label)."""
    rows = [list(r) for r in labels]
    return rows if multilabel else [r for r in rows if r]


def train_class_weights(
    corpus: str, label_space: Sequence[str], train_labels: Sequence[Sequence[str]], multilabel: bool,
    *, protocol: str = "reference",
) -> list[float]:
    """:func:`class_weights_for` of a split as it comes from a feature store (rows without a label
    are left out of single-label counts; the probe drops them too)."""
    return class_weights_for(corpus, label_space, split_labels(train_labels, multilabel), multilabel,
                             protocol=protocol)


def named_weights(label_space: Sequence[str], weights: Sequence[float]) -> dict[str, float]:
    """``{label: weight}`` (what report.json shows)."""
    return {str(n): float(w) for n, w in zip(label_space, weights, strict=True)}
