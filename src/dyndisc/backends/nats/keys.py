"""Reversible mapping between dyndisc's ``/``-separated keys and NATS KV keys.

NATS KV keys are subject tokens joined by ``.`` and may only use ``[-/_=.a-zA-Z0-9]``; a token cannot be
empty. Each ``/``-separated segment of a key becomes one token, so a prefix of whole segments is a subject
wildcard (``a.b.>``) the server filters on. Inside a token, letters, digits, ``-`` and ``_`` stand for
themselves; every other character (``.``, ``=``, ``/`` cannot occur) becomes ``=XX`` per UTF-8 byte, in
upper-case hex. An empty segment (the one before a leading ``/``) is the token ``=``.

So ``/services/ns/comp/ep/1a`` is stored as ``=.services.ns.comp.ep.1a``. Tokens holding a ``/`` are never
produced by the encoding: the store keeps its own bookkeeping (lease keys) there, out of every watch.
"""

from __future__ import annotations

import re

from dyndisc.backends.kv.escape import SegmentEscaper

#: Segments as subject tokens: ``=XX`` escapes, a lone ``=`` for an empty segment.
_TOKENS = SegmentEscaper("=")
encode_segment = _TOKENS.encode
decode_segment = _TOKENS.decode

#: A key of plain segments after a leading "/": its encoding is a lone "=" and the segments, dot-joined.
_PLAIN_KEY = re.compile(r"(?:/[A-Za-z0-9_-]+)+")

#: First token of the store's own keys (leases): it holds a ``/`` so no encoded key can collide with it.
INTERNAL_TOKEN = "_dyndisc/lease"


#: The KV key filter of every lease key.
LEASES_FILTER = f"{INTERNAL_TOKEN}.>"


def encode_key(key: str) -> str:
    """A dyndisc key as a NATS KV key (reversible with :func:`decode_key`)."""
    if _PLAIN_KEY.fullmatch(key):  # every key dyndisc writes: "/" and names that need no escaping
        return "=" + key.replace("/", ".")
    return ".".join(encode_segment(segment) for segment in key.split("/"))


def decode_key(nats_key: str) -> str | None:
    """The dyndisc key a NATS KV key encodes, or ``None`` if it was not written by this encoding."""
    segments = [decode_segment(token) for token in nats_key.split(".")]
    if any(segment is None for segment in segments):
        return None
    return "/".join(s for s in segments if s is not None)


def prefix_filter(prefix: str) -> str:
    """The NATS KV key filter covering every key that starts with ``prefix``.

    Whole segments become literal tokens; a trailing partial segment is matched by the ``>`` wildcard, so
    callers must still check ``key.startswith(prefix)`` on what they receive.
    """
    whole = prefix.split("/")[:-1]
    if not whole:
        return ">"
    return ".".join(encode_segment(segment) for segment in whole) + ".>"


def is_internal(nats_key: str) -> bool:
    """Whether ``nats_key`` is one of the store's own bookkeeping keys."""
    return nats_key.split(".", 1)[0] == INTERNAL_TOKEN


def scope_token(scope: str | None) -> str | None:
    """The subject token of a credential scope (``NATS_SCOPE``), or ``None`` without one."""
    return encode_segment(scope) if scope else None


def lease_key(lease_id: int, scope: str | None = None) -> str:
    """The NATS KV key recording that lease ``lease_id`` is alive: ``_dyndisc/lease.<id>``, or, for a process
    whose credentials are scoped, ``_dyndisc/lease.<scope token>.<id>``, which only that scope may write."""
    if scope is None:
        return f"{INTERNAL_TOKEN}.{lease_id:x}"
    return f"{INTERNAL_TOKEN}.{scope}.{lease_id:x}"


def scope_leases_filter(scope: str) -> str:
    """The KV key filter of the lease keys of one scope (token), what its credentials may write."""
    return f"{INTERNAL_TOKEN}.{scope}.*"


def lease_id_of(nats_key: str) -> int:
    """The lease a lease key stands for (0 if ``nats_key`` is not one): read from the key's last token, since
    the server's expiry marker carries none of our headers."""
    token, _, rest = nats_key.partition(".")
    if token != INTERNAL_TOKEN:
        return 0
    last = rest.rsplit(".", 1)[-1]
    try:
        return int(last, 16) if last == f"{int(last, 16):x}" else 0
    except ValueError:
        return 0
