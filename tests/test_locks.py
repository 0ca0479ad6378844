"""Output locks: of two runs into the same output exactly one proceeds, the other is told who
holds it; a lock whose holder is provably gone is taken over; local paths and SeaweedFS S3."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conclugen import storage
from conclugen.locks import LOCK_FILE, LockHolder, OutputLockedError, lock_uri, output_lock


def _race(uri: str, n: int = 6) -> tuple[list[LockHolder], list[OutputLockedError]]:
    """``n`` threads take the lock at once and hold it until all have tried."""
    barrier, tried = threading.Barrier(n), threading.Barrier(n)
    won: list[LockHolder] = []
    lost: list[OutputLockedError] = []

    def one() -> None:
        barrier.wait()
        try:
            with output_lock(uri, "extract") as me:
                won.append(me)
                tried.wait()
        except OutputLockedError as e:
            lost.append(e)
            tried.wait()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return won, lost


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(uri: str, holder: LockHolder) -> None:
    storage.makedirs(uri)
    storage.write_text(lock_uri(uri), holder.to_json())


def test_concurrent_acquisitions_one_wins_the_others_name_it(tmp_path: Path) -> None:
    out = str(tmp_path / "features")
    won, lost = _race(out)
    assert len(won) == 1 and len(lost) == 5
    holder = won[0]
    msg = str(lost[0])
    assert re.fullmatch(
        rf"{re.escape(out)} is in use by extract \(pid {os.getpid()} on host {re.escape(holder.host)}, "
        rf"since \d\d:\d\d:\d\d\); wait for it or remove {re.escape(out)}/\.conclugen\.lock if that process is gone",
        msg,
    ), msg
    assert not (tmp_path / "features" / LOCK_FILE).exists()  # released
    assert sorted(os.listdir(out)) == []  # no temp files left either
    with output_lock(out, "pretrain"):  # free again
        pass


def test_lock_holds_holder_info_and_is_released_on_error(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"), output_lock(out, "pretrain") as me:
        info = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert info["command"] == "pretrain" and info["pid"] == os.getpid() and info["token"] == me.token
        assert {"host", "started_at"} <= set(info)
        with pytest.raises(OutputLockedError, match="in use by pretrain"), output_lock(out, "extract"):
            pass
        raise RuntimeError("boom")
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_stale_local_lock_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = str(tmp_path / "features")
    dead = dataclasses.replace(LockHolder.mine("extract"), pid=_dead_pid(), pid_start=None)
    _write_lock(out, dead)
    with caplog.at_level(logging.WARNING, logger="conclugen.locks"), output_lock(out, "extract") as me:
        assert LockHolder.from_json((tmp_path / "features" / LOCK_FILE).read_text()).token == me.token
    assert f"taking over the lock of extract (pid {dead.pid} on host" in caplog.text
    assert not (tmp_path / "features" / LOCK_FILE).exists()


def test_reused_pid_and_earlier_boot_are_stale_other_hosts_never(tmp_path: Path) -> None:
    mine = LockHolder.mine("extract")
    if mine.pid_start is None or mine.boot_id is None:
        pytest.skip("needs /proc")
    assert dataclasses.replace(mine, pid_start=mine.pid_start - 1).is_gone()  # another process, same pid
    assert dataclasses.replace(mine, boot_id="earlier-boot").is_gone()
    assert not mine.is_gone()
    elsewhere = dataclasses.replace(mine, host="another-host", pid=_dead_pid())
    assert not elsewhere.is_gone()
    out = str(tmp_path / "features")
    _write_lock(out, elsewhere)
    with pytest.raises(OutputLockedError, match=r"in use by extract \(pid \d+ on host another-host"):
        with output_lock(out, "extract"):
            pass
    assert LockHolder.from_json((tmp_path / "features" / LOCK_FILE).read_text()) == elsewhere  # left alone


def test_unreadable_lock_is_an_error_not_ignored(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text("{not json")
    with pytest.raises(OutputLockedError, match="unreadable lock"), output_lock(str(tmp_path / "out"), "extract"):
        pass


@pytest.mark.s3
def test_s3_lock_race_stale_takeover_and_release(s3_server, caplog: pytest.LogCaptureFixture) -> None:
    out = storage.join(s3_server.bucket_uri("locks"), "features")
    won, lost = _race(out)
    assert len(won) == 1 and len(lost) == 5
    assert f"{out} is in use by extract (pid {os.getpid()}" in str(lost[0])
    assert f"remove {out}/.conclugen.lock if that process is gone" in str(lost[0])
    assert not storage.exists(lock_uri(out))

    dead = dataclasses.replace(LockHolder.mine("pretrain"), pid=_dead_pid(), pid_start=None)
    _write_lock(out, dead)
    with caplog.at_level(logging.WARNING, logger="conclugen.locks"), output_lock(out, "extract") as me:
        assert LockHolder.from_json(storage.read_text(lock_uri(out))).token == me.token
        with pytest.raises(OutputLockedError, match="in use by extract"), output_lock(out, "pretrain"):
            pass
    assert "taking over the lock of pretrain" in caplog.text
    assert not storage.exists(lock_uri(out))
