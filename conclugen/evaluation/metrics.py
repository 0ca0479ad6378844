"""Classification metrics for the linear probe, in plain numpy (see docs/method.md, Linear probe).

The reference logs torchmetrics' ``Accuracy`` / ``Precision`` / ``Recall`` / ``F1Score`` with
``average='weighted'`` (tub-cv-group/conclugen: src/models/classification_model.py,
``_setup_metrics``; configs/model/conclu/concat/conclu_{single,multi}.yaml set
``metric_averaging: weighted``). These functions follow the same definitions (the tests check
them against scikit-learn, whose weighted P/R/F1 are the same figures, and against numpy written
from torchmetrics' ``_accuracy_reduce``):

- precision / recall / F1 per class; a 0/0 ratio counts as 0 (sklearn's ``zero_division=0``);
- weighted averages weight each class by its support (its number of true samples);
- single-label ``accuracy`` is the share of correct predictions (torchmetrics' weighted
  multiclass accuracy is support-weighted recall, which is the same number);
- multi-label (MOSEI) ``accuracy`` is torchmetrics' multilabel ``Accuracy(average='weighted')``:
  per label (tp + tn) / N, averaged with each label's support (tp + fn) as weight (0 when no
  label has a positive). That is the figure the reference reports and selects its checkpoint by.
  ``exact_match`` (subset accuracy, sklearn's ``accuracy_score`` on indicator matrices) and
  ``label_accuracy`` (the unweighted mean of per-label accuracy, 1 − Hamming loss) are given
  beside it. Weighted P/R/F1 are over labels, each weighted by its number of positive samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = number of samples with true class i predicted as j."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def multilabel_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """[C, 2, 2] per label: [[tn, fp], [fn, tp]] (sklearn's layout)."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp = (t & p).sum(0)
    fp = (~t & p).sum(0)
    fn = (t & ~p).sum(0)
    tn = (~t & ~p).sum(0)
    return np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], 1).astype(np.int64)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    # sklearn ≥ 1.3 computes F1 from counts: 2tp / (2tp + fp + fn), 0 when that is 0/0.
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def _weighted(values: np.ndarray, support: np.ndarray) -> float:
    total = support.sum()
    return float((values * support).sum() / total) if total > 0 else 0.0


def _per_class(
    names: Sequence[str], p: np.ndarray, r: np.ndarray, f: np.ndarray, s: np.ndarray,
    acc: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    rows = [
        {
            "label": str(n),
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, n in enumerate(names)
    ]
    if acc is not None:  # multi-label: each label's own (tp + tn) / N
        for row, a in zip(rows, acc, strict=True):
            row["accuracy"] = float(a)
    return rows


def weighted_label_accuracy(mcm: np.ndarray) -> tuple[float, np.ndarray]:
    """(torchmetrics' multilabel ``Accuracy(average='weighted')``, per-label accuracy) of a
    [C, 2, 2] multi-label confusion matrix: per label (tp + tn) / N weighted by tp + fn."""
    tn, fp, fn, tp = (mcm[:, i, j].astype(np.float64) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    per_label = _div(tp + tn, tp + tn + fp + fn)
    return _weighted(per_label, tp + fn), per_label


def single_label_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_space: Sequence[str]
) -> dict[str, Any]:
    """Metrics for integer class indices into ``label_space``.

    Returns accuracy, precision/recall/f1 (weighted), the same macro-averaged, per-class figures,
    the confusion matrix (rows = true, columns = predicted) and n.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.shape[0]} samples, y_pred {y_pred.shape[0]}")
    c = len(label_space)
    cm = confusion_matrix(y_true, y_pred, c)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    support = cm.sum(1)
    p, r, f = _prf(tp, fp, fn)
    n = int(y_true.shape[0])
    return {
        "multilabel": False,
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision_weighted": _weighted(p, support),
        "recall_weighted": _weighted(r, support),
        "f1_weighted": _weighted(f, support),
        "f1_macro": float(f.mean()) if c else 0.0,
        "per_class": _per_class(label_space, p, r, f, support),
        "confusion_matrix": cm.tolist(),
        "label_space": list(label_space),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_space: Sequence[str]) -> dict[str, Any]:
    """Metrics for binary indicator matrices [N, C] (1 = label present)."""
    t = np.asarray(y_true).astype(bool)
    p_ = np.asarray(y_pred).astype(bool)
    if t.shape != p_.shape or t.ndim != 2 or t.shape[1] != len(label_space):
        raise ValueError(
            f"expected two [N, {len(label_space)}] indicator matrices, got {t.shape} and {p_.shape}"
        )
    mcm = multilabel_confusion_matrix(t, p_)
    tp, fp, fn = mcm[:, 1, 1], mcm[:, 0, 1], mcm[:, 1, 0]
    support = tp + fn
    p, r, f = _prf(tp, fp, fn)
    n = int(t.shape[0])
    accuracy, per_label = weighted_label_accuracy(mcm)
    return {
        "multilabel": True,
        "n": n,
        "accuracy": accuracy,
        "exact_match": float((t == p_).all(1).mean()) if n else 0.0,
        "label_accuracy": float((t == p_).mean()) if t.size else 0.0,
        "precision_weighted": _weighted(p, support),
        "recall_weighted": _weighted(r, support),
        "f1_weighted": _weighted(f, support),
        "f1_macro": float(f.mean()) if len(label_space) else 0.0,
        "per_class": _per_class(label_space, p, r, f, support, per_label),
        # One 2×2 [[tn, fp], [fn, tp]] per label.
        "confusion_matrix": mcm.tolist(),
        "label_space": list(label_space),
    }


def compute_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_space: Sequence[str], multilabel: bool
) -> dict[str, Any]:
    """:func:`multilabel_metrics` or :func:`single_label_metrics`."""
    return (multilabel_metrics if multilabel else single_label_metrics)(y_true, y_pred, label_space)


HEADLINE = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted")
