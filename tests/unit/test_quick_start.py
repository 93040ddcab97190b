"""The README's quick start, as a new user runs it: its first command, word for word, in a fresh copy of the
checkout (a new virtual environment, a plain install from the package registry, the demo in memory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    """The commands of the README's Quick start block, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S)
    assert block is not None, "the README has no Quick start code block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_is_two_commands_install_and_demo_then_the_suite() -> None:
    install, suite = quick_start_commands()
    assert "venv" in install
    assert install.endswith("dyndisc demo")
    assert suite == "bash .ci/run"


@pytest.mark.slow
def test_the_first_quick_start_command_runs_on_a_fresh_checkout(tmp_path: Path) -> None:
    install, _ = quick_start_commands()
    checkout = tmp_path / "dyndisc"
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a file deleted in the work tree but not yet in git is skipped
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    # The user's python3 is this interpreter's version; the venv and the install are new.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", "-c", install],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "crash" in done.stdout  # the demo explains what it shows
    assert (checkout / ".venv" / "bin" / "dyndisc").exists()
