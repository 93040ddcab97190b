"""The documented pytest examples in a user's project, not this repository's: the testing page's example and
``examples/test_with_dyndisc.py`` are copied into a fresh directory with a ``pytest.ini`` of its own (no
``asyncio_mode``) and run there by ``python -m pytest`` in a subprocess, as written, under pytest-asyncio's
strict mode (its default) and under anyio's plugin alone; then with the marks the page's table gives for the
other configurations, and with none, where dyndisc's own message must say what to do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANYIO_MARK = "@pytest.mark.anyio\n"
#: What dyndisc says when no async plugin runs a test that asks for a runtime (pytest's own message, "async
#: def functions are not natively supported", names no fix that works with dyndisc's fixtures).
NO_PLUGIN = "no async test plugin runs it"


def docs_example() -> str:
    """The testing page's example: its first Python block."""
    page = (ROOT / "docs" / "testing.md").read_text()
    block = re.search(r"```python\n(.*?)```", page, re.S)
    assert block is not None, "docs/testing.md has no Python example"
    assert ANYIO_MARK in block.group(1)
    return block.group(1)


def project(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fresh project outside this repository: a bare pytest.ini (so it is the rootdir) and ``files``."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Nothing of the outer session leaks in (PYTEST_ADDOPTS, PYTEST_PLUGINS ...).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert f"rootdir: {root}" in result.stdout, result.stdout  # not this repository's configuration
    return result


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="pytest-asyncio strict mode"),
        pytest.param(["-p", "no:asyncio"], id="anyio's plugin alone"),
    ],
)
def test_the_documented_examples_pass_as_written_in_a_fresh_project(tmp_path: Path, args: list[str]) -> None:
    root = project(
        tmp_path,
        {
            "test_docs_example.py": docs_example(),
            "test_with_dyndisc.py": (ROOT / "examples" / "test_with_dyndisc.py").read_text(),
        },
    )
    result = run_pytest(root, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout


def test_strict_mode_with_its_own_mark_and_with_no_mark(tmp_path: Path) -> None:
    example = docs_example()
    root = project(
        tmp_path,
        {
            "test_marked_asyncio.py": example.replace(ANYIO_MARK, "@pytest.mark.asyncio\n"),
            "test_unmarked.py": example.replace(ANYIO_MARK, ""),
        },
    )
    result = run_pytest(root)
    assert "PASSED test_marked_asyncio.py::test_router_sees_worker" in result.stdout, result.stdout
    assert "ERROR test_unmarked.py::test_router_sees_worker" in result.stdout
    assert f"test_router_sees_worker uses a dyndisc runtime fixture, but {NO_PLUGIN}" in result.stdout
    assert "mark it @pytest.mark.asyncio" in result.stdout
    assert "not natively supported" not in result.stdout


def test_auto_mode_needs_no_mark_and_says_why_the_anyio_mark_conflicts(tmp_path: Path) -> None:
    example = docs_example()
    root = project(
        tmp_path, {"test_unmarked.py": example.replace(ANYIO_MARK, ""), "test_marked_anyio.py": example}
    )
    result = run_pytest(root, "-o", "asyncio_mode=auto")
    assert "PASSED test_unmarked.py::test_router_sees_worker" in result.stdout, result.stdout
    assert "ERROR test_marked_anyio.py::test_router_sees_worker" in result.stdout
    assert "is marked @pytest.mark.anyio, but pytest-asyncio's auto mode runs it too" in result.stdout


def test_without_an_async_plugin_the_fixture_says_what_to_configure(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "test_user.py": "def test_sync_test_asking_for_a_runtime(dyndisc_runtime):\n    pass\n",
            "test_async.py": docs_example(),
        },
    )
    result = run_pytest(root, "-p", "no:asyncio", "-p", "no:anyio")
    assert result.stdout.count(NO_PLUGIN) >= 2, result.stdout
    assert re.search(r"\b2 errors?\b", result.stdout), result.stdout
    assert "not natively supported" not in result.stdout
