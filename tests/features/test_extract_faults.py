"""Extraction under faults, on real parts: an S3 server (its own SeaweedFS) stopped mid-run and
started again, one that stays down, the driver SIGKILLed and the command run again, and a Ray
node removed mid-run. Each fault lands after the first feature shard is observed (the runs are
made long enough by config knobs, tests/helpers/extract_scenarios.SLOW_SETS); each outcome is
judged from the store: every manifest clip in exactly one of features/errors, once, and every
shard readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conclugen.config import StorageConfig
from conclugen.devtools.s3 import S3Server, start_s3
from conclugen.features.extract import run_extract
from conclugen.features.store import FEATURES_DIR
from tests.helpers.extract_scenarios import (
    SLOW_SETS,
    Background,
    accounting,
    exact,
    manifest_ids,
    scenario_config,
    shard_files,
    synth_corpus,
    wait_for,
)

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLIPS = 10
OUTAGE_S = 20.0


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS of this module only: stopping it leaves the session's server alone."""
    server = start_s3(tmp_path_factory.mktemp("faults-s3"), timeout=120)
    try:
        yield server
    finally:
        server.stop()


def _storage_sets(server: S3Server) -> list[str]:
    return [f"storage.s3_endpoint={server.endpoint}", f"storage.access_key_id={server.access_key}",
            f"storage.secret_access_key={server.secret_key}"]


def _storage(server: S3Server) -> StorageConfig:
    return StorageConfig(s3_endpoint=server.endpoint, access_key_id=server.access_key,
                         secret_access_key=server.secret_key)


def _cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # "local": the CLI starts its own new local Ray (not the session's cluster of this test run)
    return {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled", **(extra or {})}


def _extract_cmd(corpus: str, out: str, *sets: str) -> list[str]:
    return [sys.executable, "-m", "conclugen", "extract", corpus, "--out", out,
            *(a for s in [*SLOW_SETS, *sets] for a in ("--set", s))]


@pytest.mark.s3
@pytest.mark.ray
def test_s3_down_20s_mid_run_is_waited_out(ray_cluster: None, own_s3: S3Server) -> None:
    scfg = _storage(own_s3)
    corpus = synth_corpus(own_s3.bucket_uri("faults-a-corpus") + "/meld", CLIPS, scfg)
    out = own_s3.bucket_uri("faults-a-out") + "/features"
    cfg = scenario_config(*_storage_sets(own_s3))  # clip reads follow the storage section's retry budget
    t0 = time.monotonic()
    run = Background(lambda: run_extract(corpus, "meld", out, cfg, shard_rows=2, progress=None))
    wait_for(lambda: bool(shard_files(out, FEATURES_DIR, scfg)), 240, "the first feature shard", alive=run.alive)
    stopped_at = time.monotonic()
    own_s3.stop()
    time.sleep(OUTAGE_S)  # the outage itself (not a wait for a condition)
    assert run.alive(), "the run ended while its storage was down"
    own_s3.restart(timeout=120)
    down_s = time.monotonic() - stopped_at
    summary = run.join(300)
    acc = accounting(out, manifest_ids(corpus, cfg), scfg)
    print(f"S3 down {down_s:.1f} s (stop → ready again); run {time.monotonic() - t0:.1f} s; {json.dumps(acc)}")
    assert summary.accounted and exact(acc), acc
    assert acc["errors"] == 0 and acc["features"] == CLIPS  # nothing lost to the outage


@pytest.mark.s3
def test_s3_down_past_the_retries_fails_naming_the_uri_then_rerun_completes(own_s3: S3Server,
                                                                             tmp_path: Path) -> None:
    scfg = _storage(own_s3)
    corpus = synth_corpus(own_s3.bucket_uri("faults-b-corpus") + "/meld", CLIPS, scfg)
    out = own_s3.bucket_uri("faults-b-out") + "/features"
    cmd = _extract_cmd(corpus, out, "storage.retry_seconds=5")
    env = _cli_env(own_s3.env)
    log = tmp_path / "first.log"
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: bool(shard_files(out, FEATURES_DIR, scfg)), 300, "the first feature shard",
                 alive=lambda: proc.poll() is None)
        own_s3.stop()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        own_s3.restart(timeout=120)
    first = log.read_text(errors="replace")
    failed_s = time.monotonic() - t0
    error_lines = [line for line in first.splitlines() if line.startswith("error:")]
    assert rc == 1 and error_lines, first[-3000:]
    assert own_s3.secret_key not in first
    before = accounting(out, manifest_ids(corpus, scenario_config(*_storage_sets(own_s3))), scfg)
    assert not before["duplicates"] and not before["unreadable"], before

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    acc = accounting(out, manifest_ids(corpus, scenario_config(*_storage_sets(own_s3))), scfg)
    print(f"first run failed after {failed_s:.1f} s with {before['features']} clips written; "
          f"rerun rc {again.returncode}; {json.dumps(acc)}")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert exact(acc) and acc["errors"] == 0 and acc["features"] == CLIPS, acc
    assert f"{before['features'] + before['errors']} already written" in again.stdout  # only the rest redone
    # the error that ended the first run names the output and says why (checked last: see above)
    # (the first call to give up may be a clip read or a shard write: either URI is named)
    assert (out in error_lines[-1] or corpus in error_lines[-1]) and "unreachable" in error_lines[-1], error_lines


def _kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the driver, then (by pid) the local Ray processes it had started; returns how many
    of those there were."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(kids, timeout=30)
    return len(kids)


def test_driver_sigkill_mid_run_then_same_command_completes(tmp_path: Path) -> None:
    corpus = synth_corpus(str(tmp_path / "corpus"), CLIPS)
    out = str(tmp_path / "features")
    cmd = _extract_cmd(corpus, out)
    env = _cli_env()
    t0 = time.monotonic()
    with open(tmp_path / "first.log", "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: bool(shard_files(out, FEATURES_DIR)), 300, "the first feature shard",
                 alive=lambda: proc.poll() is None)
        written = len(shard_files(out, FEATURES_DIR))
    finally:
        n_ray = _kill_tree(proc)
    killed_s = time.monotonic() - t0
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    acc = accounting(out, manifest_ids(corpus, scenario_config()))
    print(f"killed after {killed_s:.1f} s with {written} feature shards ({n_ray} Ray processes reaped); "
          f"rerun rc {again.returncode} after {time.monotonic() - t0:.1f} s in all; {json.dumps(acc)}")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert exact(acc) and acc["errors"] == 0 and acc["features"] == CLIPS, acc


def test_node_removed_mid_run_still_accounts_every_clip(tmp_path: Path) -> None:
    corpus = synth_corpus(str(tmp_path / "corpus"), CLIPS)
    cmd = [sys.executable, "-m", "tests.helpers.extract_scenarios", "node-removed", "--corpus", corpus,
           "--out", str(tmp_path / "features")]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"node-removed scenario {time.monotonic() - t0:.1f} s: {json.dumps(result)}")
    assert result["accounted"] and result["ok"], result
    assert result["errors"] == 0 and result["features"] == CLIPS, result
