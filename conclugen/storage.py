"""URIs → pyarrow filesystems: plain paths, ``file://`` and ``s3://bucket/prefix``.

The S3 endpoint and credentials come from the config's storage section or the standard AWS
environment variables. Credentials are handed to pyarrow only; they never enter a message.
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


def _new_s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    # Bucket creation must be allowed explicitly in pyarrow; ensure_bucket relies on it.
    kwargs: dict = {"region": settings.region, "allow_bucket_creation": True}
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


def with_retries(fn: Callable[[], T], what: str, retries: int = 3, delay: float = 0.2) -> T:
    """Run an I/O call, retrying transient errors; the final error names ``what``."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as e:
            if attempt == retries or _permanent(e):
                raise StorageError(f"{what}: {scrub_secrets(str(e))} (after {attempt + 1} tries)") from None
            time.sleep(delay * (2**attempt))
    raise AssertionError("unreachable")


# Errors that a retry cannot fix (bad credentials, no permission): fail at once.
_PERMANENT_MARKERS = (
    "ACCESS_DENIED",
    "AccessDenied",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
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
    info = with_retries(lambda: fs.get_file_info(path), f"stat {uri}")
    return info.type != pafs.FileType.NotFound


def is_file(uri: str, cfg: StorageConfig | None = None) -> bool:
    fs, path = resolve(uri, cfg)
    return with_retries(lambda: fs.get_file_info(path), f"stat {uri}").type == pafs.FileType.File


def read_bytes(uri: str, cfg: StorageConfig | None = None, retries: int = 3) -> bytes:
    fs, path = resolve(uri, cfg)

    def _read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    try:
        return with_retries(_read, f"read {uri}", retries)
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

    with_retries(_write, f"write {uri}")


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
    if with_retries(lambda: fs.get_file_info(bucket), f"stat s3://{bucket}").type == pafs.FileType.NotFound:
        with_retries(lambda: fs.create_dir(bucket), f"create bucket s3://{bucket}")


def list_files(uri: str, cfg: StorageConfig | None = None, suffixes: tuple[str, ...] = ()) -> list[str]:
    """All files under a URI (recursively), as URIs of the same kind, sorted."""
    fs, path = resolve(uri, cfg)
    info = with_retries(lambda: fs.get_file_info(path), f"list {uri}")
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = with_retries(lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)), f"list {uri}")
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
    info = with_retries(lambda: fs.get_file_info(path), f"stat {uri}")
    if info.type == pafs.FileType.Directory:
        with_retries(lambda: fs.delete_dir(path), f"delete {uri}")
    elif info.type == pafs.FileType.File:
        with_retries(lambda: fs.delete_file(path), f"delete {uri}")


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
