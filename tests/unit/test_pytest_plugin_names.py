"""The plugin's fixture names and what loading it costs, in a user's project (a fresh directory, pytest in a
subprocess): every fixture has the ``dyndisc_`` prefix; each old name is a deprecated alias of the same scope
that warns and still works; a project's own fixture of an old name wins without a warning; a session that
uses no server fixture never imports the server kit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dyndisc.testing.fixture_aliases import RENAMED

#: Fixtures that never had an unprefixed name, so no alias.
WITHOUT_ALIAS = {"dyndisc_store", "dyndisc_runtime", "dyndisc_nats_cluster"}
#: Turns the aliases' warning (and nothing else) into an error, as this repository's pyproject.toml does.
ALIASES_FAIL = "error::DeprecationWarning:dyndisc.testing.fixture_aliases"


def project(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_old_name_is_an_alias_of_a_prefixed_fixture_of_the_same_scope(tmp_path: Path) -> None:
    result = run_pytest(project(tmp_path, {}), "--fixtures")
    listed = {
        m["name"]: m["scope"] or "function"
        for m in re.finditer(r"^(?P<name>\w+)(?: \[(?P<scope>\w+) scope\])? -- ", result.stdout, re.M)
    }
    for old, (new, scope) in RENAMED.items():
        assert listed.get(new) == scope, f"{new} missing or not {scope}-scoped:\n{result.stdout}"
        assert listed.get(old) == scope, f"{old} missing or not {scope}-scoped:\n{result.stdout}"
    plugin = {name for name in listed if name.startswith("dyndisc_")}
    assert plugin == {new for new, _ in RENAMED.values()} | WITHOUT_ALIAS
    assert listed["dyndisc_nats_cluster"] == "session"


OLD_NAMES_IN_USE = """
import pytest


def test_old_server_factories(tcp_proxy, private_servers):
    assert callable(tcp_proxy)
    assert callable(private_servers)


@pytest.mark.anyio
async def test_old_make_runtime(make_runtime, dyndisc_store):
    runtime = await make_runtime()
    assert runtime.instance_id in dyndisc_store.inner.lease_ids
"""


def test_an_old_name_warns_and_still_works(tmp_path: Path) -> None:
    root = project(tmp_path, {"test_old.py": OLD_NAMES_IN_USE})
    result = run_pytest(root)
    assert result.returncode == 0, result.stdout + result.stderr
    for old in ("tcp_proxy", "private_servers", "make_runtime"):
        new = RENAMED[old][0]
        assert f"DeprecationWarning: the pytest fixture '{old}' is deprecated" in result.stdout
        assert f"use '{new}'" in result.stdout
    # The filter this repository uses makes each use an error.
    failing = run_pytest(root, "-W", ALIASES_FAIL)
    assert re.search(r"\b2 errors?\b", failing.stdout), failing.stdout


def test_a_projects_own_fixture_of_an_old_name_wins_silently(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "conftest.py": (
                "import pytest\n\n\n"
                "@pytest.fixture(scope='session')\ndef etcd_server():\n    return 'mine'\n\n\n"
                "@pytest.fixture\ndef make_runtime():\n    return 'my factory'\n"
            ),
            "test_mine.py": (
                "def test_mine(etcd_server, make_runtime):\n"
                "    assert etcd_server == 'mine'\n"
                "    assert make_runtime == 'my factory'\n"
            ),
        },
    )
    result = run_pytest(root, "-W", ALIASES_FAIL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in result.stdout
    assert "1 passed" in result.stdout


# Records, when the session ends, which modules of the server kit it imported.
RECORD_IMPORTS = """
import sys


def pytest_unconfigure(config):
    kit = ("dyndisc.testing.servers", "dyndisc.testing.server_fixtures")
    loaded = sorted(m for m in sys.modules if m.startswith(kit))
    (config.rootpath / "loaded.txt").write_text("\\n".join(loaded))
"""

IN_MEMORY_ONLY = """
import pytest

pytestmark = pytest.mark.anyio


async def test_in_memory(dyndisc_runtime, dyndisc_store):
    await dyndisc_runtime.endpoint("ns.c.e").register("tcp://127.0.0.1:9000")
    assert dyndisc_runtime.instance_id in dyndisc_store.inner.lease_ids


async def test_failing_on_purpose(dyndisc_store):
    # A failed test's report asks for server logs: that must not load the kit either.
    assert dyndisc_store is None


def test_with_a_proxy(dyndisc_tcp_proxy):
    assert callable(dyndisc_tcp_proxy)
"""


def test_the_server_kit_is_imported_only_by_a_test_that_uses_a_server_fixture(tmp_path: Path) -> None:
    root = project(tmp_path, {"conftest.py": RECORD_IMPORTS, "test_user.py": IN_MEMORY_ONLY})
    in_memory = run_pytest(root, "-k", "not proxy")
    assert re.search(r"\b1 failed, 1 passed\b", in_memory.stdout), in_memory.stdout
    assert (root / "loaded.txt").read_text() == ""
    with_a_server_fixture = run_pytest(root, "-k", "proxy")
    assert "1 passed" in with_a_server_fixture.stdout, with_a_server_fixture.stdout
    loaded = (root / "loaded.txt").read_text().split()
    assert "dyndisc.testing.server_fixtures" in loaded
    assert "dyndisc.testing.servers" in loaded
