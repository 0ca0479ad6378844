"""Several encoders of one feature store, probed side by side: one report folder per encoder and
a comparison table (see docs/method.md, Linear probe)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from conclugen.config import Config
from conclugen.evaluation.encoders import ConcatEncoder, Encoder, encode_versions
from conclugen.evaluation.probe import ProbeResult, fit_probe
from conclugen.evaluation.probe_data import ProbeData, ProbeError
from conclugen.evaluation.report import report_intervals, write_comparison, write_probe_report
from conclugen.features.store import aug_column

NON_FEATURE_KEYS = frozenset({"clip_id", "split", "labels", "corpus", "intensities", "gaps"})
SPLITS = ("train", "val", "test")


def feature_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The per-modality [N, dim] arrays of a ``load_arrays`` dict."""
    return {
        k: v
        for k, v in arrays.items()
        if k not in NON_FEATURE_KEYS and isinstance(v, np.ndarray) and v.ndim == 2
    }


def _split_rows(split: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of each split in ``arrays``."""
    rows = {s: np.flatnonzero(split == s) for s in SPLITS}
    if rows["train"].size == 0:
        raise ProbeError("the features hold no train rows")
    return rows


def encoded_splits(name: str, encode: Encoder, arrays: Mapping[str, Any]) -> dict[str, ProbeData]:
    """The train/val/test :class:`ProbeData` of one encoder over a ``load_arrays`` dict. When the
    dict carries ``<modality>_aug`` views (``load_arrays(..., augmented=True)``), the train split
    also holds every version's representations (``ProbeData.versions``), so the probe trains on
    augmented versions; val and test are plain."""
    labels = [list(x) if x is not None else [] for x in arrays["labels"]]
    ids = [str(x) for x in arrays["clip_id"]]
    rows = _split_rows(np.asarray(arrays["split"], dtype=object))
    feats = feature_arrays(arrays)
    out: dict[str, ProbeData] = {}
    for s in SPLITS:
        part = {k: v[rows[s]] for k, v in feats.items()}
        X = np.asarray(encode(part), dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(rows[s]):
            raise ProbeError(f"encoder {name!r} returned shape {X.shape} for {s}, expected [{len(rows[s])}, F]")
        views = {m: arrays[aug_column(m)][rows[s]] for m in feats if aug_column(m) in arrays} if s == "train" else {}
        versions = encode_versions(encode, part, views) if views and isinstance(encode, ConcatEncoder) else None
        out[s] = ProbeData(X, [labels[i] for i in rows[s]], [ids[i] for i in rows[s]], versions)
    return out


def evaluate_representations(
    encoders: Mapping[str, Encoder],
    arrays: Mapping[str, Any],
    *,
    label_space: list[str],
    multilabel: bool,
    corpus: str,
    cfg: Config,
    out_dir: str | Path,
    class_weights: list[float] | None = None,
    map_method: str = "auto",
) -> dict[str, ProbeResult]:
    """Probe each encoder's representations of the train/val/test rows of ``arrays`` under
    ``cfg.probe.protocol``.

    ``encoders`` maps a name ("conclugen", "raw_features", "random_heads", …) to a function of
    the per-modality arrays {modality: [n, dim]} → [n, F]. ``arrays`` with ``<modality>_aug``
    views: the probe trains on augmented versions (:func:`encoded_splits`). ``class_weights``
    None: the protocol's weights for ``corpus`` (:mod:`conclugen.evaluation.class_weights`).
    Writes ``out_dir/<name>/`` (report.md and report.json with the test intervals of
    ``cfg.probe``'s bootstrap settings, also kept in ``ProbeResult.test_intervals``; report.json, predictions.csv, confusion.png,
    map2d.png, probe.npz) and ``out_dir/comparison.{md,csv}``; returns the results by name, in
    the given order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_views = any(aug_column(m) in arrays for m in feature_arrays(arrays))
    results: dict[str, ProbeResult] = {}
    for name, encode in encoders.items():
        data = encoded_splits(name, encode, arrays)
        res = fit_probe(data["train"], data["val"], data["test"], label_space=label_space,
                        multilabel=multilabel, cfg=cfg.probe, class_weights=class_weights, corpus=corpus)
        res.encoder = name
        if has_views and data["train"].versions is None:
            res.notes.append(f"encoder {name!r} has no per-modality parts: trained on plain features only")
        P = cfg.probe
        res.test_intervals = report_intervals(res, bootstrap=P.bootstrap, confidence=P.confidence, seed=P.seed)
        enc_dir = out / name
        write_probe_report(res, enc_dir, X_test=data["test"].X, map_method=map_method, seed=P.seed,
                           intervals=res.test_intervals)
        res.model.save(enc_dir / "probe.npz")
        results[name] = res
    write_comparison(results, out, intervals={n: r.test_intervals for n, r in results.items()})
    return results
