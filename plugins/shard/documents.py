"""What the store needs of one shard member: documents by (bucket, key), conditional writes,
ordered listing of owned buckets. `PostgresShard` (plugins/shard/postgres.py) keeps them in
PostgreSQL through an asyncpg pool, `SqliteShard` (plugins/shard/sqlite.py) in an SQLite
file, the embedded member. Both pass one contract suite (tests/contract/test_shard_documents.py).

A document is raw JSON text under a key, with an ETag that changes on every write (a random
token, so a deleted and re-created document never repeats an old ETag). The bucket
(plugins/shard/buckets.py) is stored with each row, first in the primary key: listing,
moving and fencing work per bucket.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Document:
    key: str
    body: bytes  # JSON text
    etag: str  # without quotes


@dataclass(frozen=True, slots=True)
class Written:
    document: Document | None  # None after a delete
    created: bool  # the key did not exist before
    lsn: str | None  # PostgreSQL: the WAL position at or past the commit; else None


class PreconditionFailed(Exception):
    """If-Match did not match the current ETag, or If-None-Match: * found a document."""


class NotFound(Exception):
    """The key has no document (DELETE, PATCH)."""


class Fenced(Exception):
    """The member does not own the bucket now (it is moving, or moved, or was never its):
    the caller's map is stale; read the map again and ask the owner."""


OWNED = "owned"  # a bucket's state on the member that serves it (the others: moving, moved)


def require_owned(member: str, bucket: int, state: str | None) -> None:
    """Raise Fenced unless `state` (the bucket's on `member`; None: no row) is owned."""
    if state != OWNED:
        raise Fenced(f"bucket {bucket} not owned by {member} (state {state})")


class ShardUnavailable(Exception):
    """The member (or the replica asked) does not answer; the driver's error is chained."""


class DocumentShard(Protocol):
    name: str  # the member's name (X-Shard)

    async def start(self) -> None:
        """Create the table if missing, open the pool. A member that is down does not
        stop the node from starting: its calls raise ShardUnavailable until it is back."""
        ...

    async def close(self) -> None: ...

    async def claim_layout(self, layout: str) -> str:
        """Record `layout` (the set's members and buckets, as JSON) if the member has none
        yet, and return the one it has: a member that holds another layout's data must not
        take this layout's keys."""
        ...

    async def get(self, bucket: int, key: str) -> Document | None: ...

    async def put(
        self,
        bucket: int,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> Written:
        """Create or replace. `if_match`: only if the current ETag is this one (a missing
        document does not match); `if_none_match`: only if there is no document."""
        ...

    async def patch(
        self, bucket: int, key: str, merge: Any, *, if_match: str | None = None
    ) -> Written:
        """Apply an RFC 7396 JSON merge patch (`merge`, parsed) to the document, in one
        transaction (the document is locked while it changes). NotFound if absent."""
        ...

    async def delete(self, bucket: int, key: str, *, if_match: str | None = None) -> Written:
        """NotFound if absent."""
        ...

    async def scan(
        self, buckets: Sequence[int], *, after: str | None, prefix: str | None, limit: int
    ) -> list[Document]:
        """Up to `limit` documents of the `buckets` given, in key order, with keys after
        `after` and starting with `prefix` (each as given; None: no bound)."""
        ...


class BucketPlacement(Protocol):
    """What the set and a rebalance ask of a member about buckets (plugins/shard/
    postgres_placement.py, sqlite_placement.py): a state per bucket (owned, moving, moved,
    absent; the member serves only `owned` ones and raises Fenced otherwise), the map's
    versions as JSON, the move journal, and rows by bucket past the fence."""

    async def bucket_states(self) -> dict[int, str]: ...

    async def seed_states(self, states: dict[int, str]) -> None:
        """Record every bucket's state unless the member has states already."""
        ...

    async def set_states(self, buckets: Sequence[int], state: str) -> None:
        """Waits for the writes in flight to those buckets, then fences later ones."""
        ...

    async def read_map(self, newer_than: int = 0) -> str | None: ...

    async def write_map(self, version: int, text: str) -> None: ...

    async def export(self, buckets: Sequence[int]) -> list[tuple[int, str, str, str]]:
        """Every row of `buckets`: (bucket, key, doc, etag), by bucket then key."""
        ...

    async def replace_rows(self, buckets: Sequence[int], rows: Sequence[Sequence[Any]]) -> None:
        """Make `buckets` hold exactly `rows` (the mover's copy, past the fence)."""
        ...

    async def drop_rows(self, buckets: Sequence[int]) -> None: ...

    async def bucket_sizes(self, buckets: Sequence[int]) -> dict[int, tuple[int, int]]:
        """bucket -> (rows, bytes), for the buckets that hold rows."""
        ...

    async def read_journal(self) -> str | None: ...

    async def write_journal(self, text: str | None) -> None: ...


class PlacedShard(DocumentShard, BucketPlacement, Protocol):
    """A member's primary: its documents and its buckets."""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching the strings that start with `prefix`."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def new_etag() -> str:
    return secrets.token_hex(8)
