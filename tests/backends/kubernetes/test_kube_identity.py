"""Pod identity as the reference runtime reads it: /etc/podinfo files first, then the environment; pod and
container modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyndisc import ConfigurationError
from dyndisc.backends.kubernetes.identity import DiscoveryMode, PodIdentity
from dyndisc.backends.kubernetes.siphash import instance_id_for

NOWHERE = Path("/nope")


def test_from_env() -> None:
    pod = PodIdentity.from_env(
        {"POD_NAME": "worker-0", "POD_NAMESPACE": "ns", "POD_UID": "u-1"}, Path("/nope")
    )
    assert pod == PodIdentity(name="worker-0", namespace="ns", uid="u-1")
    assert pod.instance_id == 0x43710F49C0CFF
    assert pod.resource_name == "worker-0"


def test_from_podinfo_files(tmp_path: Path) -> None:
    (tmp_path / "pod_name").write_text("worker-1\n")
    (tmp_path / "pod_uid").write_text("u-2")
    (tmp_path / "pod_namespace").write_text("prod")
    assert PodIdentity.from_env({}, tmp_path) == PodIdentity(name="worker-1", namespace="prod", uid="u-2")


def test_the_files_win_over_the_environment(tmp_path: Path) -> None:
    # A pod restored from a checkpoint (CRIU) keeps the environment of the pod it was taken from; the
    # Downward API files are mounted for the pod it runs in now, so they say who it is.
    (tmp_path / "pod_name").write_text("restored-7")
    (tmp_path / "pod_uid").write_text("uid-new")
    env = {"POD_NAME": "source-0", "POD_UID": "uid-old", "POD_NAMESPACE": "ns"}
    pod = PodIdentity.from_env(env, tmp_path)
    assert (pod.name, pod.uid, pod.namespace) == ("restored-7", "uid-new", "ns")
    # An empty file falls back to the environment, as a missing one does.
    (tmp_path / "pod_name").write_text("  \n")
    assert PodIdentity.from_env(env, tmp_path).name == "source-0"


def test_missing_uid_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"POD_UID is not set for pod 'worker-0'.*metadata\.uid"):
        PodIdentity.from_env({"POD_NAME": "worker-0", "POD_NAMESPACE": "ns"}, Path("/nope"))


def test_missing_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"POD_NAME is not set.*pod_name.*metadata\.name"):
        PodIdentity.from_env({"POD_UID": "u"}, Path("/nope"))


def test_namespace_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    env = {"POD_NAME": "w", "POD_UID": "u"}
    assert PodIdentity.from_env(env, Path("/nope"), default_namespace="ctx").namespace == "ctx"
    assert PodIdentity.from_env(env, Path("/nope")).namespace == "default"
    assert "POD_NAMESPACE is not set" in caplog.text


def test_invalid_pod_name() -> None:
    with pytest.raises(ConfigurationError, match="not a valid Kubernetes object name"):
        PodIdentity(name="Worker_0", namespace="ns", uid="u")


def test_container_mode_names_a_resource_per_container() -> None:
    env = {"POD_NAME": "worker-0", "POD_UID": "u", "POD_NAMESPACE": "ns"}
    engine = PodIdentity.from_env(
        {**env, "DYN_KUBE_DISCOVERY_MODE": "container", "CONTAINER_NAME": "engine-0"}, NOWHERE
    )
    assert engine.resource_name == "worker-0-engine-0"
    # The reference hashes the resource name, not the pod's: every engine of a pod has an id of its own.
    assert engine.instance_id == instance_id_for("worker-0-engine-0") != instance_id_for("worker-0")
    # The container named "main" keeps the pod's identity, so pod-mode and container-mode watchers agree.
    main = PodIdentity.from_env(
        {**env, "DYN_KUBE_DISCOVERY_MODE": "container", "CONTAINER_NAME": "main"}, NOWHERE
    )
    assert (main.resource_name, main.instance_id) == ("worker-0", 0x43710F49C0CFF)
    # Pod mode ignores CONTAINER_NAME.
    assert PodIdentity.from_env({**env, "CONTAINER_NAME": "engine-0"}, NOWHERE).resource_name == "worker-0"


def test_container_mode_needs_the_container_name() -> None:
    env = {"POD_NAME": "worker-0", "POD_UID": "u", "DYN_KUBE_DISCOVERY_MODE": "container"}
    with pytest.raises(ConfigurationError, match="CONTAINER_NAME is not set for pod 'worker-0'"):
        PodIdentity.from_env(env, Path("/nope"))


def test_an_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"DYN_KUBE_DISCOVERY_MODE='pods'.*'pod'.*'container'"):
        DiscoveryMode.from_env({"DYN_KUBE_DISCOVERY_MODE": "pods"})
    assert DiscoveryMode.from_env({}) is DiscoveryMode.POD
