"""etcd's roles as dyndisc reads and writes them: a :class:`~dyndisc.backends.kv.scopes.Grant` as an etcd
permission, the roles of the user we are, and the refusal of a write said in terms of namespaces.

etcd checks every key of a request against the ranges the user's roles hold (``[key, range_end)``); a prefix
permission is the range from the prefix to :func:`prefix_range_end` of it, and the permission of every key is
``["\\0", "\\0")``. Any authenticated user may grant a lease and keep alive or revoke one whose keys it may
write (etcd 3.6 refuses a keep-alive or a revoke of a lease holding a key the user may not write); a user may
read its own user and roles, not anyone else's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from dyndisc._errors import AccessDeniedError
from dyndisc.backends.etcd.connection import EtcdConnection, PermissionDenied, Stubs
from dyndisc.backends.kv.scopes import EVERY_KEY, Grant, namespace_of

#: etcd's permission types.
READ, WRITE, READWRITE = rpc.Permission.READ, rpc.Permission.WRITE, rpc.Permission.READWRITE
#: Seconds a store keeps what it read of its own roles (for the refusals it explains).
OWN_ROLES_TTL = 30.0


@dataclass(frozen=True, order=True)
class Permission:
    """One permission of an etcd role: ``access`` (``read``, ``write``, ``readwrite``) on ``[key, range_end)``
    (``range_end`` empty: the key alone; ``b"\\0"`` with key ``b"\\0"``: every key)."""

    key: bytes
    range_end: bytes
    access: str

    @classmethod
    def of(cls, grant: Grant) -> Permission:
        """The etcd permission of ``grant``."""
        if grant.prefix == EVERY_KEY:
            return cls(b"\0", b"\0", grant.access)
        key = grant.prefix.encode()
        return cls(key, prefix_range_end(key), grant.access)

    @classmethod
    def from_wire(cls, perm: Any) -> Permission:
        """A permission as etcd answers it (``rpc.Permission``)."""
        access = {READ: "read", WRITE: "write", READWRITE: "readwrite"}[perm.permType]
        return cls(bytes(perm.key), bytes(perm.range_end), access)

    def to_wire(self) -> Any:
        """The ``rpc.Permission`` to grant."""
        kind = {"read": READ, "write": WRITE, "readwrite": READWRITE}[self.access]
        return rpc.Permission(permType=kind, key=self.key, range_end=self.range_end)

    @property
    def writes(self) -> bool:
        """Whether the permission allows writes."""
        return self.access != "read"

    @property
    def prefix(self) -> str | None:
        """The key prefix the permission covers (``""`` for every key), or ``None`` for another range."""
        if self.key == b"\0" and self.range_end == b"\0":
            return EVERY_KEY
        if self.range_end and prefix_range_end(self.key) == self.range_end:
            return self.key.decode(errors="replace")
        return None

    def covers(self, key: bytes) -> bool:
        """Whether etcd applies this permission to ``key``."""
        if not self.range_end:
            return key == self.key
        return self.key <= key and (self.range_end == b"\0" or key < self.range_end)

    def describe(self) -> str:
        """``readwrite /services/a/`` (a prefix), ``read <every key>``, or the raw range."""
        prefix = self.prefix
        if prefix == EVERY_KEY:
            return f"{self.access} <every key>"
        if prefix is not None:
            return f"{self.access} {prefix}"
        return f"{self.access} [{self.key!r}, {self.range_end!r})"


async def get_role(connection: EtcdConnection, role: str) -> list[Permission] | None:
    """The permissions of ``role``, or ``None`` if etcd has no such role."""

    async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
        try:
            request = rpc.AuthRoleGetRequest(role=role)
            return await stubs.auth.RoleGet(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if "role name not found" in (exc.details() or ""):
                return None
            raise

    reply = await connection.call(f"reading role {role!r}", attempt)
    return None if reply is None else sorted(Permission.from_wire(p) for p in reply.perm)


async def get_user_roles(connection: EtcdConnection, user: str) -> list[str] | None:
    """The roles of ``user``, or ``None`` if etcd has no such user."""

    async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
        try:
            request = rpc.AuthUserGetRequest(name=user)
            return await stubs.auth.UserGet(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if "user name not found" in (exc.details() or ""):
                return None
            raise

    reply = await connection.call(f"reading user {user!r}", attempt)
    return None if reply is None else list(reply.roles)


class OwnRoles:
    """The roles of the user a store authenticates as, read when a refusal needs explaining (kept
    :data:`OWN_ROLES_TTL` seconds, so a process retrying a refused write does not double its requests)."""

    def __init__(self, connection: EtcdConnection) -> None:
        self.connection = connection
        self._read: tuple[float, dict[str, list[Permission]] | str] | None = None

    async def roles(self) -> dict[str, list[Permission]] | str:
        """Each role of ours and its permissions, or why they could not be read."""
        now = time.monotonic()
        if self._read is not None and now - self._read[0] < OWN_ROLES_TTL:
            return self._read[1]
        found: dict[str, list[Permission]] | str
        user = self.connection.username
        try:
            names = await get_user_roles(self.connection, user) if user is not None else None
            found = {name: (await get_role(self.connection, name)) or [] for name in names or ()}
        except Exception as exc:  # only an explanation depends on it: say why it is missing
            found = str(exc) or type(exc).__name__
        self._read = (now, found)
        return found

    async def refusal(self, action: str, key: str, cause: PermissionDenied) -> AccessDeniedError:
        """The refusal of ``action`` (``writing``) on ``key``, naming the namespace, our roles and the fix."""
        roles = await self.roles()
        user = self.connection.username
        where = f"etcd at {self.connection.url} refused user {user!r} {action} {key}"
        detail = cause.details or "permission denied"
        wanted = namespace_of(key)
        if isinstance(roles, str):
            held = f"its roles could not be read ({roles})"
        else:
            held = _what_roles_write(roles)
        if wanted is not None:
            fix = (
                f"to write namespace {wanted!r}, run this process as a worker of {wanted!r} "
                f"(dyndisc access etcd --namespace {wanted} --user <user> --role worker)"
            )
        else:
            fix = (
                "grant one of its roles readwrite on that key's prefix "
                "(etcdctl role grant-permission <role> readwrite <prefix> --prefix=true)"
            )
        return AccessDeniedError(f"{where} ({detail}): {held}; {fix}")


def _what_roles_write(roles: dict[str, list[Permission]]) -> str:
    if not roles:
        return "it holds no role, so it may write nothing"
    names = ", ".join(repr(r) for r in roles)
    which = f"its role {names}" if len(roles) == 1 else f"its roles {names}"
    namespaces: list[str] = []
    others: list[str] = []
    for perms in roles.values():
        for perm in perms:
            if not perm.writes:
                continue
            prefix = perm.prefix
            namespace = namespace_of(prefix) if prefix else None
            if namespace is not None:
                namespaces.append(namespace)
            else:
                others.append(perm.describe())
    if not namespaces and not others:
        return f"{which} may only read"
    said = []
    if namespaces:
        unique = list(dict.fromkeys(namespaces))
        said.append(
            f"namespace {unique[0]!r}" if len(unique) == 1 else "namespaces " + ", ".join(map(repr, unique))
        )
    said += list(dict.fromkeys(others))
    return f"{which} may write {' and '.join(said)} only"
