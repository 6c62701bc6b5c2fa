"""The node's document store (`store:users` on PostgreSQL) against a bare aiohttp + asyncpg
app running the same queries, side by side in one run.

    /tmp/v12/bin/python tests/bench/store_bench.py [--duration 8] [--rounds 3]

Creates a fresh database (dropped at the end) on the PostgreSQL at --admin-dsn, starts a
gateway node (`run.py --role gateway`, one process, CPU 1) whose config has one shard set of
one PostgreSQL member (primary only, pool = { min = 10, max = 10 }) behind `/users/{key}`,
preloads --docs small JSON documents through it (PUT), then starts bare_store.py (aiohttp +
uvloop + an asyncpg pool of the same size, the node's own GET and upsert statements, CPU 1).

Each round measures, for GET and then PUT, both systems one after the other with wrk (CPU 0,
64 connections, a Lua script cycling over every key; PUT replaces the document with a small
JSON body, unconditionally); the order of the systems rotates from round to round. Each run
is a warm-up, a VACUUM of the table (the machine's autovacuum may be off), a wait for a quiet
machine, and the measured run. The table gives each figure's median over the rounds; the
ratios node/bare are of the median req/s (target >= 0.9), with the per-round ratios and
the CPU each spends per request (bare/node: the steadiest figure on a busy machine) after.
Quiet waits and retries of runs disturbed by other load only spend what --budget (170 s)
leaves; the defaults take about 3 minutes.

The backends serving each system's pool are pinned to the load CPU (--pg-cpu; -1 leaves them
alone), as run.py pins its Redis: CPU 1 then measures the system, not PostgreSQL. Their CPU
time is reported per request ("PG us/req"), next to the system's own ("SUT us/req").
Every process is started pinned and stopped by the pid it was started with.

--profile DIR: after the rounds, one more GET and PUT run of each system under py-spy
(python -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy), the stacks into DIR and
their summaries printed (store_profile.py: microseconds per request by library and step).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import aiohttp
import cpu
import harness
import orjson
import pyspy
import servers
import store_pg
import store_profile
import store_wrk
import wrk
from harness import BenchError, Process
from multidict import CIMultiDict
from report import FOREIGN_LIMIT
from servers import Server
from store_report import LABELS, METHODS, PREFIX, SYSTEMS, Run, notes, ratio_lines, table

from plugins.shard import table_of

SET = "users"
TABLE = table_of(SET)

NODE_TOML = """\
[node]
host = "127.0.0.1"
port = {port}
name = "bench"
access_log = false
drain_timeout = 1.0
log_level = "info"

[shards.{set}]
members = [{{ name = "s0", dsn = "{dsn}" }}]
pool = {{ min = {pool}, max = {pool} }}

[[routes]]
path = "{prefix}/{{key}}"
methods = ["GET", "PUT", "PATCH", "DELETE"]
target = "store:{set}"
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (system order rotates)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--docs", type=int, default=10_000, help="documents preloaded")
    parser.add_argument("--pool", type=int, default=10, help="PostgreSQL connections per system")
    parser.add_argument("--load-cpu", type=int, default=0, help="CPU of wrk (and PostgreSQL)")
    parser.add_argument("--sut-cpu", type=int, default=1, help="CPU of the systems under test")
    parser.add_argument(
        "--pg-cpu",
        type=int,
        default=None,
        help="pin the systems' backends to this CPU (default: the load CPU; -1: leave them)",
    )
    parser.add_argument(
        "--admin-dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL to create (and drop) the benchmark's database on",
    )
    parser.add_argument(
        "--bare-plan-cache-mode",
        default="",
        help="plan_cache_mode of the bare app's sessions (the node uses force_custom_plan)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each measured run, wait up to this many seconds for other load to stop",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-measure a run this many times while others load the machine (keeps the best)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=170.0,
        help="seconds the whole run aims at: quiet waits and retries only spend what is left",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the rounds, one more GET and PUT run of each system under py-spy (from the"
        " load CPU); stacks into this directory, summaries printed (rates there are slowed)",
    )
    parser.add_argument("--py-spy", default="", help="the py-spy binary (default: PATH, venv)")
    parser.add_argument(
        "--project",
        type=Path,
        default=servers.PROJECT_DIR,
        help="the checkout whose run.py is benchmarked (default: this one)",
    )
    args = parser.parse_args(argv)
    if not (args.project / "run.py").is_file():
        parser.error(f"--project: no run.py in {args.project}")
    if args.connections < args.threads or args.duration < 1 or args.rounds < 1:
        parser.error("need --connections >= --threads, --duration >= 1 and --rounds >= 1")
    if args.docs < 1 or args.pool < 1:
        parser.error("need --docs >= 1 and --pool >= 1")
    if args.pg_cpu is None:
        args.pg_cpu = args.load_cpu
    return args


# ----- the two systems -----------------------------------------------------------------------


def node_server(args: argparse.Namespace, root: Path, dsn: str) -> Server:
    directory = root / "node"
    directory.mkdir()
    port = harness.free_port()
    config = directory / "store.toml"
    config.write_text(NODE_TOML.format(port=port, set=SET, dsn=dsn, pool=args.pool, prefix=PREFIX))
    argv = [sys.executable, str(args.project.resolve() / "run.py"), "--config", str(config)]
    argv += ["--port", str(port), "--name", "bench", "--role", "gateway", "--processes", "1"]
    return Server(
        "node",
        argv,
        args.sut_cpu,
        port,
        "/health",
        args.project.resolve(),
        servers.clean_env(),
        {"config": str(config)},
    )


def bare_server(args: argparse.Namespace, dsn: str) -> Server:
    port = harness.free_port()
    argv = [sys.executable, str(servers.BENCH_DIR / "bare_store.py"), str(port), dsn]
    argv += ["--pool", str(args.pool), "--table", TABLE, "--buckets", "1024"]
    if args.bare_plan_cache_mode:
        argv += ["--plan-cache-mode", args.bare_plan_cache_mode]
    ready = f"{PREFIX}/{store_wrk.key(0)}"  # a preloaded document
    return Server("bare", argv, args.sut_cpu, port, ready, servers.BENCH_DIR, servers.clean_env())


def preload_body(n: int) -> bytes:
    return orjson.dumps({"name": f"user {store_wrk.key(n)}", "n": n, "active": True, "tags": []})


async def preload(base: str, count: int, concurrency: int = 32) -> dict[int, int]:
    """PUT `count` documents through the node; the statuses it answered, counted."""
    statuses: dict[int, int] = {}
    todo = iter(range(count))
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in todo:
            url = f"{base}{PREFIX}/{store_wrk.key(n)}"
            async with session.put(url, data=preload_body(n), headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


async def request(
    method: str, url: str, body: bytes | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        async with session.request(method, url, data=body, headers=headers) as resp:
            return resp.status, resp.headers.copy(), await resp.read()


def check_same(node: Server, bare: Server, docs: int) -> None:
    """Both answer the same document and ETag for a key, and see each other's writes."""
    n = 4242 % docs
    key = store_wrk.key(n)
    got = {s.name: asyncio.run(request("GET", s.url(f"{PREFIX}/{key}"))) for s in (node, bare)}
    (ns, nh, nb), (bs, bh, bb) = got["node"], got["bare"]
    if ns != 200 or bs != 200 or orjson.loads(nb) != orjson.loads(bb) or nh["ETag"] != bh["ETag"]:
        raise BenchError(f"GET {key}: node {ns} {nh.get('ETag')} {nb!r}, bare {bs} {bb!r}")
    for writer, reader in ((node, bare), (bare, node)):
        body = orjson.dumps({"name": f"check by {writer.name}", "n": n})
        status, headers, _ = asyncio.run(request("PUT", writer.url(f"{PREFIX}/{key}"), body))
        seen_status, seen, text = asyncio.run(request("GET", reader.url(f"{PREFIX}/{key}")))
        if status != 200 or seen_status != 200 or seen.get("ETag") != headers.get("ETag"):
            raise BenchError(f"PUT {key} on {writer.name} ({status}) not seen by {reader.name}")
        if orjson.loads(text) != orjson.loads(body):
            raise BenchError(f"{reader.name} answered {text!r} after {writer.name} wrote {body!r}")


# ----- measuring -----------------------------------------------------------------------------


def measure(
    args: argparse.Namespace,
    server: Server,
    proc: Process,
    method: str,
    script: Path,
    dsn: str,
    database: str,
    number: int,
    quiet_wait: float,
    spy: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> Run:
    url = f"http://127.0.0.1:{server.port}"
    load = {"connections": args.connections, "threads": args.threads, "cpu": args.load_cpu}
    if args.warmup > 0:
        wrk.run(url, script=script, duration=args.warmup, **load)
    harness.check_alive(proc)
    store_pg.vacuum(dsn, TABLE)
    backends = store_pg.backends_of(dsn, database, proc.pid)
    if args.pg_cpu >= 0:
        store_pg.pin(backends, args.pg_cpu)
    if quiet_wait > 0:
        cpu.wait_quiet(timeout=quiet_wait)
    pids = {"sut": proc.pid} | {f"pg{i}": pid for i, pid in enumerate(backends)}
    with spy():
        meter = cpu.Meter(pids)
        meter.start()
        result = wrk.run(url, script=script, duration=args.duration, **load)
        usage = meter.stop()
    harness.check_alive(proc)
    requests = max(result.requests, 1)
    pg_s = sum(v for k, v in usage.process_s.items() if k.startswith("pg"))
    return Run(
        server.name,
        method,
        number,
        result.requests_per_sec,
        result.p50_ms,
        result.p99_ms,
        result.errors,
        usage.process_s["sut"] / requests * 1e6,
        pg_s / requests * 1e6,
        usage.busy_percent.get(args.load_cpu, 0.0),
        usage.busy_percent.get(args.sut_cpu, 0.0),
        usage.foreign_percent,
        len(backends),
    )


def profile(
    args: argparse.Namespace,
    running: dict[str, tuple[Server, Process]],
    scripts: dict[str, Path],
    dsn: str,
    database: str,
    logs: Path,
) -> list[str]:
    """One more run of each system and method under py-spy; the summaries."""
    binary = pyspy.find(args.py_spy)
    args.profile.mkdir(parents=True, exist_ok=True)
    out = []
    for method in METHODS:
        for system in SYSTEMS:
            server, proc = running[system]
            stacks = args.profile / f"{system}-{method.lower()}.txt"
            print(f"bench: profiling {LABELS[system]} {method} ...", file=sys.stderr)
            run = measure(
                args,
                server,
                proc,
                method,
                scripts[method],
                dsn,
                database,
                -1,
                0.0,
                lambda: pyspy.recording(binary, proc.pid, stacks, args.load_cpu, logs),  # noqa: B023
            )
            out.append(
                f"{LABELS[system]} {method}, sampled: {run.rps:,.0f} req/s, "
                f"{run.sut_us:.0f} us of CPU per request"
            )
            out.append(store_profile.summary(stacks, run.sut_us))
    return out


def on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every server


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for tool in ("wrk", "taskset"):
            harness.require_tool(tool)
        harness.require_cpus(args.load_cpu, args.sut_cpu)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="scalenode-store-bench-"))
    logs = root / "logs"
    logs.mkdir()
    running: dict[str, tuple[Server, Process]] = {}
    problems: list[str] = []
    database = ""
    runs: list[Run] = []
    profiles: list[str] = []
    try:
        database = store_pg.create_database(args.admin_dsn)
        dsn = store_pg.with_database(args.admin_dsn, database)
        pg = store_pg.settings(dsn, ("synchronous_commit", "fsync", "autovacuum", "server_version"))

        def launch(server: Server) -> Process:
            proc = harness.start(
                server.name,
                server.argv,
                cpu=server.cpu,
                log_dir=logs,
                cwd=server.cwd,
                env=server.env,
            )
            running[server.name] = (server, proc)
            harness.wait_ready(proc, server.url(server.ready_path or "/"))
            return proc

        node = node_server(args, root, dsn)
        launch(node)
        print(f"bench: preloading {args.docs} documents through the node ...", file=sys.stderr)
        t0 = time.monotonic()
        statuses = asyncio.run(preload(node.url(""), args.docs))
        if statuses != {201: args.docs}:
            raise BenchError(f"preload answered {statuses}, expected {{201: {args.docs}}}")
        print(f"bench: preloaded in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        bare = bare_server(args, dsn)
        launch(bare)
        check_same(node, bare, args.docs)
        scripts = {
            m: store_wrk.write_script(root, m, args.docs, args.threads, PREFIX) for m in METHODS
        }
        # Seconds a run takes without waiting, and what the budget leaves for waits and retries.
        planned = args.warmup + args.duration + 1.0
        left = args.rounds * len(METHODS) * len(SYSTEMS)

        def slack() -> float:
            return args.budget - (time.monotonic() - started) - left * planned

        for number in range(args.rounds):
            order = SYSTEMS[number % 2 :] + SYSTEMS[: number % 2]
            for method in METHODS:
                for system in order:
                    server, proc = running[system]
                    print(
                        f"bench: round {number + 1}/{args.rounds}: {LABELS[system]} {method} ...",
                        file=sys.stderr,
                    )
                    best = None
                    for attempt in range(1 + args.retries):
                        wait = min(args.quiet_wait, max(0.0, slack() / left))
                        run = measure(
                            args, server, proc, method, scripts[method], dsn, database, number, wait
                        )
                        if best is None or run.foreign < best.foreign:
                            best = run
                        if run.foreign < FOREIGN_LIMIT:
                            break
                        if attempt == args.retries or slack() < planned:
                            print(
                                f"bench: {run.foreign:.0f} % foreign load (kept: no retry left)",
                                file=sys.stderr,
                            )
                            break
                        print(f"bench: {run.foreign:.0f} % foreign load, again", file=sys.stderr)
                    assert best is not None
                    runs.append(best)
                    left -= 1
        if args.profile is not None:
            profiles = profile(args, running, scripts, dsn, database, logs)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        for _, proc in reversed(running.values()):
            harness.stop(proc)
            problems += harness.log_problems(proc)
        if database:
            try:
                store_pg.drop_database(args.admin_dsn, database)
            except BenchError as exc:
                print(f"bench: warning: could not drop {database}: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        for line in problems:
            print(f"bench: warning: {line}", file=sys.stderr)
    lines, _ = ratio_lines(runs)
    pinned = f"pinned to CPU {args.pg_cpu}" if args.pg_cpu >= 0 else "unpinned"
    print(
        f"\n{args.rounds} rounds x {args.duration:g} s per run (medians), {args.connections} "
        f"connections, wrk -t{args.threads}, {args.docs} keys, pool {args.pool} per system"
    )
    print(
        f"wrk on CPU {args.load_cpu}, systems under test on CPU {args.sut_cpu}, their PostgreSQL "
        f"backends {pinned}; PostgreSQL {pg.get('server_version')}, synchronous_commit="
        f"{pg.get('synchronous_commit')}, fsync={pg.get('fsync')}\n"
    )
    print(table(runs, args))
    print("\n" + "\n".join(lines))
    print("\nper run (req/s, p99):")
    for method in METHODS:
        for system in SYSTEMS:
            mine = sorted(
                (r for r in runs if r.system == system and r.method == method),
                key=lambda r: r.round,
            )
            cells = "  ".join(f"{r.rps:,.0f} / {r.p99_ms:.1f} ms" for r in mine)
            print(f"  {method} {system:<4}  {cells}")
    found = notes(runs, args)
    if found:
        print("\nnotes:\n" + "\n".join(f"- {note}" for note in found))
    if profiles:
        print(f"\nprofiles (py-spy, {args.profile}); sampled runs are slower:\n")
        print("\n\n".join(profiles))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
