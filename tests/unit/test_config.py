"""node/config.py: defaults, key-path errors, env overrides and CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Settings, load_settings, redact_url
from node.errors import ConfigError

UPSTREAM = '[upstreams.users]\ntargets = ["http://127.0.0.1:9001"]\n'
SHARDS = '[shards.main]\nmembers = [{ name = "s0" }]\n'


def route(path: str = "/a", target: str = "upstream:users", **extra: str) -> str:
    lines = [f"path = {path!r}", f"target = {target!r}", *(f"{k} = {v}" for k, v in extra.items())]
    return "[[routes]]\n" + "\n".join(lines) + "\n"


def load(tmp_path: Path, text: str, environ=None, overrides=None) -> Settings:
    file = tmp_path / "node.toml"
    file.write_text(text)
    return load_settings(file, environ={} if environ is None else environ, overrides=overrides)


def config_error(tmp_path: Path, text: str, environ=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ, overrides)
    return str(caught.value)


def test_empty_file_gives_defaults(tmp_path):
    """An empty file loads as the documented defaults."""
    settings = load(tmp_path, "")
    assert settings == Settings()
    assert (settings.node.host, settings.node.port) == ("127.0.0.1", 8080)
    assert settings.node.max_body == 1048576
    assert settings.routes == ()


def test_no_file_gives_defaults():
    """No config path at all also loads the defaults."""
    assert load_settings(None, environ={}) == Settings()


def test_shipped_local_config_loads():
    """config/local.toml, the file run.py starts with, is valid."""
    path = Path(__file__).resolve().parents[2] / "config" / "local.toml"
    assert load_settings(path, environ={}).routes


ERRORS = {
    "unknown key, did you mean": (
        "[node]\nprot = 8081",
        "node.prot: unknown key; did you mean 'port'?",
    ),
    "unknown section": ("[nodes]\nport = 1", "nodes: unknown key; did you mean 'node'?"),
    "unknown key, no close match": (
        "[zzz]\n",
        "zzz: unknown key (known: backends, dashboard, node, plugins, routes, shards, upstreams)",
    ),
    "dashboard interval": (
        "[dashboard]\ninterval = 0",
        "dashboard.interval: must be 0.05 to 10 s",
    ),
    "dashboard replicas bounds": (
        "[dashboard]\nreplicas_min = 4\nreplicas_max = 2",
        "dashboard.replicas_max: must be >= replicas_min (4)",
    ),
    "dashboard cpu thresholds": (
        "[dashboard]\nscale_down_cpu = 80",
        "dashboard.scale_down_cpu: must be > 0 and < scale_up_cpu (70)",
    ),
    "string for int": ('[node]\nport = "80"', "node.port: must be an integer, got a string"),
    "bool for int": ("[node]\nport = true", "node.port: must be an integer, got a boolean"),
    "float for int": ("[node]\nport = 80.5", "node.port: must be an integer, got a number"),
    "bool for float": (
        "[node]\ndrain_timeout = false",
        "node.drain_timeout: must be a number, got a boolean",
    ),
    "int for bool": (
        "[node]\naccess_log = 1",
        "node.access_log: must be a boolean, got an integer",
    ),
    "section not a table": ("node = 5", "node: must be a table, got an integer"),
    "port too high": ("[node]\nport = 65536", "node.port: must be between 0 and 65535"),
    "max_body zero": ("[node]\nmax_body = 0", "node.max_body: must be > 0"),
    "log level": (
        '[node]\nlog_level = "loud"',
        "node.log_level: must be one of debug, info, warning, error",
    ),
    "trusted_proxies not a list": (
        '[node]\ntrusted_proxies = "10.0.0.0/8"',
        "node.trusted_proxies: must be a list, got a string",
    ),
    "trusted_proxies bad CIDR": (
        '[node]\ntrusted_proxies = ["10.0.0.0/8", "lan"]',
        "node.trusted_proxies[1]: not an IP address or CIDR: 'lan'",
    ),
    "amqp scheme": (
        '[backends]\namqp = "http://x"',
        "backends.amqp: must be a URL with scheme amqp or amqps, got 'http://x'",
    ),
    "upstream without targets": (
        "[upstreams.users]\ntargets = []",
        "upstreams.users.targets: must name at least one URL",
    ),
    "upstream target scheme": (
        '[upstreams.users]\ntargets = ["ftp://a"]',
        "upstreams.users.targets[0]: must be an http:// or https:// URL, got 'ftp://a'",
    ),
    "upstream target without host": (
        '[upstreams.users]\ntargets = ["http://a", "http:///x"]',
        "upstreams.users.targets[1]: must be an http:// or https:// URL, got 'http:///x'",
    ),
    "upstream target with path": (
        '[upstreams.users]\ntargets = ["http://a/api"]',
        "upstreams.users.targets[0]: must have no path or query (routes decide the path), "
        "got 'http://a/api'",
    ),
    "upstream balance": (
        UPSTREAM + 'balance = "random"',
        "upstreams.users.balance: must be one of round_robin, least_conn, hash, got 'random'",
    ),
    "upstream timeout": (UPSTREAM + "timeout = 0", "upstreams.users.timeout: must be > 0"),
    "upstream retries": (UPSTREAM + "retries = -1", "upstreams.users.retries: must be >= 0"),
    "upstream retry budget": (
        UPSTREAM + "retry_budget = 1.5",
        "upstreams.users.retry_budget: must be between 0 and 1",
    ),
    "upstream ring points": (
        UPSTREAM + "ring_points = 2",
        "upstreams.users.ring_points: must be >= 4",
    ),
    "upstream load factor": (
        UPSTREAM + "load_factor = 0.5",
        "upstreams.users.load_factor: must be 0 (off) or > 1",
    ),
    "upstream weights without hash": (
        '[upstreams.users]\ntargets = ["http://a:1", "http://b:1"]\nweights = [2, 1]',
        'upstreams.users.weights: apply to balance = "hash" only (this pool balances round_robin)',
    ),
    "upstream weights count": (
        '[upstreams.users]\ntargets = ["http://a:1", "http://b:1"]\nbalance = "hash"\n'
        "weights = [2]",
        "upstreams.users.weights: must give one weight per target (2), got 1",
    ),
    "upstream weight zero": (
        '[upstreams.users]\ntargets = ["http://a:1", "http://b:1"]\nbalance = "hash"\n'
        "weights = [2, 0]",
        "upstreams.users.weights[1]: must be >= 1, got 0",
    ),
    "upstream weight not an integer": (
        '[upstreams.users]\ntargets = ["http://a:1", "http://b:1"]\nbalance = "hash"\n'
        "weights = [1.5, 1]",
        "upstreams.users.weights[0]: must be an integer, got a number",
    ),
    "upstream repeated member": (
        '[upstreams.users]\ntargets = ["http://a:1", "http://a:1/"]',
        "upstreams.users.targets: must not repeat a host:port",
    ),
    "health path": (
        UPSTREAM + 'health = { path = "health" }',
        "upstreams.users.health.path: must start with '/'",
    ),
    "health thresholds": (
        UPSTREAM + "health = { unhealthy = 0 }",
        "upstreams.users.health.unhealthy: must be >= 1",
    ),
    "health unknown key": (
        UPSTREAM + "health = { intervall = 1 }",
        "upstreams.users.health.intervall: unknown key; did you mean 'interval'?",
    ),
    "upstream unknown key": (
        '[upstreams.users]\ntarget = ["http://a"]',
        "upstreams.users.target: unknown key; did you mean 'targets'?",
    ),
    "routes not a list": ("[routes]\npath = '/a'", "routes: must be a list, got a table"),
    "route unknown key": (
        UPSTREAM + route(pth="'/b'"),
        "routes[0].pth: unknown key; did you mean 'path'?",
    ),
    "route path without slash": (UPSTREAM + route("a"), "routes[0].path: must start with '/'"),
    "reserved /health": (
        UPSTREAM + route("/health"),
        "routes[0].path: /health is served by the node itself",
    ),
    "reserved /metrics/x": (
        UPSTREAM + route("/metrics/x"),
        "routes[0].path: /metrics is served by the node itself",
    ),
    "target kind": (
        UPSTREAM + route(target="proxy:users"),
        "routes[0].target: must be upstream:NAME, handler:module:function or store:NAME, "
        "got 'proxy:users'",
    ),
    "unknown method": (
        UPSTREAM + route(methods='["GET", "FETCH"]'),
        "routes[0].methods[1]: unknown method 'FETCH' "
        "(known: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
    ),
    "dangling upstream": (
        UPSTREAM + route("/a") + route("/b", "upstream:usres"),
        "routes[1].target: unknown upstream 'usres' (known: users)",
    ),
    "dangling upstream, none defined": (
        route(target="upstream:users"),
        "routes[0].target: unknown upstream 'users' (known: none)",
    ),
    "dangling shard set": (
        SHARDS + route(target="store:orders"),
        "routes[0].target: unknown shard set 'orders' (known: main)",
    ),
    "duplicate method and path": (
        UPSTREAM + route(methods='["GET", "POST"]') + route(methods='["POST"]'),
        "routes[1].path: POST /a is already routed by routes[0]",
    ),
    "duplicate any-method route": (
        UPSTREAM + route() + route(),
        "routes[1].path: * /a is already routed by routes[0]",
    ),
    "strip_prefix not a prefix": (
        UPSTREAM + route("/a/{tail:.*}", strip_prefix="'/b'"),
        "routes[0].strip_prefix: must be a prefix of the route path '/a/{tail:.*}'",
    ),
    "route max_body": (UPSTREAM + route(max_body="0"), "routes[0].max_body: must be > 0"),
    "plugin table not a table": (
        UPSTREAM + route(ratelimit="5"),
        "routes[0].ratelimit: must be a table, got an integer",
    ),
    "shard member names unique": (
        '[shards.main]\nmembers = [{ name = "s0" }, { name = "s0" }]',
        "shards.main.members: member names must be unique",
    ),
    "shard member dsn": (
        '[shards.main]\nmembers = [{ name = "s0", dsn = "mysql://x" }]',
        "shards.main.members[0].dsn: must be a postgresql:// DSN, got 'mysql://x'",
    ),
}


@pytest.mark.parametrize(("text", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_config_error_names_key_path(tmp_path, text, message):
    """Each bad setting raises ConfigError whose message is exactly path: reason."""
    assert config_error(tmp_path, text) == message


def test_route_not_under_reserved_prefix_is_allowed(tmp_path):
    """/healthz only shares letters with /health and is a normal route."""
    assert load(tmp_path, UPSTREAM + route("/healthz")).routes[0].path == "/healthz"


def test_any_method_route_overlapping_get_route_is_rejected(tmp_path):
    """A route for every method and a GET route on the same path collide (aiohttp refuses it)."""
    text = UPSTREAM + route() + route(methods='["GET"]')
    assert config_error(tmp_path, text) == "routes[1].path: GET /a is already routed by routes[0]"


def test_head_route_overlapping_implicit_head_of_get_route_is_rejected(tmp_path):
    """GET brings HEAD, so a later HEAD route on the same path collides."""
    text = UPSTREAM + route(methods='["GET"]') + route(methods='["HEAD"]')
    assert config_error(tmp_path, text) == "routes[1].path: HEAD /a is already routed by routes[0]"


@pytest.mark.parametrize("url", ["http://a:99999", "http://a:port"])
def test_upstream_target_with_bad_port_is_rejected(tmp_path, url):
    """An upstream URL whose port is not a valid port number fails at load, not per request."""
    text = f'[upstreams.users]\ntargets = ["{url}"]'
    assert config_error(tmp_path, text).startswith("upstreams.users.targets[0]: ")


def test_strip_prefix_with_placeholder_is_rejected(tmp_path):
    """strip_prefix is cut by length, so a {placeholder} in it cannot be stripped correctly."""
    text = UPSTREAM + route("/{tenant}/api/{tail:.*}", strip_prefix="'/{tenant}'")
    assert config_error(tmp_path, text).startswith("routes[0].strip_prefix: ")


def test_invalid_toml_names_file(tmp_path):
    """Broken TOML names the file and says it is invalid TOML, with the parser's position."""
    message = config_error(tmp_path, "[node\nport = 1")
    assert message.startswith(f"{tmp_path / 'node.toml'}: invalid TOML: ")
    assert "line 1" in message


def test_missing_file_names_file(tmp_path):
    """A config path that does not exist is reported as file not found."""
    with pytest.raises(ConfigError, match=r"missing\.toml: file not found$"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_env_overrides_port_as_integer(tmp_path):
    """SCALENODE__NODE__PORT=8081 overrides the file and is read as a TOML integer."""
    settings = load(tmp_path, "[node]\nport = 9000", {"SCALENODE__NODE__PORT": "8081"})
    assert settings.node.port == 8081


def test_env_values_are_typed_by_toml(tmp_path):
    """Booleans and lists in env values arrive typed."""
    env = {
        "SCALENODE__NODE__ACCESS_LOG": "true",
        "SCALENODE__NODE__TRUSTED_PROXIES": '["10.0.0.0/8", "::1"]',
    }
    settings = load(tmp_path, "", env)
    assert settings.node.access_log is True
    assert settings.node.trusted_proxies == ("10.0.0.0/8", "::1")


def test_env_value_that_is_not_toml_stays_string(tmp_path):
    """0.0.0.0 and upstream:users are not TOML values, so they are taken as strings."""
    settings = load(tmp_path, "", {"SCALENODE__NODE__HOST": "0.0.0.0"})
    assert settings.node.host == "0.0.0.0"


def test_env_value_of_wrong_type_names_key(tmp_path):
    """A wrongly typed env value is reported at its key path, naming the variable."""
    message = config_error(tmp_path, "", {"SCALENODE__NODE__PORT": "eighty"})
    assert message == "node.port: must be an integer, got a string (from SCALENODE__NODE__PORT)"


def test_env_value_for_a_text_key_stays_text(tmp_path):
    """SCALENODE__NODE__ADMIN_TOKEN=123456 is the string "123456", not a number."""
    settings = load(tmp_path, "", {"SCALENODE__NODE__ADMIN_TOKEN": "123456"})
    assert settings.node.admin_token == "123456"


def test_env_overrides_nested_upstream_key(tmp_path):
    """SCALENODE__UPSTREAMS__USERS__TIMEOUT=2 sets that pool's timeout (as a float)."""
    settings = load(tmp_path, UPSTREAM, {"SCALENODE__UPSTREAMS__USERS__TIMEOUT": "2"})
    assert settings.upstreams["users"].timeout == 2.0


def test_env_can_create_an_upstream(tmp_path):
    """Env variables can define a pool the file does not mention."""
    env = {"SCALENODE__UPSTREAMS__API__TARGETS": '["http://10.0.0.5:9000"]'}
    assert load(tmp_path, "", env).upstreams["api"].targets == ("http://10.0.0.5:9000",)


def test_env_overrides_route_by_index(tmp_path):
    """SCALENODE__ROUTES__0__TARGET replaces the first route's target."""
    text = UPSTREAM + "[upstreams.other]\ntargets = ['http://b']\n" + route()
    settings = load(tmp_path, text, {"SCALENODE__ROUTES__0__TARGET": "upstream:other"})
    assert settings.routes[0].target == "upstream:other"


@pytest.mark.parametrize(
    ("var", "reason"),
    [
        ("SCALENODE__ROUTES__3__TARGET", "no list item '3' to override"),
        ("SCALENODE__ROUTES__X__TARGET", "no list item 'x' to override"),
        ("SCALENODE__NODE__PORT__X", "node.port is not a table"),
        ("SCALENODE__NODE____PORT", "empty key in variable name"),
    ],
)
def test_bad_env_variable_names_the_variable(tmp_path, var, reason):
    """A variable that cannot be applied is reported by its own name."""
    text = "[node]\nport = 8080\n" + UPSTREAM + route()
    assert config_error(tmp_path, text, {var: "1"}) == f"{var}: {reason}"


def test_unrelated_env_variables_are_ignored(tmp_path):
    """Variables without the SCALENODE__ prefix change nothing."""
    env = {"SCALENODE_NODE_PORT": "1", "PORT": "2", "NODE__PORT": "3"}
    assert load(tmp_path, "", env) == Settings()


def test_cli_overrides_beat_env(tmp_path):
    """A CLI flag wins over the same key in the environment."""
    env = {"SCALENODE__NODE__PORT": "8081", "SCALENODE__NODE__HOST": "0.0.0.0"}
    settings = load(tmp_path, "", env, overrides={"port": 9000, "host": None})
    assert settings.node.port == 9000
    assert settings.node.host == "0.0.0.0"


def test_cli_overrides_are_validated(tmp_path):
    """An out-of-range flag value is reported like a file value."""
    message = config_error(tmp_path, "", overrides={"port": 70000})
    assert message == "node.port: must be between 0 and 65535"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("redis://:s3cret@h:6379/0", "redis://***@h:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("", ""),
    ],
)
def test_redact_url_hides_passwords(url, shown):
    """Backend URLs are shown (summaries, logs) without their password."""
    assert redact_url(url) == shown
