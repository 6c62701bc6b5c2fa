"""Which replica may serve a read, as pure functions (plugins/shard/replicas.py does the
I/O): PostgreSQL's LSNs as integers, a replica's lag in WAL bytes, the replicas that qualify
for a read with or without a read-your-writes token, round robin over them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


# -- LSNs ------------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """'X/Y' (two hex numbers of up to 32 bits, as PostgreSQL prints a pg_lsn) -> (X<<32)+Y."""
    match = _LSN.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match[1], 16) << 32) + int(match[2], 16)


def format_lsn(value: int) -> str:
    """The inverse of parse_lsn, as PostgreSQL prints it: upper-case hex, no padding."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"an LSN is 64 bits unsigned, got {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_diff(a: int, b: int) -> int:
    """pg_wal_lsn_diff(a, b): bytes of WAL from b to a (negative when b is ahead)."""
    return a - b


# -- the choice (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What the choice needs to know of one replica."""

    healthy: bool
    lag_bytes: int | None  # None: not measured yet (no primary LSN or no replay LSN)
    replay_lsn: int | None


def is_healthy(ok: bool, last_ok: float | None, now: float, stale_after: float) -> bool:
    """The last probe answered, and the last answer is at most `stale_after` seconds old."""
    return ok and last_ok is not None and now - last_ok <= stale_after


def lag_of(primary_lsn: int | None, replay_lsn: int | None) -> int | None:
    if primary_lsn is None or replay_lsn is None:
        return None
    return max(0, lsn_diff(primary_lsn, replay_lsn))  # a replica probed later may be ahead


def candidates(views: Sequence[ReplicaView], max_lag_bytes: int) -> list[int]:
    """The replicas that may serve a read with no token: healthy, lag known and small enough."""
    return [
        i
        for i, view in enumerate(views)
        if view.healthy and view.lag_bytes is not None and view.lag_bytes <= max_lag_bytes
    ]


def ready(views: Sequence[ReplicaView], among: Sequence[int], min_lsn: int) -> list[int]:
    """Those of `among` that have replayed at least up to `min_lsn`."""
    return [i for i in among if (lsn := views[i].replay_lsn) is not None and lsn >= min_lsn]


def rotate(qualifying: Sequence[int], cursor: int) -> int:
    """Round robin: the `cursor`-th of the qualifying replicas."""
    return qualifying[cursor % len(qualifying)]
