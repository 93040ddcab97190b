"""``tools/mutation-equivalent.txt`` names mutants that exist: an entry whose code changed no longer
excuses a survivor, and one for a mutant gone from the code would excuse nothing while saying it does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).parents[2] / "tools" / "mutate.py"


def _mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dyndisc_mutate_tool", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_equivalent_mutant_listed_is_a_mutant_of_today() -> None:
    mutate = _mutate()
    listed = mutate.equivalent()
    modules = {place.split(":", 1)[0] for place in listed}
    today = {mutate.place(m.ident) for module in modules for m in mutate.mutants_of(module)}
    assert listed, "the list is empty: read from the wrong place?"
    assert sorted(set(listed) - today) == []


def test_an_ident_survives_lines_added_above_it() -> None:
    mutate = _mutate()
    source = "def f(a, b):\n    return a > b\n"
    moved = "\n\n# a comment\n" + source
    first = [mutate.place(m.ident) for m in mutate.mutants_of("m.py", source)]
    again = [mutate.place(m.ident) for m in mutate.mutants_of("m.py", moved)]
    assert first
    assert first == again
