"""The feed hub: one aggregation of the cluster per interval, shared by every viewer.

Each tick reads every node's heartbeat once, builds the frame, keeps it in the history
ring and hands the same encoded bytes to every viewer's bounded queue. A viewer whose
queue is full is too slow for the feed and is dropped, so no browser can make the node
buffer without bound or wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client.core import GaugeMetricFamily, Metric

from dashboard.aggregate import SkewTracker, aggregate
from dashboard.history import History
from dashboard.membership import MembershipLog
from dashboard.replicas import Recommendation, ReplicaPolicy, recommend
from node import tasks
from node.cluster.registry import NodeRegistry
from node.errors import BackendUnavailable

log = logging.getLogger("scalenode.dashboard")

HISTORY_SECONDS = 15 * 60  # the longest chart window the page offers
QUEUE_FRAMES = 10  # frames a viewer may fall behind before it is dropped
TREND_SECONDS = 60.0  # request-rate trend for the replica recommendation
CLOSE_TIMEOUT = 1.0  # seconds a viewer gets to acknowledge our close on shutdown


class Viewer:
    """One WebSocket client: its queue of encoded frames and the task that sends them."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, size: int) -> None:
        self.ws = ws
        self.request = request
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=size)
        self.sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                await self.ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            pass  # the viewer left; its handler unsubscribes it

    def drop(self) -> None:
        """Cut the connection at once: closing politely would wait on the slow client."""
        self.sender.cancel()
        if self.request.transport is not None:
            self.request.transport.abort()


class FeedHub:
    def __init__(
        self,
        registry: NodeRegistry,
        policy: ReplicaPolicy,
        *,
        interval: float = 1.0,
        queue_frames: int = QUEUE_FRAMES,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.interval = interval
        self.queue_frames = queue_frames
        self.history = History(max(2, math.ceil(HISTORY_SECONDS / interval)))
        self.skew = SkewTracker()
        self.membership = MembershipLog()
        self.viewers: set[Viewer] = set()
        self.frame: dict[str, Any] | None = None
        self.recommendation: Recommendation | None = None
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.tick()
            except Exception:
                log.exception("dashboard aggregation failed")
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def records(self) -> tuple[list[dict[str, Any]], str]:
        """Every member's record (live, silent or departed), or only this node's (and why)
        when Redis is away."""
        try:
            return await self.registry.members(), ""
        except BackendUnavailable as exc:
            record = {**orjson.loads(self.registry.record()), "age": 0.0}
            return [record], f"{exc}; showing this node only"

    async def tick(self) -> None:
        """One aggregation: the frame, its history point, and its bytes to every viewer."""
        records, problem = await self.records()
        now = time.time()
        rows, cluster = aggregate(records, now)
        self.skew.update(rows, cluster["rps"])
        if not problem:  # without the registry every other node would seem to vanish
            self.membership.update(rows, now)
        if problem:
            cluster["partial"] = True
        self.recommendation = recommend(
            max(cluster["healthy"], 1),
            cluster["cpu_percent"],
            cluster["p95"],
            cluster["rps"],
            self.history.rps_ago(TREND_SECONDS),
            self.policy,
        )
        cluster["replicas"] = {
            **asdict(self.recommendation),
            "direction": self.recommendation.direction,
            **asdict(self.policy),
        }
        cluster["problem"] = problem
        self.history.append(now, rows, cluster)
        self.frame = {
            "served_by": self.registry.name,
            "t": now,
            "interval": self.interval,
            "nodes": rows,
            "cluster": cluster,
            "events": self.membership.recent(),
        }
        encoded = self.encode(full=False)
        for viewer in list(self.viewers):
            try:
                viewer.queue.put_nowait(encoded)
            except asyncio.QueueFull:
                self.dropped += 1
                log.info("dropping a dashboard viewer %d frames behind", viewer.queue.qsize())
                self.viewers.discard(viewer)
                viewer.drop()

    def encode(self, *, full: bool) -> bytes:
        """The latest frame with the whole history (`full`) or only its newest point."""
        history = self.history.columns(None if full else 1)
        history["full"] = full
        return orjson.dumps({**(self.frame or {}), "history": history})

    async def full_frame(self) -> bytes:
        if self.frame is None:
            await self.tick()
        return self.encode(full=True)

    def subscribe(self, ws: web.WebSocketResponse, request: web.Request) -> Viewer:
        viewer = Viewer(ws, request, self.queue_frames)
        if self.frame is not None:
            viewer.queue.put_nowait(self.encode(full=True))
        self.viewers.add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        viewer.sender.cancel()

    async def stop(self) -> None:
        """Stop aggregating and close every viewer's socket (1001: going away)."""
        await tasks.stop(self._task)
        viewers, self.viewers = list(self.viewers), set()
        for viewer in viewers:
            viewer.sender.cancel()
        await asyncio.gather(*(self._close(v) for v in viewers), return_exceptions=True)

    async def _close(self, viewer: Viewer) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                viewer.ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down"),
                CLOSE_TIMEOUT,
            )
        if not viewer.ws.closed and viewer.request.transport is not None:
            viewer.request.transport.abort()


class ReplicasCollector:
    """Exports the recommendation in /metrics, so an HPA or an operator can act on it."""

    def __init__(self, node: str, hub: FeedHub) -> None:
        self.node = node
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        recommendation = self.hub.recommendation
        if recommendation is None:
            return
        gauge = GaugeMetricFamily(
            "scalenode_recommended_replicas",
            "Nodes the cluster should run, from CPU, p95 latency and the traffic trend.",
            labels=["node"],
        )
        gauge.add_metric([self.node], recommendation.replicas)
        live = GaugeMetricFamily(
            "scalenode_cluster_nodes", "Nodes with a fresh heartbeat.", labels=["node"]
        )
        live.add_metric([self.node], recommendation.current)
        yield from (gauge, live)
