"""A real cluster of three nats-servers on loopback, for tests of JetStream replication, failover, partitions.

Every server runs JetStream with its own store dir and client, monitoring and cluster ports. The servers reach
each other only through TCP proxies, one per ordered pair (``a`` dials ``b`` through its own proxy), so one
server can be cut off from the others while they still talk to each other (:meth:`NatsCluster.partition`).
Two settings keep every route on those proxies: each server lists the others' proxies as its routes, and
advertises a cluster address where nothing listens, so that no server learns a direct address to dial
(gossiped "implicit" routes would bypass the proxies). Clients are told nothing about the other servers
(``no_advertise``): they use the URLs they are given, which lets a test put client proxies of its own in
between.

The faults a cluster has, as methods: SIGKILL (or stop) any server and start it again on its data; kill the
leader of a stream or of the JetStream meta group; partition one server from the others and heal it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dyndisc.testing.servers._process import LOOPBACK, ServerUnavailable, free_ports, http_request, poll_until
from dyndisc.testing.servers.nats import NatsServer, find_nats_server_binary
from dyndisc.testing.servers.proxy import TcpProxy

__all__ = ["NatsCluster", "NatsClusterServer"]

#: The cluster address every server advertises: nothing listens there (the discard port), so no server
#: ever dials another one directly (see the module docstring).
UNROUTABLE_ADVERTISE = f"{LOOPBACK}:9"


class NatsClusterServer(NatsServer):
    """One server of a :class:`NatsCluster`: a :class:`NatsServer` started from a configuration file that
    adds its cluster block (name, cluster port, routes). :attr:`name` is its ``server_name``."""

    def __init__(
        self,
        name: str,
        *,
        cluster_name: str,
        ports: tuple[int, int, int],
        binary: Path,
        ready_timeout: float,
        base_dir: Path | None,
    ) -> None:
        """``ports``: client, monitoring and cluster ports (the cluster picks them all at once, so that no
        two of its servers and proxies are given the same one)."""
        super().__init__(binary=binary, ready_timeout=ready_timeout, base_dir=base_dir, ports=ports[:2])
        self.name = name
        self.cluster_name = cluster_name
        self.cluster_port = ports[2]
        #: ``host:port`` of each route this server dials (set by the cluster before it starts).
        self.routes: list[str] = []

    def __repr__(self) -> str:
        return f"NatsClusterServer({self.name}, {self.url}, {'running' if self.running else 'down'})"

    def cluster_config(self) -> str:
        """The server's whole configuration file (nats-server's format; JSON strings are valid in it): its
        name and ports are in it too, as command-line flags would override the file's."""
        routes = ", ".join(json.dumps(f"nats-route://{route}") for route in self.routes)
        return "\n".join(
            [
                f"server_name: {json.dumps(self.name)}",
                f"listen: {json.dumps(f'{self.host}:{self.port}')}",
                f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}",
                f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
                "cluster {",
                f"  name: {json.dumps(self.cluster_name)}",
                f"  listen: {json.dumps(f'{self.host}:{self.cluster_port}')}",
                f"  advertise: {json.dumps(UNROUTABLE_ADVERTISE)}",
                "  no_advertise: true",
                # A silent (black-holed) route is noticed within about 3 s, not nats-server's 4 minutes.
                '  ping_interval: "1s"',
                "  ping_max: 3",
                f"  routes: [{routes}]",
                "}",
                "",
            ]
        )

    def _argv(self) -> list[str]:
        self.config_path.write_text(self.cluster_config())
        return [str(self.binary), "-c", str(self.config_path)]

    def varz(self) -> dict[str, Any]:
        """The server's ``/varz`` (raises :class:`OSError` if it does not answer)."""
        return self._monitor("/varz")

    def jsz(self, query: str = "") -> dict[str, Any]:
        """The server's ``/jsz`` (JetStream state), with ``query`` (e.g. ``accounts=true&streams=true``)."""
        return self._monitor(f"/jsz?{query}" if query else "/jsz")

    def _monitor(self, path: str) -> dict[str, Any]:
        status, body = http_request(f"{self.monitor_url}{path}", timeout=2)
        if status != 200:
            raise OSError(f"{self.name} answered {path} with HTTP {status}")
        found: dict[str, Any] = json.loads(body)
        return found


class NatsCluster:
    """``size`` nats-servers with JetStream forming one cluster (``with NatsCluster() as cluster: ...``)."""

    kind = "nats-cluster"

    def __init__(
        self,
        size: int = 3,
        *,
        ready_timeout: float = 60.0,
        binary: Path | str | None = None,
        base_dir: Path | None = None,
        cluster_name: str = "dyndisc",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one server")
        found = Path(binary) if binary is not None else find_nats_server_binary()
        # Every port at once: three per server, and one per ordered pair for the route proxies.
        ports = free_ports(3 * size + size * (size - 1))
        self.servers: list[NatsClusterServer] = []
        for n in range(size):
            member_dir = None if base_dir is None else base_dir / f"n{n}"
            self.servers.append(
                NatsClusterServer(
                    f"n{n}",
                    cluster_name=cluster_name,
                    ports=(ports[3 * n], ports[3 * n + 1], ports[3 * n + 2]),
                    binary=found,
                    ready_timeout=ready_timeout,
                    base_dir=member_dir,  # None: a temp dir of its own
                )
            )
        self._proxy_ports = ports[3 * size :]
        self.version = self.servers[0].version
        self.ready_timeout = ready_timeout
        #: ``(from, to)`` server names -> the proxy ``from`` dials to reach ``to``'s cluster port.
        self.route_proxies: dict[tuple[str, str], TcpProxy] = {}
        #: The servers cut off from the others now.
        self.partitioned: set[str] = set()

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """Every server's client URL."""
        return [server.url for server in self.servers]

    @property
    def servers_setting(self) -> str:
        """The value for ``NATS_SERVER``: every server, comma-separated."""
        return ",".join(self.urls)

    def server(self, name: str) -> NatsClusterServer:
        """The server named ``name`` (``n0``, ``n1`` ...)."""
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(f"no server {name!r} in this cluster ({[s.name for s in self.servers]})")

    def server_at(self, url: str) -> NatsClusterServer:
        """The server whose client port ``url`` names (``nats://127.0.0.1:<port>``, as a client reports the
        server it is connected to)."""
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no server of this cluster listens at {url}")

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every server that is not running and wait until each serves JetStream (a meta leader is
        elected only once a majority runs, so they are spawned together)."""
        if not self.route_proxies:
            free = iter(self._proxy_ports)
            for source in self.servers:
                for target in self.servers:
                    if source is not target:
                        proxy = TcpProxy(LOOPBACK, target.cluster_port, port=next(free)).start()
                        self.route_proxies[(source.name, target.name)] = proxy
            for source in self.servers:
                source.routes = [
                    self.route_proxies[(source.name, t.name)].address for t in self.servers if t is not source
                ]
        stopped = [s for s in self.servers if not s.running]
        try:
            for server in stopped:
                server.spawn()
            for server in stopped:
                server.wait_ready()
            self.wait_healthy(self.ready_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every server and proxy and delete the servers' data."""
        for server in self.servers:
            server.close()
        for proxy in self.route_proxies.values():
            proxy.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 50) -> str:
        """The last lines of every server's log."""
        return "\n".join(f"--- {s.name}\n{s.log_tail(lines)}" for s in self.servers)

    @property
    def running(self) -> list[NatsClusterServer]:
        """The servers that run now."""
        return [s for s in self.servers if s.running]

    # -- who leads -------------------------------------------------------------------------------------
    def _ask(self, question: str, read: Any, timeout: float) -> Any:
        """Ask the running servers (not partitioned ones) ``/jsz?<question>`` until ``read(answer)`` gives
        something other than ``None``."""
        found: list[Any] = []

        def answered() -> bool:
            for server in self.running:
                if server.name in self.partitioned:
                    continue
                try:
                    value = read(server.jsz(question))
                except (OSError, ValueError, KeyError):
                    continue  # a server being killed, or one that does not know yet: ask another
                if value is not None:
                    found[:] = [value]
                    return True
            return False

        poll_until(answered, timeout, describe=f"an answer to /jsz?{question}")
        return found[0]

    def _alive(self, name: object) -> str | None:
        """``name`` if it names a running server that is not cut off (a server may still name a leader that
        was just killed, or one on the other side of a partition), else ``None``."""
        if not isinstance(name, str) or name in self.partitioned:
            return None
        return name if any(s.name == name and s.running for s in self.servers) else None

    def meta_leader(self, timeout: float = 10.0) -> NatsClusterServer:
        """The server that leads the JetStream meta group (streams and consumers are placed by it)."""

        def read(jsz: dict[str, Any]) -> str | None:
            return self._alive((jsz.get("meta_cluster") or {}).get("leader"))

        try:
            return self.server(self._ask("", read, timeout))
        except TimeoutError:
            raise ServerUnavailable(f"no JetStream meta leader after {timeout:g}s") from None

    def stream_leader(self, stream: str, timeout: float = 10.0) -> NatsClusterServer:
        """The server that leads ``stream`` (a KV bucket ``b`` is the stream ``KV_b``): it orders every write
        and expires every TTL."""

        def read(jsz: dict[str, Any]) -> str | None:
            for account in jsz.get("account_details") or ():
                for detail in account.get("stream_detail") or ():
                    if detail.get("name") == stream:
                        return self._alive((detail.get("cluster") or {}).get("leader"))
            return None

        try:
            return self.server(self._ask("accounts=true&streams=true", read, timeout))
        except TimeoutError:
            raise ServerUnavailable(f"no leader of stream {stream!r} after {timeout:g}s") from None

    def stream_replicas(self, stream: str) -> dict[str, bool]:
        """``{server name: current}`` of every replica of ``stream``, leader included, as its leader sees
        them (a replica is current once it caught up with the leader)."""
        leader = self.stream_leader(stream)
        jsz = leader.jsz("accounts=true&streams=true")
        for account in jsz.get("account_details") or ():
            for detail in account.get("stream_detail") or ():
                if detail.get("name") == stream:
                    cluster = detail.get("cluster") or {}
                    replicas = {r["name"]: bool(r.get("current")) for r in cluster.get("replicas") or ()}
                    return {leader.name: True, **replicas}
        return {}

    # -- faults ----------------------------------------------------------------------------------------
    def _find(self, server: NatsClusterServer | str) -> NatsClusterServer:
        return self.server(server) if isinstance(server, str) else server

    def kill(self, server: NatsClusterServer | str) -> NatsClusterServer:
        """SIGKILL ``server`` (a crash: nothing flushed); return it."""
        found = self._find(server)
        found.kill()
        return found

    def kill_stream_leader(self, stream: str) -> NatsClusterServer:
        """SIGKILL the leader of ``stream`` (the other replicas elect a new one); return it."""
        return self.kill(self.stream_leader(stream))

    def kill_meta_leader(self) -> NatsClusterServer:
        """SIGKILL the JetStream meta leader; return it."""
        return self.kill(self.meta_leader())

    def restart(self, servers: Iterable[NatsClusterServer | str] | None = None) -> Self:
        """Start ``servers`` (default: every stopped one) again on their data and ports, and wait until every
        running server serves JetStream."""
        chosen = self.servers if servers is None else [self._find(s) for s in servers]
        for server in chosen:
            if not server.running:
                server.spawn()
        for server in self.running:
            server.wait_ready()
        return self

    def partition(self, server: NatsClusterServer | str, *, silent: bool = False) -> NatsClusterServer:
        """Cut ``server`` off from every other server; they still reach each other, and clients still reach
        all of them. By default its routes are reset (and every new one); ``silent`` black-holes them
        instead: connections stay open and carry nothing (held back, as a network would, not dropped from
        the middle of a stream), new ones hang, and the route pings notice after about 3 s."""
        found = self._find(server)
        for (source, target), proxy in self.route_proxies.items():
            if found.name in (source, target):
                proxy.blackhole() if silent else proxy.cut()
        self.partitioned.add(found.name)
        return found

    def heal(self) -> None:
        """End every partition: routes flow again (the servers reconnect within a second or two)."""
        for proxy in self.route_proxies.values():
            proxy.restore()
        self.partitioned.clear()

    def routes_of(self, server: NatsClusterServer) -> set[str]:
        """The names of the servers ``server`` has a route to now (from its ``/routez``)."""
        found = server._monitor("/routez")
        return {r["remote_name"] for r in found.get("routes") or () if r.get("remote_name")}

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running server answers its JetStream health check (``/healthz``: its meta group
        and its streams are current), has its routes to every other running server that is not cut off (a
        server back from a partition answers its health check before its routes carry interest again), and
        knows a meta leader."""

        def healthy() -> bool:
            running = {s.name for s in self.running}
            for server in self.running:
                try:
                    if not server._ready():
                        return False
                    if server.name not in self.partitioned:
                        others = running - self.partitioned - {server.name}
                        if not others <= self.routes_of(server):
                            return False
                        # /healthz answers before the first meta leader is elected: JetStream requests
                        # would time out until then.
                        if self._alive((server.jsz().get("meta_cluster") or {}).get("leader")) is None:
                            return False
                except (OSError, ValueError, KeyError):
                    return False
            return True

        try:
            poll_until(healthy, timeout, describe="a healthy NATS cluster")
        except TimeoutError:
            raise ServerUnavailable(
                f"the NATS cluster is not healthy after {timeout:g}s; logs:\n{self.log_tail(20)}"
            ) from None
