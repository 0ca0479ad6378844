"""The run folder: checkpoints and the best one, worker records and the workers' error file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from conclugen import storage
from conclugen.config import load_config
from conclugen.training.run_folder import (
    CHECKPOINT_FILE,
    best_checkpoint,
    checkpoint_uri,
    clear_worker_error,
    find_checkpoints,
    load_checkpoint,
    ray_storage,
    read_worker_error,
    save_checkpoint_dir,
    worker_records,
    write_worker_error,
    write_worker_record,
)
from conclugen.training.step import Stepper
from tests.helpers.configs import TINY


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", *extra])


def test_checkpoint_roundtrip_and_best(tmp_path):
    cfg = tiny_cfg(tmp_path)
    dims = {"video": 24, "audio": 12, "text": 16}
    run = tmp_path / "run"
    states = []
    for epoch, score in enumerate([3.0, 1.0, 2.0]):
        torch.manual_seed(epoch)
        model = Stepper(cfg, dims).model
        states.append(model.state_dict())
        save_checkpoint_dir(run / f"checkpoint_{epoch}", {
            "model": model.state_dict(), "epoch": epoch, "input_dims": dims,
            "config": cfg.public_dict(), "meta": {"corpus": "tiny"}, "metrics": {"loss": score},
        }, {"epoch": epoch, "score": score})
    assert [c["epoch"] for c in find_checkpoints(str(run))] == [0, 1, 2]
    assert best_checkpoint(str(run)).endswith("checkpoint_1")
    model, info = load_checkpoint(str(run))  # a RUN_URI → its best checkpoint
    assert info["epoch"] == 1 and info["input_dims"] == dims and info["meta"] == {"corpus": "tiny"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[1][k]), k
    model2, info2 = load_checkpoint(str(run / "checkpoint_2" / CHECKPOINT_FILE))
    assert info2["epoch"] == 2 and not model2.training


def test_worker_records_one_object_per_rank_epoch_and_process(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    assert worker_records(run) == []
    run_fs = storage.resolve(run)
    for epoch in (0, 1):
        for rank in (1, 0):
            write_worker_record(run_fs, rank, epoch, start_epoch=0)
    # The same epoch again from another process (a restarted worker): both records stay.
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    write_worker_record(run_fs, 1, 1, start_epoch=1)
    recs = worker_records(run)
    assert [(r["rank"], r["epoch"], r["start_epoch"]) for r in recs] == [
        (0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)]
    assert recs[-1]["pid"] == 4242 and all(r["host"] for r in recs)
    # Records are not checkpoints.
    assert find_checkpoints(run) == []


def test_worker_error_roundtrip(tmp_path):
    run = str(tmp_path / "run")
    assert read_worker_error(run) is None
    write_worker_error(storage.resolve(run), "non-finite loss at epoch 2, step 3: total=nan", 2, 3)
    err = read_worker_error(run)
    assert err == {"type": "nonfinite", "message": "non-finite loss at epoch 2, step 3: total=nan",
                   "epoch": 2, "step": 3}
    clear_worker_error(run)
    assert read_worker_error(run) is None
    clear_worker_error(run)  # nothing there: no error


def test_ray_storage_and_checkpoint_uri(tmp_path):
    fs, parent, name = ray_storage(str(tmp_path / "runs" / "a") + "/")
    assert fs is None and (parent, name) == (str(tmp_path / "runs"), "a")
    assert checkpoint_uri("s3://bucket/runs/a", "bucket/runs/a/checkpoint_1") == "s3://bucket/runs/a/checkpoint_1"
    assert checkpoint_uri(str(tmp_path), "/x/checkpoint_1") == "/x/checkpoint_1"


def test_ray_storage_on_s3_gives_ray_train_a_retrying_filesystem(monkeypatch):
    import pickle

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never contacted here
    fs, parent, name = ray_storage("s3://bucket/runs/a")
    assert (parent, name) == ("bucket/runs", "a") and fs.type_name == "py::retrying-s3"
    # Ray Train pickles it to its controller and workers and compares checkpoints' filesystems with it.
    assert pickle.loads(pickle.dumps(fs)) == fs
