"""Which addresses a process tree listens on (psutil): for the tests that every server the project
starts (Ray, SeaweedFS, MLflow, ``conclugen ui``) accepts connections from this host only."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants alive now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def listening(procs: Iterable[psutil.Process]) -> set[tuple[str, str, int]]:
    """(process name, ip, port) of every TCP socket in LISTEN state and every bound UDP socket
    (no peer) of ``procs``; processes that are gone are skipped."""
    out = set()
    for p in procs:
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            udp_bound = c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr
            if c.status == psutil.CONN_LISTEN or udp_bound:
                out.add((name, c.laddr.ip, c.laddr.port))
    return out


def ray_processes(driver: psutil.Process) -> list[psutil.Process]:
    """The driver and the Ray processes it started (GCS, raylet, agents, monitors) with their
    descendants (workers); other children of the driver (test servers) are left out."""
    out = [driver]
    for child in driver.children():
        try:
            cmd = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if child.name() in ("gcs_server", "raylet") or "/ray/" in cmd:
            out += [child, *child.children(recursive=True)]
    return out


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``, how gRPC binds)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def not_loopback(addrs: Iterable[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    """The entries of :func:`listening` that another host could reach."""
    return {a for a in addrs if not is_loopback(a[1])}
