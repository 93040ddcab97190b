"""The ``dyndisc`` command group: global options, the backend every command opens, and one error handler.

Global options go before the subcommand (``dyndisc --backend nats list``); ``--backend``, ``--endpoints``
and ``--wait`` are also accepted after it, as before. No command prints a traceback: a dyndisc error is one
line and exit status 1, a usage error exit status 2, anything unexpected one line naming it (``-v`` adds
the traceback).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import click

from dyndisc._errors import BackendUnavailableError, ConfigurationError, DyndiscError
from dyndisc._settings import BACKEND_ALIASES, BACKEND_NAMES, KV_STORE, canonical_backend_name
from dyndisc.backends import DiscoveryBackend, create_backend
from dyndisc.cli.output import Style

T = TypeVar("T")

#: How long a command waits for its server on first contact, unless ``--wait`` says otherwise.
DEFAULT_WAIT = 5.0
#: The variable ``--endpoints`` sets, per backend.
ENDPOINT_VARIABLES = {"etcd": "ETCD_ENDPOINTS", "nats": "NATS_SERVER"}
BACKEND_CHOICE = click.Choice([*BACKEND_NAMES, *BACKEND_ALIASES, KV_STORE], case_sensitive=False)


@dataclass
class Settings:
    """What the global options chose; a subcommand's own ``--backend`` etc. override them."""

    backend: str = "etcd"
    endpoints: str | None = None
    wait: float = DEFAULT_WAIT
    verbose: int = 0
    style: Style = field(default_factory=lambda: Style(color=False))

    def override(self, backend: str | None, endpoints: str | None, wait: float | None) -> None:
        if backend is not None:
            self.backend = backend
        if endpoints is not None:
            self.endpoints = endpoints
        if wait is not None:
            self.wait = wait

    def apply_endpoints(self) -> str:
        """Check the backend name and apply ``--endpoints`` to its variable; return the canonical name."""
        name = canonical_backend_name(self.backend, "--backend / DYN_DISCOVERY_BACKEND")
        if self.endpoints is not None:
            variable = ENDPOINT_VARIABLES.get(name)
            if variable is None:
                where = {"file": "DYN_FILE_KV", "kubernetes": "KUBECONFIG"}.get(name, "nowhere")
                raise click.UsageError(
                    f"--endpoints applies to etcd and nats; the {name} backend is found through {where}"
                )
            os.environ[variable] = self.endpoints  # this process only: the backend reads its settings here
        return name

    def open_backend(self) -> DiscoveryBackend:
        """The backend the options name, with ``--endpoints`` applied and ``--wait`` as its startup bound.

        An ``--endpoints`` the backend cannot use is a usage error (exit status 2), like any mistyped option.
        """
        name = self.apply_endpoints()
        try:
            return create_backend(
                name,
                startup_timeout=self.wait,
                startup_timeout_name="--wait",
                source="--backend / DYN_DISCOVERY_BACKEND",
            )
        except ConfigurationError as exc:
            variable = ENDPOINT_VARIABLES.get(name)
            if self.endpoints is not None and variable is not None and variable in str(exc):
                raise click.BadParameter(str(exc), param_hint="--endpoints") from None
            raise

    @asynccontextmanager
    async def backend_open(self) -> AsyncIterator[DiscoveryBackend]:
        async with self.open_backend() as backend:
            yield backend


def settings() -> Settings:
    """The settings of the command being run."""
    found = click.get_current_context().find_object(Settings)
    return found if found is not None else Settings()


def run(main: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``main`` on an event loop (the one entry to async code of every command)."""
    return anyio.run(main, *args)


def _innermost(error: BaseException) -> BaseException:
    """The one error inside nested exception groups of one error each (what a task group raised)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class CommandGroup(click.Group):
    """A group whose commands never end in a traceback (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except BaseException as raw:
            error = _innermost(raw)
            if isinstance(error, click.ClickException | click.exceptions.Exit | click.Abort):
                raise error from None
            if isinstance(error, KeyboardInterrupt):
                raise click.exceptions.Exit(130) from None
            config = ctx.find_object(Settings) or Settings()
            if config.verbose:
                traceback.print_exception(raw, file=sys.stderr)
            if isinstance(error, BackendUnavailableError):
                # The backend's message names --wait where it was the limit.
                longer = f"pass --wait {max(60, 2 * config.wait):g} to wait longer"
                raise click.ClickException(f"{error} ({longer})") from None
            if isinstance(error, DyndiscError):
                raise click.ClickException(str(error)) from None
            if isinstance(raw, Exception | BaseExceptionGroup):
                what = f"unexpected {type(error).__name__}: {error}"
                raise click.ClickException(
                    f"{what} (run with -v for the traceback; please report it)"
                ) from None
            raise


def _color(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _version() -> str:
    from dyndisc import __version__

    return __version__


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "-V", "--version", prog_name="dyndisc", message="%(prog)s %(version)s")
@click.option(
    "-b",
    "--backend",
    envvar="DYN_DISCOVERY_BACKEND",
    default="etcd",
    show_default=True,
    type=BACKEND_CHOICE,
    help="Discovery backend (env DYN_DISCOVERY_BACKEND); its settings come from the environment.",
)
@click.option(
    "--endpoints",
    metavar="URLS",
    default=None,
    help="Where the server is: sets ETCD_ENDPOINTS (etcd) or NATS_SERVER (nats) for this command.",
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 3600),
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds to wait for the server on first contact before giving up (watch, events: before saying "
    "it is missing; they wait on).",
)
@click.option(
    "--color/--no-color", default=None, help="Colour the output (default: on a terminal, unless NO_COLOR)."
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info and tracebacks, -vv debug).")
@click.pass_context
def main(
    ctx: click.Context, backend: str, endpoints: str | None, wait: float, color: bool | None, verbose: int
) -> None:
    """dyndisc: discovery for a distributed LLM-serving runtime.

    Read what workers registered (list, get, watch, events, models, channels, entries, ui), hold a
    registration (register), check a backend (doctor), start a server to try it with (server), or see it all
    happen in memory (demo).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Settings(backend, endpoints, wait, verbose, Style(_color(color)))


def backend_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--backend``, ``--endpoints`` and ``--wait`` after the subcommand too (overriding the global ones)."""
    for option in reversed(
        [
            click.option(
                "-b", "--backend", type=BACKEND_CHOICE, default=None, help="As the global --backend."
            ),
            click.option("--endpoints", metavar="URLS", default=None, help="As the global --endpoints."),
            click.option(
                "--wait", type=click.FloatRange(0, 3600), default=None, help="As the global --wait."
            ),
        ]
    ):
        command = option(command)
    return command
