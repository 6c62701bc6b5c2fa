"""`python run.py` flags and configs: --check-config, and bad input → exit 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import free_port, run_cli

HANDLER_ROUTE = '[[routes]]\npath = "/x"\ntarget = "handler:{spec}"\n'

# (id, config text, stderr must contain these)
ROUTE = '[[routes]]\npath = "/x"\ntarget = "handler:node.demo:hello"\n'
UPSTREAM = '[upstreams.app]\ntargets = ["http://127.0.0.1:9"]\n'
PROXIED = '[[routes]]\npath = "/x"\ntarget = "upstream:app"\n'
BAD_CONFIGS = [
    ("typo", "[node]\nprot = 8080\n", ["node.prot: unknown key; did you mean 'port'?"]),
    ("nan", "[node]\ndrain_timeout = nan\n", ["node.drain_timeout: must be a finite number"]),
    (
        "window-inf",
        ROUTE + "ratelimit = { limit = 5, window = inf }\n",
        ["routes[0].ratelimit.window: must be a finite number, got inf"],
    ),
    ("ttl-inf", ROUTE + "cache = { ttl = inf }\n", ["routes[0].cache.ttl: must be a finite"]),
    (
        "open-inf",
        UPSTREAM + PROXIED + "breaker = { open_seconds = inf }\n",
        ["routes[0].breaker.open_seconds: must be a finite"],
    ),
    (
        "timeout-inf",
        UPSTREAM + "timeout = -inf\n",
        ["upstreams.app.timeout: must be a finite number, got -inf"],
    ),
    (
        "health-inf",
        UPSTREAM + 'health = { path = "/h", interval = inf }\n',
        ["upstreams.app.health.interval: must be a finite"],
    ),
    (
        "unresolvable-host",
        '[node]\nhost = "no-such-host.invalid"\n',
        ["node.host: cannot resolve 'no-such-host.invalid'"],
    ),
    (
        "wrong-type",
        '[node]\nmax_body = "1MB"\n',
        ["node.max_body: must be an integer, got a string"],
    ),
    (
        "dangling-upstream",
        '[upstreams.users]\ntargets = ["http://127.0.0.1:9001"]\n\n'
        '[[routes]]\npath = "/u"\ntarget = "upstream:usres"\n',
        ["routes[0].target: unknown upstream 'usres' (known: users)"],
    ),
    (
        "unknown-route-key",
        '[[routes]]\npath = "/x"\ntarget = "handler:node.demo:hello"\ncolour = "red"\n',
        ["routes[0].colour: unknown key"],
    ),
    ("invalid-toml", "[node\nport = 1\n", ["node.toml: invalid TOML"]),
    (
        "handler-no-module",
        HANDLER_ROUTE.format(spec="no_such_module_xyz:fn"),
        ["routes[0].target: cannot import module 'no_such_module_xyz'"],
    ),
    (
        "handler-no-function",
        HANDLER_ROUTE.format(spec="node.demo:nope"),
        ["routes[0].target: module 'node.demo' has no 'nope'"],
    ),
    (
        "handler-not-async",
        HANDLER_ROUTE.format(spec="os.path:join"),
        ["routes[0].target: ", "must be an async function"],
    ),
    (
        "handler-relative-module",
        HANDLER_ROUTE.format(spec=".relative:fn"),
        ["routes[0].target: "],
    ),
    (
        "handler-module-fails-to-import",
        HANDLER_ROUTE.format(spec="broken_handlers:fn"),
        ["routes[0].target: ", "broken_handlers"],
    ),
    (
        "reserved-path",
        '[[routes]]\npath = "/health"\ntarget = "handler:node.demo:hello"\n',
        ["routes[0].path: /health is served by the node itself"],
    ),
    (
        "duplicate-route",
        '[[routes]]\npath = "/x"\ntarget = "handler:node.demo:hello"\n'
        '[[routes]]\npath = "/x"\ntarget = "handler:node.demo:echo"\n',
        ["routes[1].path: * /x is already routed by routes[0]"],
    ),
]


def assert_one_line_error(result, prefix: str, needles: list[str]) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("text", "needles"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, needles: list[str]) -> None:
    """A bad config stops the node before it binds: exit 2, one stderr line naming the key."""
    # A handler module that raises on import (here: a syntax error), for the case that names it.
    (tmp_path / "broken_handlers.py").write_text("async def fn(call:\n")
    config = tmp_path / "node.toml"
    config.write_text(text)
    result = run_cli(
        ["--config", str(config), "--port", str(free_port())],
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert_one_line_error(result, "config error: ", needles)


def test_route_naming_a_missing_plugin(tmp_path: Path) -> None:
    """A route naming a plugin no installed or loaded package provides is a config error
    naming the key, never a silent no-op."""
    config = tmp_path / "node.toml"
    config.write_text(
        '[[routes]]\npath = "/x"\ntarget = "handler:node.demo:hello"\nsigning = { secret = "s" }\n'
    )
    result = run_cli(["--config", str(config), "--port", str(free_port())])
    assert_one_line_error(result, "config error: ", ["routes[0].signing: unknown key", "ratelimit"])


def test_bad_config_fails_check_config_too(tmp_path: Path) -> None:
    """--check-config reports the same one-line error and exit 2 as a real start."""
    config = tmp_path / "node.toml"
    config.write_text("[node]\nprot = 8080\n")
    result = run_cli(["--check-config", "--config", str(config)])
    assert_one_line_error(result, "config error: ", ["node.prot: unknown key"])


def test_missing_config_file(tmp_path: Path) -> None:
    """A --config path that does not exist is a one-line config error naming the file."""
    missing = tmp_path / "nope.toml"
    result = run_cli(["--config", str(missing), "--port", str(free_port())])
    assert_one_line_error(result, "config error: ", [f"{missing}: file not found"])


def test_bad_env_override(tmp_path: Path) -> None:
    """A bad SCALENODE__ value is reported with the key path it lands on."""
    result = run_cli(["--check-config"], env={"SCALENODE__NODE__PORT": "abc"})
    assert_one_line_error(result, "config error: ", ["node.port: must be an integer"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--processes", "0"], "--processes"),
        (["--role", "nope"], "--role"),
        (["--port", "70000"], "--port"),
        (["--port", "abc"], "--port"),
        (["--bogus"], "--bogus"),
    ],
    ids=["processes-0", "role-nope", "port-range", "port-type", "unknown-flag"],
)
def test_bad_flag_exits_2_with_one_line(args: list[str], needle: str) -> None:
    """A bad flag: exit 2, one `usage error:` line naming the flag, no usage dump."""
    result = run_cli(args)
    assert_one_line_error(result, "usage error: ", [needle])


def test_check_config_prints_summary() -> None:
    """--check-config on the default config prints a summary and exits 0 without serving."""
    result = run_cli(["--check-config", "--name", "checked", "--port", "8199"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("config ok: node checked on 127.0.0.1:8199, role all")
    assert "route GET /hello -> handler:node.demo:hello" in lines
    assert any(line.startswith("route * /echo/") for line in lines)


def test_check_config_from_another_directory(tmp_path: Path) -> None:
    """The default config is found relative to the project, whatever the working directory."""
    result = run_cli(["--check-config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "route GET /hello -> handler:node.demo:hello" in result.stdout


def test_check_config_with_gateway_config(tmp_path: Path) -> None:
    """The summary lists a config's upstreams and routes for the chosen role."""
    config = tmp_path / "my.toml"
    config.write_text(
        '[upstreams.users]\ntargets = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]\n'
        'balance = "least_conn"\n\n'
        '[[routes]]\npath = "/users/{tail:.*}"\ntarget = "upstream:users"\n'
        'strip_prefix = "/users"\n'
    )
    result = run_cli(["--check-config", "--role", "gateway", "--config", str(config)])
    assert result.returncode == 0, result.stderr
    assert "role gateway" in result.stdout
    assert (
        "upstream users: least_conn over http://127.0.0.1:9001, http://127.0.0.1:9002"
        in result.stdout
    )
    assert "route * /users/{tail:.*} -> upstream:users" in result.stdout


def test_cli_flags_win_over_env_and_env_over_file(tmp_path: Path) -> None:
    """Precedence: TOML file < SCALENODE__ env < command-line flags."""
    config = tmp_path / "node.toml"
    config.write_text('[node]\nname = "file"\nport = 8101\nhost = "127.0.0.1"\n')
    env = {"SCALENODE__NODE__NAME": "env", "SCALENODE__NODE__PORT": "8102"}
    result = run_cli(["--check-config", "--config", str(config), "--name", "flag"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok: node flag on 127.0.0.1:8102,")
