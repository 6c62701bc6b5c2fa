"""node.arrival: one estimate per poll phase, inside the window the loop's busy time allows."""

from __future__ import annotations

import asyncio
from time import perf_counter, thread_time

from node.arrival import PHASE, TURN


def read(loop: asyncio.AbstractEventLoop) -> float:
    """What node.edge does when a request begins."""
    arrived = PHASE.get(loop)
    return TURN.arrival(loop) if arrived is None else arrived


async def test_requests_of_one_phase_share_its_estimate_and_the_next_phase_starts_afresh():
    loop = asyncio.get_running_loop()
    first = read(loop)
    assert read(loop) == first  # the same poll phase: no new estimate, no new tick
    await asyncio.sleep(0)  # the tick ran: the phase is over
    assert loop not in PHASE
    before = perf_counter()
    second = read(loop)
    assert first <= second <= before + 1e-3


async def test_a_busy_loop_moves_the_arrival_back_by_half_its_busy_time():
    loop = asyncio.get_running_loop()
    read(loop)
    await asyncio.sleep(0)
    started, cpu = perf_counter(), thread_time()
    while thread_time() - cpu < 0.02:  # the loop busy for 20 ms: bytes may wait that long
        pass
    now = perf_counter()
    estimate = read(loop)
    busy = now - started
    assert now - busy <= estimate <= now - 0.01 * 0.9  # about the midpoint, never before


async def test_a_sleeping_loop_does_not_count_its_sleep():
    loop = asyncio.get_running_loop()
    read(loop)
    await asyncio.sleep(0.05)  # asleep in its poll: bytes would have woken it at once
    now = perf_counter()
    estimate = read(loop)
    assert now - 0.005 <= estimate <= now + 1e-3
