"""The command tree: every command and option explains itself, `--version`, sub-apps."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from kvpager import __version__
from kvpager.cli.app import app

runner = CliRunner()


def walk(command, path: tuple[str, ...] = ()):
    """(path, command) for the whole tree. Duck-typed: recent Typer ships its own Click."""
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = typer.Context(command)
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), (*path, name))


COMMANDS = list(walk(typer.main.get_command(app)))


def test_the_tree_has_every_sub_app():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"simulate", "sweep", "report", "trace", "trace info", "trace convert", "bench",
            "bench manager", "bench attention"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS[1:],
                         ids=[" ".join(p) for p, _ in COMMANDS[1:]])
def test_every_command_and_parameter_has_help(path, command):
    assert (command.help or "").strip(), f"{' '.join(path)} has no help"
    for param in command.params:
        if param.name == "help":
            continue
        text = getattr(param, "help", None)
        assert text and text.strip(), f"{' '.join(path)}: {param.name} has no help text"


@pytest.mark.parametrize("args", [["--help"], ["sweep", "--help"], ["report", "--help"],
                                  ["bench", "--help"], ["bench", "manager", "--help"],
                                  ["simulate", "--help"], ["trace", "--help"]])
def test_help_pages_exit_0(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version_flag():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"kvpager {__version__}"


def test_unknown_command_and_option_exit_2():
    assert runner.invoke(app, ["simulat"]).exit_code == 2
    assert runner.invoke(app, ["report", "--colour", "x"]).exit_code == 2
