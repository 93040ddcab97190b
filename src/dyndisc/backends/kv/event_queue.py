"""How much one consumer of a watch may have queued: the bound every store that fans a watch out keeps."""

from __future__ import annotations

#: Events a consumer may have queued before it is switched to a fresh snapshot instead: a slow consumer then
#: costs memory bounded by the size of the data, never an unbounded backlog, and stalls nobody.
MAX_PENDING_EVENTS = 10_000
