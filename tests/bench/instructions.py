"""Instructions per request, counted by callgrind: the stable twin of run.py's req/s.

    .venv/bin/python tests/bench/instructions.py [--seconds 8]

This VM's speed drifts by 20 % or more within a minute, so req/s ratios measured a few
seconds apart move with it. Instruction counts do not: each server runs under
`valgrind --tool=callgrind` with counting off, is warmed up, then counted while wrk sends
requests over 4 connections; the total divided by the requests wrk completed is the cost
of one request, repeatable to about 1 %. A server's background work (the node's heartbeat
and dashboard sampler, once a second) is counted idle first and subtracted, and printed on
its own. Pairs are printed as ratios (baseline / system), comparable to run.py's req/s
ratios on a CPU-bound server.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness
import servers
import wrk
from harness import BenchError
from scenarios import NODE_ROUTES, REDIS_BACKENDS  # the same routes as run.py

# (label, server, path, baseline label)
CASES = [
    ("bare aiohttp hello", "bare-hello", "/hello", None),
    ("node handler route", "node", "/hello", "bare aiohttp hello"),
    ("bare aiohttp proxy", "bare-proxy", "/hello", None),
    ("node proxy route", "node", "/proxy/hello", "bare aiohttp proxy"),
    ("proxy route with breaker", "node", "/guarded/hello", "node proxy route"),
    ("rate limited, embedded", "node", "/limited", "node handler route"),
    ("rate limited, Redis", "node-redis", "/limited", "node handler route"),
    ("rate limited proxy, embedded", "node", "/limited-proxy/hello", "node proxy route"),
]
# The response cache (issue #4): hits against bare aiohttp, a miss against the same proxy
# route without the plugin (see run.py's CACHE_ROUTES).
CACHE_CASES = [
    ("cache L1 hit", "node", "/cached/hello", "bare aiohttp hello"),
    ("cache L2 hit (Redis)", "node-redis", "/cached-l2/hello", "bare aiohttp hello"),
    ("proxy route (Redis node)", "node-redis", "/proxy/hello", None),
    ("cache miss (Redis proxy)", "node-redis", "/cached-miss/hello", "proxy route (Redis node)"),
    # The full gateway (issue #20): Redis rate limit, cache hit and breaker on a proxied route.
    ("gateway, Redis", "node-redis", "/gateway/hello", "proxy route (Redis node)"),
]


def count(server: servers.Server, path: str, seconds: float, root: Path) -> tuple[int, int, float]:
    """(instructions, requests, idle instructions per second) of `server` under callgrind:
    first idle for `seconds`, then while wrk runs against `path` for as long.

    The idle part is the node's background work (heartbeats, the dashboard's sampler), paid
    once a second whatever the load. Under callgrind a server answers ~50x fewer requests a
    second, which would inflate that work's share per request fifty-fold; the caller
    subtracts it and reports it on its own.
    """
    out = root / f"callgrind.{server.name}.{abs(hash(path))}"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proc = harness.start(
        server.name,
        argv + server.argv,
        cpu=server.cpu,
        log_dir=root,
        cwd=server.cwd,
        env=server.env,
    )
    control = ["callgrind_control"]

    def counted(action: Callable[[], object]) -> tuple[object, float]:
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        started = time.monotonic()
        result = action()
        elapsed = time.monotonic() - started
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        return result, elapsed

    try:
        harness.wait_ready(proc, server.url(server.ready_path or "/"), timeout=120.0)
        url = server.url(path)
        wrk.run(url, duration=3.0, connections=4, threads=1, cpu=0)  # warm up, uncounted
        _, idle_seconds = counted(lambda: time.sleep(seconds))
        result, _ = counted(lambda: wrk.run(url, duration=seconds, connections=4, threads=1, cpu=0))
        time.sleep(1.0)
    finally:
        harness.stop(proc)
    parts = sorted(root.glob(out.name + ".*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    idle, busy = (dump_total(part) for part in parts[:2])
    idle_rate = idle / idle_seconds
    return busy - round(idle_rate * seconds), result.requests, idle_rate  # type: ignore[attr-defined]


def dump_total(dump: Path) -> int:
    # Each dump file ends with its part's total ("summary:" near the top is not it).
    totals = re.findall(r"^totals: (\d+)", dump.read_text(), re.MULTILINE)
    return int(totals[-1]) if totals else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="counted seconds per case")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="count the cases whose label holds this text (repeatable; labels hold commas)",
    )
    parser.add_argument(
        "--keep", default="", help="copy the callgrind dumps here (for callgrind_annotate)"
    )
    args = parser.parse_args(argv)
    parts = args.only
    cases = [c for c in CASES + CACHE_CASES if not parts or any(p in c[0] for p in parts)]
    try:
        for tool in ("valgrind", "callgrind_control", "wrk", "nginx", "taskset"):
            harness.require_tool(tool)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="scalenode-instr-"))
    origin = servers.upstream_nginx(harness.require_tool("nginx"), root, harness.free_port(), 0)
    origin_proc = harness.start(origin.name, origin.argv, cpu=0, log_dir=root, cwd=origin.cwd)
    # The Redis the Redis-backed node counts in: on the load side's core, so only the
    # node's own instructions are counted.
    redis = servers.redis(root, harness.free_port(), 0)
    redis_proc = harness.start(redis.name, redis.argv, cpu=0, log_dir=root, cwd=redis.cwd)
    per_request: dict[str, float] = {}
    try:
        harness.wait_ready(origin_proc, origin.url(origin.ready_path or "/"))
        harness.wait_port(redis_proc, redis.port)
        backends = REDIS_BACKENDS.replace("$redis_port", str(redis.port))
        port = harness.free_port()
        systems = {
            "bare-hello": servers.bare_hello(harness.free_port(), 1),
            "bare-proxy": servers.bare_proxy(harness.free_port(), 1, origin.port),
            "node": servers.node(root, harness.free_port(), 1, origin.port, NODE_ROUTES),
            "node-redis": servers.node(
                root, port, 1, origin.port, NODE_ROUTES, name="node-redis", backends=backends
            ),
        }
        for label, name, path, _ in cases:
            instructions, requests, idle_rate = count(systems[name], path, args.seconds, root)
            per_request[label] = instructions / max(requests, 1)
            print(
                f"bench: {label}: {requests} requests, {per_request[label]:,.0f} instr/request"
                f" (background work, subtracted: {idle_rate:,.0f} instr/s)",
                file=sys.stderr,
            )
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        harness.stop(redis_proc)
        harness.stop(origin_proc)
        if args.keep:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    print("| system | instructions / request | ratio |\n|---|--:|---|")
    for label, _, _, baseline in cases:
        known = baseline in per_request
        ratio = f"{per_request[baseline] / per_request[label]:.2f}x {baseline}" if known else "—"
        print(f"| {label} | {per_request[label]:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
