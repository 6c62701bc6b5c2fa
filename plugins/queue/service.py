"""The node's one job service: the broker, the job store, the queued routes and, on a node
that runs jobs (roles worker and all), the worker. Started and stopped with the node."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node import tasks
from node.call import Handler
from node.errors import BackendUnavailable, ConfigError
from plugins.queue.broker import Broker, QueueStats
from plugins.queue.jobs import JobStore
from plugins.queue.settings import QueueSettings

if TYPE_CHECKING:
    from plugins.queue.plugin import JobQueue
    from plugins.queue.worker import Worker

log = logging.getLogger("scalenode.queue")
STATS_INTERVAL = 1.0  # seconds between reads of the queues' depths (gauges, dashboard)


@dataclass(slots=True)
class QueuedRoute:
    plugin: JobQueue  # its settings and counters
    runner: Handler  # the rest of the route's chain: what a worker runs

    @property
    def settings(self) -> QueueSettings:
        return self.plugin.settings


class JobService:
    def __init__(self, broker: Broker, jobs: JobStore) -> None:
        self.broker = broker
        self.jobs = jobs
        self.routes: dict[str, QueuedRoute] = {}
        self.queues: dict[str, QueueSettings] = {}
        self.stats: dict[str, QueueStats] = {}
        self.oldest: dict[str, float | None] = {}  # queue -> created of its oldest waiting job
        self.worker: Worker | None = None  # on a node that runs jobs (roles worker, all)
        self._poller: asyncio.Task[None] | None = None

    def check_queue(self, settings: QueueSettings, path: str) -> None:
        """Routes may share a queue only with the same settings (one topology per queue)."""
        prior = self.queues.get(settings.name)
        if prior is not None and prior != settings:
            raise ConfigError(
                f"{path}: queue {settings.name!r} is already used with other settings; "
                "routes sharing a queue need one table"
            )
        self.queues[settings.name] = settings

    def add_route(self, plugin: JobQueue, runner: Handler) -> None:
        self.routes[plugin.route] = QueuedRoute(plugin, runner)

    async def start(self) -> None:
        await self.broker.start()
        for name, settings in self.queues.items():
            try:
                await self.broker.declare(name, settings.retry_delays, settings.max_length)
            except BackendUnavailable as exc:
                # The broker is away: publishes get 503 until it is back; log it once here.
                log.warning("queue %s not declared yet: %s", name, exc)
        if self.worker is not None:
            await self.worker.start()
        self._poller = asyncio.ensure_future(self._poll_stats())

    async def drain(self, seconds: float) -> None:
        """Stop taking jobs; let those running finish (up to `seconds`)."""
        if self.worker is not None:
            await self.worker.drain(seconds)

    async def stop(self) -> None:
        await tasks.stop(self._poller)
        if self.worker is not None:
            await self.worker.drain(0)
        await self.broker.close()

    async def oldest_age(self, name: str) -> float:
        """Seconds the oldest job waiting on queue `name` has been around (0 when none);
        raises BackendUnavailable."""
        created = await self.jobs.oldest_waiting(name)
        return 0.0 if created is None else max(0.0, time.time() - created)

    async def _poll_stats(self) -> None:
        while True:
            for name in self.queues:
                try:
                    self.stats[name] = await self.broker.stats(name)
                except BackendUnavailable:
                    self.stats.pop(name, None)  # unknown, not zero
                try:
                    self.oldest[name] = await self.jobs.oldest_waiting(name)
                except BackendUnavailable:
                    self.oldest.pop(name, None)
            await asyncio.sleep(STATS_INTERVAL)
