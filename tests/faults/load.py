"""A bounded background load for the fault tests: a few request loops against 127.0.0.1,
each at a capped rate, stopped by the test or by its own count and time bounds; every
answer is kept with its time, so a test can read what users saw around a fault."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

NO_ANSWER = 0  # the status kept for a refused, reset or timed-out request
REQUEST_TIMEOUT = 5.0  # seconds: an answer slower than this counts as none


@dataclass(frozen=True)
class Sample:
    sent: float  # time.monotonic() when the request went out
    url: str
    status: int  # NO_ANSWER when there was none
    member: str  # the upstream member that answered (X-Member), or ""


class Load:
    """`workers` loops of GET over `urls` (taken in turn), each at most `rate` requests a
    second, until `stop()`, `max_requests` in all, or `max_seconds`: whichever comes first.
    `headers()` gives each request's headers (distinct keys per request, say)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: list[str],
        *,
        workers: int = 4,
        rate: float = 50.0,
        max_requests: int = 20_000,
        max_seconds: float = 30.0,
        headers: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.session = session
        self.urls = urls
        self.workers = workers
        self.pause = 1.0 / rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.headers = headers
        self.samples: list[Sample] = []
        self._sent = 0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        self._tasks = [asyncio.ensure_future(self._loop(i)) for i in range(self.workers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    def _more(self) -> bool:
        return (
            not self._stopping.is_set()
            and self._sent < self.max_requests
            and time.monotonic() < self._deadline
        )

    async def _loop(self, worker: int) -> None:
        turn = worker
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        while self._more():
            self._sent += 1
            url = self.urls[turn % len(self.urls)]
            turn += 1
            sent = time.monotonic()
            try:
                async with self.session.get(url, headers=self.headers(), timeout=timeout) as r:
                    await r.read()
                    sample = Sample(sent, url, r.status, r.headers.get("X-Member", ""))
            except (aiohttp.ClientError, TimeoutError):
                sample = Sample(sent, url, NO_ANSWER, "")
            self.samples.append(sample)
            left = self.pause - (time.monotonic() - sent)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), left)

    def between(self, start: float, end: float, url: str | None = None) -> list[Sample]:
        """The samples sent in [start, end), to `url` only if given."""
        return [
            s
            for s in self.samples
            if start <= s.sent < end and (url is None or s.url.startswith(url))
        ]


def failures(samples: list[Sample]) -> list[Sample]:
    """What a user would call a failure: no answer, or a 5xx."""
    return [s for s in samples if s.status == NO_ANSWER or s.status >= 500]
