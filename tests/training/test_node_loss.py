"""Pretraining through faults: a lost node (Ray's multi-node ``Cluster``), an S3 outage during a
checkpoint upload, S3 gone for good; and the pieces that make them work, tested without Ray: an
exact resume at the step level, the retrying filesystem Ray Train writes through, the error the
driver raises when Ray Train gives up.

The Ray scenarios run in a subprocess (tests/helpers/pretrain_scenarios.py: their own cluster or
S3 server) and print one ``RESULT`` JSON line that is asserted on here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from conclugen import storage
from conclugen.config import load_config
from conclugen.training.driver import training_failed
from conclugen.training.retry_fs import RETRY_LOG, RetryingHandler
from conclugen.training.step import Stepper, seed_all
from tests.helpers.configs import TINY
from tests.helpers.features import make_arrays

REPO = Path(__file__).resolve().parents[2]
DIMS = {"video": 24, "audio": 12, "text": 16}


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", *extra])


# ----------------------------------------------------------------------------- resume (no Ray)


def _batches(arr: dict, epoch: int, n: int = 256, batch: int = 32):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(100 + epoch))
    for s in range(n // batch):
        idx = order[s * batch : (s + 1) * batch].numpy()
        yield {m: torch.from_numpy(arr[m][idx]) for m in DIMS}


@pytest.mark.parametrize("schedule", ["every_step", "warm"])
def test_resume_from_a_checkpoint_payload_trains_exactly_as_without_it(tmp_path, schedule):
    """4 epochs in one Stepper == 2 epochs, state_dict → a fresh Stepper (as a restarted worker
    builds it) → 2 more epochs, loss for loss: the k-means call counter (it seeds each refit)
    and warm-start centroids are part of the state."""
    cfg = tiny_cfg(tmp_path, f"losses.kmeans_schedule={schedule}")
    arr = make_arrays(256, DIMS)

    def fresh() -> Stepper:
        seed_all(cfg.train.seed)
        return Stepper(cfg, DIMS)

    a = fresh()
    straight = [a.run_epoch(_batches(arr, e), e, train=True)["loss"] for e in range(4)]
    b = fresh()
    resumed = [b.run_epoch(_batches(arr, e), e, train=True)["loss"] for e in range(2)]
    payload = b.state_dict()
    assert payload["kmeans"]["train"]["step"] == 2 * 8  # one call per training step
    c = fresh()
    c.load_state_dict(payload)
    resumed += [c.run_epoch(_batches(arr, e), e, train=True)["loss"] for e in range(2, 4)]
    assert resumed == straight
    # Without the k-means state (checkpoints of older versions) the resumed run drifts.
    d = fresh()
    d.load_state_dict({k: v for k, v in payload.items() if k != "kmeans"})
    drifted = [d.run_epoch(_batches(arr, e), e, train=True)["loss"] for e in range(2, 4)]
    assert drifted != straight[2:]


# ----------------------------------------------------------------------------- retrying filesystem


class FlakyHandler(RetryingHandler):
    """A local filesystem whose first ``fail`` calls of each kind raise a transient OSError."""

    def __init__(self, fail: int) -> None:
        super().__init__(pafs.LocalFileSystem(), None, 0)
        self.fail, self.seen = fail, {}

    def call(self, what, path, fn):  # the handler's delegate: counts and fails, without retrying
        self.seen[what] = self.seen.get(what, 0) + 1
        if self.seen[what] <= self.fail:
            raise OSError(f"AWS Error NETWORK_CONNECTION during {what}: Could not connect to server")
        return fn()


def test_retrying_filesystem_rides_out_transient_errors_and_names_the_object(tmp_path, capsys):
    flaky = pafs.PyFileSystem(FlakyHandler(fail=2))
    fs = pafs.PyFileSystem(RetryingHandler(flaky, retries=5, seconds=30))
    d = str(tmp_path / "run" / "checkpoint_1")
    fs.create_dir(d, recursive=True)
    with fs.open_output_stream(f"{d}/checkpoint.pt") as f:
        f.write(b"x" * 1000)
    with fs.open_input_stream(f"{d}/checkpoint.pt") as f:
        assert f.read() == b"x" * 1000
    assert [i.base_name for i in fs.get_file_info(pafs.FileSelector(d))] == ["checkpoint.pt"]
    fs.delete_dir(d)
    assert fs.get_file_info(d).type == pafs.FileType.NotFound
    out = capsys.readouterr().out
    assert out.count(RETRY_LOG) >= 8 and f"writing {d}/checkpoint.pt" in out
    # Equal handlers compare equal (Ray Train checks a checkpoint's filesystem against its own).
    assert fs.equals(pafs.PyFileSystem(RetryingHandler(flaky, retries=5, seconds=30)))
    # Past the budget: one error that names the object and says the storage was unreachable.
    dead = pafs.PyFileSystem(RetryingHandler(pafs.PyFileSystem(FlakyHandler(fail=10**6)), retries=2, seconds=30))
    with pytest.raises(OSError, match=rf"writing {tmp_path}/x\.json: storage unreachable"):
        with dead.open_output_stream(str(tmp_path / "x.json")) as f:
            f.write(b"{}")
    assert not (tmp_path / "x.json").exists()


def test_training_failed_names_an_unreachable_run_folder_and_its_endpoint(tmp_path, monkeypatch):
    from ray.train import WorkerGroupError

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # (the session's S3 fixture may have set the latter)
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens on port 9
    cfg = tiny_cfg(tmp_path, "storage.retry_seconds=1", "train.max_failures=1")
    cause = OSError("Traceback ...\nStorageUnavailableError: uploading s3://b/run/checkpoint_1: unreachable")
    err = training_failed("s3://b/run", cfg, WorkerGroupError("rank 0 failed", {0: cause}))
    msg = str(err)
    assert "s3://b/run (S3 endpoint http://127.0.0.1:9) cannot be reached" in msg
    assert "rank 0: StorageUnavailableError: uploading s3://b/run/checkpoint_1: unreachable" in msg
    assert "Re-run the same command" in msg
    # A reachable run folder: the workers' error, and how many restarts were used.
    ok = training_failed(str(tmp_path), cfg, WorkerGroupError("x", {1: ValueError("boom")}))
    assert str(ok) == f"pretraining into {tmp_path} failed (train.max_failures=1 restarts used): rank 1: boom"


# ----------------------------------------------------------------------------- Ray scenarios


def run_scenario(name: str, work: Path, timeout: float = 1200) -> tuple[dict, float]:
    """``python -m tests.helpers.pretrain_scenarios NAME WORK``; its RESULT and wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_DEDUP_LOGS="0",
               RAY_USAGE_STATS_ENABLED="0", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.pretrain_scenarios", name, str(work)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{name} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n" \
                                          f"{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):]), wall


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.slow
@pytest.mark.ray
def test_node_removed_mid_epoch_resumes_on_a_new_node_with_the_same_metrics(tmp_path):
    r, wall = run_scenario("node-loss", tmp_path)
    victim, removed = r["victim"], r["removed_node"]
    lost, plain = r["lost"], r["plain"]
    diff = {k: _rel(lost[k], plain[k]) for k in ("loss", "val_loss")}
    print(f"\nnode-loss scenario: {wall:.0f} s wall, removal → end {r['removal_to_end_s']:.0f} s, "
          f"final metric difference vs uninterrupted: {diff}")
    assert plain["epochs_done"] == lost["epochs_done"] == 5
    assert victim["rank"] == 1 and victim["node"] == removed
    # A new worker group resumed from a checkpoint: a rank-1 process on another node, started
    # past epoch 0, that trained up to the last epoch.
    after = [rec for rec in r["records"] if rec["rank"] == 1 and rec["pid"] != victim["pid"]]
    assert after and all(rec["node"] != removed for rec in after)
    assert after[-1]["start_epoch"] >= 1 and after[-1]["epoch"] == 4
    assert max(r["checkpoints"]) == 4
    for k, d in diff.items():
        assert d <= 0.01, f"{k}: {lost[k]} after the node loss vs {plain[k]} uninterrupted"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_s3_down_during_a_checkpoint_upload_retries_and_finishes(tmp_path):
    r, wall = run_scenario("s3-blip", tmp_path)
    print(f"\ns3-blip scenario: {wall:.0f} s wall, S3 down {r['down_s']:.1f} s, {r['retries']} retried calls "
          f"({r['checkpoint_retries']} checkpoint writes)")
    assert r["error"] is None and r["epochs_done"] == 5
    assert r["checkpoint_retries"] >= 1  # the outage covered a checkpoint upload
    assert r["checkpoints"] == [0, 1, 2, 3, 4]  # none lost (keep_checkpoints=10)
    # The retries carried it: every rank trained every epoch in the one process it started with.
    for rank in (0, 1):
        recs = [rec for rec in r["records"] if rec["rank"] == rank]
        assert [rec["epoch"] for rec in recs] == [0, 1, 2, 3, 4] and len({rec["pid"] for rec in recs}) == 1


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_s3_gone_for_good_stops_with_an_error_naming_the_run_folder(tmp_path):
    r, wall = run_scenario("s3-gone", tmp_path)
    print(f"\ns3-gone scenario: {wall:.0f} s wall, {r['stop_to_end_s']:.0f} s from the stop to the error: {r['error']}")
    assert r["error_type"] == "PretrainError" and "ConCluGenError" in r["error_mro"]
    assert f"{r['run_uri']} (S3 endpoint {r['endpoint']}) cannot be reached" in r["error"]
    assert "Re-run the same command" in r["error"]
    assert storage.is_s3(r["run_uri"])
