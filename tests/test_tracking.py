"""MLflow tracking helpers against a real (sqlite) MLflow store; the pyfunc model round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conclugen import tracking
from conclugen.config import load_config

SECRET = "s3cr3t-value-that-must-not-leak"


def _cfg(tmp_path, *extra):
    return load_config(None, [f"workdir={tmp_path / 'work'}", f"storage.secret_access_key={SECRET}",
                              "storage.access_key_id=AKIDLEAKCHECK", *extra])


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path)
    uri = tracking.tracking_uri(cfg)
    assert uri == f"sqlite:///{(tmp_path / 'work').resolve()}/mlflow.db"
    assert (tmp_path / "work").is_dir()  # created for the embedded default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:1"
    cfg2 = _cfg(tmp_path, "tracking.uri=http://127.0.0.1:2")
    assert tracking.tracking_uri(cfg2) == "http://127.0.0.1:2"  # the config wins over the env


def test_run_params_metrics_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path, "model.d=32", "tracking.experiment=exp-a")
    uri = tracking.tracking_uri(cfg)
    exp1 = tracking.get_or_create_experiment(uri, "exp-a")
    assert tracking.get_or_create_experiment(uri, "exp-a") == exp1  # idempotent
    run_id = tracking.start_run(cfg, run_name="r1", tags={"k": "v"}, uri=uri)
    tracking.log_metrics(uri, run_id, {"loss": 1.5, "bad": math.nan, "inf": math.inf}, step=0)
    tracking.log_metrics(uri, run_id, {"loss": 1.25}, step=1)
    tracking.end_run(uri, run_id)

    c = tracking.client(uri)
    run = c.get_run(run_id)
    assert run.info.experiment_id == exp1 and run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.d"] == "32" and params["train.lr"] == str(cfg.train.lr)
    assert len(params) == len(cfg.flat_params())
    assert not any(SECRET in v or "AKIDLEAKCHECK" in v for v in params.values())
    assert not any("secret" in k or "access_key" in k for k in params)
    assert [m.value for m in c.get_metric_history(run_id, "loss")] == [1.5, 1.25]
    assert "bad" not in run.data.metrics and "inf" not in run.data.metrics  # non-finite skipped
    text = c.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl"))
    body = open(text).read()
    assert "d: 32" in body and SECRET not in body and "AKIDLEAKCHECK" not in body
    # Artifacts of the embedded default live beside the sqlite file, not in ./mlruns.
    assert run.info.artifact_uri.startswith((tmp_path / "work").resolve().as_uri())
    # Re-opening (resume) marks it RUNNING again; an unknown id is refused.
    assert tracking.reopen_run(uri, run_id)
    assert c.get_run(run_id).info.status == "RUNNING"
    assert not tracking.reopen_run(uri, "0" * 32)


def test_pyfunc_model_roundtrip(tmp_path, monkeypatch):
    import mlflow.pyfunc

    from conclugen.model.heads import ConCluGen
    from conclugen.training.run_folder import save_checkpoint_dir

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path, "model.d=32", "model.p=16", "model.r=16", "model.k=4", "model.audio_geu_dim=16")
    dims = {"video": 24, "audio": 12, "text": 16}
    torch.manual_seed(0)
    model = ConCluGen.from_config(cfg.model, dims).eval()
    ckpt = tmp_path / "ckpt"
    save_checkpoint_dir(ckpt, {"model": model.state_dict(), "epoch": 0, "input_dims": dims,
                               "config": cfg.public_dict() | {"storage": {}}}, {"epoch": 0})
    uri = tracking.tracking_uri(cfg)
    run_id = tracking.start_run(cfg, uri=uri)
    model_uri = tracking.log_representation_model(uri, run_id, ckpt / "checkpoint.pt", dims, d=32)
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(model_uri)
    sig = loaded.metadata.signature
    assert [s.name for s in sig.inputs.inputs] == ["video", "audio", "text"]
    assert sig.inputs.inputs[0].shape == (-1, 24) and sig.outputs.inputs[0].shape == (-1, 32)
    rng = np.random.default_rng(0)
    x = {m: rng.random((5, d), dtype=np.float32) for m, d in dims.items()}
    out = loaded.predict(x)
    with torch.no_grad():
        ref = model.represent({m: torch.from_numpy(v) for m, v in x.items()})
    for m in dims:
        assert out[m].shape == (5, 32)
        np.testing.assert_allclose(out[m], ref[m].numpy(), rtol=1e-5, atol=1e-6)


def test_log_metrics_ignores_non_numbers(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exp = tracking.get_or_create_experiment(uri, "x")
    run = tracking.client(uri).create_run(exp)
    tracking.log_metrics(uri, run.info.run_id, {"a": 1, "s": "text", "b": 2.0}, step=3)  # type: ignore[dict-item]
    got = tracking.client(uri).get_run(run.info.run_id).data.metrics
    assert got == {"a": 1.0, "b": 2.0}


def test_tracked_run_records_reopens_and_always_ends(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path)
    state = str(tmp_path / "out" / "state.json")
    with tracking.tracked_run(cfg, run_name="cmd", tags={"k": "v"}, state_uri=state, state_key="parent") as run:
        assert not run.reopened
    c = tracking.client(run.uri)
    assert c.get_run(run.run_id).info.status == "FINISHED" and c.get_run(run.run_id).data.tags["k"] == "v"
    assert json.loads(open(state).read()) == {"parent": run.run_id, "tracking_uri": run.uri}
    # The state file's run is reopened (resume), and marked FAILED when the block raises.
    with pytest.raises(RuntimeError), tracking.tracked_run(cfg, run_name="cmd", state_uri=state,
                                                           state_key="parent") as again:
        assert again.reopened and again.run_id == run.run_id
        assert c.get_run(run.run_id).info.status == "RUNNING"
        raise RuntimeError("boom")
    assert c.get_run(run.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt), tracking.tracked_run(cfg, run_name="other") as other:
        raise KeyboardInterrupt
    assert c.get_run(other.run_id).info.status == "KILLED"
    with tracking.tracked_run(cfg, run_name="partial") as partial:
        partial.status = "FAILED"  # a block may end its run otherwise without raising
    assert c.get_run(partial.run_id).info.status == "FAILED"


def test_experiments_are_tagged_as_training_experiments(tmp_path):
    """MLflow 3's experiment kind: ours are "custom_model_development" (training runs, not GenAI)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(uri, "fresh")
    assert c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # one created elsewhere without a kind gets it on first use; a kind someone chose is kept
    old = c.create_experiment("older")
    assert tracking.EXPERIMENT_KIND_TAG not in c.get_experiment(old).tags
    assert tracking.get_or_create_experiment(uri, "older") == old
    assert c.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = c.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.get_or_create_experiment(uri, "chosen")
    assert c.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"
    # the UI link opens the experiment in the "Machine learning" workflow (its Runs tab)
    assert tracking.experiment_ui_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert tracking.experiment_ui_url(uri, "7") is None


@pytest.mark.parametrize(("given", "expected"), [(None, "true"), ("false", "false")])
def test_mlflow_telemetry_off_unless_the_user_set_it(given, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    if given is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = given
    code = ("import os, conclugen.tracking, mlflow.telemetry.utils as t; "
            "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], t.is_telemetry_disabled())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    value, disabled = out.stdout.split()
    assert value == expected
    if expected == "true":  # (with "false", MLflow may still turn it off itself, e.g. under CI)
        assert disabled == "True"
