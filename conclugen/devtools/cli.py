"""``python -m conclugen.devtools start|stop --dir DIR``: detached local services for the
``cluster/local`` scripts. Their pids and addresses go to ``DIR/services.json``; the shell exports
(with the generated credentials) to ``DIR/services.env``, mode 0600, and to stdout."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from conclugen.devtools.mlflow_server import start_mlflow
from conclugen.devtools.processes import ServiceError, kill_group, pid_alive
from conclugen.devtools.s3 import remove_sockets, start_s3

STATE_FILE = "services.json"  # pids and addresses, no secrets
ENV_FILE = "services.env"  # shell exports including the generated credentials, mode 0600
PROG = "python -m conclugen.devtools"


def exports(env: dict[str, str]) -> str:
    """``export NAME=value`` lines, shell-quoted."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def _stop_recorded(state: dict[str, dict]) -> list[str]:
    """Stop every service of a state record; returns the names that were still running."""
    stopped = []
    for name, v in state.items():
        if pid_alive(v["pid"]):
            kill_group(None, v["pid"])
            stopped.append(name)
        remove_sockets(v.get("sockets", []), v.get("ports", []))
    return stopped


def cli_start(directory: Path, s3: bool = True, mlflow: bool = True, timeout: float = 180) -> dict[str, str]:
    """Start detached services with data under ``directory``; returns the env to export."""
    directory = directory.resolve()
    state_path = directory / STATE_FILE
    if state_path.exists() and any(pid_alive(v["pid"]) for v in json.loads(state_path.read_text()).values()):
        raise ServiceError(f"services already running for {directory} (stop them first)")
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, dict] = {}
    env: dict[str, str] = {}
    try:
        if s3:
            srv = start_s3(directory / "s3", detach=True, timeout=timeout)
            state["s3"] = {"pid": srv.pid, "endpoint": srv.endpoint, "sockets": [str(p) for p in srv.sockets],
                           "ports": list(srv.ports.values())}
            env.update(srv.env)
        if mlflow:
            ml = start_mlflow(directory / "mlflow", detach=True, timeout=timeout)
            state["mlflow"] = {"pid": ml.pid, "uri": ml.uri}
            env["MLFLOW_TRACKING_URI"] = ml.uri
    except BaseException:
        _stop_recorded(state)
        raise
    state_path.write_text(json.dumps(state, indent=2))
    env_path = directory / ENV_FILE
    env_path.touch(mode=0o600)
    env_path.chmod(0o600)  # it holds the generated secret
    env_path.write_text(exports(env))
    return env


def cli_stop(directory: Path) -> list[str]:
    """Stop the services recorded under ``directory``; returns what was stopped."""
    directory = directory.resolve()
    state_path = directory / STATE_FILE
    if not state_path.exists():
        return []
    stopped = _stop_recorded(json.loads(state_path.read_text()))
    state_path.unlink()
    (directory / ENV_FILE).unlink(missing_ok=True)
    return stopped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Start/stop local SeaweedFS S3 and MLflow servers on loopback.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start the services; print shell exports on stdout")
    start.add_argument("--dir", required=True, type=Path, help="data directory")
    start.add_argument("--no-s3", action="store_true")
    start.add_argument("--no-mlflow", action="store_true")
    start.add_argument("--timeout", type=float, default=180, help="seconds to wait for each service")
    stop = sub.add_parser("stop", help="stop the services started with --dir")
    stop.add_argument("--dir", required=True, type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "start":
            env = cli_start(args.dir, s3=not args.no_s3, mlflow=not args.no_mlflow, timeout=args.timeout)
            sys.stdout.write(exports(env))
            print(f"# services started; stop with: {PROG} stop --dir {args.dir}", file=sys.stderr)
        else:
            stopped = cli_stop(args.dir)
            print(f"stopped: {', '.join(stopped) or 'nothing running'}", file=sys.stderr)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
