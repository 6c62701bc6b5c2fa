"""Soak: the node at ~70 % of its measured capacity for a long run, a new rate-limit key and
cache key on every request, its memory and file descriptors sampled as it goes.

    .venv/bin/python tests/bench/soak.py [--seconds 600] [--load 0.7] [--keys 1000000]

Starts an origin nginx (pinned with wrk to the load CPU) and the node (alone on the other
CPU) with one proxied route behind the rate limit and the cache (embedded, or on a private
Redis with --redis). Measures the route's capacity with wrk, then runs wrk for --seconds at
--load of it (its Lua delay() paces each connection), reading the node's /proc/<pid>/status
and /proc/<pid>/fd and the cache's L1 size (/metrics) every --every seconds. Prints the
samples, the growth after the warm-up, and the documented bounds beside what was seen;
exits 1 if the node died, a request failed or a documented bound was passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import cpu
import harness
import servers
import wrk
from harness import BenchError, Process

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
UPSTREAM_BODY = servers.UPSTREAM_BODY.decode()
L1_MAX_ENTRIES = 10_000  # docs/plugins/cache.md: l1_max_entries' default, per route

# Every path answers 200 (nginx's `return`), so every soak request is a new cacheable key.
ORIGIN_LOCATIONS = f"""\
        default_type application/json;
        location = /nginx_status {{ stub_status; }}
        location / {{ return 200 '{UPSTREAM_BODY}'; }}
"""

SOAK_ROUTES = """\
[[routes]]
path = "/soak/{tail:.*}"
target = "upstream:origin"
strip_prefix = "/soak"
ratelimit = { limit = 1000000000, window = 60, key = "header:X-Client" }
cache = { ttl = 30 }

[[routes]]
path = "/hello"
methods = ["GET"]
target = "handler:node.demo:hello"
"""

# Each wrk thread numbers its requests; key n (modulo --keys) is both the path (the cache
# key) and X-Client (the rate-limit key), prefixed by the run and the thread so that no run
# meets the keys of another. delay() paces every connection (milliseconds).
LUA = """\
local keys, pause, run = {keys}, {delay_ms}, "{run}"
local made, counter, prefix = 0, 0, ""

function setup(thread)
  thread:set("id", made)
  made = made + 1
end

function init(args)
  prefix = run .. "-t" .. (id or 0) .. "-"
end

function request()
  counter = counter + 1
  local key = prefix .. (counter % keys)
  return wrk.format("GET", "/soak/" .. key, {{["X-Client"] = key}})
end
{delay}
"""
DELAY_FUNCTION = """
function delay()
  return pause
end
"""


@dataclass
class Sample:
    t: float  # seconds since the paced run began
    rss_kib: int
    hwm_kib: int  # peak RSS so far
    fds: int
    threads: int
    l1_entries: int
    served: int  # soak requests the node has answered so far
    cpu_s: float  # the node's CPU seconds so far


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the paced run")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct keys per thread")
    parser.add_argument("--connections", type=int, default=128, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--calibrate", type=float, default=8.0, help="seconds of capacity run")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="growth counts from here")
    parser.add_argument("--redis", action="store_true", help="rate limit and L2 on Redis")
    parser.add_argument("--load-cpu", type=int, default=0, help="CPU of wrk and the origin")
    parser.add_argument("--sut-cpu", type=int, default=1, help="CPU of the node")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if not 0 < args.load <= 1 or args.seconds < 10 or args.every <= 0:
        parser.error("need 0 < --load <= 1, --seconds >= 10 and --every > 0")
    args.warmup = min(args.warmup, args.seconds / 5)
    return args


def write_script(directory: Path, keys: int, delay_ms: int | None) -> Path:
    path = directory / ("soak.lua" if delay_ms else "capacity.lua")
    delay = DELAY_FUNCTION if delay_ms else ""
    run = "soak" if delay_ms else "capacity"
    path.write_text(LUA.format(keys=keys, delay_ms=delay_ms or 0, delay=delay, run=run))
    return path


def pace(capacity: float, load: float, connections: int) -> int:
    """wrk's per-connection delay (whole milliseconds) for `load` x `capacity` req/s: each
    connection then sends about one request per delay (the reply time is small beside it)."""
    return max(1, round(connections * 1000 / (capacity * load)))


def status_fields(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            fields[name] = int(value.split()[0])
    return fields


def soak_metrics(node: servers.Server) -> tuple[int, int]:
    """The soak route's cache L1 size and answered requests, from the node's /metrics."""
    entries = served = 0
    for line in harness.fetch(node.url("/metrics")).body.decode().splitlines():
        if "/soak/" not in line:
            continue
        value = int(float(line.rsplit(" ", 1)[1]))
        if line.startswith("scalenode_cache_l1_entries{"):
            entries = value
        elif line.startswith("scalenode_requests_total{"):
            served += value
    return entries, served


def sample(proc: Process, node: servers.Server, started: float) -> Sample:
    fields = status_fields(proc.pid)
    entries, served = soak_metrics(node)
    return Sample(
        t=round(time.monotonic() - started, 1),
        rss_kib=fields["VmRSS"],
        hwm_kib=fields["VmHWM"],
        fds=len(os.listdir(f"/proc/{proc.pid}/fd")),
        threads=fields["Threads"],
        l1_entries=entries,
        served=served,
        cpu_s=round(cpu.process_seconds(proc.pid), 2),
    )


def paced_run(
    args: argparse.Namespace, url: str, script: Path, proc: Process, node: servers.Server
) -> tuple[wrk.WrkResult, list[Sample]]:
    """wrk for --seconds in the background, the node sampled every --every seconds (the
    CPU meter, started by the caller, also counts wrk once it is waited for)."""
    argv = [harness.require_tool("taskset"), "-c", str(args.load_cpu)]
    argv += [harness.require_tool("wrk"), f"-t{args.threads}", f"-c{args.connections}"]
    argv += [f"-d{round(args.seconds)}s", "--timeout=5s", "--latency", "-s", str(script), url]
    samples: list[Sample] = []
    started = time.monotonic()
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        samples.append(sample(proc, node, started))
        while load.poll() is None:
            harness.check_alive(proc)
            time.sleep(max(0.0, args.every - (time.monotonic() - started) % args.every))
            if load.poll() is None:
                samples.append(sample(proc, node, started))
        out, err = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if load.returncode != 0:
        raise BenchError(f"wrk exited with {load.returncode}:\n{err}{out}")
    samples.append(sample(proc, node, started))
    return wrk.parse(out, url), samples


def slope_mib_per_min(samples: list[Sample]) -> float:
    """Least-squares RSS trend over `samples`, in MiB a minute."""
    if len(samples) < 2:
        return 0.0
    ts = [s.t for s in samples]
    rss = [s.rss_kib / 1024 for s in samples]
    mean_t, mean_r = sum(ts) / len(ts), sum(rss) / len(rss)
    var = sum((t - mean_t) ** 2 for t in ts)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in zip(ts, rss, strict=True))
    return 60 * cov / var if var else 0.0


def summarise(samples: list[Sample], warmup: float) -> dict[str, float]:
    warm = next((s for s in samples if s.t >= warmup), samples[0])
    end = samples[-1]
    second_half = [s for s in samples if s.t >= end.t / 2]
    return {
        "rss_start_mib": round(samples[0].rss_kib / 1024, 1),
        "rss_after_warmup_mib": round(warm.rss_kib / 1024, 1),
        "rss_end_mib": round(end.rss_kib / 1024, 1),
        "rss_peak_mib": round(max(s.hwm_kib for s in samples) / 1024, 1),
        "growth_after_warmup_mib": round((end.rss_kib - warm.rss_kib) / 1024, 1),
        "growth_after_warmup_percent": round(100 * (end.rss_kib - warm.rss_kib) / warm.rss_kib, 1),
        "slope_second_half_mib_per_min": round(slope_mib_per_min(second_half), 2),
        "fds_start": samples[0].fds,
        "fds_max": max(s.fds for s in samples),
        "fds_end": end.fds,
        "threads_max": max(s.threads for s in samples),
        "l1_entries_max": max(s.l1_entries for s in samples),
    }


def on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every server


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        tools = {name: harness.require_tool(name) for name in ("wrk", "nginx", "taskset")}
        harness.require_cpus(args.load_cpu, args.sut_cpu)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="scalenode-soak-"))
    logs = root / "logs"
    logs.mkdir()
    started: list[Process] = []
    try:
        origin = servers.nginx(
            "origin", tools["nginx"], root, harness.free_port(), args.load_cpu, "", ORIGIN_LOCATIONS
        )
        backends = ""
        if args.redis:
            redis = servers.redis(root, harness.free_port(), args.load_cpu)
            started.append(harness.start(redis.name, redis.argv, cpu=redis.cpu, log_dir=logs))
            harness.wait_port(started[-1], redis.port)
            backends = f'[backends]\nredis = "redis://127.0.0.1:{redis.port}/0"\n'
        started.append(harness.start(origin.name, origin.argv, cpu=origin.cpu, log_dir=logs))
        harness.wait_port(started[-1], origin.port)
        node = servers.node(
            root, harness.free_port(), args.sut_cpu, origin.port, SOAK_ROUTES, backends=backends
        )
        proc = harness.start(
            node.name, node.argv, cpu=node.cpu, log_dir=logs, cwd=node.cwd, env=node.env
        )
        started.append(proc)
        harness.wait_ready(proc, node.url("/health"))
        url = node.url("/")
        print(f"soak: capacity run, {args.calibrate:g} s ...", file=sys.stderr)
        meter = cpu.Meter({made.name: made.pid for made in started})
        meter.start()
        capacity = wrk.run(
            url,
            duration=args.calibrate,
            connections=args.connections,
            threads=args.threads,
            cpu=args.load_cpu,
            script=write_script(root, args.keys, None),
        )
        capacity_cpu = meter.stop()
        delay_ms = pace(capacity.requests_per_sec, args.load, args.connections)
        target = args.connections * 1000 / delay_ms
        print(
            f"soak: capacity {capacity.requests_per_sec:,.0f} req/s; {args.seconds:g} s at"
            f" ~{target:,.0f} req/s ({delay_ms} ms between a connection's requests) ...",
            file=sys.stderr,
        )
        script = write_script(root, args.keys, delay_ms)
        meter.start()
        result, samples = paced_run(args, url, script, proc, node)
        paced_cpu = meter.stop()
        harness.check_alive(proc)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        problems = []
        for made in reversed(started):
            harness.stop(made)
            problems += harness.log_problems(made)
        shutil.rmtree(root, ignore_errors=True)
    summary = summarise(samples, args.warmup)
    summary["foreign_cpu_percent_capacity_run"] = capacity_cpu.foreign_percent
    summary["foreign_cpu_percent_paced_run"] = paced_cpu.foreign_percent
    summary["node_cpu_percent_paced_run"] = round(
        100 * paced_cpu.process_s["node"] / paced_cpu.elapsed_s, 1
    )
    report(args, capacity, target, result, samples, summary, problems)
    bounds_kept = summary["l1_entries_max"] <= L1_MAX_ENTRIES
    return 0 if result.errors == 0 and bounds_kept and not problems else 1


def report(args, capacity, target, result, samples, summary, problems) -> None:
    load = result.requests_per_sec / capacity.requests_per_sec
    print(
        f"\ncapacity {capacity.requests_per_sec:,.0f} req/s; paced {result.requests_per_sec:,.0f}"
        f" req/s ({load:.0%} of it, target {target:,.0f}) for {result.duration_s:.0f} s:"
        f" {result.requests:,} requests, {result.errors} failed, p50 {result.p50_ms:.2f} ms,"
        f" p99 {result.p99_ms:.2f} ms; the node used {summary['node_cpu_percent_paced_run']} %"
        " of a core. Other processes' load on this machine (in % of one core): "
        f"{summary['foreign_cpu_percent_capacity_run']} during the capacity run,"
        f" {summary['foreign_cpu_percent_paced_run']} during the paced one\n"
    )
    print("| t (s) | req/s | RSS (MiB) | peak (MiB) | fds | threads | L1 entries | CPU (s) |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    step = max(1, len(samples) // 20)  # about 20 rows, the last always shown
    shown = [*samples[:-1:step], samples[-1]]
    for before, s in zip([shown[0], *shown], shown, strict=False):
        rate = (s.served - before.served) / (s.t - before.t) if s.t > before.t else 0.0
        print(
            f"| {s.t:.0f} | {rate:,.0f} | {s.rss_kib / 1024:.1f} | {s.hwm_kib / 1024:.1f} |"
            f" {s.fds} | {s.threads} | {s.l1_entries:,} | {s.cpu_s:.1f} |"
        )
    print(
        f"\nRSS {summary['rss_start_mib']} MiB at start, {summary['rss_after_warmup_mib']} after"
        f" the {args.warmup:g} s warm-up, {summary['rss_end_mib']} at the end"
        f" ({summary['growth_after_warmup_mib']:+} MiB, {summary['growth_after_warmup_percent']:+}"
        f" %); trend over the second half {summary['slope_second_half_mib_per_min']:+} MiB/min"
    )
    print(
        f"fds {summary['fds_start']} at start, {summary['fds_max']} at most, {summary['fds_end']}"
        f" at the end (wrk holds {args.connections} connections)"
    )
    print(
        f"cache L1 entries at most {summary['l1_entries_max']:,} (documented bound"
        f" l1_max_entries = {L1_MAX_ENTRIES:,}); embedded stores: L2 at most 100,000 values"
        " (docs/plugins/cache.md), rate-limit counters at most 100,000 keys"
        " (plugins/ratelimit/stores.py MEMORY_MAX_KEYS)"
    )
    for line in problems:
        print(f"soak: warning: {line}", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "capacity": capacity.as_dict(),
        "paced": result.as_dict(),
        "summary": summary,
        "samples": [asdict(s) for s in samples],
        "log_problems": problems,
    }
    args.output.write_text(json.dumps(data, indent=2))
    print(f"\nresults: {args.output}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
