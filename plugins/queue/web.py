"""The job queue's HTTP surface.

GET    /jobs/{id}                     a job's state (any node answers for any job)
GET    /jobs/{id}/result              the reply its target gave, once it finished
GET    /admin/queues                  per queue: ready, unacked, consumers, dead, oldest job age,
                                      counters
POST   /admin/queues/{name}/replay    dead jobs back to the queue; how many
DELETE /admin/queues/{name}/dead      drop the dead jobs; how many
"""

from __future__ import annotations

import re

from aiohttp import web

from node.errors import BackendUnavailable
from node.wire import json_response
from plugins.queue.jobs import FINISHED, reply_of
from plugins.queue.service import JobService

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobsWeb:
    def __init__(self, service: JobService, node: str) -> None:
        self.service = service
        self.node = node

    def public_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/jobs/{id}", self.handle_job),
            web.get("/jobs/{id}/result", self.handle_result),
        ]

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/queues", self.handle_queues),
            web.post("/queues/{name}/replay", self.handle_replay),
            web.delete("/queues/{name}/dead", self.handle_purge),
        ]

    def error(self, status: int, code: str, detail: str) -> web.Response:
        headers = {"Retry-After": "5"} if status == 503 else None
        return json_response({"error": code, "detail": detail}, status, self.node, headers)

    async def find(self, request: web.Request):
        job_id = request.match_info["id"]
        if not JOB_ID.match(job_id):
            return None, self.error(404, "not_found", f"no job {job_id[:64]!r}")
        try:
            record = await self.service.jobs.get(job_id)
        except BackendUnavailable as exc:
            return None, self.error(503, "backend_unavailable", f"job state unavailable: {exc}")
        if record is None:
            return None, self.error(404, "not_found", f"no job {job_id} (unknown or expired)")
        return record, None

    async def handle_job(self, request: web.Request) -> web.Response:
        record, refusal = await self.find(request)
        if refusal is not None:
            return refusal
        return json_response(record.public(), 200, self.node)

    async def handle_result(self, request: web.Request) -> web.Response:
        record, refusal = await self.find(request)
        if refusal is not None:
            return refusal
        if record.status not in FINISHED or record.result is None:
            detail = f"job {record.id} is {record.status}; no result"
            return self.error(404, "no_result", detail)
        reply = reply_of(record.result)
        response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        if reply.content_type is not None:
            response.headers["Content-Type"] = reply.content_type
        return response

    async def handle_queues(self, request: web.Request) -> web.Response:
        queues = {}
        for name in self.service.queues:
            try:
                stats = await self.service.broker.stats(name)
                oldest = await self.service.oldest_age(name)
            except BackendUnavailable as exc:
                return self.error(503, "backend_unavailable", str(exc))
            counters: dict[str, int] = {}
            waited = 0.0
            for route in self.service.routes.values():
                if route.settings.name == name:
                    for key, value in route.plugin.snapshot()["counters"].items():
                        counters[key] = counters.get(key, 0) + value
                    waited = max(waited, route.plugin.counts.waited)
            queues[name] = {
                "ready": stats.ready,
                "delayed": stats.delayed,
                "unacked": stats.unacked,
                "consumers": stats.consumers,
                "dead": stats.dead,
                "oldest_job_age_seconds": round(oldest, 3),  # over every node
                "counters": counters,  # this node's
                "job_wait_seconds": round(waited, 3),  # the latest job this node started
            }
        return json_response({"node": self.node, "queues": queues}, 200, self.node)

    def queue_of(self, request: web.Request) -> str | None:
        name = request.match_info["name"]
        return name if name in self.service.queues else None

    async def handle_replay(self, request: web.Request) -> web.Response:
        name = self.queue_of(request)
        if name is None:
            return self.error(404, "not_found", "no such queue")
        try:
            moved = await self.service.broker.replay_dead(name)
        except BackendUnavailable as exc:
            return self.error(503, "backend_unavailable", str(exc))
        return json_response({"queue": name, "replayed": moved}, 200, self.node)

    async def handle_purge(self, request: web.Request) -> web.Response:
        name = self.queue_of(request)
        if name is None:
            return self.error(404, "not_found", "no such queue")
        try:
            dropped = await self.service.broker.purge_dead(name)
        except BackendUnavailable as exc:
            return self.error(503, "backend_unavailable", str(exc))
        return json_response({"queue": name, "dropped": dropped}, 200, self.node)
