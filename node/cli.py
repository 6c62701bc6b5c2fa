"""The command line of run.py (see README): flags, then settings, then a node or a supervisor."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from node.catalogue import catalogue
from node.config import Settings, load_settings, redact_url
from node.errors import ConfigError
from node.roles import ROLE_COMPONENTS, ROLES
from node.trace import install_log_context

DEFAULT_CONFIG = Path("config/local.toml")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like a config error.
        self.exit(2, f"usage error: {message} (see --help)\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="run.py", description="Start a Scalenode node.")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="components to start (default: all); a plugin's command (rebalance) takes "
        "the other arguments instead",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help=f"TOML config file (default: {DEFAULT_CONFIG})"
    )
    parser.add_argument("--host", help="listen address (default: node.host, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: node.port, else 8080)")
    parser.add_argument("--name", help="node name in X-Node and the dashboard (default: host:port)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes sharing the port through SO_REUSEPORT (default: 1)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print a summary, exit 0 (or 2)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("argument --processes: must be >= 1")
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error("argument --port: must be between 0 and 65535")
    return args


def config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return args.config
    # run.py's default is relative to the project, wherever it is started from.
    here = Path(__file__).resolve().parent.parent / DEFAULT_CONFIG
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else here


def resolve_settings(args: argparse.Namespace) -> Settings:
    overrides = {"host": args.host, "port": args.port, "name": args.name}
    settings = load_settings(config_path(args), overrides=overrides)
    name = settings.node.name or f"{socket.gethostname()}:{settings.node.port}"
    if args.child is not None:
        name = f"{name}#{args.child}"
    return load_settings(config_path(args), overrides={**overrides, "name": name})


def summary(settings: Settings, role: str) -> str:
    node = settings.node
    known = catalogue(settings.plugins.load)
    lines = [
        f"config ok: node {node.name} on {node.host}:{node.port}, role {role} "
        f"({', '.join(ROLE_COMPONENTS[role])})",
        f"backends: redis={redact_url(settings.backends.redis) or 'embedded'} "
        f"amqp={redact_url(settings.backends.amqp) or 'embedded'}",
    ]
    for name, pool in settings.upstreams.items():
        extras = []
        if pool.health is not None:
            extras.append(f"health GET {pool.health.path} every {pool.health.interval:g} s")
        if pool.retries:
            extras.append(f"retries {pool.retries} (budget {pool.retry_budget:.0%})")
        more = f"; {'; '.join(extras)}" if extras else ""
        lines.append(f"upstream {name}: {pool.balance} over {', '.join(pool.targets)}{more}")
    for route in settings.routes:
        plugins = [spec.name for spec, _ in known.ordered(route.plugin_tables)]
        lines.append(
            f"route {' '.join(route.methods) or '*'} {route.path} -> "
            f"{' -> '.join([*plugins, route.target])}"
        )
    return "\n".join(lines)


def check_host(host: str, port: int) -> None:
    """The listen address resolves (a name in node.host is looked up once, here, so a typo
    fails --check-config as it would fail the start)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(f"node.host: cannot resolve {host!r}: {reason}") from None


def plugin_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """`--role NAME` naming a plugin's command (not a node's role): (NAME, the rest)."""
    for i, arg in enumerate(argv):
        if arg == "--role" and i + 1 < len(argv):
            name, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--role="):
            name, rest = arg.partition("=")[2], argv[:i] + argv[i + 1 :]
        else:
            continue
        return (name, rest) if name not in ROLES else None
    return None


def main(argv: list[str]) -> int:
    command = plugin_command(argv)
    if command is not None:
        name, rest = command
        try:
            commands = catalogue().commands
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        if name in commands:
            return commands[name](rest)
        # else argparse names the roles and says the value is not one
    args = parse_args(argv)
    try:
        settings = resolve_settings(args)
        logging.basicConfig(
            level=settings.node.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        install_log_context()  # warnings and errors name the request's trace and id
        from node.app import build_app

        # Every route's pipeline is built whatever the role, so one config file passes or
        # fails the same way everywhere; no I/O happens here.
        build_app(settings, "all")
        check_host(settings.node.host, settings.node.port)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(summary(settings, args.role))
        return 0
    if args.processes > 1:
        from node.supervisor import can_share_port, child_command, supervise

        problem = can_share_port(settings.node.host, settings.node.port)
        if problem:
            print(
                f"error: cannot listen on {settings.node.host}:{settings.node.port}: {problem}",
                file=sys.stderr,
            )
            return 1

        stop_within = settings.node.drain_delay + settings.node.drain_timeout
        return supervise(child_command(argv), args.processes, stop_within)
    from node.server import run

    try:
        run(settings, args.role, reuse_port=args.child is not None)
    except OSError as exc:
        print(
            f"error: cannot listen on {settings.node.host}:{settings.node.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0
