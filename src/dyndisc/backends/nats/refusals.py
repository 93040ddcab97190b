"""What nats-server refused, said in dyndisc's terms: the key (and its namespace), the user, and the fix."""

from __future__ import annotations

from dyndisc.backends.kv.scopes import namespace_of
from dyndisc.backends.nats.denials import Violation
from dyndisc.backends.nats.keys import decode_key, is_internal
from dyndisc.backends.nats.settings import NatsSettings


def who(settings: NatsSettings) -> str:
    """The identity the connection presents, for messages (never a secret)."""
    if settings.user is not None:
        return f"user {settings.user!r}"
    if settings.creds is not None:
        return f"the user of {settings.creds} (NATS_CREDS)"
    if settings.token is not None:
        return "the token user (NATS_TOKEN)"
    return "this connection"


def refusal(
    settings: NatsSettings, violation: Violation, *, key: str | None = None, subject: str | None = None
) -> str:
    """The message of a refused request: ``key`` is the KV key we wrote, when the request was a write;
    ``subject`` the request's subject as we spelled it (the server's comes lower-cased)."""
    where = f"nats-server at {settings.display_servers} refused {who(settings)}"
    refused = subject if subject is not None and violation.kind == "publish" else violation.subject
    scope = f"NATS_SCOPE={settings.scope!r}" if settings.scope else "NATS_SCOPE unset"
    if violation.kind == "subscription":
        return (
            f"{where} subscribing to {refused!r}, where the replies to its requests arrive "
            f"(permissions violation; {scope}): credentials of a dyndisc role receive replies under "
            "_INBOX.<scope>.>, so set NATS_SCOPE to the scope 'dyndisc access nats' printed for this user"
        )
    if key is not None and is_internal(key):
        return (
            f"{where} writing its lease key {key!r} (publish to {refused!r}: permissions "
            f"violation; {scope}): credentials of a dyndisc role keep their leases under their scope, "
            "so set NATS_SCOPE to the scope 'dyndisc access nats' printed for this user"
        )
    if key is not None:
        dyndisc_key = decode_key(key) or key
        namespace = namespace_of(dyndisc_key, layouts=("dyndisc",))
        if namespace is not None:
            fix = (
                f"to write namespace {namespace!r}, run this process as a worker of {namespace!r} "
                f"(dyndisc access nats --namespace {namespace} --user <user> --role worker)"
            )
        else:
            fix = "its permissions do not cover that key; give it the permissions of a dyndisc role"
        what = f"publish to {refused!r}: permissions violation"
        return f"{where} writing {dyndisc_key} ({what}): {fix}"
    return (
        f"{where} the request {refused!r} (permissions violation): give the user the permissions "
        "of its dyndisc role (dyndisc access nats --role worker|frontend|operator --user <user>)"
    )
