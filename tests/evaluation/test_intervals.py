"""Bootstrap intervals on probe metrics: against a plain numpy/sklearn bootstrap written here, and
coverage sanity (contains the estimate, perfect classifier, width shrinks with n)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conclugen.evaluation.intervals import (
    Interval,
    bootstrap_indices,
    format_interval,
    metric_intervals,
    seeds_intervals,
)

LABELS = ["a", "b", "c"]


def _noisy(n: int, seed: int, correct: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < correct, y, rng.integers(0, 3, n))
    return y, pred


def _percentile(values: list[float], conf: float) -> tuple[float, float]:
    a = (1 - conf) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def test_bootstrap_matches_plain_numpy() -> None:
    y, pred = _noisy(60, seed=1)
    got = metric_intervals(y, pred, LABELS, False, resamples=300, confidence=0.9, seed=7)
    # Plain bootstrap: the same seeded draws (numpy's default_rng, integers(0, n, (B, n))).
    draws = np.random.default_rng(7).integers(0, 60, size=(300, 60))
    acc = [float((y[i] == pred[i]).mean()) for i in draws]
    f1 = [f1_score(y[i], pred[i], labels=[0, 1, 2], average="weighted", zero_division=0) for i in draws]
    for key, vals, full in (("accuracy", acc, (y == pred).mean()),
                            ("f1_weighted", f1, f1_score(y, pred, average="weighted"))):
        lo, hi = _percentile(vals, 0.9)
        assert got[key].low == pytest.approx(lo, abs=1e-12) and got[key].high == pytest.approx(hi, abs=1e-12)
        assert got[key].value == pytest.approx(full, abs=1e-12)
        assert got[key].confidence == 0.9 and got[key].method == "bootstrap"
    np.testing.assert_array_equal(bootstrap_indices(60, 300, 7), draws)


def test_multilabel_bootstrap_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((40, 3)) < 0.4).astype(int)
    pred = np.where(rng.random((40, 3)) < 0.8, y, 1 - y)
    got = metric_intervals(y, pred, LABELS, True, metrics=("label_accuracy", "f1_weighted"), resamples=200, seed=2)
    draws = np.random.default_rng(2).integers(0, 40, size=(200, 40))
    hamming = [float((y[i] == pred[i]).mean()) for i in draws]  # 1 - Hamming loss
    f1 = [f1_score(y[i], pred[i], average="weighted", zero_division=0) for i in draws]
    assert (got["label_accuracy"].low, got["label_accuracy"].high) == pytest.approx(_percentile(hamming, 0.95))
    assert (got["f1_weighted"].low, got["f1_weighted"].high) == pytest.approx(_percentile(f1, 0.95))


def test_coverage_sanity() -> None:
    y, pred = _noisy(200, seed=4)
    iv = metric_intervals(y, pred, LABELS, False, resamples=500, seed=0)
    for k, i in iv.items():
        assert i.low < i.value < i.high and i.contains(i.value), k
    # a perfect classifier: every resample scores 1
    perfect = metric_intervals(y, y, LABELS, False, resamples=200, seed=0)
    assert all((i.value, i.low, i.high) == (1.0, 1.0, 1.0) for i in perfect.values())
    # width shrinks with n (same accuracy level, 16x the clips → about a quarter of the width)
    widths = []
    for n in (50, 800):
        yy, pp = _noisy(n, seed=5)
        a = metric_intervals(yy, pp, LABELS, False, metrics=("accuracy",), resamples=500, seed=1)["accuracy"]
        widths.append(a.high - a.low)
    assert widths[1] < 0.5 * widths[0]
    # deterministic per seed, different across seeds
    again = metric_intervals(y, pred, LABELS, False, resamples=500, seed=0)
    assert again == iv
    assert metric_intervals(y, pred, LABELS, False, resamples=500, seed=1)["accuracy"] != iv["accuracy"]


def test_no_resamples_or_no_rows_gives_the_point() -> None:
    y, pred = _noisy(30, seed=6)
    iv = metric_intervals(y, pred, LABELS, False, resamples=0)["accuracy"]
    assert iv.low == iv.high == iv.value and iv.method == "none" and str(iv) == f"{iv.value:.3f}"
    empty = metric_intervals(np.zeros(0, int), np.zeros(0, int), LABELS, False)["f1_weighted"]
    assert (empty.value, empty.low, empty.high) == (0.0, 0.0, 0.0)


def test_seeds_bootstrap_matches_plain_two_level_bootstrap() -> None:
    y, _ = _noisy(50, seed=8)
    preds = [_noisy(50, seed=8, correct=c)[1] for c in (0.5, 0.7, 0.9)]
    got = seeds_intervals(y, preds, LABELS, False, metrics=("accuracy",), resamples=300, seed=11)["accuracy"]
    rng = np.random.default_rng(11)
    vals = []
    for _ in range(300):
        idx = rng.integers(0, 50, 50)
        seeds = rng.integers(0, 3, 3)
        vals.append(np.mean([(y[idx] == preds[s][idx]).mean() for s in seeds]))
    assert (got.low, got.high) == pytest.approx(_percentile(vals, 0.95), abs=1e-12)
    assert got.value == pytest.approx(np.mean([(y == p).mean() for p in preds]))
    assert got.method == "seeds×bootstrap" and got.low < got.value < got.high
    # seed spread widens the interval beyond one seed's test-clip bootstrap
    one = seeds_intervals(y, preds[1:2], LABELS, False, metrics=("accuracy",), resamples=300, seed=11)["accuracy"]
    assert got.high - got.low > one.high - one.low


def test_format() -> None:
    assert format_interval(0.7523, 0.6512, 0.8449) == "0.752 [0.65, 0.84]"
    assert str(Interval(1.0, 1.0, 1.0)) == "1.000 [1.00, 1.00]"
    assert Interval(0.5, 0.4, 0.6).as_dict() == {"value": 0.5, "low": 0.4, "high": 0.6, "confidence": 0.95,
                                                 "method": "bootstrap"}


def test_split_intervals_on_the_validation_split() -> None:
    from conclugen.config import ProbeConfig
    from conclugen.evaluation.intervals import split_intervals
    from conclugen.evaluation.probe import fit_probe
    from conclugen.evaluation.probe_data import ProbeData, encode_targets

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    X = (y[:, None] + rng.normal(0, 0.8, (120, 4))).astype(np.float32)
    lab = [["a", "b"][i] for i in y]
    tr, va = ProbeData(X[:80], [[x] for x in lab[:80]]), ProbeData(X[80:], [[x] for x in lab[80:]] )
    res = fit_probe(tr, va, ProbeData(X[:0], []), label_space=["a", "b"], multilabel=False,
                    cfg=ProbeConfig(epochs=5), class_weights=[1.0, 1.0])
    got = split_intervals(res, va, metrics=("f1_weighted",), resamples=200, seed=3)["f1_weighted"]
    want = metric_intervals(encode_targets(va.labels, ["a", "b"], False), res.model.predict_indices(va.X),
                            ["a", "b"], False, metrics=("f1_weighted",), resamples=200, seed=3)["f1_weighted"]
    assert got == want and got.value == res.val_metrics["f1_weighted"] and got.low < got.high
