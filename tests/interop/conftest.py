"""The interop suite: dyndisc beside the real reference runtime (NVIDIA Dynamo 1.6.1), both directions.

Every test here needs the reference installed by ``tools/dynamo-reference/install.sh`` (``.ci/run`` installs
it first). In CI a reference that cannot be installed fails every test here, loudly; elsewhere they are
skipped with the reason. Latencies the tests measure are printed at the end of the session.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest
from refkit import SEEN, TIMINGS, Reference, install_reference


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def reference() -> Reference:
    """The installed reference runtime (its python and model folder)."""
    return install_reference()


@pytest.fixture(autouse=True)
def _forget_processes() -> None:
    SEEN.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the stderr of every process the failed test ran (the reference logs there)."""
    report = yield
    if report.failed:
        for name, proc in SEEN.items():
            report.sections.append((f"{name} stderr (last 40 lines)", proc.log_tail()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS.rows:
        terminalreporter.write_sep("-", "interop latencies (reference 1.6.1 and dyndisc, this run)")
        terminalreporter.write_line(TIMINGS.render())
