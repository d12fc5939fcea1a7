"""Every command and snippet of README.md runs as written.

Python blocks run in a fresh interpreter each. Shell blocks: every `kvpager ...` command runs
in-process in a scratch directory that links `examples/`; the set-up parts (`python3 -m venv`,
`pip install`, activating the environment, and the test command itself) are what CI's
`.ci/run` runs, so they are not repeated here. Synopsis lines are instantiated: `TRACE` is the
bundled Azure slice, `RUN_DIR` the run directory an earlier command wrote, `N` a token count,
`[...]` optional parts are given, `a|b` takes `a`, and `--ray` is left out (a real Ray cluster
is tested in tests/cli/test_sweep_ray.py). To keep this test to seconds, commands that accept
`--limit` replay 100 requests unless the README gives a limit, sweeps run in this process,
and `kvpager bench manager` times one short scenario.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SETUP = ("python3 -m venv", ". .venv/bin/activate", "pip install", "python -m pytest",
         # the GPU verification command: its dry run is tests/verify/test_gpu_verify_dry_run
         "PYTHONPATH=. python3 benchmarks/gpu_verify.py",
         "PYTHONPATH=. python benchmarks/gpu_verify.py")
FAST = {"bench": ["--steps", "5", "--repeats", "1", "--scenario", "decode-256"],
        "sweep": ["--workers", "1"], "plan": ["--workers", "1"]}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def shell_commands() -> list[str]:
    """The `kvpager` commands of the shell blocks, continuation lines joined, comments and
    set-up parts dropped."""
    commands = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in (p.strip() for p in line.split("&&")):
                if part.startswith("kvpager "):
                    commands.append(part)
                else:
                    assert not part or part.startswith(SETUP), f"unexpected command {part!r}"
    return commands


def instantiate(command: str) -> list[str]:
    """A synopsis line as one concrete command line (see the module docstring)."""
    command = re.sub(r"\[--ray [^\]]*\]", "", command)
    command = command.replace("...", "").replace("[", "").replace("]", "")
    command = re.sub(r"([^\s|]+)(\|[^\s|]+)+", r"\1", command)  # a|b|c -> a
    command = re.sub(r"--max-num-batched-tokens N\b", "--max-num-batched-tokens 8192", command)
    command = re.sub(r"--max-model-len N\b", "--max-model-len 4096", command)
    command = re.sub(r"--max-model-len L\b", "--max-model-len 8192", command)
    command = re.sub(r"--tp N\b", "--tp 1", command)
    command = command.replace("RUN_DIR", "runs/my-run")
    command = command.replace("TRACE", "examples/azure_conv_sample.csv")
    args = shlex.split(command)[1:]  # without "kvpager"
    if args[0] in ("simulate", "sweep", "plan") and "--limit" not in args:
        args += ["--limit", "100"]
    return args + FAST.get(args[0], [])


COMMANDS = shell_commands()


def test_the_readme_has_commands_and_snippets():
    assert any(c.startswith("kvpager simulate examples/") for c in COMMANDS)
    assert len(blocks("python")) >= 3


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory for all commands, in README order (a later one reads what an earlier
    one wrote, as a reader following the README would)."""
    root = tmp_path_factory.mktemp("readme")
    (root / "examples").symlink_to(REPO / "examples")
    return root


@pytest.mark.parametrize("command", COMMANDS)
def test_shell_command_runs(command, scratch, monkeypatch):
    from kvpager.cli.app import app

    monkeypatch.chdir(scratch)
    result = CliRunner().invoke(app, instantiate(command))
    assert result.exit_code == 0, f"{command}\n{result.output}"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs(index, tmp_path):
    code = blocks("python")[index]
    if "transformers" in code:
        pytest.importorskip("transformers")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"snippet {index}:\n{code}\n{done.stderr[-3000:]}"
