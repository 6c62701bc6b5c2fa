"""Breaker trips shared by every node: once enough nodes trip a member, it opens everywhere.

A trip goes out on the cluster bus (pub/sub: every node hears it within milliseconds)
and into the member's reports in Redis, each expiring with its open period (a node that
starts or reconnects meanwhile reads them). A node opens a member it did not trip itself
when `corroborate` distinct nodes have live reports; with fewer it doubts the member (its
next failure there trips it, its next success dispels the doubt), so one node with a bad
path cannot empty the pool for the others. When the period ends, only the node that wins
a `SET NX PX` token half-opens and sends trial calls; its verdict (close, or a re-trip)
goes out the same way. Each node still judges trips by its own outcomes. Redis down:
nothing is shared, nothing fails; every node decides alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable
from plugins.breaker.circuit import HALF_OPEN, OPEN, Circuit
from plugins.breaker.keys import BREAKER_EVENTS
from plugins.breaker.quorum import TripReports
from plugins.breaker.store import RedisTrips

log = logging.getLogger("scalenode.breaker")


class TripExchange:
    """The node's one link between its shared circuits and the other nodes' (by circuit name:
    `pool|host:port`, the same on every node with the same config)."""

    def __init__(
        self,
        node: str,
        redis: RedisConnection,
        bus: ClusterBus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.store = RedisTrips(redis)
        self.bus = bus
        self.clock = clock
        self.circuits: dict[str, Circuit] = {}
        self.reports: dict[str, TripReports] = {}
        self.trial_ttl: dict[str, float] = {}  # seconds a trial token is held at most
        self.heard = 0
        self.backend_errors = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(BREAKER_EVENTS, self.hear, self.resync)

    def register(self, circuit: Circuit, trial_ttl: float) -> None:
        circuit.on_trip = self.tripped
        circuit.on_close = self.closed
        circuit.auto_half_open = False  # the token decides who half-opens
        self.circuits[circuit.name] = circuit
        self.reports[circuit.name] = TripReports()
        self.trial_ttl[circuit.name] = trial_ttl

    def tripped(self, circuit: Circuit, seconds: float) -> None:
        """This node's outcomes opened `circuit`: report it to the others, keep a record."""
        name, level = circuit.name, circuit.level
        self.reports[name].add(self.node, self.clock() + seconds)
        self._arm(circuit, seconds)
        message = self._message("trip", circuit, seconds)
        self._spawn(self._send(message, lambda: self.store.report(name, self.node, seconds, level)))

    def closed(self, circuit: Circuit) -> None:
        """A trial here (or an operator) closed `circuit`: every node closes it, the
        reports and records go."""
        name = circuit.name
        self.reports[name].clear()
        self._disarm(name)
        message = self._message("close", circuit, 0.0)
        self._spawn(self._send(message, lambda: self.store.clear(name)))

    def hear(self, payload: bytes) -> None:
        """Another node's trip or close (this node's own come back too, and are ignored)."""
        message = orjson.loads(payload)
        circuit = self.circuits.get(message.get("member", ""))
        if circuit is None or message.get("node") == self.node:
            return
        self.heard += 1
        if message["kind"] == "trip":
            now, seconds = self.clock(), float(message["seconds"])
            self.reports[circuit.name].add(str(message["node"]), now + seconds)
            self.judge(circuit, now, seconds, int(message["level"]))
        elif message["kind"] == "close":
            self.reports[circuit.name].clear()
            self._disarm(circuit.name)
            circuit.close()

    def judge(self, circuit: Circuit, now: float, seconds: float, level: int) -> None:
        """Other nodes reported `circuit`'s trip: open it for `seconds` if enough of them
        did (and the pool's cap allows), else doubt it for as long."""
        if self.reports[circuit.name].count(now) >= circuit.settings.corroborate:
            if circuit.follow(now, seconds, level):
                self._arm(circuit, seconds)
        else:
            circuit.doubt(now + seconds)

    def resync(self) -> None:
        self._spawn(self.load())

    async def load(self) -> None:
        """Take in the live reports of every member (missed while starting or cut off):
        open those enough nodes tripped, until the last of their periods ends."""
        for name, circuit in self.circuits.items():
            try:
                found = await self.store.reports(name)
            except BackendUnavailable:
                self.backend_errors += 1
                return
            if not found:
                continue
            now, reports = self.clock(), self.reports[name]
            for node, seconds, _ in found:
                reports.add(node, now + seconds)
            longest = max(seconds for _, seconds, _ in found)
            self.judge(circuit, now, longest, max(level for *_, level in found))

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _message(self, kind: str, circuit: Circuit, seconds: float) -> bytes:
        return orjson.dumps(
            {
                "kind": kind,
                "member": circuit.name,
                "seconds": seconds,
                "level": circuit.level,
                "node": self.node,
            }
        )

    async def _send(self, message: bytes, record: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.bus.publish(BREAKER_EVENTS, message)
            await record()
        except BackendUnavailable:
            self.backend_errors += 1  # the others learn by their own outcomes instead

    def _arm(self, circuit: Circuit, seconds: float) -> None:
        self._disarm(circuit.name)
        loop = asyncio.get_running_loop()
        self._timers[circuit.name] = loop.call_later(seconds, self._due, circuit)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _due(self, circuit: Circuit) -> None:
        self._timers.pop(circuit.name, None)
        if circuit.state == OPEN:
            self._spawn(self._claim(circuit))

    async def _claim(self, circuit: Circuit) -> None:
        """Half-open if this node wins the trial token; else wait for the winner's verdict
        (or for its token to expire, should the winner die mid-trial)."""
        ttl = self.trial_ttl[circuit.name]
        try:
            won = await self.store.claim(circuit.name, self.node, ttl)
        except BackendUnavailable:
            self.backend_errors += 1
            won = True  # alone, this node tries for itself
        if circuit.state != OPEN:
            return
        if won:
            circuit.half_open()
            # No call here to try with before the token expires: let another node try.
            loop = asyncio.get_running_loop()
            timer = loop.call_later(ttl, self._idle, circuit, circuit.probes)
            self._timers[circuit.name] = timer
        else:
            self._arm(circuit, ttl)

    def _idle(self, circuit: Circuit, probes: int) -> None:
        """Back to open if this node sent no trial since it won the token, so that a node
        with traffic can win it: trials stay one node's at a time."""
        self._timers.pop(circuit.name, None)
        if circuit.state == HALF_OPEN and circuit.probes == probes:
            circuit.withdraw()
            self._arm(circuit, 0.0)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
