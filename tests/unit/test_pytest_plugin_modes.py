"""The plugin's async fixtures work the way a user's project is configured: pytest-asyncio in auto mode, in
strict mode (tests marked ``asyncio``), and anyio's own plugin alone (tests marked ``anyio``, pytest-asyncio
disabled). Each configuration runs the testing page's example in a pytest of its own."""

from __future__ import annotations

import pytest

EXAMPLE = """
{marker}
async def test_router_sees_worker(dyndisc_make_runtime):
    worker, frontend = await dyndisc_make_runtime(lease_ttl=1), await dyndisc_make_runtime()
    await worker.endpoint("ns.backend.generate").register("tcp://127.0.0.1:9000")
    client = await frontend.endpoint("ns.backend.generate").client()
    (instance,) = await client.wait_for_instances(timeout=1)
    assert instance.instance_id == worker.instance_id


{marker}
async def test_one_runtime(dyndisc_runtime, dyndisc_store):
    await dyndisc_runtime.endpoint("ns.c.e").register("tcp://127.0.0.1:9000")
    assert [i.instance_id for i in await dyndisc_runtime.list()] == [dyndisc_runtime.instance_id]
"""

ANYIO_BACKEND = """
import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


@pytest.mark.parametrize(
    ("mode", "marker", "args", "extra"),
    [
        ("pytest-asyncio auto", "", ["-o", "asyncio_mode=auto"], ""),
        ("pytest-asyncio strict", "@pytest.mark.asyncio", ["-o", "asyncio_mode=strict"], ""),
        ("anyio alone", "@pytest.mark.anyio", ["-p", "no:asyncio"], ANYIO_BACKEND),
    ],
)
def test_the_documented_example_passes(
    pytester: pytest.Pytester, mode: str, marker: str, args: list[str], extra: str
) -> None:
    pytester.makepyfile(test_user="import pytest\n" + extra + EXAMPLE.format(marker=marker))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2)


def test_without_an_async_plugin_the_fixture_says_what_to_configure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
def test_sync_test_asking_for_a_runtime(dyndisc_runtime):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:anyio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*need an async test plugin*"])
