"""A real 3-member etcd cluster on loopback, for tests of elections, lost quorum and partitions.

Every member is an :class:`~dyndisc.testing.servers.EtcdServer` with its own data dir and ports; the cluster
starts them together (a lone member cannot elect a leader) and offers the faults a cluster has: kill the
leader, lose quorum, restart members on their data.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from dyndisc.testing.servers._process import ServerUnavailable, free_ports, poll_until
from dyndisc.testing.servers.etcd import EtcdServer

__all__ = ["EtcdCluster"]


class EtcdCluster:
    """``size`` etcd members forming one cluster (``with EtcdCluster() as cluster: ...``)."""

    kind = "etcd-cluster"

    def __init__(
        self,
        size: int = 3,
        *,
        ready_timeout: float = 60.0,
        binary: Path | str | None = None,
        election_ms: tuple[int, int] = (100, 1000),
    ) -> None:
        """``election_ms`` is the raft heartbeat interval and election timeout: etcd's defaults, so that an
        election takes as long as in production (a second or two)."""
        if size < 1:
            raise ValueError("a cluster has at least one member")
        ports = [tuple(free_ports(2)) for _ in range(size)]
        names = [f"member{n}" for n in range(size)]
        initial = ",".join(
            f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in zip(names, ports, strict=True)
        )
        self.members = [
            EtcdServer(
                name=name,
                ports=(client, peer),
                initial_cluster=initial,
                ready_timeout=ready_timeout,
                binary=binary,
                election_ms=election_ms,
            )
            for name, (client, peer) in zip(names, ports, strict=True)
        ]
        self.ready_timeout = ready_timeout

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def client_urls(self) -> list[str]:
        """Every member's client URL."""
        return [m.client_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """The value for ``ETCD_ENDPOINTS``: every member, comma-separated."""
        return ",".join(self.client_urls)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every member that is not running and wait until each sees a leader."""
        stopped = [m for m in self.members if not m.running]
        for member in stopped:
            member.spawn()
        for member in stopped:
            member.wait_ready()
        return self

    def close(self) -> None:
        """Stop every member and delete their data."""
        for member in self.members:
            member.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 50) -> str:
        """The last lines of every member's log."""
        return "\n".join(f"--- {m.name}\n{m.log_tail(lines)}" for m in self.members)

    # -- who leads -------------------------------------------------------------------------------------
    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """The member that leads now (waiting up to ``timeout`` for an election to end)."""
        found: list[EtcdServer] = []

        def elected() -> bool:
            for member in self.members:
                if not member.running:
                    continue
                try:
                    status = member.status()
                except Exception:  # a member being killed or not up: ask another
                    continue
                leader = int(status.get("leader", 0))  # absent (zero) during an election
                if leader and leader == int(status["header"]["member_id"]):
                    found[:] = [member]
                    return True
            return False

        try:
            poll_until(elected, timeout, describe="an etcd leader")
        except TimeoutError:
            raise ServerUnavailable(f"no etcd member leads after {timeout:g}s") from None
        return found[0]

    def followers(self) -> list[EtcdServer]:
        """The running members that do not lead."""
        leader = self.leader()
        return [m for m in self.members if m.running and m is not leader]

    # -- faults ----------------------------------------------------------------------------------------
    def kill_leader(self) -> EtcdServer:
        """SIGKILL the leader (the others elect a new one); return the killed member."""
        leader = self.leader()
        leader.kill()
        return leader

    def lose_quorum(self) -> list[EtcdServer]:
        """SIGKILL a majority of the members (no leader can be elected); return them."""
        majority = len(self.members) // 2 + 1
        victims = [m for m in self.members if m.running][:majority]
        for member in victims:
            member.kill()
        return victims

    def restart(self, members: list[EtcdServer] | None = None) -> Self:
        """Start ``members`` (default: every stopped one) again on their data and wait for a leader."""
        for member in members if members is not None else self.members:
            if not member.running:
                member.spawn()
        for member in self.members:
            if member.running:
                member.wait_ready()
        return self
