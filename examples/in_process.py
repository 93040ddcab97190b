"""Worker and frontend in one process on the in-memory backend: no server needed.

python examples/in_process.py
"""

import os
import signal

import anyio
from frontend import route
from worker import serve

from dyndisc import DistributedRuntime


async def main() -> None:
    async with (
        DistributedRuntime("memory") as worker_rt,
        DistributedRuntime("memory") as frontend_rt,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(serve, worker_rt)
        await route(frontend_rt)
        os.kill(
            os.getpid(), signal.SIGTERM
        )  # ask the worker to leave, as an orchestrator would


if __name__ == "__main__":
    anyio.run(main)
