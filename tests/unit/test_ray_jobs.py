"""Ray job scripts are the CLI commands: same options, same help, same exit codes.

Each ``ray_jobs/*.py`` hands its arguments to one ``recicl`` command; these tests run the scripts
as Ray would (``python ray_jobs/x.py ...``, a subprocess) and compare them with the installed
``recicl`` console script, so a script that re-declares flags or wraps the wrong command fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from recicl.cli import app

ROOT = Path(__file__).resolve().parents[2]
JOB_SCRIPTS = sorted((ROOT / "ray_jobs").glob("*.py"))
RECICL = Path(sys.executable).parent / "recicl"  # the console script of this environment

#: The command each job script runs; a new script must be added here (the test says so).
JOB_COMMANDS = {
    "build_samples.py": ("samples", "build"),
    "train.py": ("train",),
    "evaluate.py": ("evaluate",),
    "promote.py": ("promote",),
    "embed_items.py": ("embed", "items"),
    "monitor.py": ("monitor",),
    "retune.py": ("retune",),
}

# Wide, plain output: rich would otherwise wrap or colour differently per terminal.
PLAIN = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=ROOT, env=PLAIN, capture_output=True, text=True, timeout=300
    )


def command_of(script: Path) -> tuple[str, ...]:
    assert script.name in JOB_COMMANDS, f"{script.name}: add the command it runs to JOB_COMMANDS"
    return JOB_COMMANDS[script.name]


def cli_command(path: tuple[str, ...]) -> typer.core.TyperCommand:
    """The click command that ``recicl <path>`` runs."""
    command = typer.main.get_command(app)
    for name in path:
        assert isinstance(command, TyperGroup)
        command = command.commands[name]
    assert isinstance(command, typer.core.TyperCommand)
    return command


def option_names(path: tuple[str, ...]) -> list[str]:
    """Every flag of the CLI command at ``path`` (``--use-gpu`` and ``--no-gpu`` both)."""
    params = cli_command(path).params
    return [flag for param in params for flag in (*param.opts, *param.secondary_opts)]


def documented_invocations() -> list[str]:
    """``python ray_jobs/x.py ...`` command lines shown in the README and the KubeRay manifests."""
    texts = [ROOT / "README.md", *sorted((ROOT / "infra").rglob("*.yaml"))]
    found = re.findall(r"python (ray_jobs/\S+\.py[^\n`]*)", "\n".join(p.read_text() for p in texts))
    return [line.strip() for line in found]


def test_every_job_script_is_covered() -> None:
    assert {script.name for script in JOB_SCRIPTS} == set(JOB_COMMANDS)


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: p.name)
def test_help_is_the_cli_commands_help(script: Path) -> None:
    path = command_of(script)
    job = run(sys.executable, script, "--help")
    assert job.returncode == 0, job.stderr
    assert f"Usage: recicl {' '.join(path)} [OPTIONS]" in job.stdout
    for flag in option_names(path):
        assert flag in job.stdout, f"{script.name} --help does not show {flag}"
    if RECICL.exists():
        assert job.stdout == run(RECICL, *path, "--help").stdout


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("evaluate.py", ["--samples", "somewhere"], "Missing option '--model'"),
        ("promote.py", [], "Missing option '--version'"),
        ("train.py", ["--num-workers", "0"], "Invalid value for '--num-workers'"),
        ("embed_items.py", [], "Missing option '--samples'"),
    ],
)
def test_usage_errors_exit_2_like_the_cli(script: str, argv: list[str], message: str) -> None:
    job = run(sys.executable, ROOT / "ray_jobs" / script, *argv)
    assert job.returncode == 2
    assert message in job.stderr
    if RECICL.exists():
        cli = run(RECICL, *command_of(ROOT / "ray_jobs" / script), *argv)
        assert (cli.returncode, cli.stderr) == (job.returncode, job.stderr)


def test_a_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    job = run(
        sys.executable, ROOT / "ray_jobs" / "promote.py", "--version", "1", "--config", missing
    )
    assert job.returncode == 2
    assert job.stderr.strip() == (
        f"error: config file {missing} does not exist: pass --config with a YAML file"
    )


@pytest.mark.parametrize("invocation", documented_invocations())
def test_documented_invocations_parse(invocation: str) -> None:
    """Flags shown to users (README, infra/) exist with valid values: a renamed flag fails here."""
    script, *argv = shlex.split(invocation)
    path = command_of(ROOT / script)
    params = cli_command(path).make_context(f"recicl {' '.join(path)}", argv).params
    if params.get("config") is not None:
        assert (ROOT / params["config"]).is_file(), f"{invocation}: no such config"


def test_the_readme_and_infra_show_every_job() -> None:
    shown = {Path(shlex.split(line)[0]).name for line in documented_invocations()}
    assert shown == set(JOB_COMMANDS)
