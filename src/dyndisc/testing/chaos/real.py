"""A chaos run against a real server: workers and watchers in agent processes, the nemesis in this one.

Workers live ``target.per_process`` to a process (runtimes as tasks of one process: a kill or a pause takes
them all; one on Kubernetes, where a process's identity is its pod's); every watcher has a process of its own
(the CLI's ``dyndisc watch --json`` among them), so a SIGSTOP pauses one watcher.
Agents report with ``time.monotonic()``, which every process of a host shares, so their reports and this
process's faults share one timeline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from anyio.abc import Process, TaskGroup

from dyndisc._errors import DyndiscError
from dyndisc.testing.chaos import readings
from dyndisc.testing.chaos.checker import quiet_point
from dyndisc.testing.chaos.history import (
    Fault,
    History,
    LeaseReport,
    Seen,
)
from dyndisc.testing.chaos.lines import cli_event, json_lines
from dyndisc.testing.chaos.plan import Plan, Step
from dyndisc.testing.chaos.raw import RAW_LAYOUTS, RawTruth
from dyndisc.testing.chaos.target import Target


class _Agent:
    def __init__(self, name: str, process: Process, log: BinaryIO) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.workers: list[str] = []
        self.alive = True
        #: Set when the agent reads commands (its imports done).
        self.ready = anyio.Event()


class RealRun:
    """One run of ``plan`` against ``target`` (its server already started)."""

    def __init__(self, plan: Plan, target: Target, logs: Path) -> None:
        self.plan = plan
        self.target = target
        self.logs = logs
        self.namespace = f"chaos{plan.seed}x{random.Random().getrandbits(24):x}"
        self.history = History(target.name, plan.seed, plan.ttl, plan.duration, layout=plan.layout)
        self.layout = RAW_LAYOUTS[plan.layout]
        self.rng = random.Random(plan.seed ^ 0x5EED)
        self.t0 = 0.0
        self.agents: dict[str, _Agent] = {}
        self.worker_agent: dict[str, _Agent] = {}
        self.ops: dict[tuple[str, int], int] = {}
        #: Set once the run stops its agents (an agent ending after that was stopped, not dead).
        self.stopping = False
        self.leases: dict[str, int | None] = {}
        #: Workers whose clean exit returned.
        self.exited: set[str] = set()
        self.paused: dict[str, int] = {}
        #: The run's task group: what the orchestrator does beside the steps (a kubelet's reports).
        self.tg: TaskGroup | None = None

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    # -- agents -------------------------------------------------------------------------------------------
    async def spawn(self, tg: TaskGroup, name: str, argv: list[str], reader: Any) -> _Agent:
        env = {**await self.target.environment(name, self.namespace), "DYN_KV_LAYOUT": self.plan.layout}
        path = self.logs / f"{name}.log"
        log = await anyio.to_thread.run_sync(path.open, "ab")  # closed by stop_agents
        process = await anyio.open_process(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        agent = self.agents[name] = _Agent(name, process, log)
        tg.start_soon(self._follow, reader, agent)
        return agent

    async def _follow(self, reader: Any, agent: _Agent) -> None:
        """Read what ``agent`` says until its output ends; a watcher whose process ended on its own (not
        stopped, not killed) is recorded, and the checker holds it against the run."""
        await reader(agent)
        if agent.alive and not self.stopping:
            agent.alive = False
            if agent.name.startswith("v"):
                self.history.died[agent.name] = self.now()

    async def send(self, agent: _Agent, **order: Any) -> None:
        if agent.alive and agent.process.stdin is not None:
            await agent.process.stdin.send((json.dumps(order) + "\n").encode())

    async def read_agent(self, agent: _Agent) -> None:
        async for said in json_lines(agent.process):
            self.report(agent, said)

    def report(self, agent: _Agent, said: dict[str, Any]) -> None:
        at = round(said["t"] - self.t0, 4)
        kind = said["type"]
        if kind == "ready":
            agent.ready.set()
        elif kind == "op_start":
            op = self.history.operation(said["actor"], said["action"], said["args"], at)
            self.ops[(agent.name, said["op"])] = self.history.operations.index(op)
        elif kind == "op_end":
            index = self.ops.pop((agent.name, said["op"]), None)
            if index is not None:
                op = self.history.operations[index]
                op.end, op.ok, op.result, op.error = at, said["error"] is None, said["result"], said["error"]
        elif kind == "seen":
            records = [tuple(r) for r in said["records"]]
            self.history.seen.append(Seen(said["watcher"], at, said["kind"], records))
        elif kind == "lease":
            self.leases[said["runtime"]] = said["instance_id"]
            self.history.leases.append(LeaseReport(said["runtime"], at, said["instance_id"], said["state"]))
            if said["state"] == "held" and self.tg is not None:
                self.tg.start_soon(self.target.lease_held, agent.name, self.namespace)
        elif kind == "renewed":
            self.history.renewed(said["runtime"], said["lease"], at)
        elif kind == "returned" and self.tg is not None:
            self.tg.start_soon(self.probe, said["actor"], said["action"], said["args"])
            if said["action"] == "exit":
                self.exited.add(said["actor"])
                if all(w in self.exited for w in agent.workers):
                    self.tg.start_soon(self.target.agent_exited, agent.name, self.namespace)

    async def read_cli(self, agent: _Agent) -> None:
        """The CLI's ``watch --json`` lines, as watch events."""
        async for line in json_lines(agent.process):
            event = cli_event(line)
            if event is not None:  # a status record (stale, current again) is no change of the set
                self.history.seen.append(Seen.of(agent.name, self.now(), event))

    # -- steps ---------------------------------------------------------------------------------------------
    async def execute(self, tg: TaskGroup, step: Step) -> None:
        if step.actor == "nemesis":
            await self.nemesis(step)
        elif step.actor.startswith("v"):
            await self.start_watcher(tg, step.actor)
        else:
            await self.worker_step(tg, step)

    async def worker_step(self, tg: TaskGroup, step: Step) -> None:
        name = step.actor
        if step.action == "start":
            if self.target.start_in_background:
                tg.start_soon(self.start_worker, tg, name)
            else:
                await self.start_worker(tg, name)
            return
        agent = self.worker_agent.get(name)
        if agent is None or not agent.alive:
            return
        now = self.now()
        if step.action == "kill":
            agent.alive = False
            agent.process.kill()
            for worker in agent.workers:  # every runtime of the process dies with it
                self.history.leases.append(LeaseReport(worker, now, self.leases.get(worker), "killed"))
                self.history.faults.append(Fault("kill", worker, now, now))
            tg.start_soon(self.target.agent_killed, agent.name, self.namespace)
        elif step.action in ("pause", "resume"):
            self._signal(agent, pause=step.action == "pause")
            if step.action == "pause":  # the whole process stops: every runtime of it
                self.history.faults.append(Fault("pause", name, now, detail={"workers": list(agent.workers)}))
            else:
                self._heal("pause", name, now)
        else:
            await self.send(agent, cmd=step.action, name=name, args=step.args)

    def _group(self, worker: str) -> str:
        return f"p{int(worker[1:]) // self.target.per_process}"

    async def start_worker(self, tg: TaskGroup, name: str) -> None:
        group = self._group(name)
        agent = self.agents.get(group)
        if agent is None or not agent.alive:
            argv = [sys.executable, "-m", "dyndisc.testing.chaos.agent", self.target.backend]
            agent = await self.spawn(tg, group, argv, self.read_agent)
        env = await self.target.worker_env(group, self.namespace)
        agent.workers.append(name)
        self.worker_agent[name] = agent
        ttl = self.plan.ttls.get(name, self.plan.ttl)
        await self.send(agent, cmd="start", name=name, ttl=ttl, namespace=self.namespace, env=env)

    async def prewarm(self, tg: TaskGroup) -> None:
        """Start every worker's agent process ahead (each waits for its worker to start): on a backend with
        a process per worker, starting one per worker as the plan goes would cost seconds of imports on
        the plan's clock, on a machine shared with the servers."""
        argv = [sys.executable, "-m", "dyndisc.testing.chaos.agent", self.target.backend]
        agents = [
            await self.spawn(tg, g, argv, self.read_agent)
            for g in sorted(set(map(self._group, self.plan.workers)))
        ]
        with anyio.fail_after(120):
            for agent in agents:
                await agent.ready.wait()

    def _signal(self, agent: _Agent, *, pause: bool) -> None:
        count = self.paused.get(agent.name, 0) + (1 if pause else -1)
        self.paused[agent.name] = max(count, 0)
        if agent.alive and ((pause and count == 1) or (not pause and count <= 0)):
            try:
                os.kill(agent.process.pid, signal.SIGSTOP if pause else signal.SIGCONT)
            except ProcessLookupError:  # it has just ended on its own: _follow records it
                return
            if self.tg is not None:
                self.tg.start_soon(self.target.agent_paused, agent.name, self.namespace, pause)

    async def start_watcher(self, tg: TaskGroup, name: str) -> None:
        if self.target.start_in_background:
            tg.start_soon(self._start_watcher, tg, name)
        else:
            await self._start_watcher(tg, name)

    async def _start_watcher(self, tg: TaskGroup, name: str) -> None:
        kind = self.plan.watchers[name]
        if kind == "cli":
            argv = [
                sys.executable,
                "-m",
                "dyndisc",
                "watch",
                self.namespace,
                "--json",
                "--backend",
                self.target.backend,
                # A long-lived watch waits for its server, as a monitor would (the 5 s default suits a
                # one-shot command): a watcher started during an outage must outlast it.
                "--wait",
                "120",
            ]
            await self.spawn(tg, name, argv, self.read_cli)
            return
        argv = [sys.executable, "-m", "dyndisc.testing.chaos.agent", self.target.backend]
        agent = await self.spawn(tg, name, argv, self.read_agent)
        endpoint = None
        if kind == "client":
            endpoint = self.history.scopes[name] = f"{self.namespace}.{self.plan.client_endpoints[name]}"
        await self.send(
            agent,
            cmd="watch",
            name=name,
            kind=kind,
            namespace=self.namespace,
            endpoint=endpoint,
            ttl=self.plan.ttl,
        )

    async def nemesis(self, step: Step) -> None:
        kind, heal, now = step.args["kind"], step.action == "heal", self.now()
        target = step.args.get("target", "server")
        detail: dict[str, Any] = {}
        if kind == "pause_watcher":
            agent = self.agents.get(target)
            if agent is not None:
                self._signal(agent, pause=not heal)
        elif kind == "partition" and target in self.worker_agent:
            # A worker is cut off with its process (the proxies are the agents'): every runtime of it.
            detail = {"workers": list(self.worker_agent[target].workers)}
            await self.target.fault(kind, {**step.args, "target": self.worker_agent[target].name}, heal)
        elif kind in ("revoke", "foreign_write"):
            await self.as_another_client(kind, step.args, now)
            return
        elif kind == "compact" and self.server_down():
            return
        else:
            detail = await self.target.fault(kind, step.args, heal)
            if not heal and kind == "compact":
                self.history.faults.append(Fault(kind, "server", now, now, detail))
                return
        if not heal:
            self.history.faults.append(Fault(kind, target, now, detail=detail))
            return
        self._heal(kind, target, self.now(), detail)

    def _heal(self, kind: str, target: str, now: float, detail: dict[str, Any] | None = None) -> None:
        for fault in reversed(self.history.faults):
            if fault.kind == kind and fault.target == target and fault.end is None:
                fault.end = now
                fault.detail.update(
                    detail or {}
                )  # what healing it took (Kubernetes: the controllers' return)
                return

    async def as_another_client(self, kind: str, args: dict[str, Any], now: float) -> None:
        """Revoke a live worker's lease or write a foreign record, as another client of the server would.

        Not while the server is down (nothing to do it on). A call that fails or times out may still have
        been applied (an etcd proposal can commit later): it is recorded as ``<kind>_failed``, which the
        checker holds to nothing.
        """
        if self.server_down():
            return
        try:
            with anyio.fail_after(5):
                if kind == "revoke":
                    await self.revoke(now)
                else:
                    await self.foreign_write(args["write"], args["endpoint"], now)
        except (DyndiscError, TimeoutError, OSError, RuntimeError) as error:  # RuntimeError: a kubelet write
            failed = Fault(f"{kind}_failed", "server", now, now, {"error": str(error)[:200]})
            self.history.faults.append(failed)

    def server_down(self) -> bool:
        """Whether a fault that takes the server away is in force."""
        return any(f.kind in ("server_kill", "quorum_loss") and f.end is None for f in self.history.faults)

    async def revoke(self, now: float) -> None:
        live = sorted(w for w, lease in self.leases.items() if lease and self.worker_agent[w].alive)
        if not live:
            return
        worker = self.rng.choice(live)
        lease = self.leases[worker]
        assert lease is not None
        await self.target.revoke(self.namespace, lease)
        self.history.faults.append(Fault("revoke", worker, now, now, {"lease": lease}))

    async def foreign_write(self, write: str, endpoint: str, now: float) -> None:
        key, damaged = await self.target.foreign_write(self.namespace, write, endpoint, self.rng, self.layout)
        detail: dict[str, Any] = {"write": write}
        if damaged is not None:
            self.history.damaged.append(damaged)
            detail["damaged"] = damaged
        self.history.faults.append(Fault("foreign_write", key, now, now, detail))

    # -- the run -------------------------------------------------------------------------------------------
    async def run(self) -> History:
        await self.target.prepare(self.namespace)
        self.t0 = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                if self.target.prewarm:
                    await self.prewarm(tg)
                    self.t0 = time.monotonic()
                for step in self.plan.steps:
                    await anyio.sleep(max(self.t0 + step.at - time.monotonic(), 0.0))
                    await self.execute(tg, step)
                await anyio.sleep(max(self.t0 + self.plan.duration - time.monotonic(), 0.0))
                # Give the convergence bound its whole length after the quiet point before judging (a
                # replacement and what it writes may move the quiet point on: wait again then), but no
                # later than a run that never goes quiet should be judged.
                latest = self.plan.duration + 3 * max(self.plan.ttls.values(), default=self.plan.ttl) + 10
                # (a run past ``latest`` already, its last fault late and long, is judged at once)
                while (settled := quiet_point(self.history) + self.target.bounds.converge + 0.5) > self.now():
                    if self.now() >= latest:
                        break
                    await anyio.sleep(max(min(settled, latest) - self.now(), 0.0))
                await self.read_truth()
                await self.stop_agents()
                tg.cancel_scope.cancel()
        finally:
            for agent in self.agents.values():  # a run that failed leaves no process behind
                if agent.process.returncode is None:
                    agent.process.kill()  # SIGKILL ends a stopped process too
            await self.target.aclose_stores()
        return self.history

    async def read_raw(self, prefixes: list[str]) -> RawTruth:
        return await self.target.read_truth(self.namespace, self.layout, prefixes)

    async def read_truth(self) -> None:
        dyndisc = self.target.discovery(self.namespace, self.plan.layout)
        bound = self.target.bounds.converge
        await readings.read_quiet_point(
            self.history, self.read_raw, self.layout, self.namespace, dyndisc, self.now(), bound
        )
        # Judge only the watchers that are running now (a paused or killed one cannot converge).
        self.history.gone_watchers = [
            name
            for name in self.plan.watchers
            if name not in self.agents or self.paused.get(name, 0) > 0 or name in self.history.died
        ]

    async def probe(self, actor: str, action: str, args: dict[str, Any]) -> None:
        """What the raw store holds of ``actor`` now that its ``action`` (a clean exit, an unregistration)
        returned: read at once, by the orchestrator, with the run's own client; the worker waits for it."""
        try:
            await self._probe(actor, action, args)
        finally:
            agent = self.worker_agent.get(actor)
            if agent is not None:
                await self.send(agent, cmd="probed", name=actor)

    async def _probe(self, actor: str, action: str, args: dict[str, Any]) -> None:
        at = self.now()
        try:
            with anyio.fail_after(10):
                await readings.probe(
                    self.history, self.read_raw, self.layout, self.namespace, (actor, action, args), at
                )
        except Exception as exc:  # the server is away (a fault): no reading, nothing judged
            self.history.faults.append(Fault("probe_failed", actor, at, at, {"error": str(exc)[:200]}))

    async def stop_agents(self) -> None:
        self.stopping = True
        # Watchers first, so that no watcher sees the workers leave as the run shuts down.
        watchers = [a for a in self.agents.values() if a.name.startswith("v")]
        await self._stop(watchers)
        await self._stop([a for a in self.agents.values() if a not in watchers])

    async def _stop(self, agents: list[_Agent]) -> None:
        for agent in agents:
            if agent.alive:
                self._signal(agent, pause=False)
                if self.plan.watchers.get(agent.name) == "cli":
                    agent.process.terminate()
                else:
                    await self.send(agent, cmd="quit")
        with anyio.move_on_after(10):
            for agent in agents:
                if agent.alive:
                    await agent.process.wait()
        for agent in agents:
            if agent.process.returncode is None:
                agent.process.kill()
            agent.log.close()
