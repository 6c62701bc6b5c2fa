"""The settings of an upstream pool (`[upstreams.NAME]`): members, balancing, timeouts,
retries and active health checks, validated with key paths like the rest of the config."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from node.errors import ConfigError
from node.schema import join, require
from node.upstream.ring import DEFAULT_POINTS

BALANCERS = ("round_robin", "least_conn", "hash")


def check_http_url(url: str, path: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (reading it validates it)
    except ValueError:
        raise ConfigError(f"{path}: bad port in {url!r}") from None
    require(
        parts.scheme in ("http", "https") and bool(parts.hostname),
        path,
        f"must be an http:// or https:// URL, got {url!r}",
    )
    require(
        parts.path in ("", "/") and not parts.query,
        path,
        f"must have no path or query (routes decide the path), got {url!r}",
    )


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Active health checks of a pool's members: GET `path` every `interval` seconds."""

    path: str = "/health"
    interval: float = 5.0
    timeout: float = 1.0
    healthy: int = 2  # consecutive passes that re-admit an ejected member
    unhealthy: int = 3  # consecutive failures that eject a member

    def check(self, path: str) -> None:
        require(self.path.startswith("/"), join(path, "path"), "must start with '/'")
        require(self.interval > 0, join(path, "interval"), "must be > 0")
        require(self.timeout > 0, join(path, "timeout"), "must be > 0")
        require(self.healthy >= 1, join(path, "healthy"), "must be >= 1")
        require(self.unhealthy >= 1, join(path, "unhealthy"), "must be >= 1")


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    targets: tuple[str, ...] = ()
    balance: str = "round_robin"
    timeout: float = 5.0  # seconds for the whole upstream exchange; more gets 504
    connect_timeout: float = 2.0
    max_connections: int = 256  # per pool, across its members
    health: HealthSettings | None = None  # active checks; None = off
    retries: int = 0  # extra tries of an idempotent call, each on another member
    retry_budget: float = 0.2  # retries may be this fraction of requests (at least 3 a second)
    ring_points: int = DEFAULT_POINTS  # balance = "hash": ring points per member
    load_factor: float = 0.0  # balance = "hash": bounded load (e.g. 1.25); 0 = off
    weights: tuple[int, ...] = ()  # balance = "hash": one per target, ring points in proportion

    def check(self, path: str) -> None:
        require(bool(self.targets), join(path, "targets"), "must name at least one URL")
        for i, url in enumerate(self.targets):
            check_http_url(url, join(join(path, "targets"), i))
        require(
            self.balance in BALANCERS,
            join(path, "balance"),
            f"must be one of {', '.join(BALANCERS)}, got {self.balance!r}",
        )
        require(self.timeout > 0, join(path, "timeout"), "must be > 0")
        require(self.connect_timeout > 0, join(path, "connect_timeout"), "must be > 0")
        require(self.max_connections > 0, join(path, "max_connections"), "must be > 0")
        require(self.retries >= 0, join(path, "retries"), "must be >= 0")
        require(0 <= self.retry_budget <= 1, join(path, "retry_budget"), "must be between 0 and 1")
        require(self.ring_points >= 4, join(path, "ring_points"), "must be >= 4")
        require(
            self.load_factor == 0 or self.load_factor > 1,
            join(path, "load_factor"),
            "must be 0 (off) or > 1",
        )
        if self.weights:
            require(
                self.balance == "hash",
                join(path, "weights"),
                f'apply to balance = "hash" only (this pool balances {self.balance})',
            )
            require(
                len(self.weights) == len(self.targets),
                join(path, "weights"),
                f"must give one weight per target ({len(self.targets)}), got {len(self.weights)}",
            )
            for i, weight in enumerate(self.weights):
                require(weight >= 1, join(join(path, "weights"), i), f"must be >= 1, got {weight}")
        names = [urlsplit(url).netloc for url in self.targets]
        require(len(set(names)) == len(names), join(path, "targets"), "must not repeat a host:port")
