"""95% intervals on probe metrics (see docs/method.md, Linear probe: intervals).

- Over test clips: a seeded **percentile bootstrap**. Each resample draws n test clips with
  replacement, the metric is recomputed on it with :func:`conclugen.evaluation.metrics.compute_metrics`
  (so the interval is of exactly the reported figure), and the interval is the
  ``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles of the resampled values.
- Over seeds and test clips (a command that repeats the probe over seeds, e.g. label efficiency):
  a two-level bootstrap *(ours)*. Each resample draws the seeds with replacement **and** the test
  clips with replacement, and takes the mean over the drawn seeds of the metric on the drawn clips;
  the point estimate is the mean over seeds on all clips. With few seeds a t-interval over seeds
  alone would ignore the test-set noise, which dominates on small test splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from conclugen.evaluation.metrics import HEADLINE, compute_metrics
from conclugen.evaluation.probe_data import encode_targets

if TYPE_CHECKING:
    from conclugen.evaluation.probe import ProbeResult
    from conclugen.evaluation.probe_data import ProbeData


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (``low == high == value`` with method "none")."""

    value: float
    low: float
    high: float
    confidence: float = 0.95
    method: str = "bootstrap"  # "bootstrap" (test clips) | "seeds×bootstrap" | "none"

    def __str__(self) -> str:
        return format_interval(self.value, self.low, self.high) if self.method != "none" else f"{self.value:.3f}"

    def contains(self, x: float) -> bool:
        return self.low - 1e-12 <= x <= self.high + 1e-12

    def as_dict(self) -> dict[str, float | str]:
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": self.confidence,
                "method": self.method}


def format_interval(value: float, low: float, high: float) -> str:
    """``0.752 [0.65, 0.84]``."""
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] row indices drawn with replacement (numpy's PCG64, seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), np.int64)


def _quantiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _point(value: float, confidence: float) -> Interval:
    return Interval(value, value, value, confidence, "none")


def metric_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    label_space: Sequence[str],
    multilabel: bool,
    *,
    metrics: Sequence[str] = HEADLINE,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile-bootstrap intervals over test clips of each metric in ``metrics``.

    ``y_true`` / ``y_pred``: class indices [N] or indicator matrices [N, C], as
    :func:`~conclugen.evaluation.metrics.compute_metrics` takes them. ``resamples = 0`` or no
    rows: the point estimate alone (method "none")."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    full = compute_metrics(y_true, y_pred, label_space, multilabel)
    n = len(y_true)
    if resamples <= 0 or n == 0:
        return {k: _point(float(full[k]), confidence) for k in metrics}
    draws = np.empty((resamples, len(metrics)))
    for b, idx in enumerate(bootstrap_indices(n, resamples, seed)):
        m = compute_metrics(y_true[idx], y_pred[idx], label_space, multilabel)
        draws[b] = [m[k] for k in metrics]
    return {k: Interval(float(full[k]), *_quantiles(draws[:, j], confidence), confidence)
            for j, k in enumerate(metrics)}


def seeds_intervals(
    y_true: np.ndarray,
    y_preds: Sequence[np.ndarray],
    label_space: Sequence[str],
    multilabel: bool,
    *,
    metrics: Sequence[str] = HEADLINE,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Two-level bootstrap (seeds × test clips) of the mean over seeds; ``y_preds`` holds one
    prediction array per seed on the same test clips (see the module docstring)."""
    y_true = np.asarray(y_true)
    preds = [np.asarray(p) for p in y_preds]
    per_seed = np.asarray([[compute_metrics(y_true, p, label_space, multilabel)[k] for k in metrics] for p in preds])
    mean = per_seed.mean(0)
    n, s = len(y_true), len(preds)
    if resamples <= 0 or n == 0 or s == 0:
        return {k: _point(float(mean[j]), confidence) for j, k in enumerate(metrics)}
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, len(metrics)))
    for b in range(resamples):
        idx = rng.integers(0, n, size=n)
        picked = np.bincount(rng.integers(0, s, size=s), minlength=s)  # seeds drawn with replacement
        vals = np.zeros(len(metrics))
        for k in np.flatnonzero(picked):
            m = compute_metrics(y_true[idx], preds[k][idx], label_space, multilabel)
            vals += picked[k] * np.asarray([m[x] for x in metrics])
        draws[b] = vals / s
    return {k: Interval(float(mean[j]), *_quantiles(draws[:, j], confidence), confidence, "seeds×bootstrap")
            for j, k in enumerate(metrics)}


def probe_targets(res: ProbeResult) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) test targets of a probe result, encoded for ``compute_metrics``."""
    c = len(res.label_space)
    y_true = encode_targets(res.test_labels, res.label_space, res.multilabel)
    if res.test_proba is None or len(res.test_proba) == 0:
        return y_true, (np.zeros((0, c), np.int64) if res.multilabel else np.zeros(0, np.int64))
    return y_true, res.model.decide(res.test_proba)


def probe_intervals(
    res: ProbeResult, *, metrics: Sequence[str] = HEADLINE, resamples: int = 1000, confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Bootstrap intervals over the test clips of a probe result's test metrics."""
    y_true, y_pred = probe_targets(res)
    return metric_intervals(y_true, y_pred, res.label_space, res.multilabel, metrics=metrics,
                            resamples=resamples, confidence=confidence, seed=seed)


def split_intervals(
    res: ProbeResult, data: ProbeData, *, metrics: Sequence[str] = HEADLINE, resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> dict[str, Interval]:
    """Bootstrap intervals of the fitted probe's metrics on another split (e.g. the validation
    split a search scores trials on); single-label rows without a label are left out, as the
    probe leaves them out."""
    keep = [i for i, row in enumerate(data.labels) if row or res.multilabel]
    sub = data.subset(np.asarray(keep, dtype=np.int64)) if len(keep) < len(data) else data
    y_true = encode_targets(sub.labels, res.label_space, res.multilabel)
    return metric_intervals(y_true, res.model.predict_indices(sub.X), res.label_space, res.multilabel,
                            metrics=metrics, resamples=resamples, confidence=confidence, seed=seed)
