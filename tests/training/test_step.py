"""The step object: one run_epoch path for training and validation, the NaN check, resumable
state, cluster statistics (in-process, no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conclugen.config import load_config
from conclugen.training.errors import NonFiniteLossError
from conclugen.training.step import Stepper, cluster_stats, seed_all
from tests.helpers.configs import TINY

DIMS = {"video": 8, "audio": 6}


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", "model.modalities=[video, audio]", *extra])


def batches(n: int, rows: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{m: torch.rand(rows, d, generator=g) for m, d in DIMS.items()} for _ in range(n)]


def test_cluster_stats():
    s = cluster_stats(torch.tensor([5.0, 5.0, 0.0, 0.0], dtype=torch.float64))
    assert s["cluster_occupancy"] == 0.5
    assert s["cluster_entropy"] == pytest.approx(math.log(2) / math.log(4))
    assert cluster_stats(torch.zeros(4, dtype=torch.float64)) == {}


def test_train_and_validation_epochs(tmp_path):
    seed_all(0)
    st = Stepper(tiny_cfg(tmp_path), DIMS)
    data = batches(3)
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    lr0 = st.lr
    train = st.run_epoch(data, 0, train=True)
    assert list(train) == ["contrastive", "clustering", "reconstruction", "loss"]
    assert all(math.isfinite(v) for v in train.values())
    assert st.scheduler.last_epoch == 1 and st.lr != lr0  # one scheduler step per training epoch
    assert float(st.counts.sum()) == 3 * 16 and st.cluster_stats()["cluster_occupancy"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in st.model.state_dict().items())

    after_train = {k: v.clone() for k, v in st.model.state_dict().items()}
    val = st.run_epoch(data, 0, train=False)
    assert list(val) == list(train) and all(math.isfinite(v) for v in val.values())
    assert not st.module.training and float(st.counts.sum()) == 3 * 16  # validation counts nothing
    for k, v in st.model.state_dict().items():
        assert torch.equal(v, after_train[k]), k
    assert st.scheduler.last_epoch == 1


def test_clustering_off_before_its_start_epoch(tmp_path):
    st = Stepper(tiny_cfg(tmp_path, "losses.kmeans_start_epoch=1"), DIMS)
    assert st.find_unused()
    assert list(st.run_epoch(batches(2), 0, train=True)) == ["contrastive", "reconstruction", "loss"]
    assert "clustering" in st.run_epoch(batches(2), 1, train=False)


def test_non_finite_loss_names_epoch_and_step_before_updating(tmp_path):
    st = Stepper(tiny_cfg(tmp_path), DIMS)
    data = batches(3)
    data[1]["video"][:, 0] = float("nan")
    first: list[int] = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1: .*nan") as e:
        st.run_epoch(data, 2, train=True, after_first_step=lambda: first.append(1))
    assert (e.value.epoch, e.value.step) == (2, 1) and first == [1]
    steps = {int(s["step"]) for s in st.optimizer.state.values()}
    assert steps == {1}  # the optimizer stepped for batch 0 only
    assert st.scheduler.last_epoch == 0


def test_state_dict_resumes_model_optimizer_and_schedule(tmp_path):
    cfg = tiny_cfg(tmp_path)
    seed_all(0)
    a = Stepper(cfg, DIMS)
    a.run_epoch(batches(2), 0, train=True)
    seed_all(1)
    b = Stepper(cfg, DIMS)
    b.load_state_dict(a.state_dict())
    assert b.lr == a.lr and b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, a.model.state_dict()[k]), k
    assert set(a.state_dict()) == {"model", "optimizer", "scheduler"}
