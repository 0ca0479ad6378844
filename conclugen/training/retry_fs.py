"""The run folder's filesystem as Ray Train sees it: every call retried through a storage outage.

Ray Train writes into RUN_URI itself — the checkpoint upload of each ``report`` (a pyarrow
``copy_files``), the controller's ``checkpoint_manager_snapshot.json`` after each registered
checkpoint, deletions of checkpoints past ``num_to_keep`` — through the filesystem object of
``RunConfig(storage_filesystem=...)``, and none of it is retried: an S3 hiccup during the
controller's write ends the whole run (a ``ControllerError``, which ``max_failures`` does not
cover). :func:`retrying` wraps that filesystem so that each call is retried like every other
storage call here (:func:`conclugen.storage.with_retries`, ``storage.retry_seconds``). Writes are
spooled locally and uploaded as a whole at close, so an upload that failed halfway can be redone
(checkpoint uploads therefore go through :func:`conclugen.training.run_folder.upload_checkpoint`);
reads fetch the whole object (checkpoints are read whole anyway). Each failed try is logged with
:data:`RETRY_LOG` and the object's URI.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from conclugen import storage

if TYPE_CHECKING:
    from conclugen.config import StorageConfig

T = TypeVar("T")
RETRY_LOG = "[storage] retrying after a failed call:"
SPOOL_BYTES = 64 << 20  # writes larger than this spill to a local temporary file


def retrying(fs: pafs.FileSystem, cfg: StorageConfig | None = None) -> pafs.FileSystem:
    """``fs`` with every call retried (see the module docstring); picklable like ``fs``."""
    policy = storage.retry_policy("s3://" if fs.type_name == "s3" else "", cfg)
    return pafs.PyFileSystem(RetryingHandler(fs, policy["retries"], policy["seconds"]))


class RetryingHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem handler delegating to ``fs`` through :func:`storage.with_retries`."""

    def __init__(self, fs: pafs.FileSystem, retries: int | None, seconds: float) -> None:
        self.fs, self.retries, self.seconds = fs, retries, seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return (RetryingHandler, (self.fs, self.retries, self.seconds))

    def _uri(self, path: str) -> str:
        return f"s3://{path}" if self.fs.type_name == "s3" else path

    def call(self, what: str, path: str, fn: Callable[[], T]) -> T:
        uri = self._uri(path)

        def attempt() -> T:
            try:
                return fn()
            except FileNotFoundError:
                raise
            except OSError as e:
                print(f"{RETRY_LOG} {what} {uri}: {storage.scrub_secrets(str(e))}", flush=True)
                raise

        return storage.with_retries(attempt, f"{what} {uri}", retries=self.retries, seconds=self.seconds)

    # --------------------------------------------------------------------- metadata

    def get_type_name(self) -> str:
        return f"retrying-{self.fs.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def equals(self, other: Any) -> bool:
        return self == other

    def __eq__(self, other: object) -> bool:  # what pyarrow compares two PyFileSystems by
        return isinstance(other, RetryingHandler) and self.fs.equals(other.fs) and (
            self.retries, self.seconds) == (other.retries, other.seconds)

    def __hash__(self) -> int:
        return hash((self.fs.type_name, self.retries, self.seconds))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.call("stat", paths[0] if paths else "", lambda: self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.call("listing", selector.base_dir, lambda: self.fs.get_file_info(selector))

    # --------------------------------------------------------------------- changes

    def create_dir(self, path: str, recursive: bool) -> None:
        self.call("creating", path, lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self.call("deleting", path, lambda: self.fs.delete_dir(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.call("deleting", path, lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the whole filesystem")

    def delete_file(self, path: str) -> None:
        self.call("deleting", path, lambda: self.fs.delete_file(path))

    def move(self, src: str, dest: str) -> None:
        self.call("moving", src, lambda: self.fs.move(src, dest))

    def copy_file(self, src: str, dest: str) -> None:
        self.call("copying", src, lambda: self.fs.copy_file(src, dest))

    # --------------------------------------------------------------------- streams

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self.call("reading", path, lambda: self._read_all(path)))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.open_input_stream(path)

    def _read_all(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        # Only a Python-level close reports a failed upload: pyarrow's C++ copy_files drops the
        # error of a Python stream's close, so checkpoints are uploaded by
        # conclugen.training.run_folder.upload_checkpoint, file by file, not by copy_files.
        return pa.PythonFile(SpooledUpload(self, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        raise OSError(f"{self._uri(path)}: appending is not supported (S3 has no appends)")


class SpooledUpload:
    """A write-only file: bytes spool locally, ``close`` uploads them in one retried call."""

    def __init__(self, handler: RetryingHandler, path: str, metadata: Any) -> None:
        self.handler, self.path, self.metadata = handler, path, metadata
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.closed = False

    def write(self, data: bytes) -> int:
        return self.spool.write(data)

    def tell(self) -> int:
        return self.spool.tell()

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.handler.call("writing", self.path, self._upload)
        finally:
            self.spool.close()

    def _upload(self) -> None:
        self.spool.seek(0)
        with self.handler.fs.open_output_stream(self.path, metadata=self.metadata) as out:
            shutil.copyfileobj(self.spool, out, length=8 << 20)
