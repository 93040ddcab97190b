"""A reversible spelling of key segments in the small alphabets of file names and NATS subject tokens.

Letters, digits, ``_`` and ``-`` stand for themselves; every other character becomes the escape character
and two upper-case hex digits per UTF-8 byte; an empty segment is the escape character alone. Only the
canonical spelling decodes, so one key never has two spellings (two files, two NATS keys).
"""

from __future__ import annotations

import re
import string

_PLAIN = frozenset(string.ascii_letters + string.digits + "_-")


class SegmentEscaper:
    """Encode and decode key segments with ``escape`` as the escape character (``%`` or ``=``)."""

    def __init__(self, escape: str) -> None:
        if len(escape) != 1 or escape in _PLAIN:
            raise ValueError(
                f"the escape character must be one character outside [A-Za-z0-9_-], not {escape!r}"
            )
        self.escape = escape
        self._plain = re.compile(r"[A-Za-z0-9_-]+")
        self._token = re.compile(rf"(?:[A-Za-z0-9_-]|{re.escape(escape)}[0-9A-F]{{2}})+")

    def encode(self, segment: str) -> str:
        """``segment`` in the restricted alphabet."""
        if not segment:
            return self.escape
        if self._plain.fullmatch(segment):
            return segment  # the common case: a dyndisc name needs no escaping
        out: list[str] = []
        for char in segment:
            if char in _PLAIN:
                out.append(char)
            else:
                out.extend(f"{self.escape}{byte:02X}" for byte in char.encode("utf-8"))
        return "".join(out)

    def decode(self, name: str) -> str | None:
        """The segment ``name`` spells, or ``None`` if :meth:`encode` could not have produced it."""
        if name == self.escape:
            return ""
        if self._plain.fullmatch(name):
            return name
        if not self._token.fullmatch(name):
            return None
        raw = bytearray()
        i = 0
        while i < len(name):
            if name[i] == self.escape:
                raw.append(int(name[i + 1 : i + 3], 16))
                i += 3
            else:
                raw.append(ord(name[i]))
                i += 1
        try:
            segment = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return segment if self.encode(segment) == name else None
