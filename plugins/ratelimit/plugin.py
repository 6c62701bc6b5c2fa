"""The RateLimiter plugin: who the client is, which limits apply, and what to answer."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

from multidict import istr

from node.call import Call, Handler, Reply, wire_bytes
from node.errors import BackendUnavailable, RateLimited, Rejected, ServiceUnavailable
from node.forwarding import TrustedProxies
from node.plugin import Plugin
from plugins.ratelimit.algorithms import Limit, Verdict
from plugins.ratelimit.keys import RATELIMIT
from plugins.ratelimit.settings import MAX_KEY_LENGTH, RateLimitSettings, key_parts
from plugins.ratelimit.stores import (
    DECIDE_NOW,
    CounterStore,
    Decision,
    MemoryCounter,
)
from plugins.ratelimit.tiers import TierDirectory

log = logging.getLogger("scalenode.ratelimit")

DRY_RUN_LOG_INTERVAL = 1.0  # seconds between dry-run summaries, so floods don't flood the log
KEYS_REMEMBERED = 65536  # clients whose store keys are kept built, as `digest` keeps digests
# The names a reply's own headers give way to (istr: multidict need not case-fold them).
RATELIMIT_NAMES = (istr("RateLimit-Limit"), istr("RateLimit-Remaining"), istr("RateLimit-Reset"))
# A reply's RateLimit headers travel serialized (node.call.AddedHeaders): a limit's first
# line and the Remaining name, then the count, then the Reset line and the head's closing
# blank line, of which the first hour's are made once.
LIMIT_LINES = b"RateLimit-Limit: %d\r\nRateLimit-Remaining: "
RESET_LINE = b"\r\nRateLimit-Reset: %d\r\n\r\n"
RESET_LINES = tuple(RESET_LINE % n for n in range(3601))


@lru_cache(maxsize=65536)  # clients repeat; their digest need not be recomputed
def digest(client_key: str) -> str:
    return hashlib.blake2b(wire_bytes(client_key), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    """What the plugin was built with; all of it fixed at start-up."""

    settings: RateLimitSettings
    default: tuple[Limit, ...] | None
    tiers: dict[str, tuple[Limit, ...]]
    route: str


@dataclass(slots=True)
class Tally:
    """The plugin's counters (/metrics, the dashboard): attributes, not a dict, since the
    one-limit step adds to `allowed` per request, at half a dict item's cost."""

    allowed: int = 0
    limited: int = 0
    dry_run: int = 0
    backend_errors: int = 0
    unlimited_by_outage: int = 0


class RateLimiter(Plugin):
    name = "ratelimit"

    def __init__(
        self,
        policy: Policy,
        store: CounterStore,
        trusted: TrustedProxies,
        live_nodes: Callable[[], int],
        directory: TierDirectory | None = None,
    ) -> None:
        settings = policy.settings
        self.policy = policy
        self.store = store
        self.trusted = trusted
        self.live_nodes = live_nodes
        self.directory = directory
        self.algorithm = settings.algorithm
        self.mode = settings.on_backend_error
        self.parts = [part.partition(":") for part in key_parts(settings.key)]
        self.by_ip_only = [kind for kind, _, _ in self.parts] == ["ip"]
        self.header = settings.header_name
        scope = policy.route if settings.scope == "route" else f"scope:{settings.scope}"
        # One hash tag per client: all of its limits' keys share a Redis Cluster slot.
        self.prefix = f"{RATELIMIT}{{{hashlib.blake2b(scope.encode(), digest_size=6).hexdigest()}:"
        self.local = MemoryCounter() if self.mode == "local" else None
        self._shares: dict[tuple[tuple[Limit, ...], int], tuple[Limit, ...]] = {}
        self.counters = Tally()
        self._dry_run_logged = 0.0
        # client digest (or peer, see OneLimitRateLimiter) → its default limits' keys
        self._keys: dict[object, list[str]] = {}
        self.memory = store if DECIDE_NOW in store.capabilities else None

    async def __call__(self, call: Call, next: Handler) -> Reply:
        client, api_key = self.identify(call)
        limits = self.policy.default if self.directory is None else await self.limits_for(api_key)
        keys = self.keys_of(client, limits)  # type: ignore[arg-type]
        try:
            if self.memory is not None:  # the embedded store decides without a coroutine
                decision = self.memory.decide_now(keys, self.algorithm, limits)  # type: ignore[arg-type]
            else:
                decision = await self.store.hit(keys, self.algorithm, limits)  # type: ignore[arg-type]
        except BackendUnavailable:
            return await self.without_backend(call, next, keys, limits)  # type: ignore[arg-type]
        return await self.answer(call, next, decision, limits)  # type: ignore[arg-type]

    async def without_backend(
        self, call: Call, next: Handler, keys: list[str], limits: tuple[Limit, ...]
    ) -> Reply:
        """The store is unreachable: `on_backend_error` decides. open: through, counted;
        closed: 503; local: this node's share of each limit, counted in memory."""
        self.counters.backend_errors += 1
        if self.mode == "closed":
            raise ServiceUnavailable(
                "the rate limit backend is unreachable",
                code="ratelimit_unavailable",
                headers={"Retry-After": "1"},
            )
        if self.local is None:
            self.counters.unlimited_by_outage += 1
            return await next(call)
        limits = self.node_share(limits)
        return await self.answer(
            call, next, self.local.decide_now(keys, self.algorithm, limits), limits
        )

    async def answer(
        self, call: Call, next: Handler, decision: Decision, limits: tuple[Limit, ...]
    ) -> Reply:
        verdicts = decision.verdicts
        i = tightest(verdicts)
        limit, remaining, reset_us = limits[i].limit, verdicts[i].remaining, verdicts[i].reset_us
        lines = header_lines(LIMIT_LINES % limit, remaining, reset_us)
        call.added_headers = (RATELIMIT_NAMES, lines)
        if decision.allowed:
            self.counters.allowed += 1
        else:
            self.over_limit(limit, max(v.retry_us for v in verdicts))
        return await next(call)

    def over_limit(self, limit: int, retry_us: int) -> None:
        """A request over its limit: 429 (raised), or in a dry run counted and let through.
        Its RateLimit headers are on the call already: the adapter adds them to the 429."""
        settings = self.policy.settings
        if settings.dry_run:
            self.note_dry_run()
            return
        self.counters.limited += 1
        raise RateLimited(
            f"over {limit} requests per window",
            status=settings.status,
            headers={"Retry-After": str(max(1, seconds_up(retry_us)))},
        )

    def keys_of(
        self, client: str, limits: tuple[Limit, ...], remember_as: object = None
    ) -> list[str]:
        """The store keys of `client`'s limits; for the default limits, remembered for the
        clients seen lately, by `remember_as` (default: the client digest; hashing a Limit
        runs Python code, so the limits are not part of it)."""
        if limits is not self.policy.default:
            return self.build_keys(client, limits)
        remember_as = remember_as or client
        keys = self._keys.get(remember_as)
        if keys is None:
            if len(self._keys) >= KEYS_REMEMBERED:
                self._keys.clear()
            keys = self._keys[remember_as] = self.build_keys(client, limits)
        return keys

    def build_keys(self, client: str, limits: tuple[Limit, ...]) -> list[str]:
        prefix = self.prefix + client
        return [f"{prefix}}}:{self.algorithm}:{lim.window_us}" for lim in limits]

    def identify(self, call: Call) -> tuple[str, str | None]:
        """The client's digest (bounded whatever its key's length) and its API key, if any."""
        if self.by_ip_only:
            return digest(self.trusted.client_of(call)), None
        values, api_key = [], None
        for kind, _, name in self.parts:
            if kind == "global":
                values.append("*")
                continue
            value = call.headers.get(name) if kind == "header" else None
            if value is None:  # ip, or a header the client did not send: its address
                values.append(self.trusted.client_of(call))
                continue
            if len(value) > MAX_KEY_LENGTH:
                raise Rejected(
                    f"{name} is longer than {MAX_KEY_LENGTH} characters", code="key_too_long"
                )
            values.append("h:" + value)
            api_key = value
        return digest("\x1f".join(values)), api_key

    async def limits_for(self, api_key: str | None) -> tuple[Limit, ...]:
        policy = self.policy
        if self.directory is None:
            return policy.default  # type: ignore[return-value]
        tier = None
        if api_key is not None:
            # The backend's assignment wins where this route knows that tier; else the config's.
            tier = await self.directory.lookup(api_key)
            if tier not in policy.tiers:
                tier = policy.settings.api_keys.get(api_key)
        if tier in policy.tiers:
            return policy.tiers[tier]  # type: ignore[index]
        if policy.settings.require_key or policy.default is None:
            what = "a known" if api_key is not None else "an"
            raise Rejected(
                f"{what} API key in {self.header} is required",
                status=401,
                code="unauthorized",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        return policy.default

    def node_share(self, limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
        """This node's share of each limit while Redis is away: limit ÷ live nodes (≥ 1)."""
        nodes = max(1, self.live_nodes())
        share = self._shares.get((limits, nodes))
        if share is None:
            share = tuple(
                replace(lim, limit=max(1, lim.limit // nodes), burst=max(1, lim.burst // nodes))
                for lim in limits
            )
            self._shares[(limits, nodes)] = share
        return share

    def note_dry_run(self) -> None:
        self.counters.dry_run += 1
        now = time.monotonic()
        if now - self._dry_run_logged >= DRY_RUN_LOG_INTERVAL:
            self._dry_run_logged = now
            log.info(
                "dry run: route %s let through a request over its limit (%d so far)",
                self.policy.route,
                self.counters.dry_run,
            )

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": asdict(self.counters),
            "gauges": {"backend_available": int(self.mode_available())},
        }

    def mode_available(self) -> bool:
        connection = getattr(self.store, "connection", None)
        return connection is None or connection.available


def tightest(verdicts: list[Verdict]) -> int:
    """The index of the limit with the fewest requests remaining (the first of equals)."""
    i = 0
    for j in range(1, len(verdicts)):
        if verdicts[j].remaining < verdicts[i].remaining:
            i = j
    return i


def seconds_up(us: int) -> int:
    """Microseconds as whole seconds, rounded up (RateLimit-Reset, Retry-After)."""
    return -(-us // 1_000_000)


def header_lines(limit_lines: bytes, remaining: int, reset_us: int) -> bytes:
    """The end of a reply's head, serialized: its RateLimit header lines (`limit_lines` is
    LIMIT_LINES with the limit) and the closing blank line."""
    seconds = seconds_up(reset_us)
    if 0 <= seconds < len(RESET_LINES):
        return b"%b%d%b" % (limit_lines, remaining, RESET_LINES[seconds])
    return b"%b%d%b" % (limit_lines, remaining, RESET_LINE % seconds)
