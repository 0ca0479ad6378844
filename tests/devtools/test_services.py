"""The local services: real SeaweedFS S3 and MLflow servers on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conclugen.devtools import services


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by pid or its children (from /proc)."""
    parent_of: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent_of[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    pids = {pid}
    grew = True
    while grew:  # all descendants (uvicorn workers, job runners)
        new = {p for p, pp in parent_of.items() if pp in pids} - pids
        pids |= new
        grew = bool(new)
    inodes: set[str] = set()
    for p in pids:
        fd_dir = Path(f"/proc/{p}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                hex_ip, hex_port = local.split(":")
                if len(hex_ip) == 8:
                    ip = socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1])
                else:
                    ip = "ipv6:" + hex_ip
                out.add((ip, int(hex_port, 16)))
    return out


@pytest.mark.s3
def test_s3_binds_loopback_only_and_hides_secrets(s3_server: services.S3Server) -> None:
    addrs = _listening_addresses(s3_server.pid)
    assert (("127.0.0.1", urlparse(s3_server.endpoint).port)) in addrs
    assert len(addrs) >= 5  # master, volume, filer, s3 and their gRPC ports
    assert {ip for ip, _ in addrs} == {"127.0.0.1"}, addrs
    for text in (repr(s3_server), str(s3_server)):
        assert s3_server.secret_key not in text
        assert s3_server.access_key not in text
    assert s3_server.env["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_server.endpoint  # the fixture exported it


@pytest.mark.s3
def test_s3_rejects_wrong_credentials(s3_server: services.S3Server) -> None:
    import boto3
    from botocore.exceptions import ClientError

    uri = s3_server.bucket_uri("svc-auth")
    bucket = uri.removeprefix("s3://")
    s3_server.client().put_object(Bucket=bucket, Key="k.txt", Body=b"hello")
    assert s3_server.client().get_object(Bucket=bucket, Key="k.txt")["Body"].read() == b"hello"
    bad = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError):
        bad.get_object(Bucket=bucket, Key="k.txt")


@pytest.mark.slow
def test_mlflow_server_round_trip(mlflow_server: services.MlflowServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    addrs = _listening_addresses(mlflow_server.pid)
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


def test_free_ports_distinct() -> None:
    ports = services.free_ports(12)
    assert len(set(ports)) == 12


@pytest.mark.slow
@pytest.mark.s3
def test_cli_start_stop(tmp_path: Path) -> None:
    """The script path: start detached (survives the starting process), print exports, stop."""
    d = tmp_path / "svc"
    env = {**os.environ}
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    start = subprocess.run(
        [sys.executable, "-m", "conclugen.devtools.services", "start", "--dir", str(d), "--no-mlflow"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert start.returncode == 0, start.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in start.stdout.splitlines() if line)
    assert set(exports) == {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    }
    assert (d / "services.env").stat().st_mode & 0o077 == 0  # holds the secret
    try:
        # Still serving after the starting process exited: write and read through our storage.
        from conclugen import storage
        from conclugen.config import StorageConfig

        cfg = StorageConfig(
            s3_endpoint=exports["AWS_ENDPOINT_URL"],
            access_key_id=exports["AWS_ACCESS_KEY_ID"],
            secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        storage.ensure_bucket("s3://cli-bucket", cfg)
        storage.write_text("s3://cli-bucket/a.txt", "via cli", cfg)
        assert storage.read_text("s3://cli-bucket/a.txt", cfg) == "via cli"
        again = subprocess.run(
            [sys.executable, "-m", "conclugen.devtools.services", "start", "--dir", str(d), "--no-mlflow"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "conclugen.devtools.services", "stop", "--dir", str(d)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stop.returncode == 0, stop.stderr
    assert "s3" in stop.stderr
    assert not (d / "services.json").exists()
    port = urlparse(exports["AWS_ENDPOINT_URL"]).port
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_start_s3_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(services.ServiceError, match=f"port {port}"):
            services.start_s3(tmp_path / "s3", port=port)


@pytest.mark.s3
def test_s3_restart_keeps_data_and_rotates_credentials(tmp_path: Path) -> None:
    """A restart on the same data dir keeps objects; the old credentials stop working."""
    import boto3
    from botocore.exceptions import ClientError

    port = services.free_ports(1)[0]
    first = services.start_s3(tmp_path / "s3", port=port)
    try:
        assert first.endpoint == f"http://127.0.0.1:{port}"
        first.bucket_uri("keep")
        first.client().put_object(Bucket="keep", Key="a.bin", Body=b"\x01\x02")
    finally:
        first.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # stopped
    second = services.start_s3(tmp_path / "s3")
    try:
        assert (second.access_key, second.secret_key) != (first.access_key, first.secret_key)
        assert second.client().get_object(Bucket="keep", Key="a.bin")["Body"].read() == b"\x01\x02"
        old = boto3.client(
            "s3",
            endpoint_url=second.endpoint,
            aws_access_key_id=first.access_key,
            aws_secret_access_key=first.secret_key,
            region_name="us-east-1",
        )
        with pytest.raises(ClientError):
            old.list_buckets()
    finally:
        second.stop()
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))  # sockets cleaned up
