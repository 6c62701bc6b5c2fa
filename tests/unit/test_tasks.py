"""node.tasks.stop: a background loop ends at shutdown even when a cancel gets lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from node import tasks


async def loop_that_loses(cancels: float, ticks: list[int]) -> None:
    """A polling loop whose first `cancels` cancels are swallowed, as a cancel landing on
    a 3.11 wait_for's own timeout is (it reads as "no message yet" and polls again)."""
    lost = 0
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost >= cancels:
                raise
            lost += 1
        ticks.append(1)


async def test_a_lost_cancel_is_repeated_until_the_loop_ends() -> None:
    ticks: list[int] = []
    task = asyncio.ensure_future(loop_that_loses(2, ticks))
    await asyncio.sleep(0.02)
    assert await tasks.stop(task, patience=0.05) is True
    assert task.cancelled()
    stopped_at = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == stopped_at  # it no longer runs


async def test_one_cancel_would_have_left_it_running() -> None:
    """The failure stop() exists for: a single cancel, then a wait, never ends it."""
    task = asyncio.ensure_future(loop_that_loses(1, []))
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done
    assert await tasks.stop(task, patience=0.05)


async def test_a_task_that_never_stops_is_reported_not_awaited_forever(caplog) -> None:
    task = asyncio.ensure_future(loop_that_loses(3, []))
    await asyncio.sleep(0.02)  # running: a task cancelled before it starts just ends
    with caplog.at_level(logging.WARNING, "scalenode.tasks"):
        assert await tasks.stop(task, patience=0.02, attempts=3) is False
    assert "did not stop after 3 cancels" in caplog.text
    assert await tasks.stop(task, patience=0.02, attempts=1)  # the fourth cancel ends it


async def test_outcomes_are_collected_not_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    running = asyncio.ensure_future(asyncio.sleep(10))
    assert await tasks.stop([failed, running]) is True
    assert running.cancelled() and isinstance(failed.exception(), RuntimeError)


@pytest.mark.parametrize("given", [None, []])
async def test_nothing_to_stop(given) -> None:
    assert await tasks.stop(given) is True
