"""The map matches the house: every module of ``src/dyndisc`` has its line in ``docs/architecture.md``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "dyndisc"


def rooms_block() -> str:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Rooms", 1)[1]
    return section.split("```", 2)[1]


def test_every_module_is_in_a_room() -> None:
    rooms = rooms_block()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rooms))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        for part in relative.parent.parts:
            if part not in words:
                missing.append(f"{relative}: its package {part}/")
        if path.stem not in words and path.stem not in ("__init__",):
            missing.append(str(relative))
    assert missing == [], f"modules missing from the Rooms of docs/architecture.md: {missing}"


def test_no_module_outgrows_a_reading() -> None:
    """Small modules a newcomer reads top-down: none in ``src/`` over 450 lines (split by what it holds)."""
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "src").rglob("*.py")
    }
    assert {path: lines for path, lines in sizes.items() if lines > 450} == {}
