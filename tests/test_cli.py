"""The `conclugen` command: help, config show, errors and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conclugen.cli import app

runner = CliRunner()
SUBCOMMANDS = ["synth", "extract", "pretrain", "evaluate", "ablate", "tune", "predict", "demo", "ui", "config"]


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


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "conclugen.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout
