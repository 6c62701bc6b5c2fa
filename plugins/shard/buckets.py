"""Keys to buckets to members: a stable 64-bit hash of the key picks one of a fixed number
of buckets (1024 by default), and a versioned map gives each bucket its member. Adding a
member moves whole buckets, exactly 1/(N+1) of them (../shared/reference/sharding.md §3);
a member that fails never remaps its keys."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


def bucket_of(key: str, buckets: int) -> int:
    """blake2b-64 of the key's UTF-8 bytes, big-endian, modulo `buckets`: the same on every
    node, process and Python version (never Python's salted hash())."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


@dataclass(frozen=True, slots=True)
class BucketMap:
    """Which member owns each bucket, at one version."""

    version: int
    owners: tuple[int, ...]  # bucket -> member index

    @classmethod
    def even(cls, members: int, buckets: int) -> BucketMap:
        """Contiguous, equal ranges: member i owns buckets [i*B/N, (i+1)*B/N)."""
        return cls(1, tuple(bucket * members // buckets for bucket in range(buckets)))

    def owner(self, bucket: int) -> int:
        return self.owners[bucket]

    def owned(self, member: int) -> list[int]:
        return [bucket for bucket, owner in enumerate(self.owners) if owner == member]

    def by_member(self, members: int) -> Sequence[list[int]]:
        owned: list[list[int]] = [[] for _ in range(members)]
        for bucket, owner in enumerate(self.owners):
            owned[owner].append(bucket)
        return owned
