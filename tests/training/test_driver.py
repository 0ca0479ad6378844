"""The pretraining driver: feature checks before any work (also through the CLI), the NaN guard
(in-process), and end-to-end Ray Train runs (2 CPU workers): MLflow server read-back, resume, a
killed worker, RUN_URI on S3."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from conclugen import storage
from conclugen.config import load_config
from conclugen.features import store as F
from conclugen.features.store import FeatureStoreError
from conclugen.training.driver import check_features, run_pretrain
from conclugen.training.errors import NonFiniteLossError, PretrainError
from conclugen.training.run_folder import find_checkpoints, load_checkpoint, worker_records
from conclugen.training.schedule import lr_for
from tests.helpers.configs import TINY
from tests.helpers.features import write_feature_store


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", *extra])


# ----------------------------------------------------------------------------- checks (no Ray)


def test_feature_checks_before_any_work(tmp_path):
    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 40, "test": 8}, dims={"video": 8, "audio": 6})
    cfg = tiny_cfg(tmp_path)  # wants video, audio, text
    with pytest.raises(FeatureStoreError, match="no text vectors"):
        check_features(root, cfg)
    ok = tiny_cfg(tmp_path, "model.modalities=[video, audio]")
    meta, counts = check_features(root, ok)
    assert counts == {"train": 40, "test": 8} and meta.dims == {"video": 8, "audio": 6}
    with pytest.raises(PretrainError, match="fewer than one global batch"):
        check_features(root, tiny_cfg(tmp_path, "model.modalities=[video, audio]", "train.batch_size=64"))
    with pytest.raises(FeatureStoreError, match="meta.json missing"):
        check_features(str(tmp_path / "nothing"), ok)
    only_test = str(tmp_path / "only_test")
    write_feature_store(only_test, splits={"test": 40}, dims={"video": 8, "audio": 6})
    with pytest.raises(PretrainError, match="no rows in splits train/unlabeled"):
        check_features(only_test, ok)
    tiny_val = str(tmp_path / "tiny_val")
    write_feature_store(tiny_val, splits={"train": 40, "val": 3}, dims={"video": 8, "audio": 6})
    with pytest.raises(PretrainError, match="val split has 3 rows"):
        check_features(tiny_val, tiny_cfg(tmp_path, "model.modalities=[video, audio]", "train.workers=2"))


SIMCLR_ONLY = ["model.modalities=[video]", "losses.contrastive=0", "losses.clustering=0",
               "losses.reconstruction=0", "losses.simclr=1"]


def test_simclr_needs_video_and_augmented_versions(tmp_path):
    plain = str(tmp_path / "plain")
    write_feature_store(plain, splits={"train": 40}, dims={"video": 8, "audio": 6})
    with pytest.raises(PretrainError, match=r"extract\.augmentations=N"):
        check_features(plain, tiny_cfg(tmp_path, *SIMCLR_ONLY))
    aug = str(tmp_path / "aug")
    write_feature_store(aug, splits={"train": 40}, dims={"video": 8, "audio": 6}, augmentations=1)
    meta, _ = check_features(aug, tiny_cfg(tmp_path, *SIMCLR_ONLY))
    assert meta.augmentations == 1
    with pytest.raises(PretrainError, match=r"model\.modalities=\['audio'\] has no video"):
        check_features(aug, tiny_cfg(tmp_path, "model.modalities=[audio]", *SIMCLR_ONLY[1:]))


def test_second_pretrain_into_a_held_run_folder_is_refused(tmp_path):
    from conclugen.locks import OutputLockedError, output_lock

    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 40}, dims={"video": 8, "audio": 6})
    cfg = tiny_cfg(tmp_path, "model.modalities=[video, audio]")
    run = str(tmp_path / "run")
    with output_lock(run, "pretrain"):  # a run in progress in this folder (this process)
        with pytest.raises(OutputLockedError, match=r"run is in use by pretrain \(pid \d+"):
            run_pretrain(root, run, cfg)  # refused before any cluster work: no Ray here
    assert not find_checkpoints(run)
    assert not os.path.exists(os.path.join(run, ".conclugen.lock"))  # released on exit


# ----------------------------------------------------------------------------- Ray runs


@pytest.mark.ray
def test_nan_guard_names_epoch_step_and_loss(ray_cluster, tmp_path, monkeypatch):
    """In-process (workers=0): a NaN in the features makes the loss NaN at epoch 0, step 0."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 64})
    table = F.read_table(F.features_uri(root))
    video = np.asarray(table.column("video").to_pylist(), dtype=np.float32)
    video[:, 0] = np.nan
    table = table.set_column(table.schema.get_field_index("video"), "video",
                             pa.array(list(video), type=pa.list_(pa.float32())))
    for f in storage.list_files(F.features_uri(root)):
        os.unlink(f)
    F.write_table(F.features_uri(root), table, "part-0.parquet")
    # Standardised inputs: the statistics cannot be computed, so it stops before training.
    std_cfg = tiny_cfg(tmp_path, "train.workers=0", "train.epochs=2")
    with pytest.raises(PretrainError, match=r"video features are not finite in 64 of 64 training rows"):
        run_pretrain(root, str(tmp_path / "run-std"), std_cfg)
    # Raw inputs: the training loop's guard names the step.
    cfg = tiny_cfg(tmp_path, "train.workers=0", "train.epochs=2", "model.input_norm=none")
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0: .*nan"):
        run_pretrain(root, str(tmp_path / "run"), cfg)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(cfg.tracking_uri())
    runs = c.search_runs([c.get_experiment_by_name("conclugen").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]


@pytest.mark.slow
@pytest.mark.ray
def test_simclr_only_video_pretraining_on_two_workers(ray_cluster, tmp_path, monkeypatch):
    """The video-only SimCLR ablation row on a store with augmented versions, end to end."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 64, "val": 16}, augmentations=3)
    cfg = tiny_cfg(tmp_path, *SIMCLR_ONLY, "train.workers=2", "train.epochs=2")
    r = run_pretrain(root, str(tmp_path / "run"), cfg, log_model=False)
    assert r.epochs_done == 2
    m = r.metrics
    assert {"simclr", "val_simclr"} <= set(m) and not {"contrastive", "clustering", "reconstruction"} & set(m)
    assert math.isfinite(m["simclr"]) and m["loss"] == pytest.approx(m["simclr"])  # the only active loss
    model, info = load_checkpoint(r.best_checkpoint)
    assert info["input_dims"] == {"video": 24} and info["meta"]["augmentations"] == 3
    with torch.no_grad():
        assert model.represent({"video": torch.rand(2, 24)})["video"].shape == (2, 32)


def _rank_records(run_uri: str, rank: int) -> list[dict]:
    """The run folder's worker records of ``rank``, oldest first ([] while unreadable)."""
    try:
        return [r for r in worker_records(run_uri) if r["rank"] == rank]
    except OSError:  # the store hiccuped: ask again at the next poll
        return []


def _checkpoints_registered(run_uri: str) -> int:
    """Checkpoints Ray Train's controller has registered (its snapshot on storage)."""
    uri = storage.join(run_uri, "checkpoint_manager_snapshot.json")
    try:
        snap = json.loads(storage.read_text(uri))
    except (FileNotFoundError, OSError, ValueError):
        return 0
    return len(snap.get("checkpoint_results", []))


@pytest.mark.slow
@pytest.mark.ray
def test_two_workers_mlflow_server_and_resume(ray_cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    root = str(tmp_path / "feats")
    write_feature_store(root)
    run_uri = str(tmp_path / "run")
    cfg = tiny_cfg(tmp_path, "train.workers=2", "train.epochs=2", "train.keep_checkpoints=2",
                   f"tracking.uri={mlflow_server.uri}", "tracking.experiment=test-train")
    r1 = run_pretrain(root, run_uri, cfg)
    assert r1.epochs_done == 2 and not r1.stopped_early
    ckpts = find_checkpoints(run_uri)
    assert [c["epoch"] for c in ckpts] == [0, 1]
    assert r1.last_checkpoint == ckpts[-1]["uri"]
    assert math.isfinite(r1.metrics["val_loss"]) and r1.metrics["samples_per_s"] > 0

    c = MlflowClient(mlflow_server.uri)
    run = c.get_run(r1.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.d"] == "32" and run.data.params["train.workers"] == "2"
    for name in ("loss", "val_loss", "contrastive", "clustering", "reconstruction", "lr",
                 "cluster_occupancy", "cluster_entropy", "samples_per_s"):
        assert [m.step for m in c.get_metric_history(r1.mlflow_run_id, name)] == [0, 1], name
    lrs = [m.value for m in c.get_metric_history(r1.mlflow_run_id, "lr")]
    assert lrs == pytest.approx([1e-4, 1e-3])  # warm-up start factor 0.1, then the peak
    arts = {a.path for a in c.list_artifacts(r1.mlflow_run_id)}
    assert {"config.yaml", "feature_meta.json"} <= arts
    # MLflow 3 keeps logged models beside the run; runs:/<id>/model resolves to it.
    import mlflow.pyfunc

    mlflow.set_tracking_uri(mlflow_server.uri)
    pyfunc = mlflow.pyfunc.load_model(r1.model_uri)
    x = {m: np.random.default_rng(0).random((4, d), dtype=np.float32)
         for m, d in {"video": 24, "audio": 12, "text": 16}.items()}
    best_model, _ = load_checkpoint(r1.best_checkpoint)
    # model.input_norm=standardize: the heads' input statistics are those of the training rows
    from conclugen.features.store import load_arrays

    rows = load_arrays(root, list(best_model.modalities), splits=("train", "unlabeled"))
    for m in best_model.modalities:
        np.testing.assert_allclose(best_model.input_norms[m].mean.numpy(), rows[m].mean(0), rtol=1e-4, atol=1e-5)
        std = rows[m].std(0)
        std[std < 1e-6] = 1.0  # constant dimensions stay centred, unscaled
        np.testing.assert_allclose(best_model.input_norms[m].std.numpy(), std, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ref = best_model.represent({m: torch.from_numpy(v) for m, v in x.items()})
    out = pyfunc.predict(x)
    for m in x:
        np.testing.assert_allclose(out[m], ref[m].numpy(), rtol=1e-5, atol=1e-6)

    # Same command, same RUN_URI, more epochs: continues at epoch 2 in the same MLflow run.
    cfg3 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3})})
    r2 = run_pretrain(root, run_uri, cfg3)
    assert r2.epochs_done == 3 and r2.mlflow_run_id == r1.mlflow_run_id
    assert [m.step for m in c.get_metric_history(r1.mlflow_run_id, "loss")] == [0, 1, 2]
    epochs = [c_["epoch"] for c_ in find_checkpoints(run_uri)]
    assert epochs[-1] == 2 and len(epochs) <= 3  # num_to_keep=2 best + the latest
    _, info = load_checkpoint(r2.last_checkpoint)
    assert info["epoch"] == 2
    # Every rank recorded every epoch it trained in the run folder (the resume added epoch 2).
    recs = worker_records(run_uri)
    assert sorted((rec["rank"], rec["epoch"]) for rec in recs) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [rec["start_epoch"] for rec in recs if rec["epoch"] == 2] == [2, 2]
    # The LR schedule continued too (restored scheduler state, not restarted warm-up).
    lrs = [m.value for m in c.get_metric_history(r1.mlflow_run_id, "lr")]
    assert lrs == pytest.approx([lr_for(e, cfg3.train) for e in range(3)])
    # A different model shape under the same RUN_URI is refused before any work.
    bad = cfg3.model_copy(update={"model": cfg3.model.model_copy(update={"d": 64})})
    with pytest.raises(PretrainError, match="different model"):
        run_pretrain(root, run_uri, bad)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_worker_killed_mid_run_on_s3_finishes_every_epoch(ray_cluster, s3_server, tmp_path, monkeypatch):
    """RUN_URI and features on SeaweedFS; rank 1's process is SIGKILLed at the start of epoch 1;
    Ray Train restarts the worker group from the last checkpoint and the run ends at epoch 3."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bucket = s3_server.bucket_uri("train-test")
    feats = f"{bucket}/feats"
    write_feature_store(feats)
    run_uri = f"{bucket}/runs/killed"
    cfg = tiny_cfg(tmp_path, "train.workers=2", "train.epochs=3", "train.max_failures=2")
    killed: dict = {}

    def killer() -> None:
        # Kill rank 1 after the first step of epoch 1, once the epoch-0 checkpoint is registered
        # (so the restart must resume from it rather than from scratch).
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not killed:
            # One small read per poll until the checkpoint is there; only then list the records
            # (listing and reading them all every poll would load the S3 server and the 2 cores).
            recs = _rank_records(run_uri, 1) if _checkpoints_registered(run_uri) >= 1 else []
            if recs and recs[-1]["epoch"] >= 1:
                os.kill(recs[-1]["pid"], signal.SIGKILL)
                killed.update(recs[-1], t=time.monotonic())
                return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    t0 = time.monotonic()
    # stream=True: batches come from Ray Data every epoch (the path for stores too big to cache),
    # so the restarted worker group must also re-attach to the dataset shards.
    r = run_pretrain(feats, run_uri, cfg, stream=True)
    wall = time.monotonic() - t0
    t.join(timeout=1)
    print(f"\nkill-and-recover run: {wall:.1f} s wall, killed pid {killed.get('pid')} at epoch "
          f"{killed.get('epoch')}, {wall - (killed.get('t', t0) - t0):.1f} s from kill to end")
    assert killed, "the killer never saw rank 1 reach epoch 1"
    assert r.epochs_done == 3
    after = [rec for rec in _rank_records(run_uri, 1) if rec["pid"] != killed["pid"]]
    assert after, "no new rank-1 process after the kill"
    # The restarted worker resumed from a checkpoint (not epoch 0) and did the remaining epochs.
    assert after[0]["start_epoch"] >= 1 and after[0]["epoch"] == after[0]["start_epoch"]
    assert [rec["epoch"] for rec in after][-1] == 2
    ckpts = find_checkpoints(run_uri)
    assert ckpts and ckpts[-1]["epoch"] == 2 and all(c["uri"].startswith("s3://") for c in ckpts)
    model, info = load_checkpoint(r.best_checkpoint)
    assert info["input_dims"] == {"video": 24, "audio": 12, "text": 16}
    with torch.no_grad():
        reps = model.represent({m: torch.rand(3, d) for m, d in info["input_dims"].items()})
    assert all(v.shape == (3, 32) for v in reps.values())


def test_cli_pretrain_fails_fast_on_bad_features(tmp_path):
    """The CLI checks the features before Ray starts: a clear message and exit code 1."""
    from typer.testing import CliRunner

    from conclugen.cli import app

    root = str(tmp_path / "feats")
    write_feature_store(root, splits={"train": 40}, dims={"video": 8, "audio": 6})
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", root, "--out", str(tmp_path / "run"), "--set", "model.d=32"])
    assert res.exit_code == 1 and "no text vectors" in res.output
    res = runner.invoke(app, ["pretrain", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "conclugen extract" in res.output
    res = runner.invoke(app, ["pretrain", root, "--out", str(tmp_path / "run"), "--set",
                              "model.modalities=[video, audio]", "--set", "train.batch_size=64"])
    assert res.exit_code == 1 and "fewer than one global batch" in res.output
    assert not (tmp_path / "run").exists()
