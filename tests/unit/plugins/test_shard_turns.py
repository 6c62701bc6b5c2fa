"""plugins/shard/turns.py: first come first served turns, each wait bounded."""

from __future__ import annotations

import asyncio

import pytest

from plugins.shard.turns import Turns


def soon(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_turns_go_to_waiters_in_arrival_order():
    """A turn given back goes to the oldest waiter, never to a newcomer."""
    turns = Turns(1)
    await turns.take(soon())
    order: list[int] = []

    async def wait(n: int) -> None:
        await turns.take(soon())
        order.append(n)
        turns.give()

    waiting = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    turns.give()
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2] and turns.free == 1


async def test_a_wait_past_its_deadline_fails_and_takes_no_turn():
    """TimeoutError at the deadline; the turn given back later stays free."""
    turns = Turns(1)
    await turns.take(soon())
    with pytest.raises(TimeoutError):
        await turns.take(soon(0.01))
    turns.give()
    assert turns.free == 1 and not turns.busy()


async def test_a_waiter_cancelled_after_being_handed_a_turn_passes_it_on():
    """Cancelled between being handed a turn and resuming: the next waiter gets it."""
    turns = Turns(1)
    await turns.take(soon())
    first = asyncio.create_task(turns.take(soon()))
    second = asyncio.create_task(turns.take(soon()))
    await asyncio.sleep(0)
    turns.give()  # handed to `first`, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert turns.free == 0
