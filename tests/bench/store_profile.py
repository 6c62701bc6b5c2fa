"""Where a py-spy recording of the node (or of bare_store.py) spent its time per request:
store_bench.py --profile prints this for both, side by side.

    python store_profile.py STACKS.txt [US_PER_REQUEST]

Reads py-spy's raw (collapsed) stacks (`frame;frame;... count`, frames `function
(file:line)`, recorded with --full-filenames; idle samples left out, py-spy's default), so
shares are of the process's busy time; start-up samples (imports) are left out. C code
(asyncpg's protocol, uvloop, orjson, multidict) counts to the Python function that called
it. Prints self time by library, the top functions by self time, and the inclusive share
of the store's steps (a sample counts once per step). With US_PER_REQUEST (the process's
CPU microseconds per request, from the table) each share is also shown in microseconds.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pyspy
from pyspy import parse, short

# Self time by the innermost frame's file: the first label whose needle it contains.
LIBRARIES = [
    ("asyncpg", ("/asyncpg/",)),
    ("aiohttp", ("/aiohttp/",)),
    ("multidict/yarl", ("/multidict/", "/yarl/")),
    ("plugins/shard", ("/plugins/shard/",)),
    ("node (adapter, pipeline, wire)", ("/node/",)),
    ("bare_store.py", ("bare_store",)),
    ("asyncio", ("/asyncio/",)),
    ("contextlib", ("/contextlib.py",)),
    ("hashlib/secrets", ("/hashlib.py", "/secrets.py")),
    ("logging", ("/logging/",)),
    ("other stdlib", ("/lib/python3",)),
]
# An innermost frame in these is the loop running C (uvloop, asyncpg's Cython protocol).
ENTRY = ("/node/server.py", "/node/cli.py", "/run.py", "bare_store.py", "/asyncio/runners.py")
LOOP = "the loop's C: uvloop (epoll, sockets, timers), asyncpg's protocol, callbacks"

# Inclusive: samples with a frame of this function (py-spy's qualified name) anywhere in the
# stack, in a file containing the needle. What each step covers is in its label.
STEPS = [
    ("RequestHandler._handle_request", "/aiohttp/", "aiohttp: a request, routing to reply"),
    ("UrlDispatcher.resolve", "/aiohttp/", "  aiohttp routing"),
    ("route_endpoint.<locals>.endpoint", "/node/http.py", "  node: the route's endpoint"),
    ("StoreTarget.__call__", "/plugins/shard/", "    StoreTarget.__call__ (whole)"),
    ("bucket_of", "/plugins/shard/", "      bucket_of (blake2b)"),
    ("MemberStats.took", "/plugins/shard/", "      MemberStats.took (latency ring)"),
    ("parse_json", "/plugins/shard/", "      parse_json (loads, dumps for U+0000)"),
    ("PostgresShard.get", "/plugins/shard/", "      PostgresShard.get"),
    ("PostgresShard.put", "/plugins/shard/", "      PostgresShard.put"),
    ("PostgresShard._connection", "/plugins/shard/", "        _connection (timeout, pool)"),
    ("timeout", "/asyncio/timeouts.py", "          asyncio.timeout: make"),
    ("Timeout.__aenter__", "/asyncio/timeouts.py", "          asyncio.timeout: enter"),
    ("Timeout.__aexit__", "/asyncio/timeouts.py", "          asyncio.timeout: exit"),
    ("new_etag", "/plugins/shard/", "        new_etag"),
    ("to_response", "/node/http.py", "    node: to_response"),
    ("make_app.<locals>.get", "bare_store", "  bare: the GET handler"),
    ("make_app.<locals>.put", "bare_store", "  bare: the PUT handler"),
    ("PoolAcquireContext.__aenter__", "/asyncpg/", "  asyncpg: pool acquire"),
    ("PoolAcquireContext.__aexit__", "/asyncpg/", "  asyncpg: pool release"),
    ("Connection.reset", "/asyncpg/", "    the reset query on release (RESET ALL, ...)"),
    ("Connection.fetchrow", "/asyncpg/", "  asyncpg: fetchrow (the GET / upsert)"),
    ("Connection.fetchval", "/asyncpg/", "  asyncpg: fetchval (pg_current_wal_lsn)"),
    ("RequestHandler.finish_response", "/aiohttp/", "  sending the reply"),
]
# Under the route's handler (node: the endpoint, bare: its handler), each sample goes to the
# first of these that its stack holds below the handler, in this order; else to the
# handler's own Python (the innermost frame's function).
HANDLERS = ("route_endpoint.<locals>.endpoint", "make_app.<locals>.get", "make_app.<locals>.put")
TIMEOUT = "asyncio.timeout (make, enter, exit)"
CONTEXT = "contextlib: @asynccontextmanager"
PARTS = [
    ("Connection.reset", "asyncpg: the reset query on release"),
    ("PoolAcquireContext.__aexit__", "asyncpg: pool release (less the reset query)"),
    ("PoolAcquireContext.__aenter__", "asyncpg: pool acquire"),
    ("Connection.fetchrow", "asyncpg: fetchrow (the statement)"),
    ("Connection.fetchval", "asyncpg: fetchval (the WAL position)"),
    ("timeout", TIMEOUT),
    ("Timeout.__aenter__", TIMEOUT),
    ("Timeout.__aexit__", TIMEOUT),
    ("_AsyncGeneratorContextManager.__aenter__", CONTEXT),
    ("_AsyncGeneratorContextManager.__aexit__", CONTEXT),
    ("asynccontextmanager.<locals>.helper", CONTEXT),
    ("bucket_of", "bucket_of"),
    ("parse_json", "parse_json"),
    ("BaseRequest.read", "reading the body"),
    ("read_body", "reading the body"),
]


def library(file: str) -> str:
    return pyspy.library(file, LIBRARIES)


def summary(path: Path, us_per_request: float | None = None, top: int = 15) -> str:
    stacks, startup = parse(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"{path.name}: no samples"
    own: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    steps: Counter[int] = Counter()
    parts: Counter[str] = Counter()
    for frames, count in stacks:
        names = [fn for fn, _ in frames]
        handler = next((i for i, fn in enumerate(names) if fn in HANDLERS), None)
        if handler is not None:
            below = set(names[handler + 1 :])
            part = next((label for fn, label in PARTS if fn in below), None)
            parts[part or f"own Python: {names[-1]}"] += count
        func, file = frames[-1]
        entry_only = file.endswith(ENTRY)
        own[f"{func} ({short(file)})" if not entry_only else LOOP] += count
        libraries[library(file) if not entry_only else LOOP] += count
        for i, (name, needle, _) in enumerate(STEPS):
            if any(fn == name and needle in f for fn, f in frames):
                steps[i] += count

    def share(n: int) -> str:
        text = f"{100 * n / total:5.1f} %"
        if us_per_request:
            text += f" {us_per_request * n / total:5.1f} us"
        return text

    lines = [f"{path.name}: {total} busy samples (+{startup} of start-up, left out)"]
    lines.append("  self time by library:")
    lines += [f"    {share(n)}  {label}" for label, n in libraries.most_common()]
    lines.append("  self time, top functions:")
    lines += [f"    {share(n)}  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive, steps of a request:")
    lines += [
        f"    {share(steps[i])}  {label}" for i, (_, _, label) in enumerate(STEPS) if steps[i]
    ]
    lines.append(f"  under the route's handler ({share(sum(parts.values())).strip()}), by part:")
    lines += [f"    {share(n)}  {label}" for label, n in parts.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    per_request = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print(summary(Path(sys.argv[1]), per_request))
