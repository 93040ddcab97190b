"""``Client``: what a frontend or router holds to find the instances of one endpoint."""

from __future__ import annotations

import itertools
import random
import weakref

import anyio

from dyndisc._errors import InstanceNotFoundError, NoInstancesError
from dyndisc._instance_set import InstanceSet
from dyndisc._models import EndpointId, Instance, Readiness


class Client:
    """A live view of one endpoint's instances, shared with every other client of it in the runtime.

    Reading is free (no I/O): the view is fed by one watch per endpoint per runtime.
    """

    def __init__(self, endpoint: EndpointId, source: InstanceSet, *, holds_source: bool = False) -> None:
        self.endpoint = endpoint
        self._source = source
        self._counter = itertools.count()
        self._cache: tuple[int, list[Instance], list[Instance]] = (-1, [], [])
        # A client holds its endpoint's watch until it is closed or garbage-collected: the watch stops
        # with the last client of it (and the last ``watch()`` of its query).
        self._release = weakref.finalize(self, source.release) if holds_source else None

    def close(self) -> None:
        """Let go of the watch behind this client (it stops with the last user); reading after this
        gives the view as it was. Also done when the client is garbage-collected."""
        if self._release is not None:
            self._release()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _view(self) -> tuple[list[Instance], list[Instance]]:
        # Picking is the router's hot path: derive the lists once per change of the set, not per pick.
        version, every, ready = self._cache
        if version != self._source.version:
            every = self._source.instances_of(self.endpoint)
            ready = [i for i in every if i.readiness is Readiness.READY]
            self._cache = (self._source.version, every, ready)
        return every, ready

    def instances(self, *, include_draining: bool = False) -> list[Instance]:
        """The live instances, ordered by instance id; draining ones only when asked for."""
        every, ready = self._view()
        return list(every if include_draining else ready)

    def instance_ids(self) -> list[int]:
        """Ids of the ready instances, ordered."""
        return [i.instance_id for i in self.instances()]

    @property
    def stale_since(self) -> float | None:
        """``time.monotonic()`` since when the view may be out of date (watch broken), else ``None``."""
        return self._source.stale_since

    async def wait_changed(self) -> None:
        """Wait until the view changes (an instance came, left, or changed its record)."""
        await self._source.wait_changed()

    async def wait_for_instances(self, timeout: float | None = None) -> list[Instance]:
        """Wait until at least one ready instance is live and return them.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None`` waits for ever, as the reference does).
        """
        with anyio.move_on_after(timeout) as scope:
            while not (found := self.instances()):
                await self._source.wait_changed()
            return found
        assert scope.cancelled_caught
        raise TimeoutError(f"no instance of {self.endpoint} became ready within {timeout}s")

    async def wait_for(self, count: int, timeout: float | None = None) -> list[Instance]:
        """Wait until at least ``count`` ready instances are live."""
        with anyio.move_on_after(timeout):
            while len(found := self.instances()) < count:
                await self._source.wait_changed()
            return found
        raise TimeoutError(
            f"{self.endpoint} has {len(self.instances())} ready instances after {timeout}s, wanted {count}"
        )

    # -- picking ---------------------------------------------------------------------------------------
    def _ready(self) -> list[Instance]:
        found = self._view()[1]
        if not found:
            raise NoInstancesError(
                f"no ready instance of {self.endpoint}; await client.wait_for_instances() first"
            )
        return found

    def random(self) -> Instance:
        """A ready instance chosen uniformly at random."""
        return random.choice(self._ready())

    def round_robin(self) -> Instance:
        """The next ready instance in id order, cycling."""
        found = self._ready()
        return found[next(self._counter) % len(found)]

    def direct(self, instance_id: int) -> Instance:
        """The instance with ``instance_id``; raises :class:`~dyndisc.InstanceNotFoundError` if not live."""
        instance = self._source.get((self.endpoint, instance_id))
        if instance is not None:
            return instance
        raise InstanceNotFoundError(f"instance {instance_id:x} of {self.endpoint} is not live")

    def pick(self, strategy: str = "round_robin") -> Instance:
        """Pick with a named strategy: ``round_robin`` (default) or ``random``."""
        if strategy == "round_robin":
            return self.round_robin()
        if strategy == "random":
            return self.random()
        raise ValueError(f"unknown pick strategy {strategy!r}; use 'round_robin', 'random' or direct(id)")
