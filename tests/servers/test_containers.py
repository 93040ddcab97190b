"""``DYNDISC_TEST_SERVERS=containers``: the session servers from Docker images through testcontainers.

This machine has no Docker engine, so what is tested here is that asking for containers without one is a
clear error naming the fix (testcontainers really tries the engine: nothing is mocked). With an engine, run
the whole suite with ``DYNDISC_TEST_SERVERS=containers``: every test on ``dyndisc_etcd_server`` /
``dyndisc_nats_server`` then runs against the containers.
"""

from __future__ import annotations

import pytest

from dyndisc.testing.servers import ServerUnavailable
from dyndisc.testing.servers.containers import etcd_container, nats_container, servers_mode


def test_the_mode_is_local_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNDISC_TEST_SERVERS", raising=False)
    assert servers_mode() == "local"
    monkeypatch.setenv("DYNDISC_TEST_SERVERS", "Containers")
    assert servers_mode() == "containers"
    monkeypatch.setenv("DYNDISC_TEST_SERVERS", "podman")
    with pytest.raises(
        ServerUnavailable, match=r"DYNDISC_TEST_SERVERS='podman': choose one of local, containers"
    ):
        servers_mode()


@pytest.mark.parametrize("start", [etcd_container, nats_container])
def test_without_a_docker_engine_the_error_says_what_to_do(
    start: object, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")  # an engine that is not there
    with pytest.raises(ServerUnavailable) as caught:
        start()  # type: ignore[operator]
    message = str(caught.value)
    assert "no Docker engine" in message
    assert "unset DYNDISC_TEST_SERVERS" in message


@pytest.mark.parametrize(("ci", "outcome"), [("true", "errors"), ("", "skipped")])
def test_the_session_fixture_fails_in_ci_and_skips_elsewhere(
    ci: str, outcome: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNDISC_TEST_SERVERS", "containers")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{pytester.path}/no-docker.sock")
    monkeypatch.setenv("CI", ci)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        "def test_needs_etcd(dyndisc_etcd_server):\n    assert dyndisc_etcd_server.client_url\n"
    )
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*no Docker engine runs quay.io/coreos/etcd*"])
