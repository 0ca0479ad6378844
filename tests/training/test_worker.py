"""The worker's between-epoch state (resume from a checkpoint payload, early stopping), and the
memory-bank schedule through the whole Ray Train loop."""

from __future__ import annotations

import math

import pytest

from conclugen.config import load_config
from conclugen.training.driver import run_pretrain
from conclugen.training.run_folder import find_checkpoints
from conclugen.training.worker import Progress
from tests.helpers.configs import TINY
from tests.helpers.features import write_feature_store


def test_progress_from_payload_and_early_stopping():
    assert Progress.from_payload(None) == Progress(0, math.inf, 0, False)
    p = Progress.from_payload({"epoch": 4, "best": 1.5, "bad_epochs": 1})
    assert p == Progress(start_epoch=5, best=1.5, bad_epochs=1, stopped_early=False)
    p.update(1.2, patience=2)
    assert (p.best, p.bad_epochs, p.stopped_early) == (1.2, 0, False)
    p.update(1.3, patience=2)
    assert not p.stopped_early
    p.update(1.2, patience=2)  # not below the best: a second bad epoch
    assert (p.best, p.bad_epochs, p.stopped_early) == (1.2, 2, True)


@pytest.mark.slow
@pytest.mark.ray
def test_memory_bank_pretraining_on_two_workers(ray_cluster, tmp_path, monkeypatch):
    """losses.kmeans_schedule=memory_bank end to end on 2 Ray Train workers: epoch 0 without
    clustering, epoch 1 fills the bank first, epoch 2 trains against the bank epoch 1 recorded."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 96, "val": 32})
    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", "train.workers=2", "train.epochs=3",
                             "losses.kmeans_schedule=memory_bank", "losses.kmeans_start_epoch=1"])
    r = run_pretrain(root, str(tmp_path / "run"), cfg, log_model=False)
    assert r.epochs_done == 3
    epochs = [c["metrics"] for c in find_checkpoints(str(tmp_path / "run"))]
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
    assert "clustering" not in epochs[0]
    for m in epochs[1:]:
        assert all(math.isfinite(m[k]) for k in ("loss", "clustering", "val_clustering"))
        assert m["clustering"] > 0.1  # every trained clip was in the bank: a real cross-entropy
        assert m["cluster_occupancy"] > 0
