"""Keys to buckets to members: a stable 64-bit hash of the key picks one of a fixed number
of buckets (1024 by default), and a versioned map gives each bucket its member. Adding a
member moves whole buckets, exactly 1/(N+1) of them (../shared/reference/sharding.md §3);
a member that fails never remaps its keys."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson

from node.call import wire_bytes


def bucket_of(key: str, buckets: int) -> int:
    """blake2b-64 of the key's UTF-8 bytes, big-endian, modulo `buckets`: the same on every
    node, process and Python version (never Python's salted hash())."""
    digest = hashlib.blake2b(wire_bytes(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


@dataclass(frozen=True, slots=True)
class BucketMap:
    """Which member owns each bucket, at one version. `members` names the members the
    owners index (a stored map names them, so adding a member to the config moves nothing
    until a rebalance writes a map that gives it buckets)."""

    version: int
    owners: tuple[int, ...]  # bucket -> member index
    members: tuple[str, ...] = ()

    @classmethod
    def even(cls, members: int, buckets: int, names: Sequence[str] = ()) -> BucketMap:
        """Contiguous, equal ranges: member i owns buckets [i*B/N, (i+1)*B/N)."""
        owners = tuple(bucket * members // buckets for bucket in range(buckets))
        return cls(1, owners, tuple(names))

    def owner(self, bucket: int) -> int:
        return self.owners[bucket]

    def owned(self, member: int) -> list[int]:
        return [bucket for bucket, owner in enumerate(self.owners) if owner == member]

    def by_member(self, members: int) -> Sequence[list[int]]:
        owned: list[list[int]] = [[] for _ in range(members)]
        for bucket, owner in enumerate(self.owners):
            owned[owner].append(bucket)
        return owned

    def owner_name(self, bucket: int) -> str:
        return self.members[self.owners[bucket]]

    def with_owners(self, changes: dict[int, str], version: int) -> BucketMap:
        """This map with `changes` (bucket -> member name) applied, at `version`."""
        names = list(self.members)
        owners = list(self.owners)
        for bucket, name in changes.items():
            if name not in names:
                names.append(name)
            owners[bucket] = names.index(name)
        return replace(self, version=version, owners=tuple(owners), members=tuple(names))

    def dumps(self) -> str:
        return orjson.dumps(
            {"version": self.version, "members": self.members, "owners": self.owners}
        ).decode()

    @classmethod
    def loads(cls, text: str) -> BucketMap:
        data = orjson.loads(text)
        return cls(int(data["version"]), tuple(data["owners"]), tuple(data["members"]))
