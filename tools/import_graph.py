"""The import graph of ``src/dyndisc``: its cycles, or the graph itself as Mermaid or DOT.

    python tools/import_graph.py                      # the cycles (Tarjan's SCCs); exit 1 if there is any
    python tools/import_graph.py --format mermaid --depth 3 > graph.mmd   # the graph, one node per package

Stdlib only: it parses the sources (``ast``), it never imports them. An edge is any import of a dyndisc
module found anywhere in a module: at the top, under ``if TYPE_CHECKING:`` (a cycle that only the type
checker sees is still two modules that cannot be read, moved or split apart) and inside a function (a
deferred import only hides a cycle until someone moves it to the top). ``from package import name`` is an
edge to ``package.name`` when that is a module, else to ``package``; relative imports are resolved from the
importing module. Not edges: the implicit import of a module's parent packages (a submodule does not depend
on what its package's ``__init__`` re-exports), and ``importlib.import_module`` with a computed name (the
backends' registry), which no reader of the source can follow either. In the drawings, imports at the top
are solid arrows and deferred or type-only ones dotted.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
PACKAGE = "dyndisc"


@dataclass(frozen=True)
class Edge:
    """One import of ``target`` by ``source``, where it is written, and whether it runs at import time."""

    source: str
    target: str
    line: int
    kind: str  # "module" (runs when the module is imported), "function" or "typing"


@dataclass
class Graph:
    """Every module of the package (by dotted name, with its file) and every import between two of them."""

    files: dict[str, Path]
    edges: list[Edge] = field(default_factory=list)

    def successors(self) -> dict[str, set[str]]:
        """``module -> the modules it imports``."""
        found: dict[str, set[str]] = {name: set() for name in self.files}
        for edge in self.edges:
            found[edge.source].add(edge.target)
        return found


def module_files(source: Path = SOURCE, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under ``source/package``, by dotted name (a package is its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """The imports of one module, each with where it sits (top level, a function, a TYPE_CHECKING block)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._functions = 0
        self._typing = 0

    def _kind(self) -> str:
        return "typing" if self._typing else "function" if self._functions else "module"

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self._typing += 1
        for child in node.body:
            self.visit(child)
        self._typing -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._kind()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._kind()))


def _known(name: str, modules: Iterable[str]) -> str | None:
    """``name`` if it is a module of the package, else its longest prefix that is, else ``None``."""
    known = set(modules)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = _known(alias.name, modules)
            if target is not None:
                yield target
        return
    if node.level:
        # The package a relative import starts from: the module's own for an __init__, else its parent's.
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, node.module] if node.module else anchor)
    else:
        base = node.module or ""
    for alias in node.names:
        target = _known(f"{base}.{alias.name}", modules) if alias.name != "*" else None
        if target != f"{base}.{alias.name}":  # the name is not a submodule: the edge is to the package
            target = _known(base, modules)
        if target is not None:
            yield target


def build(source: Path = SOURCE, package: str = PACKAGE) -> Graph:
    """The import graph of ``source/package``."""
    graph = Graph(module_files(source, package))
    modules = set(graph.files)
    for module, path in graph.files.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for node, kind in visitor.found:
            for target in _targets(node, module, path.name == "__init__.py", modules):
                if target != module:
                    graph.edges.append(Edge(module, target, node.lineno, kind))
    return graph


def strongly_connected(successors: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative, so no recursion limit), each sorted, in the
    order Tarjan finds them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(successors):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(successors[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            for nxt in pending:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(successors[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def cycles(graph: Graph) -> list[list[str]]:
    """The components of more than one module: each is at least one import cycle."""
    return [c for c in strongly_connected(graph.successors()) if len(c) > 1]


def _one_cycle(component: Sequence[str], graph: Graph) -> list[Edge]:
    """A shortest cycle through the component's first module, as the imports that make it."""
    members = set(component)
    start = component[0]
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for edge in graph.edges:
                if edge.source != node or edge.target not in members or edge.target in came_by:
                    continue
                came_by[edge.target] = edge
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came_by[path[0].source])
                    return path
                following.append(edge.target)
        frontier = following
    return []


_WHERE = {"module": "at the top", "function": "in a function", "typing": "under TYPE_CHECKING"}


def describe_cycles(graph: Graph, found: list[list[str]]) -> str:
    """What ``found`` means, for a reader: each cycle's modules, and the import lines that close one loop."""
    lines = [f"{len(graph.files)} modules, {len(graph.edges)} imports, {len(found)} cycle(s)"]
    for component in found:
        lines.append(f"cycle: {' <-> '.join(component)}")
        for edge in _one_cycle(component, graph):
            path = graph.files[edge.source]
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            lines.append(f"  {edge.source} -> {edge.target}  ({where}:{edge.line}, {_WHERE[edge.kind]})")
    return "\n".join(lines)


def collapsed(graph: Graph, depth: int | None) -> dict[tuple[str, str], bool]:
    """The edges to draw, between modules cut to their first ``depth`` name parts (``None``: whole names):
    ``(source, target) -> whether any import behind the arrow runs at import time``."""

    def cut(name: str) -> str:
        return ".".join(name.split(".")[:depth]) if depth else name

    drawn: dict[tuple[str, str], bool] = defaultdict(bool)
    for edge in graph.edges:
        source, target = cut(edge.source), cut(edge.target)
        if source != target:
            drawn[source, target] |= edge.kind == "module"
    return dict(drawn)


def mermaid(graph: Graph, depth: int | None) -> str:
    """The graph as a Mermaid flowchart (imports at the top solid, the others dotted)."""
    nodes = sorted({".".join(m.split(".")[:depth]) if depth else m for m in graph.files})
    ids = {name: f"m{i}" for i, name in enumerate(nodes)}
    lines = ["flowchart LR"]
    lines += [f'    {ids[name]}["{name}"]' for name in nodes]
    for (source, target), eager in sorted(collapsed(graph, depth).items()):
        lines.append(f"    {ids[source]} {'-->' if eager else '-.->'} {ids[target]}")
    return "\n".join(lines)


def dot(graph: Graph, depth: int | None) -> str:
    """The graph in Graphviz's DOT (imports at the top solid, the others dashed)."""
    nodes = sorted({".".join(m.split(".")[:depth]) if depth else m for m in graph.files})
    lines = ["digraph dyndisc {", "    rankdir=LR;", "    node [shape=box, fontsize=10];"]
    lines += [f'    "{name}";' for name in nodes]
    for (source, target), eager in sorted(collapsed(graph, depth).items()):
        lines.append(f'    "{source}" -> "{target}"{"" if eager else " [style=dashed]"};')
    lines.append("}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--format",
        choices=["cycles", "mermaid", "dot"],
        default="cycles",
        help="what to print: the cycles (default), or the whole graph as Mermaid or DOT",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        help="draw modules cut to this many name parts (3: dyndisc.backends.etcd); cycles use whole names",
    )
    parser.add_argument("--source", type=Path, default=SOURCE, help="the directory holding the package")
    args = parser.parse_args(argv)
    graph = build(args.source)
    found = cycles(graph)
    if args.format == "cycles":
        print(describe_cycles(graph, found))
    else:
        print(mermaid(graph, args.depth) if args.format == "mermaid" else dot(graph, args.depth))
        if found:
            print(describe_cycles(graph, found), file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
