"""The `ratelimit` route table, validated into frozen settings (errors name the key path)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.errors import ConfigError
from node.schema import build, join, require
from plugins.ratelimit.algorithms import ALGORITHMS, TOKEN_BUCKET, Limit

BACKEND_ERROR_MODES = ("open", "closed", "local")
KEY_KINDS = ("ip", "global", "header")
MIN_WINDOW = 0.001  # seconds; the state keeps microseconds, the headers whole seconds
MAX_KEY_LENGTH = 256  # characters of a client key (an API key header, say); longer is a 400


@dataclass(frozen=True, slots=True)
class LimitSpec:
    limit: int = 0
    window: float = 0.0  # seconds
    burst: int | None = None  # token bucket: requests at once; default the limit

    def check(self, path: str) -> None:
        require(self.limit > 0, join(path, "limit"), "must be > 0")
        require(self.window >= MIN_WINDOW, join(path, "window"), f"must be >= {MIN_WINDOW} s")
        if self.burst is not None:
            require(self.burst > 0, join(path, "burst"), "must be > 0")

    def to_limit(self) -> Limit:
        return Limit(self.limit, round(self.window * 1_000_000), self.burst or self.limit)


@dataclass(frozen=True, slots=True)
class LimitSet:
    """Either the short form (limit, window, burst) or `limits = [...]`, not both."""

    limit: int | None = None
    window: float | None = None
    burst: int | None = None
    limits: tuple[LimitSpec, ...] = ()

    def resolve(self, path: str) -> tuple[Limit, ...]:
        short = self.limit is not None or self.window is not None
        if short and self.limits:
            raise ConfigError(f"{path}: give limit and window, or limits = [...], not both")
        if short:
            data = {"limit": self.limit or 0, "window": self.window or 0.0, "burst": self.burst}
            return (build(LimitSpec, data, path).to_limit(),)
        require(bool(self.limits), path, "needs limit and window, or limits = [...]")
        return tuple(spec.to_limit() for spec in self.limits)


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    limit: int | None = None
    window: float | None = None
    burst: int | None = None
    limits: tuple[LimitSpec, ...] = ()
    key: Any = "ip"  # "ip" | "global" | "header:NAME", or a list of them
    algorithm: str = "sliding_window"
    on_backend_error: str = "open"
    dry_run: bool = False
    status: int = 429
    scope: str = "route"  # routes naming the same scope share their counters
    tiers: dict[str, LimitSet] = field(default_factory=dict)
    default_tier: str = ""  # a tier's name; "" = the limits above
    api_keys: dict[str, str] = field(default_factory=dict)  # API key → tier
    require_key: bool = False  # 401 for a missing or unknown API key

    def check(self, path: str) -> None:
        require(
            self.algorithm in ALGORITHMS,
            join(path, "algorithm"),
            f"must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}",
        )
        require(
            self.on_backend_error in BACKEND_ERROR_MODES,
            join(path, "on_backend_error"),
            f"must be one of {', '.join(BACKEND_ERROR_MODES)}, got {self.on_backend_error!r}",
        )
        require(400 <= self.status <= 599, join(path, "status"), "must be a 4xx or 5xx status")
        require(bool(self.scope), join(path, "scope"), "must not be empty")
        parse_key(self.key, join(path, "key"))
        if self.tiers or self.api_keys or self.require_key:
            require(
                self.header_name is not None,
                join(path, "key"),
                "tiers and API keys need the key to include header:NAME (the API key header)",
            )
        if self.default_tier:
            require(
                self.default_tier in self.tiers,
                join(path, "default_tier"),
                f"unknown tier {self.default_tier!r} (known: {', '.join(self.tiers) or 'none'})",
            )
        for api_key, tier in self.api_keys.items():
            require(
                tier in self.tiers,
                join(join(path, "api_keys"), api_key[:8] + "…"),
                f"unknown tier {tier!r} (known: {', '.join(self.tiers) or 'none'})",
            )
        if self.algorithm != TOKEN_BUCKET:
            require(
                self.burst is None and all(s.burst is None for s in self.limits),
                join(path, "burst"),
                "only the token_bucket algorithm takes a burst",
            )

    @property
    def header_name(self) -> str | None:
        for part in key_parts(self.key):
            if part.startswith("header:"):
                return part.partition(":")[2]
        return None


def key_parts(key: Any) -> list[str]:
    return [key] if isinstance(key, str) else list(key)


def parse_key(key: Any, path: str) -> list[str]:
    parts = key_parts(key) if isinstance(key, str | list) else None
    require(
        bool(parts) and all(isinstance(p, str) for p in parts or ()),
        path,
        'must be "ip", "global", "header:NAME" or a list of them',
    )
    for part in parts or ():
        kind, _, name = part.partition(":")
        require(
            kind in KEY_KINDS
            and (kind != "header" or bool(name))
            and (kind == "header" or not name),
            path,
            f'unknown key {part!r}: use "ip", "global" or "header:NAME"',
        )
    return parts or []


def default_limits(settings: RateLimitSettings, path: str) -> tuple[Limit, ...] | None:
    """Limits for clients without a tier: the table's own, or its `default_tier`'s.

    None when every client must present a known API key (require_key with tiers)."""
    own = settings.limit is not None or settings.window is not None or bool(settings.limits)
    if settings.default_tier:
        require(not own, join(path, "default_tier"), "give default_tier or limits, not both")
        name = settings.default_tier
        return settings.tiers[name].resolve(join(join(path, "tiers"), name))
    if not own and settings.require_key and settings.tiers:
        return None
    return LimitSet(settings.limit, settings.window, settings.burst, settings.limits).resolve(path)


def check_bucket_range(settings: RateLimitSettings, limits: tuple[Limit, ...], path: str) -> None:
    """The token bucket's exact integer arithmetic needs burst * window (us) below 2**53."""
    if settings.algorithm == TOKEN_BUCKET:
        for lim in limits:
            require(
                lim.burst * lim.window_us < 2**53,
                path,
                f"burst {lim.burst} over {lim.window_us / 1e6:g} s is too large for token_bucket",
            )


def tier_limits(settings: RateLimitSettings, path: str) -> dict[str, tuple[Limit, ...]]:
    return {
        name: tier.resolve(join(join(path, "tiers"), name)) for name, tier in settings.tiers.items()
    }
