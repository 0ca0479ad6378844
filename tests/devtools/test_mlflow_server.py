"""The MLflow server: loopback only, a run's metrics, params and artifacts round-trip."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from conclugen.devtools.mlflow_server import MlflowServer
from tests.helpers.sockets import listening, process_tree


@pytest.mark.slow
def test_mlflow_server_round_trip(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    addrs = {(ip, port) for _, ip, port in listening(process_tree(mlflow_server.pid))}
    assert ("127.0.0.1", urlparse(mlflow_server.uri).port) in addrs
    assert {ip for ip, _ in addrs} == {"127.0.0.1"}, addrs

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.create_experiment("svc-test")
    run = client.create_run(exp)
    for step, value in enumerate([0.5, 0.25, 0.125]):
        client.log_metric(run.info.run_id, "loss", value, step=step)
    client.log_param(run.info.run_id, "lr", "0.001")
    (tmp_path / "note.txt").write_text("artifact body")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)

    # A second client reads it back from the server.
    reader = MlflowClient(tracking_uri=mlflow_server.uri)
    got = reader.get_run(run.info.run_id)
    assert got.data.metrics["loss"] == 0.125
    assert got.data.params["lr"] == "0.001"
    history = reader.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.5),
        (1, 0.25),
        (2, 0.125),
    ]
    local = reader.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "artifact body"
    # Artifacts are stored under the server's data dir, not in the test's cwd.
    stored = list((mlflow_server.data_dir / "artifacts").rglob("note.txt"))
    assert len(stored) == 1
