"""Stopping a node's background loops for certain.

On Python 3.11 one cancel does not always end a task. `asyncio.wait_for` and
`asyncio.timeout` turn a cancel that lands as their own timeout fires into a timeout or
a result (CPython bpo-42130 / gh-86296, fixed in 3.12), and a loop that reads "no
message yet" from that, like redis-py's `get_message(timeout=...)`, just goes on. A
shutdown that cancelled once and then awaited such a task waited forever. So: cancel,
wait a while, cancel again, a bounded number of times, and say so if it still runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("scalenode.tasks")

PATIENCE = 1.0  # seconds to wait after each cancel before cancelling again
ATTEMPTS = 5


async def stop(
    tasks: asyncio.Future[object] | Iterable[asyncio.Future[object]] | None,
    *,
    patience: float = PATIENCE,
    attempts: int = ATTEMPTS,
) -> bool:
    """Cancel `tasks` until each has ended; False (and a warning) if some outlived
    `attempts` cancels. Their outcomes are collected, never raised."""
    if tasks is None:
        return True
    given = {tasks} if isinstance(tasks, asyncio.Future) else set(tasks)
    running = given
    for _ in range(attempts):
        running = {task for task in running if not task.done()}
        if not running:
            break
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=patience)
    for task in given - running:
        if not task.cancelled():
            task.exception()  # collected, so asyncio does not report it as never retrieved
    for task in running:
        log.warning("background task %r did not stop after %d cancels", task, attempts)
    return not running
