"""The node's settings: TOML file, then `SCALENODE__SECTION__KEY` env overrides, then CLI flags.

Everything is validated here, before any port binds; a bad key raises `ConfigError`
naming its path (`routes[1].target: unknown upstream 'usres' (known: users)`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.catalogue import catalogue
from node.errors import ConfigError
from node.schema import EnvValue, build, describe, join, require, unknown_key
from node.upstream.settings import UpstreamSettings

ENV_PREFIX = "SCALENODE__"
TARGET_KINDS = ("upstream", "handler", "store")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Paths every node serves itself; a route may not shadow them.
RESERVED_PREFIXES = ("/health", "/ready", "/metrics", "/dashboard", "/admin", "/jobs")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class NodeSettings:
    name: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str = ""
    trusted_proxies: tuple[str, ...] = ()
    max_body: int = 1024 * 1024  # bytes of request body; more gets 413
    drain_timeout: float = 10.0  # seconds in-flight requests get after SIGTERM
    # Seconds /ready answers 503 while still serving after SIGTERM, so balancers checking
    # every 1-2 s stop sending here before the port closes (docs/deploy.md).
    drain_delay: float = 5.0
    agent_port: int = 0  # HAProxy agent-check port (docs/deploy.md); 0 = off
    # Slow clients (docs/configuration.md has the reasons and nginx's equivalents):
    header_timeout: float = 10.0  # seconds from connect to a whole request head; then 408
    keepalive_timeout: float = 75.0  # seconds an idle kept-alive connection stays open
    body_timeout: float = 30.0  # seconds a request body may send nothing; then 408
    max_connections: int = 0  # open connections per process; 0 = from the open-file limit
    access_log: bool = False  # costs about half the throughput when on
    log_level: str = "info"
    # Seconds a node that went down (silent) or left stays listed on the dashboard.
    down_retention: float = 600.0

    def check(self, path: str) -> None:
        require(0 <= self.port <= 65535, join(path, "port"), "must be between 0 and 65535")
        require(self.max_body > 0, join(path, "max_body"), "must be > 0")
        require(self.drain_timeout >= 0, join(path, "drain_timeout"), "must be >= 0")
        require(self.drain_delay >= 0, join(path, "drain_delay"), "must be >= 0")
        require(self.down_retention >= 10, join(path, "down_retention"), "must be >= 10 s")
        require(0 <= self.agent_port <= 65535, join(path, "agent_port"), "must be 0 to 65535")
        for key in ("header_timeout", "keepalive_timeout", "body_timeout"):
            require(getattr(self, key) > 0, join(path, key), "must be > 0")
        # aiohttp closes a connection still waiting for a head at keepalive_timeout.
        require(
            self.header_timeout <= self.keepalive_timeout,
            join(path, "header_timeout"),
            f"must be <= keepalive_timeout ({self.keepalive_timeout:g})",
        )
        require(
            self.max_connections >= 0,
            join(path, "max_connections"),
            "must be >= 0 (0 = derived from the open-file limit)",
        )
        require(
            self.log_level in LOG_LEVELS,
            join(path, "log_level"),
            f"must be one of {', '.join(LOG_LEVELS)}",
        )
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{join(join(path, 'trusted_proxies'), i)}: not an IP address or CIDR: {cidr!r}"
                ) from None


@dataclass(frozen=True, slots=True)
class BackendSettings:
    redis: str = ""  # "" or "memory://" = embedded
    amqp: str = ""

    def check(self, path: str) -> None:
        for key, schemes in (
            ("redis", ("redis", "rediss", "unix", "redis+cluster")),
            ("amqp", ("amqp", "amqps")),
        ):
            url = getattr(self, key)
            if url and url != "memory://":  # "" or memory:// is the embedded backend
                require(
                    urlsplit(url).scheme in schemes,
                    join(path, key),
                    f"must be a URL with scheme {' or '.join(schemes)}, got {url!r}",
                )


MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ShardMember:
    name: str = ""
    dsn: str = ""  # "" = embedded shard (an SQLite file under the set's data_dir)
    replicas: tuple[str, ...] = ()

    def check(self, path: str) -> None:
        require(
            bool(MEMBER_NAME.match(self.name)),
            join(path, "name"),
            "must be 1 to 64 letters, digits, '_' or '-', starting with a letter or digit",
        )
        require(
            bool(self.dsn) or not self.replicas,
            join(path, "replicas"),
            'an embedded member (dsn = "") has no replicas',
        )
        for key, dsns in (("dsn", (self.dsn,) if self.dsn else ()), ("replicas", self.replicas)):
            for dsn in dsns:
                require(
                    urlsplit(dsn).scheme in ("postgres", "postgresql"),
                    join(path, key),
                    f"must be a postgresql:// DSN, got {dsn!r}",
                )


@dataclass(frozen=True, slots=True)
class PoolSize:
    min: int = 1
    max: int = 10

    def check(self, path: str) -> None:
        require(0 <= self.min <= self.max, join(path, "min"), f"must be 0 to max ({self.max})")
        require(1 <= self.max <= 1000, join(path, "max"), "must be 1 to 1000")


@dataclass(frozen=True, slots=True)
class ShardSetSettings:
    members: tuple[ShardMember, ...] = ()
    buckets: int = 1024  # fixed for the set's life: keys hash to buckets, buckets map to members
    max_lag_bytes: int = 16 * 1024 * 1024  # a replica further behind is not read from
    pool: PoolSize = field(default_factory=PoolSize)  # connections per member (and replica)
    timeout: float = 2.0  # seconds for one query, and for each member of a list's scatter
    fan_out: int = 8  # members a list queries at once
    data_dir: str = "data"  # embedded members' files: <data_dir>/<set>/<member>.sqlite3

    def check(self, path: str) -> None:
        require(bool(self.members), join(path, "members"), "must list at least one member")
        names = [m.name for m in self.members]
        require(len(set(names)) == len(names), join(path, "members"), "member names must be unique")
        require(
            len(self.members) <= self.buckets <= 16384,
            join(path, "buckets"),
            f"must be {len(self.members)} (one per member) to 16384",
        )
        require(self.max_lag_bytes >= 0, join(path, "max_lag_bytes"), "must be >= 0")
        require(0 < self.timeout <= 60, join(path, "timeout"), "must be > 0 and <= 60")
        require(1 <= self.fan_out <= 256, join(path, "fan_out"), "must be 1 to 256")


@dataclass(frozen=True, slots=True)
class RouteSettings:
    path: str = ""
    target: str = ""
    methods: tuple[str, ...] = ()  # empty = every method
    name: str = ""  # label in metrics and the dashboard; default: the path
    strip_prefix: str = ""  # removed from the path before it goes upstream
    max_body: int | None = None  # default: node.max_body
    # Every other key of a route is a plugin's table (`ratelimit = { ... }`), checked
    # against the loaded plugins by Settings.check: (name, table) in the file's order.
    plugin_tables: tuple[tuple[str, Any], ...] = ()
    EXTRA_KEYS_FIELD = "plugin_tables"

    @property
    def label(self) -> str:
        return self.name or self.path

    def check(self, path: str) -> None:
        require(self.path.startswith("/"), join(path, "path"), "must start with '/'")
        for prefix in RESERVED_PREFIXES:
            require(
                self.path != prefix and not self.path.startswith(prefix + "/"),
                join(path, "path"),
                f"{prefix} is served by the node itself",
            )
        kind = self.target.partition(":")[0]
        require(
            kind in TARGET_KINDS and ":" in self.target,
            join(path, "target"),
            f"must be upstream:NAME, handler:module:function or store:NAME, got {self.target!r}",
        )
        for i, method in enumerate(self.methods):
            require(
                method in HTTP_METHODS,
                join(join(path, "methods"), i),
                f"unknown method {method!r} (known: {', '.join(HTTP_METHODS)})",
            )
        if self.strip_prefix:
            require(
                "{" not in self.strip_prefix,
                join(path, "strip_prefix"),
                "must be literal text, without {placeholders}",
            )
            require(
                self.path.startswith(self.strip_prefix),
                join(path, "strip_prefix"),
                f"must be a prefix of the route path {self.path!r}",
            )
        if self.max_body is not None:
            require(self.max_body > 0, join(path, "max_body"), "must be > 0")


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    interval: float = 1.0  # seconds between the feed's frames (one aggregation each)
    replicas_min: int = 1  # bounds of the recommended replica count
    replicas_max: int = 10
    scale_up_cpu: float = 70.0  # percent of a core, averaged over the nodes
    scale_down_cpu: float = 30.0
    p95_target_ms: float = 250.0  # p95 latency over this recommends another replica

    def check(self, path: str) -> None:
        # Under 50 ms a frame costs more than it shows; over 10 s the feed looks dead.
        require(0.05 <= self.interval <= 10.0, join(path, "interval"), "must be 0.05 to 10 s")
        require(self.replicas_min >= 1, join(path, "replicas_min"), "must be >= 1")
        require(
            self.replicas_max >= self.replicas_min,
            join(path, "replicas_max"),
            f"must be >= replicas_min ({self.replicas_min})",
        )
        require(
            0 < self.scale_down_cpu < self.scale_up_cpu,
            join(path, "scale_down_cpu"),
            f"must be > 0 and < scale_up_cpu ({self.scale_up_cpu:g})",
        )
        require(self.p95_target_ms > 0, join(path, "p95_target_ms"), "must be > 0")


def route_methods(route: RouteSettings) -> tuple[str, ...]:
    """The methods a route answers: its list ("*" when empty), GET bringing HEAD."""
    methods = route.methods or ("*",)
    if "GET" in methods and "HEAD" not in methods:
        methods = (*methods, "HEAD")
    return methods


@dataclass(frozen=True, slots=True)
class PluginsSettings:
    load: tuple[str, ...] = ()  # modules whose PLUGIN / PLUGINS to add (besides entry points)


@dataclass(frozen=True, slots=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    backends: BackendSettings = field(default_factory=BackendSettings)
    plugins: PluginsSettings = field(default_factory=PluginsSettings)
    upstreams: dict[str, UpstreamSettings] = field(default_factory=dict)
    shards: dict[str, ShardSetSettings] = field(default_factory=dict)
    routes: tuple[RouteSettings, ...] = ()
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)

    def check(self, path: str) -> None:
        known_plugins = catalogue(self.plugins.load).names if self.routes else []
        route_keys = [f.name for f in fields(RouteSettings) if f.name != "plugin_tables"]
        claimed: dict[str, dict[str, int]] = {}  # path → method ("*" = any) → route index
        for i, route in enumerate(self.routes):
            route_path = join("routes", i)
            for name, table in route.plugin_tables:
                if name not in known_plugins:
                    raise unknown_key(route_path, name, [*route_keys, *known_plugins])
                if not isinstance(table, dict):
                    raise ConfigError(
                        f"{join(route_path, name)}: must be a table, got {describe(table)}"
                    )
            kind, _, name = route.target.partition(":")
            if kind == "upstream":
                require(
                    name in self.upstreams,
                    join(route_path, "target"),
                    f"unknown upstream {name!r} (known: {', '.join(self.upstreams) or 'none'})",
                )
            elif kind == "store":
                require(
                    name in self.shards,
                    join(route_path, "target"),
                    f"unknown shard set {name!r} (known: {', '.join(self.shards) or 'none'})",
                )
            methods = claimed.setdefault(route.path, {})
            for method in route_methods(route):
                clash = [methods[m] for m in methods if "*" in (m, method) or m == method]
                require(
                    not clash,
                    join(route_path, "path"),
                    f"{method} {route.path} is already routed by routes[{(clash or [i])[0]}]",
                )
            for method in route_methods(route):
                methods[method] = i


def redact_url(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def parse_env_value(text: str) -> Any:
    """`8081` → 8081, `true` → True, `["a"]` → ["a"]; anything that is not TOML stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Override keys from `SCALENODE__NODE__PORT=8081`-style variables (lists by index)."""
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in var[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            raise ConfigError(f"{var}: empty key in variable name")
        place: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(place, list):
                if not key.isdigit() or int(key) >= len(place):
                    raise ConfigError(f"{var}: no list item {key!r} to override")
                if last:
                    place[int(key)] = EnvValue(var, text, parse_env_value(text))
                else:
                    place = place[int(key)]
            elif isinstance(place, dict):
                if last:
                    place[key] = EnvValue(var, text, parse_env_value(text))
                else:
                    place = place.setdefault(key, {})
            else:
                raise ConfigError(f"{var}: {'.'.join(keys[:depth])} is not a table")


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, override and validate the settings (no I/O beyond reading the file)."""
    data = read_toml(path) if path is not None else {}
    apply_env(data, os.environ if environ is None else environ)
    if overrides:
        node = data.setdefault("node", {})
        if not isinstance(node, dict):
            raise ConfigError("node: must be a table")
        node.update({k: v for k, v in overrides.items() if v is not None})
    return build(Settings, data, "")
