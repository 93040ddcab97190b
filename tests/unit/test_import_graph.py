"""``tools/import_graph.py``: the package has no import cycle, and the tool finds every kind of one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "import_graph.py"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_dyndisc_has_no_import_cycle() -> None:
    result = run_tool()
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 cycle(s)" in result.stdout


def test_the_graph_draws_as_mermaid_and_dot() -> None:
    mermaid = run_tool("--format", "mermaid", "--depth", "3")
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart LR")
    assert '["dyndisc.backends.etcd"]' in mermaid.stdout
    dot = run_tool("--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert '"dyndisc.cli.commands" -> "dyndisc.cli.app";' in dot.stdout


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "src" / "dyndisc" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "src"


def test_cycles_through_type_checking_relative_and_deferred_imports_are_found(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {
            "__init__.py": "from dyndisc.a import A\n",
            # a <-> b: b's side only under TYPE_CHECKING, written as a relative import.
            "a.py": "from dyndisc import b\nA = 1\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
            # pkg.c -> pkg.d at the top, pkg.d -> pkg.c inside a function: a cycle all the same.
            "pkg/__init__.py": "",
            "pkg/c.py": "import dyndisc.pkg.d\n",
            "pkg/d.py": "def f():\n    from . import c\n",
            # Only the parent package's __init__ imports its module: not a cycle.
            "e.py": "import anyio\n",
        },
    )
    result = run_tool("--source", str(source))
    assert result.returncode == 1
    assert "2 cycle(s)" in result.stdout
    assert "cycle: dyndisc.a <-> dyndisc.b" in result.stdout
    assert "dyndisc.b -> dyndisc.a  (" in result.stdout
    assert "under TYPE_CHECKING" in result.stdout
    assert "cycle: dyndisc.pkg.c <-> dyndisc.pkg.d" in result.stdout
    assert "in a function" in result.stdout
    drawn = run_tool("--source", str(source), "--format", "mermaid")
    assert drawn.returncode == 1  # a drawing of a graph with cycles still fails, and says why
    assert "cycle: dyndisc.a <-> dyndisc.b" in drawn.stderr
    assert "-.->" in drawn.stdout  # deferred and type-only imports are dotted


def test_a_name_imported_from_a_package_is_an_edge_to_the_package(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {
            "__init__.py": "",
            "pkg/__init__.py": "from dyndisc.pkg.inner import VALUE\n",
            "pkg/inner.py": "from dyndisc.user import thing\nVALUE = 1\n",
            "user.py": "from dyndisc.pkg import VALUE\nthing = VALUE\n",
        },
    )
    result = run_tool("--source", str(source))
    assert result.returncode == 1
    assert "cycle: dyndisc.pkg <-> dyndisc.pkg.inner <-> dyndisc.user" in result.stdout
