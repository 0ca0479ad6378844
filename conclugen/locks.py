"""One run at a time per output: a lock object ``OUT/.conclugen.lock``.

A command that writes into an output folder (``conclugen extract … --out X``, ``pretrain --out
R``) holds :func:`output_lock` for the whole run. The lock object is JSON naming its holder
(command, host, pid, start time) and is created atomically, so of two runs started at once exactly
one gets it; the other stops at once with :class:`OutputLockedError` naming the holder:

    error: work/features is in use by extract (pid 1234 on host h, since 12:00:01); wait for it
    or remove work/features/.conclugen.lock if that process is gone

- Local paths: the lock file is written under a temporary name and hard-linked into place
  (``link`` fails when the name exists, like ``O_CREAT|O_EXCL``, and readers never see half a
  file).
- ``s3://``: a PUT with ``If-None-Match: *`` (a conditional write: AWS S3, SeaweedFS, MinIO); the
  release and a takeover delete with ``If-Match: <ETag>`` so they remove only the object they read.
  A server that answers "not implemented" gets a best-effort check-then-write, with a warning
  (one that silently ignores the header cannot be told apart).

A lock is **stale** only when that is proven: its holder ran on this host and that process is
gone (no such pid, a zombie, another process under a reused pid, or the host rebooted since).
A stale lock is taken over with a warning; a lock held from another host is never taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen import storage
from conclugen.errors import ConCluGenError

if TYPE_CHECKING:
    from conclugen.config import StorageConfig

log = logging.getLogger(__name__)

LOCK_FILE = ".conclugen.lock"
ATTEMPTS = 3  # create / takeover rounds before giving up to whoever holds the lock now


class OutputLockedError(ConCluGenError, RuntimeError):
    """Another run holds the output's lock; the message names it and how to clear a dead one."""


@dataclass(frozen=True)
class LockHolder:
    command: str
    host: str
    pid: int
    started_at: str  # ISO 8601, local time with offset
    token: str  # unique per acquisition: a release removes only its own lock
    boot_id: str | None = None  # Linux: tells a pid of an earlier boot from a live one
    pid_start: int | None = None  # Linux: the process's start time (clock ticks since boot)

    @classmethod
    def mine(cls, command: str) -> LockHolder:
        pid = os.getpid()
        return cls(command=command, host=socket.gethostname(), pid=pid,
                   started_at=datetime.now().astimezone().isoformat(timespec="seconds"),
                   token=uuid.uuid4().hex, boot_id=_boot_id(), pid_start=_proc_stat(pid)[1])

    @classmethod
    def from_json(cls, text: str) -> LockHolder:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not raw.get("token"):
            raise ValueError("not a conclugen lock")
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def describe(self) -> str:
        """``extract (pid 1234 on host h, since 12:00:01)``."""
        try:
            t = datetime.fromisoformat(self.started_at)
            today = t.date() == datetime.now(t.tzinfo).date()
            since = t.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S")
        except (TypeError, ValueError):
            since = str(self.started_at)
        return f"{self.command} (pid {self.pid} on host {self.host}, since {since})"

    def is_gone(self) -> bool:
        """True only when the holder is proven dead: same host and its process no longer runs."""
        if self.host != socket.gethostname() or not isinstance(self.pid, int):
            return False
        if self.boot_id and _boot_id() and self.boot_id != _boot_id():
            return True  # every process of an earlier boot is gone
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        state, start = _proc_stat(self.pid)
        if state == "Z":
            return True
        return self.pid_start is not None and start is not None and start != self.pid_start


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state, start time in clock ticks) from /proc/<pid>/stat; (None, None) off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) onwards
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def lock_uri(uri: str) -> str:
    return storage.join(uri, LOCK_FILE)


def _locked(uri: str, holder: LockHolder) -> OutputLockedError:
    return OutputLockedError(f"{uri} is in use by {holder.describe()}; wait for it or remove "
                             f"{lock_uri(uri)} if that process is gone")


def _unreadable(uri: str) -> OutputLockedError:
    return OutputLockedError(f"{uri} holds an unreadable lock ({lock_uri(uri)}); remove it if no "
                             "conclugen run is using this output")


@contextlib.contextmanager
def output_lock(uri: str, command: str, storage_cfg: StorageConfig | None = None) -> Iterator[LockHolder]:
    """Hold ``uri``'s lock for the ``with`` block (creating ``uri`` if needed); raises
    :class:`OutputLockedError` when another live run holds it. Released on exit, also on error."""
    backend: _Backend = _S3Lock(uri, storage_cfg) if storage.is_s3(uri) else _LocalLock(uri, storage_cfg)
    me = LockHolder.mine(command)
    backend.acquire(me)
    try:
        yield me
    finally:
        backend.release(me)


class _Backend:
    """Acquire/release over three primitives: an atomic create, a read that also returns a
    version of the lock object, and a delete that happens only if that version is still there."""

    uri: str

    def prepare(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def create(self, me: LockHolder) -> bool:  # pragma: no cover - interface
        """Create the lock object holding ``me``; False if one exists."""
        raise NotImplementedError

    def read(self) -> tuple[LockHolder, str] | None:  # pragma: no cover - interface
        """(holder, version) of the lock object; None when there is none."""
        raise NotImplementedError

    def delete(self, version: str) -> bool:  # pragma: no cover - interface
        """Delete the lock object if it is still ``version``; False if it changed."""
        raise NotImplementedError

    def acquire(self, me: LockHolder) -> None:
        self.prepare()
        other = None
        for _ in range(ATTEMPTS):
            if self.create(me):
                return
            found = self.read()
            if found is None:
                continue  # released meanwhile
            other, version = found
            if not other.is_gone():
                raise _locked(self.uri, other)
            if self.delete(version):
                log.warning("%s: taking over the lock of %s: that process is gone", self.uri, other.describe())
        raise _locked(self.uri, other) if other else _unreadable(self.uri)

    def release(self, me: LockHolder) -> None:
        try:
            found = self.read()
            if found is not None and found[0].token == me.token and self.delete(found[1]):
                return
        except OutputLockedError:  # unreadable now: not ours to remove
            pass
        except storage.StorageError as e:
            # storage down at exit (often the very error that ended the run): never hide that error;
            # the next run takes the lock over, as this process is gone by then
            log.warning("%s: could not release the lock (%s); the next run takes it over", self.uri, e)
            return
        log.warning("%s: the lock was no longer this run's at release; left as it is", self.uri)


class _LocalLock(_Backend):
    """A file; the version is the holder's token."""

    def __init__(self, uri: str, cfg: StorageConfig | None) -> None:
        self.uri = uri
        _, path = storage.resolve(uri, cfg)
        self.dir = Path(path)
        self.path = self.dir / LOCK_FILE

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def create(self, me: LockHolder) -> bool:
        tmp = self.dir / f"{LOCK_FILE}.{me.token}.tmp"
        tmp.write_text(me.to_json())
        try:
            os.link(tmp, self.path)  # atomic: fails when the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> tuple[LockHolder, str] | None:
        try:
            holder = LockHolder.from_json(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            raise _unreadable(self.uri) from None
        return holder, holder.token

    def delete(self, version: str) -> bool:
        # Check-then-unlink under an flock on the output folder: it serialises the deleters (a
        # takeover is only ever done from the holder's own host) and the kernel drops it if this
        # process dies.
        import fcntl

        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            found = self.read()
            if found is None or found[1] != version:
                return False
            self.path.unlink()
            return True
        finally:
            os.close(fd)


class _S3Lock(_Backend):
    """An object written with ``If-None-Match: *``; the version is its ETag."""

    def __init__(self, uri: str, cfg: StorageConfig | None) -> None:
        self.uri, self.cfg = uri, cfg
        self.bucket, _, prefix = uri[len("s3://"):].strip("/").partition("/")
        if not self.bucket:
            raise storage.StorageError(f"{uri}: an s3:// URI needs a bucket")
        self.key = f"{prefix.rstrip('/')}/{LOCK_FILE}" if prefix else LOCK_FILE
        self.client = _s3_client(cfg)
        self.conditional = True

    def prepare(self) -> None:
        storage.ensure_bucket(self.uri, self.cfg)

    def create(self, me: LockHolder) -> bool:
        body = me.to_json().encode("utf-8")
        if self.conditional:
            try:
                self._call("put_object", Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*")
                return True
            except _S3Status as e:
                if e.status in (409, 412):  # 412: exists; 409: a concurrent conditional write won
                    return False
                if e.status != 501:
                    raise
                log.warning("%s: the S3 server does not support conditional writes: concurrent runs "
                            "into this output are only detected on a best-effort basis", self.uri)
                self.conditional = False
        if self.read() is not None:
            return False
        self._call("put_object", Bucket=self.bucket, Key=self.key, Body=body)
        return True

    def read(self) -> tuple[LockHolder, str] | None:
        try:
            r = self._call("get_object", Bucket=self.bucket, Key=self.key)
        except _S3Status as e:
            if e.status == 404:
                return None
            raise
        try:
            return LockHolder.from_json(r["Body"].read().decode("utf-8")), r["ETag"]
        except (ValueError, TypeError, UnicodeDecodeError):
            raise _unreadable(self.uri) from None

    def delete(self, version: str) -> bool:
        try:
            self._call("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
            return True
        except _S3Status as e:
            if e.status == 412:
                return False
            if e.status == 404:
                return True
            if e.status != 501:
                raise
        self._call("delete_object", Bucket=self.bucket, Key=self.key)  # no conditional deletes here
        return True

    def _call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as e:
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "NotFound"):
                status = 404
            elif code == "NotImplemented":
                status = 501
            raise _S3Status(status, f"{op} {lock_uri(self.uri)}: {code or status}") from None
        except BotoCoreError as e:
            raise storage.StorageError(f"{op} {lock_uri(self.uri)}: {storage.scrub_secrets(str(e))}") from None


class _S3Status(storage.StorageError):
    """An S3 error answer, with its HTTP status for the lock's decisions."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _s3_client(cfg: StorageConfig | None) -> Any:
    """A boto3 client on the same endpoint and credentials as :mod:`conclugen.storage` (pyarrow's
    S3 filesystem cannot send conditional headers)."""
    import boto3
    from botocore.config import Config as BotoConfig

    s = storage.s3_settings(cfg)
    return boto3.client(
        "s3", endpoint_url=s.endpoint, region_name=s.region, aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key, aws_session_token=s.session_token,
        config=BotoConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}),
    )

