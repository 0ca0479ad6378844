"""``python -m conclugen.devtools start|stop``: detached services for the cluster/local scripts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.helpers.sockets import listening, not_loopback, process_tree


@pytest.mark.slow
@pytest.mark.s3
def test_cli_start_stop(tmp_path: Path) -> None:
    """The script path: start detached (survives the starting process), print exports, stop."""
    d = tmp_path / "svc"
    env = {**os.environ}
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    start = subprocess.run(
        [sys.executable, "-m", "conclugen.devtools", "start", "--dir", str(d), "--no-mlflow"],
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
    pid = json.loads((d / "services.json").read_text())["s3"]["pid"]
    assert not not_loopback(listening(process_tree(pid)))
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
            [sys.executable, "-m", "conclugen.devtools", "start", "--dir", str(d), "--no-mlflow"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "conclugen.devtools", "stop", "--dir", str(d)],
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
