"""``dyndisc access nats``: the nats-server permissions of a dyndisc role, as an authorization fragment.

A NATS KV client writes a key by publishing to ``$KV.<bucket>.<key>`` and reads through JetStream's API, so a
role is publish and subscribe permissions on subjects:

* every role: the JetStream requests a KV reader makes on the bucket's stream ``KV_<bucket>`` (its info,
  its creation if it is missing, reading one message, creating ordered consumers for watches and reading
  their info, answering their flow control), replies in the inbox of its scope (``_INBOX.<scope>.>``, set by
  ``NATS_SCOPE``: nats-py's default ``_INBOX.>`` would let it read every client's replies), and its own lease
  keys (``$KV.<bucket>._dyndisc/lease.<scope>.*``; a frontend's lease holds no key);
* a worker: publish on the keys of its namespace, ``$KV.<bucket>.<filter>`` for each of the namespace's
  prefixes in dyndisc's key encoding (``/services/a/`` is ``=.services.a.>``).

nats-server cannot restrict what a reader reads inside one stream (``STREAM.MSG.GET`` names the key in its
body, not its subject), so a frontend and an operator hold the same permissions here. Nothing here may delete
a consumer or the stream, or touch another scope's lease keys.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats.keys import prefix_filter, scope_leases_filter, scope_token

#: The only key layout NATS holds.
LAYOUTS = ("dyndisc",)


def nats_scope(scope: Scope, user: str) -> str:
    """The ``NATS_SCOPE`` of ``user``'s processes: the user's name (one scope per user: no user can touch
    another's lease keys or read its replies)."""
    if not user:
        raise ValueError("give the user a name (--user)")
    return user


def permissions(scope: Scope, user: str, bucket: str = "dyndisc") -> dict[str, dict[str, list[str]]]:
    """The ``publish`` and ``subscribe`` allow lists of ``scope``'s role for ``user`` on ``bucket``."""
    token = scope_token(nats_scope(scope, user))
    assert token is not None
    stream = f"KV_{bucket}"
    api = "$JS.API"
    publish = [
        f"{api}.STREAM.INFO.{stream}",
        # Creating the bucket (with dyndisc's configuration) if it is missing: the account's JetStream info
        # (whether the server has limit markers), then the stream.
        f"{api}.INFO",
        f"{api}.STREAM.CREATE.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
        f"$KV.{bucket}.{scope_leases_filter(token)}",
    ]
    if scope.role is Role.WORKER:
        publish += [f"$KV.{bucket}.{prefix_filter(prefix)}" for prefix in _write_prefixes(scope)]
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"_INBOX.{token}.>"]}}


def _write_prefixes(scope: Scope) -> tuple[str, ...]:
    return Scope(scope.role, scope.namespace, LAYOUTS, scope.buckets).write_prefixes()


def settings_for(scope: Scope, user: str, bucket: str = "dyndisc") -> dict[str, str]:
    """The ``NATS_*`` variables a process of ``user`` sets (besides its password)."""
    return {"NATS_USER": user, "NATS_SCOPE": nats_scope(scope, user), "NATS_KV_BUCKET": bucket}


def password_variable(user: str) -> str:
    """The environment variable the fragment reads the password from, when none is given."""
    return "DYNDISC_PASSWORD_" + (re.sub(r"[^A-Za-z0-9]", "_", user).upper() or "USER")


def user_entry(
    scope: Scope, user: str, *, bucket: str = "dyndisc", password: str | None = None
) -> dict[str, Any]:
    """The user's entry of ``authorization { users = [...] }`` as data (for ``--format json``)."""
    return {
        "user": user,
        "password": password if password is not None else f"${password_variable(user)}",
        "permissions": permissions(scope, user, bucket),
    }


def authorization_fragment(
    scope: Scope, user: str, *, bucket: str = "dyndisc", password: str | None = None
) -> str:
    """The user's entry for the ``users`` list of nats-server's ``authorization`` block, with comments
    saying what it is and how its processes are configured. Without ``password``, the entry reads it from
    the environment of nats-server (``$DYNDISC_PASSWORD_<USER>``)."""
    perms = permissions(scope, user, bucket)
    what = (
        f"worker of namespace {scope.namespace!r}"
        if scope.role is Role.WORKER
        else f"{scope.role.value} (reads every namespace)"
    )
    env = " ".join(f"{k}={_quote(v)}" for k, v in settings_for(scope, user, bucket).items())
    secret = _string(password) if password is not None else f"${password_variable(user)}"
    lines = [
        f"# dyndisc {what}, bucket {bucket!r}: add to authorization {{ users = [ ... ] }}",
        f"# its processes run with {env} NATS_PASSWORD=...",
        "{",
        f"  user: {_string(user)}",
        f"  password: {secret}",
        "  permissions: {",
    ]
    for kind in ("publish", "subscribe"):
        lines.append(f"    {kind}: {{ allow: [")
        lines += [f"      {_string(subject)}" for subject in perms[kind]["allow"]]
        lines.append("    ] }")
    lines += ["  }", "}"]
    return "\n".join(lines)


def _string(value: str) -> str:
    """A double-quoted string of nats-server's configuration (a literal: no variable is expanded in it)."""
    return json.dumps(value, ensure_ascii=False)


def _quote(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./=-]+", value) else _string(value)
