"""The breaker's shared records in Redis: each node's trip report per member, the trial token.

Every method raises BackendUnavailable when Redis is down (the caller then decides alone).
"""

from __future__ import annotations

from pathlib import Path

from node.cluster.redis import RedisConnection
from plugins.breaker.keys import BREAKER_PROBES, BREAKER_TRIPS

HERE = Path(__file__).parent
# Trips are rare: the scripts go as plain EVAL, no SHA bookkeeping.
REPORT = (HERE / "report.lua").read_text()
REPORTS = (HERE / "reports.lua").read_text()

Report = tuple[str, float, int]  # node, seconds its open period has left, level


def milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisTrips:
    """The records of the shared trips of every pool's members, keyed by circuit name."""

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis

    async def report(self, name: str, node: str, seconds: float, level: int) -> None:
        """`node` tripped circuit `name`, open for `seconds` at `level`."""
        ms = milliseconds(seconds)
        await self.redis.run(lambda c: c.eval(REPORT, 1, BREAKER_TRIPS + name, node, ms, level))

    async def reports(self, name: str) -> list[Report]:
        """The live reports of circuit `name`, every node's."""
        flat = await self.redis.run(lambda c: c.eval(REPORTS, 1, BREAKER_TRIPS + name))
        triples = zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        return [(text(node), int(ms) / 1000, int(level)) for node, ms, level in triples]

    async def claim(self, name: str, node: str, seconds: float) -> bool:
        """Take the trial token of circuit `name` for `seconds`, unless another node holds it."""
        key, ms = BREAKER_PROBES + name, milliseconds(seconds)
        return bool(await self.redis.run(lambda c: c.set(key, node, nx=True, px=ms)))

    async def clear(self, name: str) -> None:
        """Circuit `name` closed: its reports and its token go."""
        await self.redis.run(lambda c: c.delete(BREAKER_TRIPS + name, BREAKER_PROBES + name))
