"""The demo's whole pipeline (synth with a pool → extract → pretrain → label-efficiency evaluate)
at a tiny size, and its one-line reading of the label-efficiency table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from conclugen.config import load_config
from conclugen.demo import DEMO_BASE, reading, run_demo
from conclugen.features.store import load_arrays
from tests.helpers.configs import TINY_MODEL

# The demo's 28 labelled clips leave fewer train rows than TINY_TRAIN's batch: its own small batch.
TINY = [*TINY_MODEL, "losses.queue_batches=2", "train.epochs=2", "train.batch_size=8", "train.workers=1",
        "probe.epochs=30", "probe.bootstrap=50"]


@pytest.mark.slow
def test_demo_pipeline_tiny(ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'demo'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"],
                      base=DEMO_BASE)
    run_demo(cfg, clips=28, seed=5, unlabeled=7, fractions=(0.5, 1.0), seeds=2)
    out = capsys.readouterr().out
    work = tmp_path / "demo"
    # every step ran and left its product where the demo says
    assert (work / "corpus" / "train_sent_emo.csv").is_file()
    assert (work / "corpus" / "unlabeled_sent_emo.csv").is_file()
    meta = json.loads((work / "features" / "meta.json").read_text())
    assert meta["corpus"] == "synthetic" and set(meta["dims"]) == {"video", "audio", "text"}
    splits = list(load_arrays(str(work / "features"), ["text"])["split"])
    assert splits.count("unlabeled") == 7 and len(splits) == 35  # the pool is in the one store
    assert list((work / "run").glob("checkpoint_*/checkpoint.pt"))
    comparison = (work / "eval" / "comparison.csv").read_text()
    for encoder in ("conclugen", "raw_features", "random_heads"):
        assert encoder in comparison and f"| {encoder} |" in out
    rows = list(csv.DictReader((work / "eval" / "label_efficiency" / "label_efficiency.csv").open()))
    assert len(rows) == 3 * 2 * 2  # encoders × fractions × seeds
    assert "Label efficiency" in out and "conclugen vs raw_features" in out
    assert "35 of 35 manifest clips" in out and "Demo finished" in out
    assert "conclugen ui" in out


def _iv(value: float, low: float, high: float) -> SimpleNamespace:
    return SimpleNamespace(value=value, low=low, high=high)


def test_reading_calls_only_disjoint_intervals() -> None:
    table = {("conclugen", 0.1): _iv(0.6, 0.55, 0.65), ("raw_features", 0.1): _iv(0.4, 0.35, 0.5),
             ("conclugen", 1.0): _iv(0.7, 0.6, 0.8), ("raw_features", 1.0): _iv(0.75, 0.7, 0.8),
             ("conclugen", 0.5): _iv(0.3, 0.2, 0.34), ("raw_features", 0.5): _iv(0.5, 0.35, 0.6)}
    le = SimpleNamespace(fractions=[0.1, 0.5, 1.0], interval=lambda enc, f: table[(enc, f)])
    line = reading(le)  # type: ignore[arg-type]
    assert "10%: 0.600 vs 0.400 (above)" in line
    assert "50%: 0.300 vs 0.500 (below)" in line
    assert "100%: 0.700 vs 0.750 (intervals overlap)" in line
