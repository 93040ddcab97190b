"""``python -m dyndisc.testing.chaos``: run seeds on a backend, print a summary, exit non-zero on a violation.

    python -m dyndisc.testing.chaos --backend memory --seeds 300
    python -m dyndisc.testing.chaos --backend etcd-cluster --seeds 3 --duration 20
    python -m dyndisc.testing.chaos --backend nats --seed 1234          # replay one seed

A failing seed prints its invariant and evidence and leaves its whole history as JSON (``--out``), with the
agents' logs of a real run beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from dyndisc.testing.chaos.runner import BACKENDS, Outcome, Session, quiet_logs
from dyndisc.testing.chaos.sim import PLANTABLE


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dyndisc.testing.chaos", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--backend", choices=BACKENDS, default="memory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=int, default=10, help="how many seeds, from --first (default 10)")
    group.add_argument("--seed", type=int, help="run (replay) this one seed")
    parser.add_argument("--first", type=int, default=0, help="the first seed of --seeds (default 0)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of workload per seed (default 20)"
    )
    parser.add_argument("--out", type=Path, default=Path("chaos-out"), help="where failing histories go")
    parser.add_argument("--save-all", action="store_true", help="save every history, not only failures")
    parser.add_argument("--keep-going", action="store_true", help="run every seed even after a violation")
    parser.add_argument(
        "--plant",
        action="append",
        default=[],
        choices=PLANTABLE,
        help="plant a known bug (memory only), to see what the checker reports when it catches one",
    )
    return parser.parse_args(argv)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``'s groups (a task group's error says only how many it holds)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@dataclass(frozen=True)
class _Tally:
    """What the summary needs of one judged seed (its history is let go: thousands of them would make every
    garbage collection of the run slower)."""

    backend: str
    seed: int
    ok: bool
    operations: int
    faults: int
    violations: int
    converged_in: float
    took: float

    @classmethod
    def of(cls, outcome: Outcome) -> _Tally:
        return cls(
            outcome.backend,
            outcome.seed,
            outcome.ok,
            outcome.operations,
            outcome.faults,
            len(outcome.violations),
            outcome.converged_in,
            outcome.took,
        )


def _summary(outcomes: list[_Tally], errored: list[int]) -> str:
    failed = [o.seed for o in outcomes if not o.ok]
    converged = [o.converged_in for o in outcomes]
    rows = [
        ("backend", outcomes[0].backend if outcomes else "-"),
        ("seeds", str(len(outcomes))),
        ("operations", str(sum(o.operations for o in outcomes))),
        ("faults", str(sum(o.faults for o in outcomes))),
        ("violations", str(sum(o.violations for o in outcomes))),
        ("failing seeds", " ".join(map(str, failed)) or "none"),
        ("seeds the harness could not run", " ".join(map(str, errored)) or "none"),
        (
            "convergence median / worst (s)",
            f"{statistics.median(converged or [0]):.2f} / {max(converged or [0]):.2f}",
        ),
        ("wall time (s)", f"{sum(o.took for o in outcomes):.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the seeds the arguments name; 0 when every seed kept every invariant."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    quiet_logs()
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    outcomes: list[_Tally] = []
    errored: list[int] = []
    with Session(args.backend, duration=args.duration, logs=args.out / "logs") as session:
        for seed in seeds:
            try:
                outcome = session.run(seed, frozenset(args.plant))
            except Exception as exc:
                if not args.keep_going:
                    raise
                # The harness failed (not the system under test): say so and go on to the next seed.
                errored.append(seed)
                where = args.out / "logs" / f"seed-{seed}" / "harness-error.txt"
                where.parent.mkdir(parents=True, exist_ok=True)
                where.write_text("".join(traceback.format_exception(exc)))
                causes = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(exc))
                print(f"seed {seed}: HARNESS ERROR ({causes}; traceback: {where})", flush=True)
                continue
            outcomes.append(_Tally.of(outcome))
            mark = "ok" if outcome.ok else "VIOLATION"
            print(
                f"seed {seed}: {mark} ({outcome.operations} ops, {outcome.faults} faults, "
                f"converged in {outcome.converged_in:.2f}s, digest {outcome.history.digest()})",
                flush=True,
            )
            if not outcome.ok or args.save_all:
                args.out.mkdir(parents=True, exist_ok=True)
                saved = args.out / f"{args.backend}-seed-{seed}.json"
                saved.write_text(outcome.history.to_json())
            if not outcome.ok:
                print(outcome.report(), f"history: {saved}", sep="\n", flush=True)
                if not args.keep_going:
                    break
    print(_summary(outcomes, errored))
    return 0 if all(o.ok for o in outcomes) and len(outcomes) == len(seeds) else 1


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":  # set iteration order is part of a replay
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "dyndisc.testing.chaos", *sys.argv[1:]])
    sys.exit(main())
