"""The ``dyndisc`` command line."""

from __future__ import annotations

import logging

import anyio
import click

from dyndisc._settings import BACKEND_ALIASES, BACKEND_NAMES


@click.group()
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """dyndisc: discovery for a distributed LLM-serving runtime."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--backend",
    default="memory",
    show_default=True,
    type=click.Choice([*BACKEND_NAMES, *BACKEND_ALIASES], case_sensitive=False),
    help="Discovery backend; its settings come from the environment (ETCD_ENDPOINTS, NATS_SERVER ...).",
)
@click.option(
    "--ttl", default=2.0, show_default=True, type=click.FloatRange(0.5, 60), help="Lease TTL, seconds."
)
def demo(backend: str, ttl: float) -> None:
    """Workers join, leave and crash while a frontend watches the instance set."""
    from dyndisc._demo import run_demo

    anyio.run(run_demo, backend, ttl)


if __name__ == "__main__":
    main()
