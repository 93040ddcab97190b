"""``dyndisc access etcd``: the etcd role and user a dyndisc process of one role needs, made (or printed).

:class:`EtcdAccess` applies a :class:`~dyndisc.backends.kv.scopes.Scope` through etcd's Auth API with the
credentials of its connection (``ETCD_AUTH_*``: a root user). It is idempotent: it reads the role and the
user first and changes only what differs, so a second run changes nothing, and a role whose permissions
drifted (one revoked by hand, one added) is brought back, each change said. :func:`etcdctl_commands` and
:func:`grant_lines` print the same setup for an operator who applies it by hand.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import grpc
from aetcd import rpc

from dyndisc._errors import AccessDeniedError, ConfigurationError
from dyndisc.backends.etcd.connection import EtcdConnection, PermissionDenied, Stubs
from dyndisc.backends.etcd.roles import Permission, get_role, get_user_roles
from dyndisc.backends.kv.scopes import Scope

#: etcd's administrator: never scoped by dyndisc.
ROOT = "root"
#: Roles dyndisc makes (a user's other roles of this prefix are dyndisc's drift, revoked).
ROLE_PREFIX = "dyndisc-"


def permissions(scope: Scope) -> list[Permission]:
    """The etcd permissions of ``scope``'s role, sorted."""
    return sorted(Permission.of(grant) for grant in scope.grants())


def grant_lines(scope: Scope) -> list[str]:
    """The role's grants as plain lines: ``readwrite  prefix /services/a/``."""
    lines = []
    for grant in scope.grants():
        where = "every key" if not grant.prefix else f"prefix {grant.prefix}"
        lines.append(f"{grant.access:<9}  {where}")
    return lines


def etcdctl_commands(
    scope: Scope, user: str, *, password_file: str | None = None, no_password: bool = False
) -> list[str]:
    """The ``etcdctl`` commands that make ``scope``'s role and ``user`` on a new etcd (run them as root)."""
    role = shlex.quote(scope.role_name)
    lines = [f"etcdctl role add {role}"]
    for grant in scope.grants():
        # etcdctl grants the whole key space for an empty key with --prefix=true.
        lines.append(
            f"etcdctl role grant-permission {role} {grant.access} {shlex.quote(grant.prefix)} --prefix=true"
        )
    name = shlex.quote(user)
    if no_password:
        lines.append(f"etcdctl user add {name} --no-password")
    elif password_file is not None:
        lines.append(f"etcdctl user add {name} --interactive=false < {shlex.quote(password_file)}")
    else:
        lines.append(f"etcdctl user add {name}")
    lines.append(f"etcdctl user grant-role {name} {role}")
    return lines


@dataclass
class Applied:
    """What :meth:`EtcdAccess.apply` did: ``changes`` (empty when everything already was as it should be)
    and ``notes`` (what it left alone but you should know)."""

    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class EtcdAccess:
    """Makes roles and users through etcd's Auth API, with the credentials of ``connection`` (root)."""

    def __init__(self, connection: EtcdConnection) -> None:
        self.connection = connection

    async def _auth(self, what: str, call: Any) -> Any:
        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            return await call(stubs.auth, metadata, timeout)

        return await self.connection.call(what, attempt)

    async def apply(
        self, scope: Scope, user: str, *, password: str | None = None, no_password: bool = False
    ) -> Applied:
        """Make (or bring back) ``scope``'s role and ``user`` holding it; only what differs is changed."""
        if user == ROOT:
            raise ConfigurationError("'root' is etcd's administrator: give the process a user of its own")
        if not user:
            raise ConfigurationError("give the user a name (--user)")
        applied = Applied()
        try:
            await self._role(scope, applied)
            await self._user(scope, user, password, no_password, applied)
            enabled = await self.auth_enabled()
        except PermissionDenied as exc:
            raise AccessDeniedError(
                f"etcd at {self.connection.url} refused user {self.connection.username!r} ({exc.details}): "
                "only etcd's root user may manage roles and users; run this with root's credentials "
                "(ETCD_AUTH_USERNAME=root and ETCD_AUTH_PASSWORD)"
            ) from None
        if not enabled:
            applied.notes.append(
                "etcd auth is not enabled, so these roles restrict nothing yet: enable it "
                "(etcdctl auth enable, once a root user exists)"
            )
        return applied

    async def _role(self, scope: Scope, applied: Applied) -> None:
        role = scope.role_name
        wanted = permissions(scope)
        held = await get_role(self.connection, role)
        if held is None:
            await self._auth(
                f"adding role {role!r}",
                lambda auth, md, t: auth.RoleAdd(rpc.AuthRoleAddRequest(name=role), timeout=t, metadata=md),
            )
            applied.changes.append(f"created role {role!r}")
            held = []
        for perm in held:
            if perm not in wanted:
                # Revoked by its range; a range granted again with another access comes back below.
                await self._auth(
                    f"revoking {perm.describe()} from role {role!r}",
                    lambda auth, md, t, p=perm: auth.RoleRevokePermission(
                        rpc.AuthRoleRevokePermissionRequest(role=role, key=p.key, range_end=p.range_end),
                        timeout=t,
                        metadata=md,
                    ),
                )
                applied.changes.append(f"role {role!r}: revoked {perm.describe()} (not in the role)")
        created = not held
        for perm in wanted:
            if perm not in held:
                await self._auth(
                    f"granting {perm.describe()} to role {role!r}",
                    lambda auth, md, t, p=perm: auth.RoleGrantPermission(
                        rpc.AuthRoleGrantPermissionRequest(name=role, perm=p.to_wire()),
                        timeout=t,
                        metadata=md,
                    ),
                )
                why = "" if created else " (it was missing)"
                applied.changes.append(f"role {role!r}: granted {perm.describe()}{why}")

    async def _user(
        self, scope: Scope, user: str, password: str | None, no_password: bool, applied: Applied
    ) -> None:
        role = scope.role_name
        roles = await get_user_roles(self.connection, user)
        if roles is None:
            if password is None and not no_password:
                raise ConfigurationError(
                    f"etcd has no user {user!r} yet: give its password (--password-file) or --no-password "
                    "(a user that authenticates by its TLS client certificate's common name)"
                )
            options = rpc.UserAddOptions(no_password=no_password)
            request = rpc.AuthUserAddRequest(name=user, password=password or "", options=options)
            await self._auth(
                f"adding user {user!r}", lambda auth, md, t: auth.UserAdd(request, timeout=t, metadata=md)
            )
            applied.changes.append(f"created user {user!r}")
            roles = []
        elif password is not None and not await self._password_works(user, password):
            change = rpc.AuthUserChangePasswordRequest(name=user, password=password)
            await self._auth(
                f"changing the password of {user!r}",
                lambda auth, md, t: auth.UserChangePassword(change, timeout=t, metadata=md),
            )
            applied.changes.append(f"user {user!r}: changed its password to the one given")
        if role not in roles:
            grant = rpc.AuthUserGrantRoleRequest(user=user, role=role)
            await self._auth(
                f"granting role {role!r} to {user!r}",
                lambda auth, md, t: auth.UserGrantRole(grant, timeout=t, metadata=md),
            )
            applied.changes.append(f"user {user!r}: granted role {role!r}")
        for other in roles:
            if other == role:
                continue
            if other.startswith(ROLE_PREFIX):
                revoke = rpc.AuthUserRevokeRoleRequest(name=user, role=other)
                await self._auth(
                    f"revoking role {other!r} from {user!r}",
                    lambda auth, md, t, r=revoke: auth.UserRevokeRole(r, timeout=t, metadata=md),
                )
                applied.changes.append(f"user {user!r}: revoked role {other!r} (one process, one role)")
            else:
                applied.notes.append(
                    f"user {user!r} also holds role {other!r}, which dyndisc did not make: whatever it "
                    f"grants, the user has too (etcdctl user revoke-role {shlex.quote(user)} "
                    f"{shlex.quote(other)} if it should not)"
                )

    async def _password_works(self, user: str, password: str) -> bool:
        """Whether etcd accepts ``password`` for ``user`` (so an unchanged password is not changed); true when
        etcd cannot tell (auth disabled: nothing is checked then)."""

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> bool:
            request = rpc.AuthenticateRequest(name=user, password=password)
            try:
                await stubs.auth.Authenticate(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                if "authentication is not enabled" in details:
                    return True
                if "authentication failed" in details or "invalid user ID or password" in details:
                    return False
                raise
            return True

        result: bool = await self.connection.call(f"checking the password of {user!r}", attempt)
        return result

    async def auth_enabled(self) -> bool:
        """Whether etcd checks credentials at all."""
        reply = await self._auth(
            "reading whether auth is enabled",
            lambda auth, md, t: auth.AuthStatus(rpc.AuthStatusRequest(), timeout=t, metadata=md),
        )
        return bool(reply.enabled)
