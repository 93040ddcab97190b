"""The file part of ``dyndisc doctor``: file leases expire by mtime, so the clocks of the hosts must agree."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import anyio.to_thread

from dyndisc.backends.diagnosis import SKEW_WARNING, BackendDoctor, Report, Status


class FileDoctor(BackendDoctor):
    """Checks the clock of the filesystem that holds the root against this host's."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def check_clock(self, report: Report) -> None:
        skew = await anyio.to_thread.run_sync(file_clock_skew, self.root)
        detail = f"{self.root} stamps files {skew:+.2f}s from this host's clock"
        if abs(skew) >= SKEW_WARNING:
            report.add(
                "clock",
                Status.WARN,
                detail + "; file leases expire by mtime, so every host sharing it must agree",
                "synchronise the clocks of the hosts and the file server (chrony / NTP)",
            )
        else:
            report.add("clock", Status.OK, detail)


def file_clock_skew(root: Path) -> float:
    """Seconds the filesystem at ``root`` stamps a new file ahead of this host's clock."""
    with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-") as probe:
        now = time.time()
        return os.fstat(probe.fileno()).st_mtime - now
