"""Real servers on loopback for tests: etcd (one member or a 3-member cluster, and etcd's own grpc-proxy),
nats-server (JetStream; one server or a 3-server cluster), kube-apiserver and kube-controller-manager, and a
TCP proxy.

Each manager is a sync context manager (``with EtcdServer() as etcd: ...``) with explicit
``start()``/``stop()``/``kill()``/``restart()``/``close()`` and ``log_tail()``; a server that cannot start
raises :class:`ServerUnavailable` saying why. The pytest fixtures built on these live in
:mod:`dyndisc.testing.server_fixtures`.
"""

from dyndisc.testing.servers._process import ServerBase, ServerUnavailable, free_ports
from dyndisc.testing.servers._tls import TLSFiles
from dyndisc.testing.servers.etcd import EtcdServer
from dyndisc.testing.servers.etcd_cluster import EtcdCluster
from dyndisc.testing.servers.etcd_proxy import EtcdGrpcProxy
from dyndisc.testing.servers.kube import KubeApiServer
from dyndisc.testing.servers.kube_build import build_kube_apiserver, build_kube_controller_manager
from dyndisc.testing.servers.kube_controllers import KubeCluster, KubeControllerManager
from dyndisc.testing.servers.nats import NatsServer
from dyndisc.testing.servers.nats_cluster import NatsCluster, NatsClusterServer
from dyndisc.testing.servers.proxy import ProxyMode, TcpProxy

__all__ = [
    "EtcdCluster",
    "EtcdGrpcProxy",
    "EtcdServer",
    "KubeApiServer",
    "KubeCluster",
    "KubeControllerManager",
    "NatsCluster",
    "NatsClusterServer",
    "NatsServer",
    "ProxyMode",
    "ServerBase",
    "ServerUnavailable",
    "TLSFiles",
    "TcpProxy",
    "build_kube_apiserver",
    "build_kube_controller_manager",
    "free_ports",
]
