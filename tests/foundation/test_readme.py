"""Every command the README shows resolves: CLI configs compose, scripts parse, make targets exist.

The commands that need real data or weights are composed (``--cfg job``) rather than run; the
built-in world's commands run end to end in tests/tasks/test_world_quick.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _bash_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            cmd = line.split(" # ")[0].strip()
            if cmd:
                lines.append(cmd)
    return lines


COMMANDS = _bash_lines()
CLI = [c for c in COMMANDS if c.startswith("python -m maft.")]
SCRIPTS = [c for c in COMMANDS if c.startswith("python scripts/")]
MAKE = [c for c in COMMANDS if c.startswith("make ")]
ARGPARSE_CLIS = {"maft.convert"}


def test_readme_opens_with_demo_and_test_commands() -> None:
    assert COMMANDS[:2] == ["make demo", "make test"]
    assert set(COMMANDS) == set(CLI) | set(SCRIPTS) | set(MAKE), "unrecognised README command"


@pytest.mark.parametrize("cmd", MAKE)
def test_make_targets_exist(cmd: str) -> None:
    run = subprocess.run(["make", "-n", *cmd.split()[1:]], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("cmd", [c for c in CLI if c.split()[2] not in ARGPARSE_CLIS])
def test_cli_commands_compose(cmd: str) -> None:
    args = [a for a in shlex.split(cmd)[3:] if a != "-m"]  # --cfg job takes no multirun flag
    module = shlex.split(cmd)[2]
    run = subprocess.run(
        [sys.executable, "-m", module, *args, "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("cmd", [c for c in CLI if c.split()[2] in ARGPARSE_CLIS])
def test_argparse_clis_parse(cmd: str) -> None:
    """Non-Hydra entry points (maft.convert): the arguments parse (``--help`` exits 0)."""
    module = shlex.split(cmd)[2]
    run = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    from importlib import import_module

    args = import_module(module).parse_args(shlex.split(cmd)[3:])  # SystemExit on a bad line
    assert str(args.release) == shlex.split(cmd)[3]


@pytest.mark.parametrize("cmd", SCRIPTS)
def test_scripts_parse(cmd: str) -> None:
    script = shlex.split(cmd)[1]
    run = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_python_snippets_compile() -> None:
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.S):
        compile(block, "README.md", "exec")
