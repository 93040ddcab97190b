"""A griffe extension for the docs build: Sphinx cross-reference roles in docstrings become links.

The docstrings use Sphinx roles (``:class:`~dyndisc.Instance```), which read well in ``help()`` and IDEs but
which mkdocstrings shows as raw text. At build time each role becomes a Markdown cross-reference that
mkdocs-autorefs resolves (``[`Instance`][dyndisc.Instance]``) when its target is on the API page, and
plain code otherwise, so no raw role and no dangling link reaches the site.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([^`]+?)`")
API_PAGE = Path(__file__).resolve().parents[1] / "api.md"


def documented() -> set[str]:
    """The names the API page renders (``::: dyndisc.X``), as ``X``."""
    found = re.findall(r"^::: dyndisc\.(\w+)", API_PAGE.read_text(), re.M)
    return set(found)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def __init__(self) -> None:
        super().__init__()
        self.names = documented()

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None or ":`" not in obj.docstring.value:
            return
        owner = obj if obj.is_class else obj.parent
        is_class = isinstance(owner, griffe.Object) and owner.is_class
        owner_name = owner.name if is_class else None
        # Only members the class declares are rendered (and linkable); inherited ones are not.
        declared = set(owner.members) if is_class else set()
        obj.docstring.value = ROLE.sub(lambda m: self.link(m, owner_name, declared), obj.docstring.value)

    def link(self, match: re.Match[str], owner: str | None, declared: set[str]) -> str:
        short, target = match[1] == "~", match[2].strip().removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if short else target.removeprefix("dyndisc.")
        parts = target.removeprefix("dyndisc.").split(".")
        if len(parts) == 1 and parts[0] not in self.names and parts[0][:1].islower() and owner in self.names:
            if parts[0] not in declared:
                return f"`{shown}`"
            parts = [owner, parts[0]]  # a member of the class whose docstring this is: `to_json`
        elif parts[-1] in self.names:
            parts = parts[-1:]  # dyndisc.backends.KvDiscovery is documented as dyndisc.KvDiscovery
        elif len(parts) >= 2 and parts[-2] in self.names:
            parts = parts[-2:]  # a member of a documented class, by its module path
        if parts[0] in self.names and len(parts) <= 2:
            return f"[`{shown}`][dyndisc.{'.'.join(parts)}]"
        return f"`{shown}`"
