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
        storage.with_retries(fail, "read s3://b/k", retries=1, delay=0)  # 'bad signature' is transient
    assert secret not in str(err.value) and "<hidden>" in str(err.value)
    assert "read s3://b/k" in str(err.value)


class FakeClock:
    """A clock that only moves when the code under test sleeps (or a call takes time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_transient_errors_back_off_exponentially_up_to_the_time_budget() -> None:
    clock = FakeClock()
    calls = []

    def refused() -> None:
        calls.append(clock.now)
        raise OSError("AWS Error NETWORK_CONNECTION: curlCode: 7, Could not connect to server")

    with pytest.raises(storage.StorageUnavailableError) as err:
        storage.with_retries(refused, "read s3://b/k", retries=None, seconds=60, clock=clock, sleep=clock.sleep)
    # 0.2 s doubling, at most 5 s apart; the next 5 s wait would end past 60 s (56.2 + 5)
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2] + [5.0] * 10)
    assert len(calls) == 16 and clock.now == pytest.approx(56.2)
    msg = str(err.value)
    assert "read s3://b/k" in msg and "unreachable" in msg and "after 16 tries" in msg
    assert "curlCode: 7" in msg  # the cause is kept
    assert isinstance(err.value, storage.StorageError)


def test_an_outage_shorter_than_the_budget_is_waited_out() -> None:
    clock = FakeClock()

    def down_for_20_s() -> str:
        if clock.now < 20:
            raise OSError("connection reset by peer")
        return "data"

    assert storage.with_retries(down_for_20_s, "read x", retries=None, clock=clock, sleep=clock.sleep) == "data"
    # the first try at or after 20 s: 6.2 s of doubling, then 5 s steps → 21.2 s
    assert clock.now == pytest.approx(21.2) and len(clock.sleeps) == 8


def test_the_retry_cap_and_slow_calls_both_end_retrying() -> None:
    clock = FakeClock()
    calls = []

    def fail() -> None:
        calls.append(1)
        raise OSError("503 Slow Down")

    with pytest.raises(storage.StorageUnavailableError, match="after 3 tries"):
        storage.with_retries(fail, "write x", retries=2, clock=clock, sleep=clock.sleep)
    assert len(calls) == 3

    clock = FakeClock()

    def times_out() -> None:  # each try spends 25 s before its timeout fires
        clock.now += 25
        raise OSError("curlCode: 28, Timeout was reached")

    with pytest.raises(storage.StorageUnavailableError, match="after 3 tries"):
        storage.with_retries(times_out, "stat x", retries=None, seconds=60, clock=clock, sleep=clock.sleep)
    # tries end at 25, 50.2, 75.6: the third ends past the budget, no fourth
    assert clock.now == pytest.approx(75.6)


@pytest.mark.parametrize("error", [
    OSError("AWS Error ACCESS_DENIED during HeadObject operation"),
    OSError("AWS Error NO_SUCH_BUCKET during PutObject operation: The specified bucket does not exist"),
    OSError("AWS Error INVALID_ACCESS_KEY_ID during GetObject operation"),
    PermissionError("permission denied"),
])
def test_permanent_errors_are_not_retried(error: OSError) -> None:
    clock = FakeClock()
    calls = []

    def denied() -> None:
        calls.append(1)
        raise error

    with pytest.raises(storage.StorageError) as err:
        storage.with_retries(denied, "stat s3://b/k", retries=None, clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and clock.sleeps == []
    assert not isinstance(err.value, storage.StorageUnavailableError)
    assert "stat s3://b/k" in str(err.value)


def test_flaky_call_succeeds_and_missing_objects_are_not_retried() -> None:
    clock = FakeClock()
    flaky_calls = []

    def flaky() -> str:
        flaky_calls.append(1)
        if len(flaky_calls) < 3:
            raise OSError("connection reset")
        return "ok"

    assert storage.with_retries(flaky, "read x", clock=clock, sleep=clock.sleep) == "ok"
    assert len(flaky_calls) == 3 and clock.sleeps == pytest.approx([0.2, 0.4])

    def missing() -> None:
        raise FileNotFoundError("no such key")

    with pytest.raises(FileNotFoundError):
        storage.with_retries(missing, "read x", clock=clock, sleep=clock.sleep)
    assert len(clock.sleeps) == 2


def test_retry_policy_from_the_storage_section() -> None:
    default = Config().storage
    assert storage.retry_policy("s3://b/k", default) == {"retries": 30, "seconds": 60.0}
    assert storage.retry_policy("s3://b/k", None) == {"retries": 30, "seconds": 60.0}
    cfg = load_config(overrides=["storage.retries=4", "storage.retry_seconds=7.5"]).storage
    assert storage.retry_policy("s3://b/k", cfg) == {"retries": 4, "seconds": 7.5}
    assert storage.retry_policy("s3://b/k", cfg, retries=1) == {"retries": 1, "seconds": 7.5}  # a call's cap
    # a local disk error is not an outage: a couple of quick retries only
    assert storage.retry_policy("/tmp/x", default) == {"retries": 2, "seconds": 1.0}
    with pytest.raises(ConfigError, match="storage.retry_seconds"):
        load_config(overrides=["storage.retry_seconds=-1"])


def test_a_stalled_s3_endpoint_fails_the_call_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: the request timeout ends each try and
    the retry budget ends the call, with an error naming the URI."""
    import socket
    import threading

    monkeypatch.setattr(storage, "S3_REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(storage, "S3_SDK_ATTEMPTS", 1)
    held: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]

        def accept() -> None:
            try:
                while True:
                    held.append(server.accept()[0])  # keep it open, say nothing
            except OSError:
                return

        threading.Thread(target=accept, daemon=True).start()
        cfg = StorageConfig(s3_endpoint=f"http://127.0.0.1:{port}", access_key_id="stall-key",
                            secret_access_key="stall-secret", retry_seconds=1.5)
        with pytest.raises(storage.StorageUnavailableError) as err:
            storage.read_bytes("s3://stalled/clip.mp4", cfg)
    for c in held:
        c.close()
    assert held, "the client never connected"
    msg = str(err.value)
    assert "s3://stalled/clip.mp4" in msg and "unreachable" in msg and "Timeout" in msg


def test_local_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage.write_text("rel/dir/a.txt", "rel")
    assert (tmp_path / "rel" / "dir" / "a.txt").read_text() == "rel"
    assert storage.list_files("rel") == [str(tmp_path / "rel" / "dir" / "a.txt")]
    assert os.path.isabs(storage.list_files("rel")[0])
