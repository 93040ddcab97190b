"""Mutation testing of dyndisc's core: plant one small bug at a time and count what the checks catch.

    python tools/mutate.py --list                      # how many mutants each core module has
    python tools/mutate.py --jobs 2 --out mutants.json # every mutant (hours); resumable
    python tools/mutate.py --sample 12 --seed 7        # a random sample (what CI runs)
    python tools/mutate.py --only runtime/registrar.py --show 40   # one module; print 40 survivors

Each mutant is one change to one expression or statement of a core module (a comparison flipped, a
condition negated, ``and`` for ``or``, a constant moved by one, a call or an assignment dropped, ``break``
for ``continue``, a returned value dropped). It is written into a scratch copy of ``src/`` and the module's
checks run against it (``PYTHONPATH`` points at the copy): the fast unit tests, the backend's own tests on
its real server where it has one, and the seeded chaos simulation. A mutant is *killed* when a check fails
(or hangs past the timeout), *survives* when all pass. The score is killed / (mutants - equivalent), where
``tools/mutation-equivalent.txt`` lists, one line each, the mutants shown to change nothing observable.

Logging calls, docstrings, ``assert`` statements, type annotations, module-level constants (tuning knobs),
attribute assignments in ``__init__`` and ``__repr__``/``__str__`` are not mutated: a change there is
either not behaviour, or killed by every check at once (which says nothing of the checks).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EQUIVALENT = ROOT / "tools" / "mutation-equivalent.txt"

PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", "60"]
#: Core unit tests take seconds each: a mutant that makes one hang is killed sooner.
CORE_TIMEOUT = ["--timeout", "20"]
#: The unit tests of the core (the rest of tests/unit is the CLI, the plugin and the docs).
CORE_UNIT = [
    *PYTEST,
    *CORE_TIMEOUT,
    "-m",
    "not slow",
    *(
        f"tests/unit/{name}.py"
        for name in (
            "test_runtime_parts",
            "test_lease_timing",
            "test_runtime_edges",
            "test_runtime",
            "test_runtime_refusals",
            "test_memory_backend",
            "test_lease_semantics",
            "test_cards_and_entries",
            "test_concurrency",
            "test_models",
            "test_layouts",
            "test_metrics",
            "test_runtime_facade",
            "test_registrar_edges",
            "test_watch_sharing",
            "test_instance_set_lifecycle",
        )
    ),
]
CHAOS = [sys.executable, "-m", "dyndisc.testing.chaos", "--backend", "memory", "--seeds", "200"]


def conformance(backend: str) -> list[str]:
    return [*PYTEST, "tests/conformance", "-k", backend]


def backend_tests(name: str) -> list[str]:
    return [*PYTEST, f"tests/backends/{name}"]


MEMORY_CONFORMANCE = conformance("memory")
RUNTIME = [CORE_UNIT, CHAOS, MEMORY_CONFORMANCE]
#: The resume logic of revisioned watches, on the simulation's virtual clock (about a second).
KV = backend_tests("kv")
ETCD = [
    backend_tests("etcd"),
    conformance("etcd"),
    [
        *PYTEST,
        "tests/faults/test_compaction.py",
        "tests/faults/test_elections.py",
        "tests/faults/test_etcd_restart.py",
    ],
]
#: The checks with no server (about 20 s each, sleeps mostly): one past :data:`QUICK_TIMEOUT` is a mutant
#: that hangs (often spinning, which would slow every other mutant running beside it for the whole --timeout).
QUICK_CHECKS = (CORE_UNIT, CHAOS, MEMORY_CONFORMANCE, KV)
QUICK_TIMEOUT = 120.0
#: Failures that did not repeat, set aside in one mutant's checks, before the mutant is left unjudged (the
#: machine is too loaded for its checks to say anything).
MAX_FLAKY = 5
#: Results a resumed run judges again: of a module edited during the run, or of a run too loaded to tell.
UNJUDGED = ("stale", "unjudged")
#: The core modules and the checks that judge their mutants, cheapest first (the first failing check kills).
TARGETS: dict[str, list[list[str]]] = {
    "dyndisc/runtime/registrations.py": RUNTIME,
    "dyndisc/runtime/lease_keeper.py": RUNTIME,
    "dyndisc/runtime/registrar.py": RUNTIME,
    "dyndisc/runtime/metadata.py": RUNTIME,
    "dyndisc/runtime/watches.py": RUNTIME,
    "dyndisc/runtime/distributed.py": RUNTIME,
    "dyndisc/_instance_set.py": RUNTIME,
    "dyndisc/backends/kv/discovery.py": [KV, CORE_UNIT, MEMORY_CONFORMANCE, CHAOS],
    "dyndisc/backends/kv/layouts.py": [KV, CORE_UNIT, MEMORY_CONFORMANCE, CHAOS],
    "dyndisc/backends/memory.py": [KV, CORE_UNIT, MEMORY_CONFORMANCE, CHAOS],
    "dyndisc/backends/kv/change_log.py": [KV, MEMORY_CONFORMANCE, CHAOS],
    "dyndisc/backends/kv/revisioned.py": [KV, MEMORY_CONFORMANCE, CHAOS, *ETCD],
    "dyndisc/backends/file/records.py": [backend_tests("file"), conformance("file")],
    "dyndisc/backends/file/leases.py": [backend_tests("file"), conformance("file")],
    "dyndisc/backends/file/watch.py": [backend_tests("file"), conformance("file")],
    "dyndisc/backends/nats/store.py": [backend_tests("nats"), conformance("nats")],
    "dyndisc/backends/etcd/watch.py": ETCD,
    "dyndisc/backends/etcd/listing.py": ETCD,
    "dyndisc/backends/etcd/departures.py": ETCD,
}


@dataclass(frozen=True)
class Mutant:
    """One planted bug: where, what, and the source segment it replaces."""

    module: str
    line: int
    col: int
    end_line: int
    end_col: int
    operator: str
    replacement: str
    original: str
    #: A hash of the module's source the mutant was found in (a mutant of an older version is not run).
    source_hash: str
    #: The text of the mutated line, stripped: with the column, what names the place whatever the line's
    #: number (lines move with every edit above them).
    context: str

    @property
    def ident(self) -> str:
        """A stable name: the module, the place and the change. Its line number is for people; what
        matches it against ``tools/mutation-equivalent.txt`` is the rest (:func:`place`)."""
        digest = hashlib.sha1(self.ident_text.encode()).hexdigest()[:8]
        return f"{self.module}:{self.line}:{self.col}:{self.operator}:{digest}"

    @property
    def ident_text(self) -> str:
        return f"{self.col}|{self.operator}|{self.context}|{self.original}->{self.replacement}"

    def describe(self) -> str:
        before = " ".join(self.original.split())[:70]
        after = " ".join(self.replacement.split())[:70]
        return f"{self.module}:{self.line} {self.operator}: {before!r} -> {after!r}"


# -- finding mutants ---------------------------------------------------------------------------------------
_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
}
_QUIET_NAMES = {"log", "logging", "logger", "warnings"}


def _is_logging(call: ast.expr) -> bool:
    if not isinstance(call, ast.Call):
        return False
    func = call.func
    while isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id in _QUIET_NAMES:
            return True
        func = func.value
    return False


class _Finder(ast.NodeVisitor):
    def __init__(self, module: str, source: str) -> None:
        self.module = module
        self.source = source
        self.source_hash = _hash(source)
        self.lines = source.splitlines()
        self.found: list[Mutant] = []
        #: Whether each function being visited is an ``__init__`` (its attribute assignments are not
        #: dropped: every use of the object would fail at once, a kill that says nothing).
        self._in_init: list[bool] = [False]

    def _segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ""

    def _add(self, node: ast.AST, operator: str, replacement: str) -> None:
        original = self._segment(node)
        if not original or original == replacement:
            return
        self.found.append(
            Mutant(
                self.module,
                node.lineno,  # type: ignore[attr-defined]
                node.col_offset,  # type: ignore[attr-defined]
                node.end_lineno,  # type: ignore[attr-defined]
                node.end_col_offset,  # type: ignore[attr-defined]
                operator,
                replacement,
                original,
                self.source_hash,
                self.lines[node.lineno - 1].strip(),  # type: ignore[attr-defined]
            )
        )

    # -- what is not mutated -----------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name in ("__repr__", "__str__"):
            return
        self._in_init.append(node.name == "__init__")
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)
        self._body(node.body)
        self._in_init.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._body(node.body)

    def _body(self, body: list[ast.stmt]) -> None:
        start = 1 if body and _is_docstring(body[0]) else 0
        for statement in body[start:]:
            self.visit(statement)

    def visit_Assert(self, node: ast.Assert) -> None:
        return

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if not isinstance(node.test, ast.UnaryOp):
            self._add(node.test, "negate-condition", f"not ({self._segment(node.test)})")
        self.visit(node.test)
        self._body(node.body)
        self._body(node.orelse)

    def visit_While(self, node: ast.While) -> None:
        if not isinstance(node.test, ast.Constant | ast.UnaryOp):
            self._add(node.test, "negate-condition", f"not ({self._segment(node.test)})")
        self.generic_visit(node)

    # -- mutations -------------------------------------------------------------------------------------
    def visit_Compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                mutated = ast.Compare(node.left, list(node.ops), node.comparators)
                mutated.ops[index] = swap()
                self._add(node, "compare", ast.unparse(mutated))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, "bool-op", ast.unparse(ast.BoolOp(other, node.values)))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._add(node, "drop-not", f"({self._segment(node.operand)})")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap is not None and not _is_text(node):
            self._add(node, "arithmetic", ast.unparse(ast.BinOp(node.left, swap(), node.right)))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._add(node, "constant", repr(not value))
        elif isinstance(value, int):
            self._add(node, "constant", repr(value + 1))
        elif isinstance(value, float):
            self._add(node, "constant", repr(value * 2 if value else 1.0))

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Call | ast.Await) and not _is_logging(_unawait(node.value)):
            self._add(node, "drop-call", "pass")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._add(node, "drop-assignment", "pass")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if not self._in_init[-1] and all(isinstance(t, ast.Attribute | ast.Subscript) for t in node.targets):
            self._add(node, "drop-assignment", "pass")
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "drop-return-value", "return None")
        self.generic_visit(node)

    def visit_Break(self, node: ast.Break) -> None:
        self._add(node, "break-continue", "continue")

    def visit_Continue(self, node: ast.Continue) -> None:
        self._add(node, "break-continue", "break")


def _hash(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:12]


def _unawait(node: ast.expr) -> ast.expr:
    return node.value if isinstance(node, ast.Await) else node


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _is_text(node: ast.BinOp) -> bool:
    """Whether ``node`` builds text (``"a" + b``): swapping ``+`` there only breaks the type."""
    return any(isinstance(side, ast.Constant | ast.JoinedStr) for side in (node.left, node.right)) and any(
        isinstance(side, ast.JoinedStr) or (isinstance(side, ast.Constant) and isinstance(side.value, str))
        for side in (node.left, node.right)
    )


def mutants_of(module: str, source: str | None = None) -> list[Mutant]:
    """Every mutant of ``module`` (a path below ``src/``; or of ``source``, named so), in source order."""
    source = (SRC / module).read_text() if source is None else source
    finder = _Finder(module, source)
    for statement in ast.parse(source).body:
        # Module-level constants are tuning (a limit, a period): moving one by a step changes nothing a
        # check could see, so they are left alone; what functions do with them is mutated.
        if not isinstance(statement, ast.Assign | ast.AnnAssign | ast.Expr | ast.Import | ast.ImportFrom):
            finder.visit(statement)
    found = sorted(finder.found, key=lambda m: (m.line, m.col, m.operator, m.replacement))
    # The same change on two lines of the same text (a flag set in two methods) is told apart by its turn.
    seen: dict[str, int] = {}
    for n, mutant in enumerate(found):
        turn = seen[mutant.ident_text] = seen.get(mutant.ident_text, -1) + 1
        if turn:
            found[n] = replace(mutant, context=f"{mutant.context}#{turn}")
    return found


def apply(source: str, mutant: Mutant) -> str:
    """``source`` with ``mutant``'s segment replaced (the rest of the file untouched)."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = source.encode()
    # ast's columns count UTF-8 bytes within a line.
    start = offsets[mutant.line - 1] + mutant.col
    end = offsets[mutant.end_line - 1] + mutant.end_col
    replaced = data[:start] + mutant.replacement.encode() + data[end:]
    text = replaced.decode()
    ast.parse(text)  # a mutant must still be Python
    return text


# -- running them ------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What the checks said of one mutant."""

    ident: str
    describe: str
    status: str  # killed, survived, timeout, invalid, stale (its module was edited during the run)
    #: The check that failed: a test's node id where pytest named one, else the command.
    by: str
    seconds: float
    #: The module's source the mutant was judged on (a result is reused only for the same source).
    source_hash: str = ""
    #: Failures that did not repeat: a test that failed once and passed when run again alone is the
    #: machine's load, not the mutant (or a race the mutant opens too rarely to count as caught).
    flaky: int = 0


def _scratch() -> Path:
    where = Path(tempfile.mkdtemp(prefix="dyndisc-mutant-"))
    shutil.copytree(SRC, where / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return where


def run_one(mutant: Mutant, timeout: float) -> Result:
    """Plant ``mutant`` in a scratch copy of ``src/`` and run its module's checks against it.

    A failing test is run again on its own before it counts as a kill: under several mutants at once a
    timing test can fail from load alone, and a kill that is not the mutant's would flatter the score. A
    test the mutant breaks fails again; one that passes is counted as flaky and the next checks judge.
    """
    started = time.monotonic()
    scratch = _scratch()

    def result(status: str, by: str = "", flaky: int = 0) -> Result:
        seconds = time.monotonic() - started if status not in ("stale", "invalid") else 0.0
        return Result(mutant.ident, mutant.describe(), status, by, seconds, mutant.source_hash, flaky)

    try:
        target = scratch / "src" / mutant.module
        source = target.read_text()
        if _hash(source) != mutant.source_hash:  # edited during the run: judge this mutant again later
            return result("stale")
        try:
            target.write_text(apply(source, mutant))
        except SyntaxError:
            return result("invalid")
        env = {
            **os.environ,
            "PYTHONPATH": str(scratch / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DYNDISC_CHAOS_SEEDS": "200",
        }
        flaky = 0
        for command in TARGETS[mutant.module]:
            argv = [*command]
            if "dyndisc.testing.chaos" in argv:
                argv += ["--out", str(scratch / "chaos-out")]
            limit = min(timeout, QUICK_TIMEOUT) if any(command is q for q in QUICK_CHECKS) else timeout
            # A check stops at its first failure (-x): a failure that does not repeat is set aside and the
            # check runs again without it, or the tests after it would never have judged the mutant.
            while True:
                try:
                    done = _run(argv, env, limit)
                except subprocess.TimeoutExpired:
                    return result("timeout", _name(command), flaky)
                if done.returncode == 0:
                    break
                failed = _failed_tests(done.stdout)
                if not failed:  # the simulation (seeded: its failures repeat), or pytest could not start
                    return result("killed", _name(command), flaky)
                if _fails_again(command, failed[0], env, limit):
                    return result("killed", failed[0], flaky)
                flaky += 1
                if flaky > MAX_FLAKY:
                    return result("unjudged", failed[0], flaky)
                argv += ["--deselect", failed[0]]
        return result("survived", "", flaky)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _failed_tests(output: str) -> list[str]:
    """The node ids of pytest's summary lines (``FAILED tests/x.py::test - why``)."""
    # Only the summary's lines name a test: a captured log line starts with "ERROR" too.
    summary = ("FAILED tests/", "ERROR tests/")
    return [line.split()[1] for line in output.splitlines() if line.startswith(summary)]


def _fails_again(command: list[str], test: str, env: dict[str, str], timeout: float) -> bool:
    """Whether ``test`` fails once more, run on its own (with ``command``'s per-test timeout)."""
    per_test = CORE_TIMEOUT if command is CORE_UNIT else []
    try:
        return _run([*PYTEST, *per_test, test], env, timeout).returncode != 0
    except subprocess.TimeoutExpired:
        return True


def _name(command: list[str]) -> str:
    if "dyndisc.testing.chaos" in command:
        return "chaos"
    if command is CORE_UNIT:
        return "core unit tests"
    tests = [a for a in command if a.startswith("tests/")]
    key = command[command.index("-k") + 1] if "-k" in command else ""
    return " ".join([*tests, f"-k {key!r}" if key else ""]).strip()


def place(ident: str) -> str:
    """An ident without its line number: the same mutant after edits above it."""
    module, _line, rest = ident.split(":", 2)
    return f"{module}:{rest}"


def equivalent() -> dict[str, str]:
    """The mutants shown equivalent: :func:`place` of the ident -> why (``tools/mutation-equivalent.txt``)."""
    found: dict[str, str] = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                ident, _, why = line.partition(" ")
                found[place(ident)] = why.strip()
    return found


def _selected(only: list[str]) -> Iterator[Mutant]:
    for module in TARGETS:
        if not only or any(module.endswith(o) for o in only):
            yield from mutants_of(module)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--list", action="store_true", help="count the mutants of each module and stop")
    parser.add_argument("--only", action="append", default=[], help="modules whose path ends with this")
    parser.add_argument("--match", action="append", default=[], help="mutants whose ident contains this")
    parser.add_argument("--sample", type=int, help="run this many mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="the draw of --sample")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per check before it is a kill")
    parser.add_argument("--out", type=Path, help="results (JSON lines); mutants already there are skipped")
    parser.add_argument("--show", type=int, default=20, help="survivors printed at the end")
    args = parser.parse_args()

    chosen = [m for m in _selected(args.only) if not args.match or any(s in m.ident for s in args.match)]
    if args.list:
        counts: dict[str, int] = {}
        for mutant in chosen:
            counts[mutant.module] = counts.get(mutant.module, 0) + 1
        for module, count in counts.items():
            print(f"{count:5d}  {module}")
        print(f"{len(chosen):5d}  in all")
        return 0
    if args.sample is not None:
        chosen = random.Random(args.seed).sample(chosen, min(args.sample, len(chosen)))
    done: dict[str, Result] = {}
    if args.out is not None and args.out.exists():
        for line in args.out.read_text().splitlines():
            result = Result(**json.loads(line))
            if result.status not in UNJUDGED:
                done[result.ident] = result
    # A result stands for the source it was judged on: a module edited since is judged again.
    for mutant in chosen:
        if mutant.ident in done and done[mutant.ident].source_hash != mutant.source_hash:
            del done[mutant.ident]
    pending = [m for m in chosen if m.ident not in done]
    print(f"{len(chosen)} mutants, {len(chosen) - len(pending)} already judged, {args.jobs} at a time")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, m, args.timeout): m for m in pending}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            result = future.result()
            done[result.ident] = result
            print(
                f"[{n}/{len(pending)}] {result.status:8s} {result.seconds:6.1f}s {result.describe}",
                flush=True,
            )
            if args.out is not None:
                with args.out.open("a") as out:
                    out.write(json.dumps(asdict(result)) + "\n")
    results = [done[m.ident] for m in chosen]
    return _report(results, args.show)


def _report(results: list[Result], show: int) -> int:
    same = equivalent()
    judged = [r for r in results if r.status not in ("invalid", *UNJUDGED)]
    if stale := sum(r.status == "stale" for r in results):
        print(f"{stale} mutants of modules edited during the run were not judged: run again")
    if loaded := sum(r.status == "unjudged" for r in results):
        print(f"{loaded} mutants were not judged: more than {MAX_FLAKY} failures did not repeat; run again")
    killed = [r for r in judged if r.status in ("killed", "timeout")]
    survived = [r for r in judged if r.status == "survived"]
    equal = [r for r in survived if place(r.ident) in same]
    live = [r for r in survived if place(r.ident) not in same]
    denominator = len(judged) - len(equal)
    score = 100.0 * len(killed) / denominator if denominator else 100.0
    print(
        f"\n{len(judged)} mutants: {len(killed)} killed, {len(equal)} equivalent, {len(live)} survived "
        f"-> score {score:.1f}%"
    )
    if flaky := sum(r.flaky for r in judged):
        print(f"  {flaky} failures did not repeat when run again alone (load), and were not counted")
    by: dict[str, int] = {}
    for r in killed:
        check = (r.by or "timeout").split("::")[0]
        by[check] = by.get(check, 0) + 1
    for check, count in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"  killed by {check}: {count}")
    for r in live[:show]:
        print(f"  SURVIVED {r.ident}  {r.describe}")
    return 0 if not live else 1


if __name__ == "__main__":
    sys.exit(main())
