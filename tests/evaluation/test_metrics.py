"""Probe metrics against scikit-learn on known predictions, zero-division cases included; the
multi-label accuracy against numpy written from torchmetrics' definition (torchmetrics is not
installed here): ``_accuracy_reduce`` with ``multilabel=True, average='weighted'`` is
sum_j (tp_j + fn_j) · (tp_j + tn_j) / N over sum_j (tp_j + fn_j), 0 when that sum is 0."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from conclugen.evaluation.metrics import (
    compute_metrics,
    confusion_matrix,
    multilabel_confusion_matrix,
    multilabel_metrics,
    single_label_metrics,
)

LABELS7 = ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]


def _sk_single(y_true: np.ndarray, y_pred: np.ndarray, c: int) -> dict:
    labels = list(range(c))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    pw, rw, fw, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision_weighted": pw,
        "recall_weighted": rw,
        "f1_weighted": fw,
        "f1_macro": skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "p": p,
        "r": r,
        "f": f,
        "s": s,
        "cm": skm.confusion_matrix(y_true, y_pred, labels=labels),
    }


def _check_single(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    ours = single_label_metrics(y_true, y_pred, names)
    ref = _sk_single(y_true, y_pred, len(names))
    for k in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
    per = ours["per_class"]
    np.testing.assert_allclose([x["precision"] for x in per], ref["p"], atol=1e-12)
    np.testing.assert_allclose([x["recall"] for x in per], ref["r"], atol=1e-12)
    np.testing.assert_allclose([x["f1"] for x in per], ref["f"], atol=1e-12)
    np.testing.assert_array_equal([x["support"] for x in per], ref["s"])
    np.testing.assert_array_equal(ours["confusion_matrix"], ref["cm"])
    assert [x["label"] for x in per] == names
    return ours


def test_single_label_matches_sklearn_random() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        y_true = rng.integers(0, 7, 120)
        # Mostly right, some confusions, so every figure is non-trivial.
        y_pred = np.where(rng.random(120) < 0.6, y_true, rng.integers(0, 7, 120))
        _check_single(y_true, y_pred, LABELS7)


def test_single_label_zero_division_cases() -> None:
    # class 4 (surprise) never true nor predicted; class 5 (fear) only predicted (support 0,
    # precision 0); class 6 (disgust) true but never predicted (precision 0/0 → 0, recall 0).
    y_true = np.array([0, 0, 0, 1, 1, 2, 3, 3, 6, 6])
    y_pred = np.array([0, 0, 1, 1, 5, 2, 3, 0, 0, 3])
    ours = _check_single(y_true, y_pred, LABELS7)
    per = {x["label"]: x for x in ours["per_class"]}
    assert per["surprise"] == {"label": "surprise", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert per["fear"]["precision"] == 0.0 and per["fear"]["support"] == 0
    assert per["disgust"]["precision"] == 0.0 and per["disgust"]["recall"] == 0.0
    # All wrong: everything 0, no NaN.
    bad = _check_single(np.array([0, 1, 2]), np.array([1, 2, 0]), LABELS7)
    assert bad["f1_weighted"] == 0.0 and bad["accuracy"] == 0.0


def test_single_label_hand_computed() -> None:
    # 2 classes: true [0,0,0,1], pred [0,0,1,1]: class 0 P=1 R=2/3 F=0.8 (n=3), class 1 P=1/2 R=1 F=2/3 (n=1).
    m = single_label_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision_weighted"] == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)
    assert m["recall_weighted"] == pytest.approx((3 * 2 / 3 + 1 * 1.0) / 4)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 1 * 2 / 3) / 4)
    assert m["confusion_matrix"] == [[2, 1], [0, 1]]
    assert confusion_matrix(np.array([1, 1]), np.array([0, 1]), 3).tolist() == [
        [0, 0, 0],
        [1, 1, 0],
        [0, 0, 0],
    ]


def _torchmetrics_weighted_multilabel_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """torchmetrics' MultilabelAccuracy(average='weighted'), label by label with sklearn."""
    acc = np.array([skm.accuracy_score(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])])
    support = y_true.sum(0).astype(float)
    return float((acc * support).sum() / support.sum()) if support.sum() > 0 else 0.0


def _check_multi(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    ours = multilabel_metrics(y_true, y_pred, names)
    assert ours["accuracy"] == pytest.approx(_torchmetrics_weighted_multilabel_accuracy(y_true, y_pred), abs=1e-12)
    assert ours["exact_match"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    per_label = [skm.accuracy_score(y_true[:, j], y_pred[:, j]) for j in range(len(names))]
    np.testing.assert_allclose([x["accuracy"] for x in ours["per_class"]], per_label, atol=1e-12)
    assert ours["label_accuracy"] == pytest.approx(1 - skm.hamming_loss(y_true, y_pred), abs=1e-12)
    pw, rw, fw, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    assert (ours["precision_weighted"], ours["recall_weighted"], ours["f1_weighted"]) == pytest.approx(
        (pw, rw, fw), abs=1e-12
    )
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    per = ours["per_class"]
    np.testing.assert_allclose([x["precision"] for x in per], p, atol=1e-12)
    np.testing.assert_allclose([x["recall"] for x in per], r, atol=1e-12)
    np.testing.assert_allclose([x["f1"] for x in per], f, atol=1e-12)
    np.testing.assert_array_equal([x["support"] for x in per], s)
    np.testing.assert_array_equal(ours["confusion_matrix"], skm.multilabel_confusion_matrix(y_true, y_pred))
    return ours


def test_multilabel_matches_sklearn() -> None:
    names = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
    rng = np.random.default_rng(5)
    for _ in range(20):
        y_true = (rng.random((80, 6)) < [0.5, 0.2, 0.2, 0.05, 0.15, 0.05]).astype(int)
        flip = rng.random((80, 6)) < 0.2
        y_pred = np.where(flip, 1 - y_true, y_true)
        _check_multi(y_true, y_pred, names)
    # Zero division: "fear" never true nor predicted, "surprise" true but never predicted,
    # "disgust" predicted but never true.
    y_true = np.array([[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    y_pred = np.array([[1, 0, 0, 0, 1, 0], [0, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    m = _check_multi(y_true, y_pred, names)
    per = {x["label"]: x for x in m["per_class"]}
    assert per["fear"]["f1"] == 0.0 and per["surprise"]["precision"] == 0.0 and per["disgust"]["support"] == 0
    assert m["exact_match"] == pytest.approx(0.25)  # only the all-absent row matches exactly
    # Weighted accuracy by hand: supports happiness 2, sadness 2, anger 1, surprise 2 (fear and
    # disgust 0 weigh nothing); per-label accuracies 1, 3/4, 3/4, 1/2.
    assert m["accuracy"] == pytest.approx((2 * 1 + 2 * 0.75 + 1 * 0.75 + 2 * 0.5) / 7)


def test_weighted_multilabel_accuracy_hand_made() -> None:
    names = ["a", "b"]
    # a: always right (support 3); b: right on 2 of 4 rows (support 1).
    t = np.array([[1, 1], [1, 0], [1, 0], [0, 0]])
    p = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    m = multilabel_metrics(t, p, names)
    assert m["accuracy"] == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)
    assert m["label_accuracy"] == pytest.approx(0.75)  # unweighted mean of 1 and 1/2
    assert m["exact_match"] == pytest.approx(0.5)
    assert [x["accuracy"] for x in m["per_class"]] == [1.0, 0.5]
    # Weights are supports, not prevalence of predictions: swapping which label is common moves it.
    m2 = multilabel_metrics(t[:, ::-1], p[:, ::-1], names[::-1])
    assert m2["accuracy"] == pytest.approx(m["accuracy"])
    # No positives at all: every weight is 0 and torchmetrics' safe divide gives 0, even though
    # every prediction is right.
    zero = np.zeros((3, 2), dtype=int)
    z = multilabel_metrics(zero, zero, names)
    assert z["accuracy"] == 0.0 and z["exact_match"] == 1.0 and z["label_accuracy"] == 1.0


def test_multilabel_confusion_layout_and_dispatch() -> None:
    t = np.array([[1, 0], [1, 1], [0, 0]])
    p = np.array([[1, 1], [0, 1], [0, 0]])
    # label 0: tn 1, fp 0, fn 1, tp 1; label 1: tn 1, fp 1, fn 0, tp 1
    assert multilabel_confusion_matrix(t, p).tolist() == [[[1, 0], [1, 1]], [[1, 1], [0, 1]]]
    assert compute_metrics(t, p, ["a", "b"], multilabel=True)["multilabel"] is True
    assert (
        compute_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"], multilabel=False)["accuracy"] == 1.0
    )
    with pytest.raises(ValueError):
        multilabel_metrics(t, p, ["a", "b", "c"])
