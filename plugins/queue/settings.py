"""A queued route's table: `queue = { name = "reports" }` and its full form."""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.schema import join, require

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    name: str = ""
    max_attempts: int = 5  # runs in all, the first included; then the job is dead
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)  # seconds; the last repeats
    timeout: float = 300.0  # seconds a run may take; longer counts as a failed attempt
    result_ttl: float = 3600.0  # seconds a finished job's state and result are kept
    max_length: int = 100_000  # ready jobs in the queue; beyond, 503 with Retry-After
    prefetch: int = 100  # jobs a worker holds at once, per queue
    priority: bool = False  # not supported by quorum queues: refused below

    def check(self, path: str) -> None:
        require(
            bool(NAME.match(self.name)),
            join(path, "name"),
            "must be 1 to 100 letters, digits, '_', '.', '-', starting with a letter or digit",
        )
        require(1 <= self.max_attempts <= 100, join(path, "max_attempts"), "must be 1 to 100")
        require(bool(self.retry_delays), join(path, "retry_delays"), "must list a delay")
        for i, delay in enumerate(self.retry_delays):
            require(
                0 < delay <= 86400, join(join(path, "retry_delays"), i), "must be > 0 and <= 86400"
            )
        require(0 < self.timeout <= 86400, join(path, "timeout"), "must be > 0 and <= 86400")
        require(self.result_ttl >= 1, join(path, "result_ttl"), "must be >= 1")
        require(self.max_length >= 1, join(path, "max_length"), "must be >= 1")
        require(1 <= self.prefetch <= 10_000, join(path, "prefetch"), "must be 1 to 10000")
        require(
            not self.priority,
            join(path, "priority"),
            "priorities are not supported: the queue is a quorum queue (durable, replicated)",
        )

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before run `attempt + 1`, after `attempt` runs failed."""
        return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]
