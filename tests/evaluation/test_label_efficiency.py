"""Label efficiency: stratified fractions (≥1 per class, the requested share, seeded) and the
files it writes (per-seed CSV, table, JSON, plot) on a tiny feature store."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conclugen.config import load_config
from conclugen.evaluation.label_efficiency import (
    check_fractions,
    label_efficiency,
    mlflow_metrics,
    stratified_fraction,
)
from conclugen.evaluation.probe_data import ProbeError
from tests.helpers.configs import TINY as BASE_TINY
from tests.helpers.features import write_feature_store

TINY = [*BASE_TINY, "probe.epochs=15", "probe.batch_size=64", "probe.bootstrap=100"]


def _labels(counts: dict[str, int]) -> list[list[str]]:
    out = [[k] for k, n in counts.items() for _ in range(n)]
    np.random.default_rng(0).shuffle(out)
    return out


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.25, 0.5])
def test_stratified_fraction_keeps_every_class_and_the_share(fraction: float) -> None:
    counts = {"a": 400, "b": 120, "c": 30, "d": 3}
    labels = _labels(counts)
    n = len(labels)
    idx = stratified_fraction(labels, list(counts), fraction, seed=1)
    got = Counter(labels[i][0] for i in idx)
    assert len(set(idx.tolist())) == len(idx) and np.all(np.diff(idx) > 0)
    for k, c in counts.items():
        assert got[k] >= 1, k
        # each class near its share: off by at most one clip, or lifted to the floor of 1
        assert abs(got[k] - fraction * c) <= 1 or (got[k] == 1 and fraction * c < 1), (k, got[k])
    floors = sum(1 for c in counts.values() if fraction * c < 1)
    assert round(fraction * n) <= len(idx) <= round(fraction * n) + floors


def test_stratified_fraction_seeded_and_whole() -> None:
    labels = _labels({"a": 50, "b": 50})
    a = stratified_fraction(labels, ["a", "b"], 0.2, seed=3)
    assert np.array_equal(a, stratified_fraction(labels, ["a", "b"], 0.2, seed=3))
    assert not np.array_equal(a, stratified_fraction(labels, ["a", "b"], 0.2, seed=4))
    assert np.array_equal(stratified_fraction(labels, ["a", "b"], 1.0, seed=3), np.arange(100))
    with pytest.raises(ProbeError, match="fractions"):
        check_fractions([0.0, 0.5])
    assert check_fractions([1, 0.1, 0.1]) == [0.1, 1.0]


def test_stratified_fraction_multilabel_keeps_every_label() -> None:
    rng = np.random.default_rng(5)
    space = ["happy", "sad", "fear", "anger"]
    # "sad" (3 clips) is never a clip's rarest label: it always comes with fear or anger, which
    # are as rare and sort first, so it has no stratum of its own and needs the explicit floor.
    labels = [["happy"] if rng.random() < 0.7 else [] for _ in range(300)]
    labels += [["sad", "fear"], ["fear"], ["fear"], ["sad", "anger"], ["sad", "anger"], ["anger"]]
    for seed in range(20):
        idx = stratified_fraction(labels, space, 0.02, seed=seed, multilabel=True)
        chosen = [labels[i] for i in idx]
        for lab in space:
            assert any(lab in row for row in chosen), (seed, lab)
        assert any(row == [] for row in chosen)  # the no-label stratum is sampled too
        assert round(0.02 * len(labels)) <= len(idx) <= round(0.02 * len(labels)) + 3


def test_label_efficiency_writes_csv_table_plot(tmp_path: Path) -> None:
    from conclugen.evaluation.compare import evaluate_representations
    from conclugen.evaluation.encoders import raw_features_encoder
    from conclugen.features.store import load_arrays

    cfg = load_config(None, TINY)
    feats = str(tmp_path / "feats")
    meta = write_feature_store(feats, splits={"train": 80, "val": 24, "test": 24})
    arrays = load_arrays(feats, ["video", "audio"], splits=("train", "val", "test"))
    proj = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)
    encoders = {"raw_features": raw_features_encoder(["video", "audio"]),
                "video_proj": lambda f: f["video"] @ proj}
    fractions, seeds = (0.05, 0.25, 1.0), 2
    out = tmp_path / "le"
    res = label_efficiency(encoders, arrays, label_space=list(meta.label_space), multilabel=False,
                           corpus=meta.corpus, cfg=cfg, out_dir=out, fractions=fractions, seeds=seeds)

    rows = list(csv.DictReader((out / "label_efficiency.csv").open()))
    assert len(rows) == len(encoders) * len(fractions) * seeds
    assert {(r["encoder"], float(r["fraction"]), int(r["seed"])) for r in rows} == {
        (e, f, cfg.probe.seed + k) for e in encoders for f in fractions for k in range(seeds)}
    n_by_f = {f: {int(r["n_train"]) for r in rows if float(r["fraction"]) == f} for f in fractions}
    assert n_by_f[1.0] == {80} and max(n_by_f[0.05]) < 10 and all(n >= 4 for n in n_by_f[0.05])  # ≥1 per class

    table = (out / "label_efficiency.md").read_text()
    assert table == res.table_markdown
    for enc in encoders:
        lines = [ln for ln in table.splitlines() if ln.startswith(f"| {enc} |")]
        assert len(lines) == 2  # F1 and accuracy tables
        assert lines[0].count("[") == len(fractions)
    assert "| encoder | 5% (n=" in table and "100% (n=80)" in table
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "label_efficiency.json").read_text())
    assert set(summary["summary"]) == set(encoders) and set(summary["summary"]["raw_features"]) == {"0.05", "0.25", "1"}

    # the mean over seeds is the mean of the per-seed CSV figures; the interval holds it
    for enc in encoders:
        for f in fractions:
            iv = res.interval(enc, f)
            per = [float(r["f1_weighted"]) for r in rows if r["encoder"] == enc and float(r["fraction"]) == f]
            assert iv.value == pytest.approx(np.mean(per), abs=1e-6) and iv.low <= iv.value <= iv.high
    # all labels, first seed = the evaluate command's probe of that encoder
    full = evaluate_representations({"raw_features": encoders["raw_features"]}, arrays,
                                    label_space=list(meta.label_space), multilabel=False, corpus=meta.corpus,
                                    cfg=cfg, out_dir=tmp_path / "cmp", map_method="pca")["raw_features"]
    first = next(r for r in rows if r["encoder"] == "raw_features" and float(r["fraction"]) == 1.0
                 and int(r["seed"]) == cfg.probe.seed)
    assert float(first["f1_weighted"]) == pytest.approx(full.test_metrics["f1_weighted"], abs=1e-6)
    m = mlflow_metrics(res)
    key = "label_efficiency.raw_features.25pct.f1_weighted"
    assert m[key] == pytest.approx(res.interval("raw_features", 0.25).value)
    assert m[key + "_low"] <= m[key] <= m[key + "_high"]
