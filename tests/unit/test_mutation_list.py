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


def test_a_small_sample_of_mutants_is_caught() -> None:
    """CI's habit: a few mutants of the registrations (their checks are the fast ones) planted one at a time
    by ``tools/mutate.py`` in a scratch copy, each failing a check. A survivor here means a check weakened.
    The score of the whole core is measured on larger samples (``docs/reliability.md``)."""
    import subprocess

    sample = ["--only", "runtime/registrations.py", "--sample", "6", "--seed", "1"]
    command = [sys.executable, str(TOOL), *sample]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 mutants: 6 killed" in done.stdout, done.stdout[-2000:]
