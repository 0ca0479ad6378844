"""The SeaweedFS S3 server: loopback only, generated credentials, restart keeps the data."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conclugen.devtools.processes import ServiceError, free_ports
from conclugen.devtools.s3 import S3Server, start_s3
from tests.helpers.sockets import listening, not_loopback, process_tree


def _listen_addrs(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every listening socket of pid and its descendants."""
    return {(ip, port) for _, ip, port in listening(process_tree(pid))}


@pytest.mark.s3
def test_s3_binds_loopback_only_and_hides_secrets(s3_server: S3Server) -> None:
    addrs = _listen_addrs(s3_server.pid)
    assert (("127.0.0.1", urlparse(s3_server.endpoint).port)) in addrs
    assert len(addrs) >= 5  # master, volume, filer, s3 and their gRPC ports
    assert {ip for ip, _ in addrs} == {"127.0.0.1"}, addrs
    assert not not_loopback(listening(process_tree(s3_server.pid)))
    for text in (repr(s3_server), str(s3_server)):
        assert s3_server.secret_key not in text
        assert s3_server.access_key not in text
    assert s3_server.env["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_server.endpoint  # the fixture exported it


@pytest.mark.s3
def test_s3_rejects_wrong_credentials(s3_server: S3Server) -> None:
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


def test_start_s3_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServiceError, match=f"port {port}"):
            start_s3(tmp_path / "s3", port=port)


@pytest.mark.s3
def test_s3_restart_keeps_data_and_rotates_credentials(tmp_path: Path) -> None:
    """A restart on the same data dir keeps objects; the old credentials stop working."""
    import boto3
    from botocore.exceptions import ClientError

    port = free_ports(1)[0]
    first = start_s3(tmp_path / "s3", port=port)
    try:
        assert first.endpoint == f"http://127.0.0.1:{port}"
        first.bucket_uri("keep")
        first.client().put_object(Bucket="keep", Key="a.bin", Body=b"\x01\x02")
    finally:
        first.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # stopped
    second = start_s3(tmp_path / "s3")
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


@pytest.mark.s3
def test_s3_restart_is_an_outage_clients_wait_out(tmp_path: Path) -> None:
    """restart(): same endpoint, credentials and data, so a client mid-call carries on: a write
    and a read started while the server is down succeed once it is back (storage's retries)."""
    import threading

    from conclugen import storage
    from conclugen.config import StorageConfig

    server = start_s3(tmp_path / "s3", timeout=120)
    try:
        cfg = StorageConfig(s3_endpoint=server.endpoint, access_key_id=server.access_key,
                            secret_access_key=server.secret_key)
        bucket = server.bucket_uri("outage")
        storage.write_bytes(f"{bucket}/before.bin", b"kept", cfg)
        endpoint, keys = server.endpoint, (server.access_key, server.secret_key)
        server.stop()
        failed_once = threading.Event()
        results: dict[str, object] = {}

        def sleep(seconds: float) -> None:  # the retry loop's sleep: a try has failed
            failed_once.set()
            time.sleep(seconds)

        def during_outage() -> None:
            fs, path = storage.resolve(f"{bucket}/during.bin", cfg)

            def write() -> None:
                with fs.open_output_stream(path) as f:
                    f.write(b"written while down")

            try:
                storage.with_retries(write, f"write {bucket}/during.bin", retries=None, sleep=sleep)
                results["read"] = storage.read_bytes(f"{bucket}/before.bin", cfg)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                results["error"] = e

        worker = threading.Thread(target=during_outage)
        worker.start()
        assert failed_once.wait(60), "the write never failed, so the server was not down"
        server.restart(timeout=120)
        worker.join(120)
        assert not worker.is_alive() and "error" not in results, results
        assert (server.endpoint, server.access_key, server.secret_key) == (endpoint, *keys)
        assert results["read"] == b"kept"
        assert storage.read_bytes(f"{bucket}/during.bin", cfg) == b"written while down"
    finally:
        server.stop()
