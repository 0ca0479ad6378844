"""The demo's whole pipeline (synth → extract → pretrain → evaluate) at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conclugen.config import load_config
from conclugen.demo import DEMO_BASE, run_demo
from tests.helpers.configs import TINY_MODEL

# The demo's 28 clips leave fewer train rows than TINY_TRAIN's batch: its own small batch instead.
TINY = [*TINY_MODEL, "losses.queue_batches=2", "train.epochs=2", "train.batch_size=8", "train.workers=1",
        "probe.epochs=30"]


@pytest.mark.slow
def test_demo_pipeline_tiny(ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'demo'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"],
                      base=DEMO_BASE)
    run_demo(cfg, clips=28, seed=5)
    out = capsys.readouterr().out
    work = tmp_path / "demo"
    # every step ran and left its product where the demo says
    assert (work / "corpus" / "train_sent_emo.csv").is_file()
    meta = json.loads((work / "features" / "meta.json").read_text())
    assert meta["corpus"] == "synthetic" and set(meta["dims"]) == {"video", "audio", "text"}
    assert list((work / "run").glob("checkpoint_*/checkpoint.pt"))
    comparison = (work / "eval" / "comparison.csv").read_text()
    for encoder in ("conclugen", "raw_features", "random_heads"):
        assert encoder in comparison and f"| {encoder} |" in out
    assert "28 of 28 manifest clips" in out and "Demo finished" in out
    assert "conclugen ui" in out
