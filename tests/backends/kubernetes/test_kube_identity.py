"""Pod identity from the Downward API (environment first, then /etc/podinfo files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyndisc import ConfigurationError
from dyndisc.backends.kubernetes.identity import PodIdentity


def test_from_env() -> None:
    pod = PodIdentity.from_env(
        {"POD_NAME": "worker-0", "POD_NAMESPACE": "ns", "POD_UID": "u-1"}, Path("/nope")
    )
    assert pod == PodIdentity(name="worker-0", namespace="ns", uid="u-1")
    assert pod.instance_id == 0x43710F49C0CFF


def test_from_podinfo_files(tmp_path: Path) -> None:
    (tmp_path / "pod_name").write_text("worker-1\n")
    (tmp_path / "pod_uid").write_text("u-2")
    (tmp_path / "pod_namespace").write_text("prod")
    assert PodIdentity.from_env({}, tmp_path) == PodIdentity(name="worker-1", namespace="prod", uid="u-2")
    # The environment wins over the files.
    assert PodIdentity.from_env({"POD_NAME": "w"}, tmp_path).name == "w"


def test_missing_uid_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"POD_UID is not set for pod 'worker-0'.*metadata\.uid"):
        PodIdentity.from_env({"POD_NAME": "worker-0", "POD_NAMESPACE": "ns"}, Path("/nope"))


def test_missing_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"POD_NAME is not set.*metadata\.name"):
        PodIdentity.from_env({"POD_UID": "u"}, Path("/nope"))


def test_namespace_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    env = {"POD_NAME": "w", "POD_UID": "u"}
    assert PodIdentity.from_env(env, Path("/nope"), default_namespace="ctx").namespace == "ctx"
    assert PodIdentity.from_env(env, Path("/nope")).namespace == "default"
    assert "POD_NAMESPACE is not set" in caplog.text


def test_invalid_pod_name() -> None:
    with pytest.raises(ConfigurationError, match="not a valid Kubernetes object name"):
        PodIdentity(name="Worker_0", namespace="ns", uid="u")
