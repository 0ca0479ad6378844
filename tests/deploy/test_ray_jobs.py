"""Ray Jobs end to end: `jobs/pretrain.py` submitted with `ray job submit` (through jobs/submit.sh)
to a real local head, features and checkpoints on SeaweedFS S3, tracked by a real `mlflow server`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conclugen.training.run_folder import find_checkpoints, load_checkpoint
from tests.helpers.configs import TINY
from tests.helpers.features import write_feature_store
from tests.helpers.ray_head import start_ray_head

REPO = Path(__file__).resolve().parents[2]
SETS = [*TINY, "train.workers=1"]


@pytest.mark.slow
@pytest.mark.s3
def test_pretrain_job_on_a_real_head(s3_server, mlflow_server, tmp_path: Path) -> None:
    bucket = s3_server.bucket_uri("rayjobs")
    feats, run_uri = f"{bucket}/features", f"{bucket}/runs/job1"
    write_feature_store(feats, splits={"train": 96, "val": 32})
    sets = [a for s in [*SETS, f"workdir={tmp_path / 'work'}"] for a in ("--set", s)]
    t0 = time.monotonic()
    # The head copies this process's environment (the S3 endpoint and credentials of the
    # SeaweedFS fixture) to its jobs, as a cluster node's environment would.
    with start_ray_head(num_cpus=4, object_store_bytes=400_000_000,
                        extra_env={"MLFLOW_TRACKING_URI": mlflow_server.uri}) as head:
        subprocess.run(
            ["bash", "jobs/submit.sh", "--submission-id", "pretrain-1", "--no-wait", "--",
             "python", "jobs/pretrain.py", feats, "--out", run_uri, "--epochs", "2", *sets],
            cwd=REPO, env=head.job_env, check=True, capture_output=True, timeout=180,
        )
        status = head.wait("pretrain-1", timeout=900)
        logs = head.logs("pretrain-1")
    wall = time.monotonic() - t0
    print(f"ray job submit → {status} in {wall:.0f} s (head start included)")
    assert status == "SUCCEEDED", logs[-4000:]

    ckpts = find_checkpoints(run_uri)
    assert [c["epoch"] for c in ckpts][-1] == 1  # epochs 0 and 1 → the last is epoch 1
    model, info = load_checkpoint(run_uri)
    assert info["input_dims"] == {"video": 24, "audio": 12, "text": 16}

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("conclugen")
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("conclugen.run_uri") == run_uri]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    losses = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in losses) == [0, 1]
    assert runs[0].data.params["model.d"] == "32"
    assert not any("secret" in k or "access_key" in k for k in runs[0].data.params)
