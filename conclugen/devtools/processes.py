"""Server processes for the local services: loopback ports, spawning in an own process group,
stopping the whole group, waiting until ready, and stopping what is left at interpreter exit."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

from conclugen.errors import ConCluGenError
from conclugen.storage import scrub_secrets

HOST = "127.0.0.1"


class ServiceError(ConCluGenError, RuntimeError):
    """A local service did not start; the message points to its log."""


class Server(Protocol):
    """What :func:`launch` needs of a started server."""

    process: subprocess.Popen | None
    log_path: Path | None

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


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


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie child of ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _signal_group(pgid: int | None, sig: signal.Signals) -> None:
    if pgid is not None and pgid != os.getpgrp():  # never signal our own group
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass


def kill_group(proc: subprocess.Popen | None, pid: int | None = None, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (or ``pid``), wait, then SIGKILL what is left."""
    pid = proc.pid if proc is not None else pid
    if pid is None:
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc is not None else not pid_alive(pid):
            break
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)  # stragglers of the group (e.g. server workers)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def log_tail(path: Path | None, secrets: Iterable[str] = (), n: int = 2000) -> str:
    """The last ``n`` characters of a log, credentials and ``secrets`` hidden."""
    try:
        text = Path(path).read_text(errors="replace")[-n:] if path else "(no log)"
    except OSError:
        return "(no log)"
    return scrub_secrets(text, secrets)


def spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (stop() kills all of it, Ctrl+C does not), output
    appended to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def launch(what: str, attempt: Callable[[], tuple[S, Callable[[], bool]]], *, tries: int, timeout: float,
           poll: float, detach: bool, secrets: Iterable[str] = ()) -> S:
    """Run ``attempt()`` (spawn a server; returns it and its readiness check) until the server is
    ready, at most ``tries`` times: a free port can be taken between its choice and the bind, which
    makes the server exit; a server that hangs is not retried. Servers not ``detach``-ed are
    stopped at interpreter exit."""
    last_error = ""
    for _ in range(tries):
        server, ready = attempt()
        proc = server.process
        if not detach:
            register(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                return server
            time.sleep(poll)
        exited = proc.poll() is not None
        server.stop()
        last_error = (f"{what} {'exited' if exited else f'not ready after {timeout:.0f} s'}; "
                      f"log {server.log_path}:\n{log_tail(server.log_path, secrets)}")
        if not exited:
            break
    raise ServiceError(last_error)


_RUNNING: list[Server] = []


def register(server: Server) -> None:
    """Stop ``server`` at interpreter exit unless it is stopped before."""
    _RUNNING.append(server)


def unregister(server: Server) -> None:
    for i, s in enumerate(_RUNNING):
        if s is server:
            del _RUNNING[i]
            break


@atexit.register
def _stop_all() -> None:
    for server in list(reversed(_RUNNING)):
        server.stop()
