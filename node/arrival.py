"""When a request's bytes reached the node: an estimate that includes the time they sat in
the kernel's socket buffer while the event loop was busy.

uvloop reads with read(), so the kernel's receive timestamp (SO_TIMESTAMP, recvmsg only) is
out of reach, and the time of the read alone hides the wait of a busy loop: on one core
under wrk (64 connections) it said p50 2.9 ms where wrk measured 6.7 ms.

What the loop does know: epoll is level-triggered, so bytes read in one poll phase arrived
after the previous poll gathered its events, and not while the loop was blocked in a poll
(they would have ended the wait at once). They waited, at most, as long as the loop was busy
since then: U, its thread's CPU time plus its run delay (runnable while another process had
the core) since the first read of the previous phase, never more than the wall time. The
arrival lies in [f - U, f] (f: this phase's first read); every request that begins in the
phase gets the midpoint f - U/2, off by at most U/2, half of one loop turn's busy time. An
idle node (U ~ the last request's own work) is within tens of microseconds of its read.

A phase ends when a `call_soon` tick armed by its first read runs (uvloop runs it in the
idle pass after the poll): `PHASE.clear`, no Python frame. An idle loop arms nothing, so it
never spins. Per phase: a tick, two clock reads and this module's arithmetic (about 6k
instructions under callgrind); per request, a dict lookup instead of the read's clock.
"""

from __future__ import annotations

import asyncio
import os
from time import perf_counter, thread_time

# A turn whose wall time exceeds the loop's CPU time by more than this either slept in its
# poll or was preempted; only then is the scheduler asked which (a read of /proc).
SLACK = 50e-6


def schedstat() -> int | None:
    """An open /proc file of this thread's scheduler statistics, or None (not Linux)."""
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return None


# The estimate of the current poll phase, by loop: present from the phase's first read
# until its tick, a C-level clear() that call_soon runs after the poll (no Python frame).
PHASE: dict[asyncio.AbstractEventLoop, float] = {}
END_PHASE = PHASE.clear


class TurnClock:
    """Phase by phase, the arrival estimate of the requests a loop reads: of the loop that
    last used it (a node runs one loop per process; tests run several, one after another)."""

    __slots__ = ("_stat", "cpu", "delay", "first", "loop")

    def __init__(self) -> None:
        self._stat: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.first = 0.0  # perf_counter() at the first read of the latest phase
        self.cpu = 0.0  # the loop thread's CPU seconds then
        self.delay = 0.0  # and its seconds spent runnable but not running (preempted)

    def arrival(self, loop: asyncio.AbstractEventLoop) -> float:
        """The first read of a poll phase: the estimated perf_counter() at which its bytes
        (and those of every request the phase reads) reached the node."""
        now = perf_counter()
        cpu = thread_time()
        loop.call_soon(END_PHASE)
        if loop is self.loop:
            busy = cpu - self.cpu
            wall = now - self.first
            if wall - busy > SLACK:  # slept in a poll, or waited for the CPU: that counts
                busy += self.preempted()
            if busy > wall:
                busy = wall
            # The arrival lies in [now - busy, now]: the midpoint is off by <= busy / 2.
            estimate = now - busy * 0.5
        else:  # a new loop (or thread): nothing is known of its past
            self.bind(loop)
            estimate = now
        self.first = now
        self.cpu = cpu
        PHASE[loop] = estimate
        return estimate

    def preempted(self) -> float:
        """Seconds this thread waited for a CPU while runnable since the last call (another
        process ran on its core): to a client, time the loop was busy."""
        if self._stat is None:
            return 0.0
        try:
            delay = int(os.pread(self._stat, 96, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0
        waited, self.delay = delay - self.delay, delay
        return waited

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stat is not None:
            os.close(self._stat)
        self.loop = loop
        self._stat = schedstat()  # this thread's: a loop runs in the thread that reads
        self.delay = 0.0
        self.preempted()


# The process's clock. Per request node.edge takes PHASE.get(loop), and only when that is
# None (the first read of a phase) calls TURN.arrival(loop): no Python call otherwise.
TURN = TurnClock()
