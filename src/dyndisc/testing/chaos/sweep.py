"""Many simulated seeds at once, split over processes (the simulation is CPU-bound and single-threaded).

Each process runs a stride of the seeds in one :class:`~dyndisc.testing.chaos.runner.Session` and sends back
a summary per seed, never its history (a history is large, and only a failing seed's report is needed).
What each seed used of the workload is summarised where it ran too, so a sweep can show that its seeds
between them used the whole API.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from dyndisc.testing.chaos.history import History
from dyndisc.testing.chaos.runner import Session

#: Every call of the workload and every shape of one: what a sweep's seeds must use between them.
SHAPES = frozenset(
    {
        "register",
        "unregister",
        "bulk",
        "put_entry",
        "delete_entry",
        "register_model",
        "unregister_model",
        "register_channel",
        "unregister_channel",
        "exit",
        "draining",
        "dynamo-tcp",
        "unbound entry",
        "cancelled",
        "replaced",
        "layout dyndisc",
        "layout dynamo-v1",
        "one worker, one watcher",
        "several TTLs",
        "thousands of endpoints",
    }
)


@dataclass(frozen=True)
class SeedSummary:
    """One judged seed, as a sweep keeps it."""

    seed: int
    #: The failure report (broken invariants and the history's slice), ``None`` for a seed that passed.
    report: str | None
    operations: int
    faults: int
    #: What the seed used of :data:`SHAPES`.
    shapes: frozenset[str]


def shapes_of(history: History) -> frozenset[str]:
    """The calls and shapes of :data:`SHAPES` one history used."""
    found = {op.action for op in history.operations} | {f"layout {history.layout}"}
    for op in history.operations:
        if op.args.get("readiness") == "draining":
            found.add("draining")
        if isinstance(op.args.get("transport"), dict):
            found.add("dynamo-tcp")
        if op.action == "put_entry" and not op.args["bound"]:
            found.add("unbound entry")
        if op.error and op.error.startswith("CancelledByCaller"):
            found.add("cancelled")
        if op.action == "bulk" and op.args["count"] >= 1000:
            found.add("thousands of endpoints")
    grants = [op for op in history.operations if op.action == "grant" and op.ok]
    if len(grants) > len({op.actor for op in grants}):
        found.add("replaced")
    if len({op.result[1] for op in grants}) > 1:
        found.add("several TTLs")
    if len({op.actor for op in grants}) == 1 and len({s.watcher for s in history.seen}) == 1:
        found.add("one worker, one watcher")
    return frozenset(found & SHAPES)


def simulate_seeds(seeds: Sequence[int], *, jobs: int = 1) -> list[SeedSummary]:
    """Run ``seeds`` in the simulation on ``jobs`` processes; summaries in the order of ``seeds``."""
    if jobs <= 1 or len(seeds) <= 1:
        return _run_stride(list(seeds))
    strides = [list(seeds[n::jobs]) for n in range(jobs)]
    # A fresh interpreter per process: forking a process that runs threads (a test session's servers) can
    # copy a held lock into the child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_quiet) as pool:
        done = [summary for stride in pool.map(_run_stride, strides) for summary in stride]
    order = {seed: n for n, seed in enumerate(seeds)}
    return sorted(done, key=lambda summary: order[summary.seed])


def _quiet() -> None:
    logging.disable(logging.CRITICAL)  # the faults make the library warn thousands of times


def _run_stride(seeds: list[int]) -> list[SeedSummary]:
    found = []
    with Session("memory") as session:
        for seed in seeds:  # each history let go once summarised: hundreds of them would slow every GC
            outcome = session.run(seed)
            found.append(
                SeedSummary(
                    seed,
                    None if outcome.ok else outcome.report(),
                    outcome.operations,
                    outcome.faults,
                    shapes_of(outcome.history),
                )
            )
    return found
