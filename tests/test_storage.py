"""Storage URIs against a local directory, file:// and a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from conclugen import storage
from conclugen.config import Config, ConfigError, StorageConfig, load_config
from conclugen.devtools.s3 import S3Server
from conclugen.errors import ConCluGenError

KINDS = ["local", "file", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=KINDS)
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty root URI of each kind (S3: a unique prefix in a shared bucket)."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    return f"{server.bucket_uri('storage-tests')}/{uuid.uuid4().hex[:12]}"


def test_bytes_and_text_round_trip(root: str) -> None:
    data = bytes(range(256)) * 40 + b"\x00end"
    storage.write_bytes(storage.join(root, "bin", "blob.bin"), data)
    assert storage.read_bytes(storage.join(root, "bin", "blob.bin")) == data
    text = "häppy — 幸せ\nsecond line\n"
    storage.write_text(storage.join(root, "t.txt"), text)
    assert storage.read_text(storage.join(root, "t.txt")) == text
    # Overwrite replaces the whole object.
    storage.write_text(storage.join(root, "t.txt"), "short")
    assert storage.read_text(storage.join(root, "t.txt")) == "short"
    storage.write_bytes(storage.join(root, "empty"), b"")
    assert storage.read_bytes(storage.join(root, "empty")) == b""


def test_exists_and_is_file(root: str) -> None:
    f = storage.join(root, "a", "b.json")
    assert not storage.exists(f)
    storage.write_text(f, "{}")
    assert storage.exists(f)
    assert storage.is_file(f)
    assert storage.exists(storage.join(root, "a"))  # the "directory" (prefix) exists
    assert not storage.is_file(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "c.json"))


def test_list_files_recursive_and_suffixes(root: str) -> None:
    names = ["x.parquet", "y.PARQUET", "meta.json", "sub/z.parquet", "sub/deeper/w.txt"]
    for n in names:
        storage.write_text(storage.join(root, *n.split("/")), n)
    listed = storage.list_files(root)
    assert listed == sorted(storage.join(root, *n.split("/")) for n in names)
    # Listed URIs are of the same kind and read back.
    for uri in listed:
        assert uri.startswith("s3://" if root.startswith("s3://") else root[:7])
        assert storage.read_text(uri) == uri[len(root) + 1 :]
    pq = storage.list_files(root, suffixes=(".parquet",))  # case-insensitive
    assert pq == sorted(storage.join(root, *n.split("/")) for n in names if n.lower().endswith(".parquet"))
    assert storage.list_files(root, suffixes=(".json", ".txt")) == sorted(
        [storage.join(root, "meta.json"), storage.join(root, "sub", "deeper", "w.txt")]
    )
    assert storage.list_files(storage.join(root, "sub")) == sorted(
        [storage.join(root, "sub", "z.parquet"), storage.join(root, "sub", "deeper", "w.txt")]
    )
    assert storage.list_files(storage.join(root, "sub") + "/") == storage.list_files(
        storage.join(root, "sub")
    )
    # A single file lists as itself; a missing root lists as nothing.
    assert storage.list_files(storage.join(root, "meta.json")) == [storage.join(root, "meta.json")]
    assert storage.list_files(storage.join(root, "missing")) == []


def test_upload_dir(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "features").mkdir(parents=True)
    (src / "features" / "part-0.parquet").write_bytes(b"P" * 1000)
    (src / "features" / "part-1.parquet").write_bytes(b"Q" * 10)
    (src / "meta.json").write_text('{"dims": {}}')
    dest = storage.join(root, "up")
    assert storage.upload_dir(src, dest) == 3
    assert storage.list_files(dest) == sorted(
        [
            storage.join(dest, "features", "part-0.parquet"),
            storage.join(dest, "features", "part-1.parquet"),
            storage.join(dest, "meta.json"),
        ]
    )
    assert storage.read_bytes(storage.join(dest, "features", "part-0.parquet")) == b"P" * 1000
    assert storage.read_text(storage.join(dest, "meta.json")) == '{"dims": {}}'


def test_delete(root: str) -> None:
    for n in ("keep.txt", "d/a.txt", "d/e/b.txt"):
        storage.write_text(storage.join(root, *n.split("/")), n)
    storage.delete(storage.join(root, "keep.txt"))
    assert not storage.exists(storage.join(root, "keep.txt"))
    storage.delete(storage.join(root, "d"))  # a directory / prefix, recursively
    assert storage.list_files(root) == []
    storage.delete(storage.join(root, "never-there"))  # no error


def test_missing_file_names_uri(root: str) -> None:
    uri = storage.join(root, "nope", "missing.bin")
    with pytest.raises(FileNotFoundError) as err:
        storage.read_bytes(uri)
    assert uri in str(err.value)
    assert isinstance(err.value, ConCluGenError)  # the CLI reports it as one `error:` line


def test_to_uri_keeps_the_kind() -> None:
    assert storage.to_uri("s3://bucket/run", "bucket/run/ckpt") == "s3://bucket/run/ckpt"
    assert storage.to_uri("s3://bucket/run", "/bucket/run/ckpt") == "s3://bucket/run/ckpt"
    assert storage.to_uri("file:///data/run", "/data/run/ckpt") == "file:///data/run/ckpt"
    assert storage.to_uri("/data/run", "/data/run/ckpt") == "/data/run/ckpt"


def test_scrub_secrets_hides_env_and_given_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVKEY")
    out = storage.scrub_secrets("key AKIAENVKEY, generated gen-secret-1, short ab", ["gen-secret-1", "ab", None])
    assert out == "key <hidden>, generated <hidden>, short ab"  # values under 4 characters stay


def test_bad_scheme() -> None:
    for uri in ("gs://bucket/x", "http://example.com/x", "hdfs://nn/x"):
        with pytest.raises(storage.StorageError, match="unsupported URI scheme"):
            storage.read_bytes(uri)
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.resolve("s3://")


def test_resolve_kinds(tmp_path: Path) -> None:
    fs, path = storage.resolve(str(tmp_path / "a"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a")
    fs, path = storage.resolve(f"file://{tmp_path}/a")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a")
    fs, path = storage.resolve("s3://bucket/pre/fix/", StorageConfig(s3_endpoint="http://127.0.0.1:1"))
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/pre/fix"
    assert storage.join("s3://b/p/", "x", "y.bin") == "s3://b/p/x/y.bin"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"


def test_one_s3_filesystem_per_process_and_settings() -> None:
    """Connections are reused: the same settings give the same filesystem object (its connection
    pool), other settings another one."""
    a = StorageConfig(s3_endpoint="http://127.0.0.1:1")
    fs1, _ = storage.resolve("s3://bucket/x", a)
    fs2, _ = storage.resolve("s3://other/y", StorageConfig(s3_endpoint="http://127.0.0.1:1"))
    fs3, _ = storage.resolve("s3://bucket/x", StorageConfig(s3_endpoint="http://127.0.0.1:2"))
    assert fs1 is fs2
    assert fs3 is not fs1


# ----------------------------------------------------------------------------- credentials


@pytest.mark.s3
def test_s3_env_is_the_default(s3_server: S3Server) -> None:
    """Without a config, the standard AWS variables (set by the fixture) find the server."""
    settings = storage.s3_settings()
    assert settings.endpoint == s3_server.endpoint
    assert settings.secret_key == s3_server.secret_key
    uri = s3_server.bucket_uri("storage-env") + "/k.txt"
    storage.write_text(uri, "env")
    assert storage.read_text(uri) == "env"


@pytest.mark.s3
def test_s3_config_beats_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.bucket_uri("storage-cfg")
    storage.write_text(bucket + "/k.txt", "from config")
    # Environment points at nothing with wrong keys; the config holds the real server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key-wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-wrong")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token-wrong")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    cfg = load_config(
        overrides=[
            f"storage.s3_endpoint={s3_server.endpoint}",
            "storage.s3_region=us-east-1",
            f"storage.access_key_id={s3_server.access_key}",
            f"storage.secret_access_key={s3_server.secret_key}",
        ]
    ).storage
    settings = storage.s3_settings(cfg)
    assert settings.endpoint == s3_server.endpoint
    assert settings.region == "us-east-1"
    assert settings.access_key == s3_server.access_key
    assert settings.secret_key == s3_server.secret_key
    assert settings.session_token is None  # the env token belongs to another identity
    assert storage.read_text(bucket + "/k.txt", cfg) == "from config"
    assert storage.list_files(bucket, cfg) == [bucket + "/k.txt"]
    # And the environment alone really is broken (so the config was what worked).
    with pytest.raises(storage.StorageError):
        storage.read_bytes(bucket + "/k.txt", retries=0)


def _assert_hidden(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, "a credential leaked"


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_s3_wrong_credentials_error_hides_secrets(s3_server: S3Server, wrong: str) -> None:
    bucket = s3_server.bucket_uri("storage-auth")
    uri = bucket + "/private.txt"
    storage.write_text(uri, "private")
    bad_secret = "Wr0ngSecret-" + uuid.uuid4().hex
    bad_key = "WRONGKEY" + uuid.uuid4().hex[:8].upper()
    cfg = StorageConfig(
        s3_endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key if wrong == "secret" else bad_key,
        secret_access_key=bad_secret if wrong == "secret" else s3_server.secret_key,
    )
    calls = [
        lambda: storage.read_bytes(uri, cfg),
        lambda: storage.write_text(bucket + "/other.txt", "x", cfg),
        lambda: storage.exists(uri, cfg),
        lambda: storage.list_files(bucket, cfg),
        lambda: storage.delete(uri, cfg),
    ]
    for call in calls:
        with pytest.raises(storage.StorageError) as err:
            call()
        msg = str(err.value)
        assert "s3://storage-auth" in msg  # names the URI
        _assert_hidden(msg + repr(err.value) + err.getrepr().__str__(), bad_secret, s3_server.secret_key)
    # The object is untouched and still readable with the right credentials.
    assert storage.read_text(uri) == "private"


@pytest.mark.s3
def test_reprs_hide_secrets(s3_server: S3Server) -> None:
    cfg = StorageConfig(
        s3_endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        session_token="tok-" + uuid.uuid4().hex,
    )
    settings = storage.s3_settings(cfg)
    fs, _ = storage.resolve("s3://bucket/x", cfg)
    token = cfg.session_token.get_secret_value()
    for text in (
        repr(cfg),
        str(cfg),
        repr(settings),
        str(settings),
        repr(fs),
        repr(s3_server),
        str(s3_server),
    ):
        _assert_hidden(text, s3_server.secret_key, s3_server.access_key, token)


def test_config_echo_never_contains_secrets() -> None:
    secret = "S3CR3T-" + uuid.uuid4().hex
    key = "AKIA" + uuid.uuid4().hex[:16].upper()
    token = "TOKEN-" + uuid.uuid4().hex
    cfg = load_config(
        overrides=[
            f"storage.access_key_id={key}",
            f"storage.secret_access_key={secret}",
            f"storage.session_token={token}",
            "storage.s3_endpoint=http://127.0.0.1:8333",
        ]
    )
    assert cfg.storage.secret_access_key.get_secret_value() == secret  # it was loaded
    echoes = [
        cfg.to_yaml(),
        str(cfg.flat_params()),
        str(cfg.public_dict()),
        repr(cfg),
        str(cfg),
        repr(cfg.storage),
    ]
    for text in echoes:
        _assert_hidden(text, secret, key, token)
    assert "storage.s3_endpoint" in cfg.flat_params()  # the non-secret fields are still echoed
    assert not any("secret" in k or "access_key" in k or "token" in k for k in cfg.flat_params())
    # Round trip: the echoed YAML loads back (without the secrets).
    assert Config.model_validate(yaml.safe_load(cfg.to_yaml())).storage.secret_access_key is None


def test_config_errors_never_contain_secrets(tmp_path: Path) -> None:
    secret = "S3CR3T-" + uuid.uuid4().hex
    bad = [
        [f"storage.secret_access_key={secret}", "storage.retries=many"],  # bad value beside a secret
        [f"storage.secret_access_key=[{secret}]"],  # a secret of the wrong type
        [f"storage.secret_key={secret}"],  # a misspelt secret field
    ]
    for overrides in bad:
        with pytest.raises(ConfigError) as err:
            load_config(overrides=overrides)
        assert "storage." in str(err.value)  # names the field
        _assert_hidden(str(err.value) + repr(err.value), secret)
    f = tmp_path / "c.yaml"
    f.write_text(f"storage:\n  secret_access_key: {secret}\n  retries: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "storage.retries" in str(err.value)
    _assert_hidden(str(err.value), secret)


def test_env_scrubbed_from_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a message that quotes an env credential comes out masked."""
    secret = "envsecret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    def fail() -> None:
        raise OSError(f"server said: bad signature for {secret}")

    with pytest.raises(storage.StorageError) as err:
        storage.with_retries(fail, "read s3://b/k", retries=1, delay=0)
    assert secret not in str(err.value) and "<hidden>" in str(err.value)
    assert "read s3://b/k" in str(err.value)


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise OSError("AWS Error ACCESS_DENIED during HeadObject operation")

    with pytest.raises(storage.StorageError):
        storage.with_retries(denied, "stat s3://b/k", retries=3, delay=0)
    assert len(calls) == 1

    flaky_calls = []

    def flaky() -> str:
        flaky_calls.append(1)
        if len(flaky_calls) < 3:
            raise OSError("connection reset")
        return "ok"

    assert storage.with_retries(flaky, "read x", retries=3, delay=0) == "ok"
    assert len(flaky_calls) == 3


def test_local_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage.write_text("rel/dir/a.txt", "rel")
    assert (tmp_path / "rel" / "dir" / "a.txt").read_text() == "rel"
    assert storage.list_files("rel") == [str(tmp_path / "rel" / "dir" / "a.txt")]
    assert os.path.isabs(storage.list_files("rel")[0])
