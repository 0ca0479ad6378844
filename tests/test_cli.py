"""The `conclugen` command: help, config show, the one error/Ray wrapper and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from conclugen.cli import app, command, use_ray
from conclugen.config import Config, load_config
from conclugen.devtools.mlflow_server import http_ok
from conclugen.devtools.processes import free_ports, kill_group, spawn
from conclugen.errors import ConCluGenError
from tests.helpers.sockets import listening, not_loopback, process_tree

runner = CliRunner()
SUBCOMMANDS = ["synth", "extract", "pretrain", "evaluate", "ablate", "tune", "predict", "demo", "ui", "config", "import-reference"]


def test_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_config_show_applies_overrides() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "model.d=256", "--set", "train.epochs=7"])
    assert result.exit_code == 0, result.output
    assert "d: 256" in result.output and "epochs: 7" in result.output


def test_bad_override_exits_2_naming_field() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "model.dd=1"])
    assert result.exit_code == 2
    assert "model.dd" in result.output


@pytest.mark.parametrize("module", ["conclugen", "conclugen.cli"])
def test_console_script_runs(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout


def _wrapped_app(body: Callable[[], None]) -> typer.Typer:
    """A one-command app whose command runs ``body`` inside the CLI's wrapper."""
    demo_app = typer.Typer()

    @demo_app.command()
    @command
    def run(flag: Annotated[int, typer.Option(help="An option the wrapper must keep.")] = 0) -> None:
        body()

    return demo_app


def test_project_error_is_one_line_and_exit_1() -> None:
    def body() -> None:
        raise ConCluGenError("the thing is wrong")

    result = runner.invoke(_wrapped_app(body), ["--flag", "3"])
    assert result.exit_code == 1
    assert result.stderr == "error: the thing is wrong\n"
    assert "Traceback" not in result.output


def test_other_errors_are_not_swallowed() -> None:
    def body() -> None:
        raise KeyError("bug")

    result = runner.invoke(_wrapped_app(body), [])
    assert isinstance(result.exception, KeyError)


@pytest.mark.parametrize("fails", [False, True])
def test_ray_started_by_a_command_is_stopped_when_it_ends(monkeypatch: pytest.MonkeyPatch,
                                                          fails: bool) -> None:
    from conclugen import runtime

    events: list[str] = []

    @contextmanager
    def fake_session(cfg: Config) -> Iterator[None]:
        events.append("start")
        try:
            yield
        finally:
            events.append("stop")

    monkeypatch.setattr(runtime, "ray_session", fake_session)

    def body() -> None:
        use_ray(load_config())
        events.append("work")
        if fails:
            raise ConCluGenError("failed after Ray started")

    result = runner.invoke(_wrapped_app(body), [])
    assert events == ["start", "work", "stop"]
    assert result.exit_code == (1 if fails else 0)


@pytest.mark.slow
def test_ui_listens_on_loopback_only(tmp_path: Path) -> None:
    """`conclugen ui` (mlflow ui and every process it starts) accepts connections from this host only."""
    port = free_ports(1)[0]
    cmd = [sys.executable, "-m", "conclugen", "ui", "--port", str(port), "--set", f"workdir={tmp_path / 'w'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = spawn(cmd, env, tmp_path / "ui.log", tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not http_ok(f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()
            time.sleep(0.5)
        addrs = listening(process_tree(proc.pid))
        assert any(p == port for _, _, p in addrs), addrs
        assert not not_loopback(addrs), not_loopback(addrs)
    finally:
        kill_group(proc)
