"""Several encoders of one feature store, probed side by side: one report folder per encoder and
a comparison table (see docs/method.md, Linear probe)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from conclugen.config import Config
from conclugen.evaluation.class_weights import train_class_weights
from conclugen.evaluation.encoders import Encoder
from conclugen.evaluation.probe import ProbeResult, fit_probe
from conclugen.evaluation.probe_data import ProbeData, ProbeError
from conclugen.evaluation.report import write_comparison, write_probe_report

NON_FEATURE_KEYS = frozenset({"clip_id", "split", "labels", "corpus", "intensities", "gaps"})
SPLITS = ("train", "val", "test")


def feature_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The per-modality [N, dim] arrays of a ``load_arrays`` dict."""
    return {
        k: v
        for k, v in arrays.items()
        if k not in NON_FEATURE_KEYS and isinstance(v, np.ndarray) and v.ndim == 2
    }


def _split_rows(split: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(rows of each split in ``arrays``, positions of each split in the train+val+test stack)."""
    rows = {s: np.flatnonzero(split == s) for s in SPLITS}
    if rows["train"].size == 0:
        raise ProbeError("the features hold no train rows")
    pos: dict[str, np.ndarray] = {}
    start = 0
    for s in SPLITS:
        pos[s] = np.arange(start, start + len(rows[s]))
        start += len(rows[s])
    return rows, pos


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
    """Probe each encoder's representations of the train/val/test rows of ``arrays``.

    ``encoders`` maps a name ("conclugen", "raw_features", "random_heads", …) to a function of
    the per-modality arrays {modality: [n, dim]} → [n, F]. Writes ``out_dir/<name>/`` (report.md,
    report.json, predictions.csv, confusion.png, map2d.png, probe.npz) and
    ``out_dir/comparison.{md,csv}``; returns the results by name, in the given order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [list(x) if x is not None else [] for x in arrays["labels"]]
    ids = [str(x) for x in arrays["clip_id"]]
    rows, pos = _split_rows(np.asarray(arrays["split"], dtype=object))
    used = np.concatenate([rows[s] for s in SPLITS])
    feats = {k: v[used] for k, v in feature_arrays(arrays).items()}
    if class_weights is None:
        class_weights = train_class_weights(corpus, label_space, [labels[i] for i in rows["train"]], multilabel)

    results: dict[str, ProbeResult] = {}
    for name, encode in encoders.items():
        X = np.asarray(encode(feats), dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(used):
            raise ProbeError(f"encoder {name!r} returned shape {X.shape}, expected [{len(used)}, F]")
        data = {s: ProbeData(X[pos[s]], [labels[i] for i in rows[s]], [ids[i] for i in rows[s]]) for s in SPLITS}
        res = fit_probe(data["train"], data["val"], data["test"], label_space=label_space,
                        multilabel=multilabel, cfg=cfg.probe, class_weights=class_weights)
        res.encoder = name
        enc_dir = out / name
        write_probe_report(res, enc_dir, X_test=data["test"].X, map_method=map_method, seed=cfg.probe.seed)
        res.model.save(enc_dir / "probe.npz")
        results[name] = res
    write_comparison(results, out)
    return results
