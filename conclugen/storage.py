"""URIs → pyarrow filesystems: plain paths, ``file://`` and ``s3://bucket/prefix``.

The S3 endpoint and credentials come from the config's storage section or the standard AWS
environment variables. Credentials are handed to pyarrow only; they never enter a message.
Every call is retried through :func:`with_retries`: transient errors with capped exponential
backoff within the storage section's ``retries`` / ``retry_seconds`` (an S3 outage of ~20 s is
waited out), permanent ones (credentials, permissions, no such bucket) at once; the final
:class:`StorageUnavailableError` names the URI. S3 requests time out (connect / stall), so a dead
endpoint fails a try instead of hanging it.
"""

from __future__ import annotations

import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from conclugen.errors import ConCluGenError

if TYPE_CHECKING:
    from conclugen.config import StorageConfig

T = TypeVar("T")


class StorageError(ConCluGenError, OSError):
    """An object could not be read or written; the message names the URI, never a credential."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object to read does not exist (still a ``FileNotFoundError`` for callers)."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None
    region: str | None
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    def __repr__(self) -> str:  # never show secrets, even in a debugger or traceback
        return f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r}, credentials=<hidden>)"


def s3_settings(cfg: StorageConfig | None = None) -> S3Settings:
    env = os.environ

    def secret(field: str, var: str) -> str | None:
        value = getattr(cfg, field, None) if cfg is not None else None
        return value.get_secret_value() if value is not None else env.get(var)

    endpoint = (
        (cfg.s3_endpoint if cfg is not None else None)
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
    )
    region = (
        (cfg.s3_region if cfg is not None else None) or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    )
    # Keys from the config must not be paired with a session token of the environment's identity.
    if cfg is not None and cfg.access_key_id is not None:
        token = cfg.session_token.get_secret_value() if cfg.session_token is not None else None
    else:
        token = env.get("AWS_SESSION_TOKEN")
    return S3Settings(
        endpoint=endpoint,
        region=region or "us-east-1",
        access_key=secret("access_key_id", "AWS_ACCESS_KEY_ID"),
        secret_key=secret("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        session_token=token,
    )


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


# One S3 filesystem per process and settings: each holds its own connection pool, so building
# one per call would pay a fresh connection (a TLS handshake on real S3) for every clip read.
# Keyed by pid too, so a forked child never shares its parent's connections.
_S3_FILESYSTEMS: dict[tuple[int, S3Settings], pafs.S3FileSystem] = {}
_S3_LOCK = threading.Lock()


def _s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    key = (os.getpid(), settings)
    with _S3_LOCK:
        fs = _S3_FILESYSTEMS.get(key)
        if fs is None:
            fs = _S3_FILESYSTEMS[key] = _new_s3_filesystem(settings)
        return fs


# A dead or stalled endpoint must fail a call, not hang it (with_retries then decides): seconds to
# connect, seconds without a byte before a request is abandoned (the AWS SDK's low-speed limit,
# also on Linux), and the SDK's own quick tries per call under our backoff.
S3_CONNECT_TIMEOUT = 5.0
S3_REQUEST_TIMEOUT = 30.0
S3_SDK_ATTEMPTS = 3


def _new_s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    # Bucket creation must be allowed explicitly in pyarrow; ensure_bucket relies on it.
    kwargs: dict = {"region": settings.region, "allow_bucket_creation": True,
                    "connect_timeout": S3_CONNECT_TIMEOUT, "request_timeout": S3_REQUEST_TIMEOUT,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_SDK_ATTEMPTS)}
    if settings.endpoint:
        parsed = urlparse(settings.endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if settings.access_key and settings.secret_key:
        kwargs["access_key"] = settings.access_key
        kwargs["secret_key"] = settings.secret_key
        if settings.session_token:
            kwargs["session_token"] = settings.session_token
    elif not settings.access_key and not settings.secret_key:
        kwargs["anonymous"] = False
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | Path, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a URI."""
    uri = str(uri)
    if is_s3(uri):
        rest = uri[len("s3://") :].strip("/")
        if not rest:
            raise StorageError(f"{uri}: an s3:// URI needs a bucket")
        return _s3_filesystem(s3_settings(cfg)), rest
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    elif "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme (use a path, file:// or s3://)")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


# Retry policy defaults (the storage section's `retries` / `retry_seconds` override them): long
# enough to wait out an object store that restarts (~20 s down), short enough that a dead one
# is reported within about a minute.
RETRY_SECONDS = 60.0
RETRY_MAX = 30
FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class StorageUnavailableError(StorageError):
    """Transient errors (connection refused / reset, timeouts, 5xx) went on past the retry budget:
    the storage was unreachable; running the command again once it is back resumes."""


def retry_policy(uri: str, cfg: StorageConfig | None, retries: int | None = None) -> dict[str, float]:
    """``with_retries`` keyword arguments for ``uri`` from the storage section; ``retries`` caps
    one call's retries (e.g. ``extract.s3_read_retries``). A local path gets at most 2 quick
    retries: a local disk error is not an outage to wait out."""
    seconds = cfg.retry_seconds if cfg is not None else RETRY_SECONDS
    cap = retries if retries is not None else (cfg.retries if cfg is not None else RETRY_MAX)
    if not is_s3(uri):
        cap, seconds = min(cap, 2), min(seconds, 1.0)
    return {"retries": cap, "seconds": seconds}


def _retried(fn: Callable[[], T], what: str, uri: str, cfg: StorageConfig | None, retries: int | None = None) -> T:
    return with_retries(fn, what, **retry_policy(uri, cfg, retries))


def with_retries(fn: Callable[[], T], what: str, retries: int | None = RETRY_MAX, delay: float = FIRST_DELAY, *,
                 seconds: float = RETRY_SECONDS, max_delay: float = MAX_DELAY,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run an I/O call, retrying transient errors with exponential backoff (``delay`` doubling, at
    most ``max_delay`` apart) while both budgets last: at most ``retries`` retries (None: no cap)
    and no retry that would start more than ``seconds`` after the first try. Permanent errors
    (credentials, permissions, no such bucket) fail at once; a missing object is re-raised as it
    is. The final error names ``what`` (which holds the URI)."""
    start = clock()
    attempt = 0
    while True:
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as e:
            message = scrub_secrets(str(e))
            if _permanent(e):
                raise StorageError(f"{what}: {message} (a permanent error: not retried)") from None
            wait = min(max_delay, delay * 2**attempt)
            elapsed = clock() - start
            if (retries is not None and attempt >= retries) or elapsed + wait > seconds:
                raise StorageUnavailableError(
                    f"{what}: storage unreachable or failing after {attempt + 1} tries over {elapsed:.1f} s "
                    f"(storage.retries={retries}, storage.retry_seconds={seconds:g}): {message}") from None
            sleep(wait)
            attempt += 1


# Errors that a retry cannot fix (bad credentials, no permission, no such bucket): fail at once.
_PERMANENT_MARKERS = (
    "ACCESS_DENIED",
    "AccessDenied",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "NO_SUCH_BUCKET",
    "NoSuchBucket",
)


def _permanent(e: OSError) -> bool:
    return isinstance(e, PermissionError) or any(m in str(e) for m in _PERMANENT_MARKERS)


def scrub_secrets(message: str, secrets: Iterable[str | None] = ()) -> str:
    """``message`` with the environment's AWS credentials and any of ``secrets`` (e.g. a server's
    generated keys) replaced by ``<hidden>``: for error messages and log excerpts."""
    env = (os.environ.get(v) for v in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"))
    for value in (*env, *secrets):
        if value and len(value) >= 4:  # a shorter value would mask ordinary text
            message = message.replace(value, "<hidden>")
    return message


def exists(uri: str, cfg: StorageConfig | None = None) -> bool:
    fs, path = resolve(uri, cfg)
    info = _retried(lambda: fs.get_file_info(path), f"stat {uri}", uri, cfg)
    return info.type != pafs.FileType.NotFound


def is_file(uri: str, cfg: StorageConfig | None = None) -> bool:
    fs, path = resolve(uri, cfg)
    return _retried(lambda: fs.get_file_info(path), f"stat {uri}", uri, cfg).type == pafs.FileType.File


def read_bytes(uri: str, cfg: StorageConfig | None = None, retries: int | None = None) -> bytes:
    """The object's bytes; ``retries`` caps this read's retries (None: the storage section's)."""
    fs, path = resolve(uri, cfg)

    def _read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    try:
        return _retried(_read, f"read {uri}", uri, cfg, retries)
    except FileNotFoundError:
        raise StorageNotFoundError(f"not found: {uri}") from None


def read_text(uri: str, cfg: StorageConfig | None = None) -> str:
    return read_bytes(uri, cfg).decode("utf-8")


def write_bytes(uri: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    fs, path = resolve(uri, cfg)
    parent = posixpath.dirname(path)
    if parent and not is_s3(uri):
        fs.create_dir(parent, recursive=True)

    def _write() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    _retried(_write, f"write {uri}", uri, cfg)


def write_text(uri: str, text: str, cfg: StorageConfig | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), cfg)


def makedirs(uri: str, cfg: StorageConfig | None = None) -> None:
    fs, path = resolve(uri, cfg)
    if is_s3(uri):
        ensure_bucket(uri, cfg)
        return
    fs.create_dir(path, recursive=True)


def ensure_bucket(uri: str, cfg: StorageConfig | None = None) -> None:
    """Create the bucket of an s3:// URI when it does not exist (no-op for local paths)."""
    if not is_s3(uri):
        return
    fs, path = resolve(uri, cfg)
    bucket = path.split("/", 1)[0]
    if _retried(lambda: fs.get_file_info(bucket), f"stat s3://{bucket}", uri, cfg).type == pafs.FileType.NotFound:
        _retried(lambda: fs.create_dir(bucket), f"create bucket s3://{bucket}", uri, cfg)


def list_files(uri: str, cfg: StorageConfig | None = None, suffixes: tuple[str, ...] = ()) -> list[str]:
    """All files under a URI (recursively), as URIs of the same kind, sorted."""
    fs, path = resolve(uri, cfg)
    info = _retried(lambda: fs.get_file_info(path), f"list {uri}", uri, cfg)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = _retried(lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)), f"list {uri}", uri, cfg)
    out = []
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        if suffixes and not i.path.lower().endswith(tuple(s.lower() for s in suffixes)):
            continue
        out.append(to_uri(uri, i.path))
    return sorted(out)


def delete(uri: str, cfg: StorageConfig | None = None) -> None:
    fs, path = resolve(uri, cfg)
    info = _retried(lambda: fs.get_file_info(path), f"stat {uri}", uri, cfg)
    if info.type == pafs.FileType.Directory:
        _retried(lambda: fs.delete_dir(path), f"delete {uri}", uri, cfg)
    elif info.type == pafs.FileType.File:
        _retried(lambda: fs.delete_file(path), f"delete {uri}", uri, cfg)


def upload_dir(local_dir: str | Path, uri: str, cfg: StorageConfig | None = None) -> int:
    """Copy a local folder's files to a URI; returns the number of files copied."""
    local_dir = Path(local_dir)
    ensure_bucket(uri, cfg)
    n = 0
    for f in sorted(local_dir.rglob("*")):
        if f.is_file():
            write_bytes(join(uri, *f.relative_to(local_dir).parts), f.read_bytes(), cfg)
            n += 1
    return n


def to_uri(base_uri: str, fs_path: str) -> str:
    """A path inside the filesystem that :func:`resolve` gave for ``base_uri`` → a URI of the same
    kind (``s3://…``, ``file://…`` or a plain path)."""
    if is_s3(base_uri):
        return "s3://" + fs_path.lstrip("/")
    if base_uri.startswith("file://"):
        return "file://" + fs_path
    return fs_path
