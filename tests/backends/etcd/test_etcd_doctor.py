"""``dyndisc doctor`` against real etcd servers: a healthy one, one with auth and a wrong password."""

from __future__ import annotations

from click.testing import CliRunner
from etcd_helpers import MakeServer

from dyndisc.cli import main


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
    for check in ("settings", "connectivity", "lease round trip", "watch round trip", "clock"):
        assert f"[ ok ] {check}:" in output, output
    assert "a registration arrived in" in output
    assert "all checks passed" in output


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
