"""The queue plugin against a bare aio-pika publisher and Celery, side by side in one run.

    .venv/bin/python tests/bench/queue_bench.py [--jobs 5000] [--concurrency 64] [--rounds 5]
                                                [--only enqueue|drain] [--profile DIR]

Each phase runs --rounds interleaved rounds (node, bare, node, bare, ...; node worker,
Celery, node worker, Celery, ...), so that a neighbour's load hits both sides alike: the
report gives every round's row and ratio, then each system's median and the median of the
per-round ratios (the figure to hold against the targets).

Enqueue: a gateway node (CPU 1) with one queued route, `POST /work`, whose target is a
no-op handler (queue_noop.py), driven by an aiohttp client (CPU 0, C keep-alive workers)
posting N jobs; each 202 means Redis has the job's record and RabbitMQ confirmed its
message. Against it, a bare aio-pika publisher (CPU 1) sending N persistent messages to a
durable quorum queue declared like the node's, C tasks each awaiting its own confirm.

Drain: each round, the node's queue emptied and pre-filled with N jobs through the gateway,
the gateway stopped, then ONE `run.py --role worker` (CPU 1) runs
them; the rate is jobs / (last job finished - first job started), from the jobs' own
records in Redis (the harness polls one key, then the stragglers, so it stays cheap).
Against it, Celery on the same RabbitMQ (a Celery venv under /tmp, created on first use:
never the project's): a no-op task, task_acks_late, worker_prefetch_multiplier=100, solo
pool, no result backend, the same number of tasks pre-filled, timed the same way (the task
notes its first start and last finish; see queue_celery.py).

Redis is a private redis-server (CPU 0, as run.py's); RabbitMQ is the machine's (--amqp),
unpinned: its CPU time per job is reported. Every queue made here has a unique name and is
deleted at the end; every process is stopped by the pid it was started with.

--profile DIR attaches py-spy (from CPU 0) to the gateway during the measured enqueue and to
the worker during the drain, writes their collapsed stacks to DIR and prints where the time
goes (queue_profile.py); a sampled process is slower, so read rates from a run without it.
The notes count Redis commands per job (INFO commandstats, less the harness's own polls).
--project DIR benchmarks another checkout's run.py (a change, side by side with this one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import cpu
import harness
import orjson
import pyspy
import queue_amqp
import queue_profile
import redis
import servers
import wrk
from harness import BenchError, Process
from queue_report import Row, medians_table, ratio_lines, table
from queue_tools import (
    CELERY_VENV,
    Trace,
    beam_pids,
    broker_seconds,
    ensure_celery,
    run_client,
)

from plugins.queue.jobs import FINISHED, SUCCEEDED
from plugins.queue.keys import JOB
from plugins.queue.memory import delay_ms
from plugins.queue.rabbit import dead_name, delay_name, main_name
from plugins.queue.settings import QueueSettings

BENCH_DIR = servers.BENCH_DIR
# Seconds a worker is given, once its last job is done, for the acks still on their way
# (each acks after the job: stopped at once, the last few would go back to the queue).
ACK_GRACE = 0.5

ROUTES = """\
[[routes]]
path = "/work"
methods = ["POST"]
target = "handler:tests.bench.queue_noop:noop"
queue = { name = "$queue" }
"""

BACKENDS = """\
[backends]
redis = "redis://127.0.0.1:$redis_port/0"
amqp = "$amqp"
"""


# queue_bench's enqueue under wrk: the POST queue_load.py's aiohttp client sends.
ENQUEUE_LUA = """
wrk.method = "POST"
wrk.body = '{"bench":true}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "*/*"
wrk.headers["Accept-Encoding"] = "gzip, deflate"
wrk.headers["User-Agent"] = "Python/3.11 aiohttp/3.14.5"
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 20,000: a drain round of 5,000 lasted about a second, too short for a steady rate
    # (per-round ratios 1.08x to 1.82x; with 20,000: 1.34x to 1.35x).
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per system (N)")
    parser.add_argument("--concurrency", type=int, default=64, help="enqueuers in flight (C)")
    parser.add_argument("--only", choices=("enqueue", "drain"), help="one of the two phases")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of each phase (medians)"
    )
    parser.add_argument("--warmup", type=int, default=500, help="enqueues before measuring")
    parser.add_argument(
        "--client",
        choices=("wrk", "aiohttp"),
        default="wrk",
        help="the enqueue's HTTP load generator: wrk (C, ~10 us a request, as every other "
        "HTTP bench here) or queue_load.py's aiohttp client (~95 us a request, on the load "
        "CPU, which then limits the node before the node's own CPU does)",
    )
    parser.add_argument(
        "--enqueue-seconds",
        type=float,
        default=5.0,
        help="wrk's run for the enqueue (--client wrk)",
    )
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--load-cpu", type=int, default=0, help="CPU of the client and Redis")
    parser.add_argument("--sut-cpu", type=int, default=1, help="CPU of the systems under test")
    parser.add_argument(
        "--body-size",
        type=int,
        default=0,
        help="bytes per bare message (default: the size of the node's own job messages)",
    )
    parser.add_argument(
        "--celery-python",
        type=Path,
        default=CELERY_VENV / "bin" / "python",
        help=f"a python with celery installed (default: {CELERY_VENV}, created if missing)",
    )
    parser.add_argument(
        "--celery-queue-type",
        choices=("quorum", "classic"),
        default="quorum",
        help="Celery's queue: quorum as the node's (default) or classic (Celery's default)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each measured run, wait up to this many seconds for other load to stop",
    )
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds per drain")
    parser.add_argument("--profile", type=Path, help="py-spy the node's side; stacks into DIR")
    parser.add_argument("--py-spy", default="", help="the py-spy binary (default: PATH, venv)")
    parser.add_argument(
        "--project",
        type=Path,
        default=servers.PROJECT_DIR,
        help="the checkout whose run.py is benchmarked, to compare a change (default: this one)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the run's directory (configs, logs)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("need --jobs >= 1, --concurrency >= 1, --warmup >= 0, --rounds >= 1")
    if not (args.project / "run.py").is_file():
        parser.error(f"--project: no run.py in {args.project}")
    if not (args.project / "tests" / "bench" / "queue_noop.py").is_file():
        parser.error(f"--project: no tests/bench/queue_noop.py in {args.project}")
    return args


# ----- the run -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.queue = f"qbench-{tag}"  # the node's: sn.q.qbench-...
        self.bare_queue = f"qbench-bare-{tag}"
        self.celery_queue = f"qbench-celery-{tag}"
        self.running: list[Process] = []
        self.rows: list[Row] = []
        self.ids_file = root / "job-ids.txt"
        self.env = servers.clean_env()
        self.spies: list[tuple[Path, str]] = []  # stacks, and the row they profile
        self.py_spy = pyspy.find(args.py_spy) if args.profile else ""
        self.problems: list[str] = []
        self.redis_port = 0
        self.redis_proc: Process | None = None
        self.gateway_proc: Process | None = None
        self.gateway: servers.Server | None = None

    # -- queues made by this run (the node's declares these from its default settings)
    def queues(self) -> list[str]:
        names = [main_name(self.queue), dead_name(self.queue)]
        names += [delay_name(self.queue, delay_ms(d)) for d in QueueSettings().retry_delays]
        return [*names, self.bare_queue, self.celery_queue]

    def start(self, server: servers.Server) -> Process:
        proc = harness.start(
            server.name,
            server.argv,
            cpu=server.cpu,
            log_dir=self.logs,
            cwd=server.cwd,
            env=server.env,
        )
        self.running.append(proc)
        return proc

    def stop(self, proc: Process) -> None:
        harness.stop(proc)
        if proc in self.running:
            self.running.remove(proc)
            self.problems += harness.log_problems(proc)

    def node_server(self, name: str, role: str) -> servers.Server:
        backends = backends_table(self.redis_port, self.args.amqp)
        routes = ROUTES.replace("$queue", self.queue)
        port = harness.free_port()
        unused = harness.free_port()  # servers.node's [upstreams.origin]: never called
        project = self.args.project.resolve()
        server = servers.node(
            self.root,
            port,
            self.args.sut_cpu,
            unused,
            routes,
            project,
            name=name,
            backends=backends,
        )
        ready = "/ready" if role == "gateway" else None
        return dataclasses.replace(server, argv=[*server.argv, "--role", role], ready_path=ready)

    def start_redis(self) -> None:
        self.redis_port = harness.free_port()
        server = servers.redis(self.root, self.redis_port, self.args.load_cpu)
        self.redis_proc = self.start(server)
        harness.wait_port(self.redis_proc, self.redis_port)

    def start_gateway(self, name: str = "node-gateway") -> None:
        self.gateway = self.node_server(name, "gateway")
        self.gateway_proc = self.start(self.gateway)
        harness.wait_ready(self.gateway_proc, self.gateway.url("/ready"))

    def post(self, jobs: int, timeout: float = 120.0) -> dict:
        assert self.gateway is not None
        argv = ["http", self.gateway.url("/work"), "--jobs", str(jobs)]
        argv += ["--concurrency", str(self.args.concurrency), "--ids", str(self.ids_file)]
        result = run_client(argv, self.args.load_cpu, timeout, self.env)
        if result["errors"]:
            assert self.gateway_proc is not None
            raise BenchError(
                f"the gateway refused {result['errors']} of {jobs} jobs "
                f"({result['error_kinds']}, first: {result.get('first_error')}):\n"
                f"{self.gateway_proc.log_tail()}"
            )
        return result

    def post_wrk(self) -> dict:
        """The enqueue under wrk for --enqueue-seconds (its Lua script POSTs what
        queue_load.py's client sends, headers included, so the job messages are alike)."""
        assert self.gateway is not None
        script = self.logs / "enqueue.lua"
        script.write_text(ENQUEUE_LUA)
        spent = cpu.waited_children_seconds()
        result = wrk.run(
            self.gateway.url("/work"),
            duration=self.args.enqueue_seconds,
            connections=self.args.concurrency,
            cpu=self.args.load_cpu,
            script=script,
        )
        if result.errors:
            assert self.gateway_proc is not None
            raise BenchError(
                f"the gateway refused {result.errors} jobs under wrk "
                f"({result.non_2xx} non-2xx, sockets {result.socket_errors}):\n"
                f"{self.gateway_proc.log_tail()}"
            )
        return {
            "jobs": result.requests,
            "seconds": result.duration_s,
            "errors": 0,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "cpu_s": cpu.waited_children_seconds() - spent,
        }

    def refill(self) -> None:
        """After a wrk enqueue (whose job ids nobody kept): the queue emptied, then
        filled with --jobs jobs whose ids are kept, for the drain."""
        queue_amqp.purge(self.args.amqp, main_name(self.queue))
        self.ids_file.write_text("")
        self.post(self.args.jobs)

    def pids(self, **ours: int) -> dict[str, int]:
        assert self.redis_proc is not None
        return {**ours, "redis": self.redis_proc.pid, **beam_pids()}

    def job_ids(self) -> list[str]:
        return self.ids_file.read_text().split() if self.ids_file.exists() else []

    def message_size(self) -> int:
        """Bytes of one of the node's job messages for the client's POST (JobMessage.encode
        of the headers aiohttp sends), so that the bare publisher moves the same payload."""
        if self.args.body_size:
            return self.args.body_size
        from multidict import CIMultiDict

        from node.call import Call
        from plugins.queue.message import JobMessage

        host = f"127.0.0.1:{self.gateway.port if self.gateway else 8080}"
        headers = CIMultiDict(
            {
                "Host": host,
                "Accept": "*/*",
                "Accept-Encoding": "gzip, deflate",
                "User-Agent": "Python/3.11 aiohttp/3.14.5",
                "Content-Type": "application/json",
            }
        )
        body = b'{"bench":true}'
        call = Call("POST", "/work", headers=headers, body=body, client="127.0.0.1", host=host)
        return len(JobMessage(secrets.token_hex(16), "POST /work", call).encode())

    # -- enqueue --------------------------------------------------------------------------
    def enqueue(self, round_no: int) -> None:
        """One round: the node's enqueue, then the bare publisher's (warm-ups in round 1;
        from round 2 on, both queues are emptied first, so each round starts alike)."""
        args = self.args
        assert self.gateway_proc is not None
        first = round_no == 1
        if first and args.warmup:
            self.post(args.warmup)
        if not first:
            queue_amqp.purge(args.amqp, main_name(self.queue))
        background = self.quiet()
        spy = self.spy("gateway-enqueue", self.gateway_proc.pid) if first else None
        meter = cpu.Meter(self.pids(node=self.gateway_proc.pid))
        calls = redis_calls(self.redis_port)
        meter.start()
        result = self.post_wrk() if args.client == "wrk" else self.post(args.jobs)
        usage = meter.stop()
        jobs = result["jobs"]
        redis_note = per_job(calls, redis_calls(self.redis_port), jobs, {"info": 1})
        self.unspy(spy, "node")
        harness.check_alive(self.gateway_proc)
        self.rows.append(
            Row(
                "enqueue",
                "node",
                "node gateway: POST /work -> 202",
                jobs,
                result["seconds"],
                result["errors"],
                result["p50_ms"],
                result["p99_ms"],
                usage.process_s["node"],
                broker_seconds(usage),
                usage,
                [
                    redis_note,
                    f"HTTP client ({args.client}) on CPU{args.load_cpu}: "
                    f"{1e6 * result['cpu_s'] / jobs:.0f} us/job",
                    f"background before: {background:.0f} % of a CPU",
                ],
                round_no,
            )
        )

        size = self.message_size()
        common = ["publish", args.amqp, self.bare_queue, "--body-size", str(size)]
        common += ["--concurrency", str(args.concurrency)]
        if first and args.warmup:
            run_client([*common, "--jobs", str(args.warmup)], args.sut_cpu, 120, self.env)
        if not first:
            queue_amqp.purge(args.amqp, self.bare_queue)
        background = self.quiet()
        meter = cpu.Meter(self.pids())
        meter.start()
        result = run_client([*common, "--jobs", str(args.jobs)], args.sut_cpu, 120, self.env)
        usage = meter.stop()
        self.rows.append(
            Row(
                "enqueue",
                "bare",
                "bare aio-pika publisher, confirms",
                args.jobs,
                result["seconds"],
                result["errors"],
                result["p50_ms"],
                result["p99_ms"],
                result["cpu_s"],  # the publisher's own, over its measured publishes
                broker_seconds(usage),
                usage,
                [f"{size} B messages", f"background before: {background:.0f} % of a CPU"],
                round_no,
            )
        )

    def spy(self, name: str, pid: int) -> pyspy.Recorder | None:
        if not self.args.profile:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = self.args.profile / f"{name}.txt"
        spy = pyspy.Recorder(self.py_spy, pid, out, self.args.load_cpu, self.logs)
        self.running.append(spy.proc)  # stopped with the rest if the run fails
        return spy

    def unspy(self, spy: pyspy.Recorder | None, row: str) -> None:
        if spy is not None:
            self.spies.append((spy.stop(), row))
            self.running.remove(spy.proc)

    # -- drain ----------------------------------------------------------------------------
    def launch_worker(self, server: servers.Server) -> tuple[Process, cpu.Meter, Trace, float]:
        """Start a worker; a meter (from its first milliseconds) and a CPU trace of it."""
        launched = time.time()
        proc = self.start(server)
        meter = cpu.Meter(self.pids(worker=proc.pid))
        meter.start()
        trace = Trace({"worker": proc.pid, **beam_pids()})
        return proc, meter, trace, launched

    def fill_node_queue(self, round_no: int) -> None:
        """The node's queue emptied, then filled with --jobs jobs whose ids are kept, by a
        gateway that is stopped again before the drain (CPU 1 is the worker's alone)."""
        if self.gateway_proc is None:
            self.start_gateway(f"node-gateway-{round_no}")  # a directory of its own
        print(f"bench: filling the node's queue with {self.args.jobs} jobs ...", file=sys.stderr)
        self.refill()
        assert self.gateway_proc is not None
        self.stop(self.gateway_proc)
        self.gateway_proc = None

    def drain_node(self, round_no: int) -> int:
        args = self.args
        ids = self.job_ids()
        queue_amqp.wait_ready_count(args.amqp, main_name(self.queue), len(ids))
        store = redis.Redis(port=self.redis_port)
        worker = self.node_server(f"node-worker-{round_no}", "worker")
        background = self.quiet()
        calls = redis_calls(self.redis_port)
        proc, meter, trace, launched = self.launch_worker(worker)
        spy = self.spy("worker-drain", proc.pid) if round_no == 1 else None
        # The last job queued finishes (nearly) last: poll its one key, then the stragglers.
        deadline = time.monotonic() + args.drain_timeout
        last = JOB + ids[-1]
        ours = {"get": 1, "mget": 0, "info": 1}
        while not finished(store.get(last)):
            ours["get"] += 1
            self.tick(proc, trace, deadline, "the node's worker")
        waiting = ids
        while waiting:
            ours["mget"] += 1
            records = store.mget([JOB + i for i in waiting])
            waiting = [i for i, r in zip(waiting, records, strict=True) if not finished(r)]
            if waiting:
                self.tick(proc, trace, deadline, f"the node's worker ({len(waiting)} jobs left)")
        trace.sample()
        usage = meter.stop()
        self.unspy(spy, "node_drain")
        time.sleep(ACK_GRACE)
        self.stop(proc)
        log = proc.log.read_text(errors="replace")
        put_back = log.count(" put back: ")  # Worker.take: Redis or the broker failed mid-job
        redis_note = per_job(calls, redis_calls(self.redis_port), len(ids), ours)
        left = queue_amqp.ready_count(args.amqp, main_name(self.queue))
        records = []
        for start in range(0, len(ids), 1000):
            chunk = store.mget([JOB + i for i in ids[start : start + 1000]])
            records += [orjson.loads(r) for r in chunk]
        store.close()
        first = min(r["started"] for r in records)
        end = max(r["finished"] for r in records)
        failed = sum(1 for r in records if r["status"] != SUCCEEDED)
        attempts = sum(r["attempts"] for r in records)
        self.rows.append(
            Row(
                "drain",
                "node_drain",
                "node worker (1 process, prefetch 100)",
                len(ids),
                end - first,
                failed,
                sut_cpu_s=trace.between(first, end, "worker"),
                broker_cpu_s=trace.between(first, end, "rabbitmq"),
                usage=usage,
                notes=[
                    redis_note,
                    f"done {end - launched:.2f} s after launch",
                    f"{usage.process_s['worker']:.2f} CPU-s in all",
                    f"{attempts} runs",
                    f"{put_back} deliveries put back (Redis or broker errors)",
                    f"{left} left in the queue after stopping",
                    f"background before: {background:.0f} % of a CPU",
                ],
                round=round_no,
            )
        )
        return len(ids)

    def drain_celery(self, count: int, round_no: int) -> None:
        args = self.args
        python = ensure_celery(args.celery_python)
        env = {
            **self.env,
            "QBENCH_AMQP": args.amqp,
            "QBENCH_QUEUE": self.celery_queue,
            "QBENCH_QUEUE_TYPE": args.celery_queue_type,
        }
        taskset = harness.require_tool("taskset")
        # A round's stopped worker may leave a few redelivered messages (acks late): gone.
        queue_amqp.purge(args.amqp, self.celery_queue)
        fill = [taskset, "-c", str(args.load_cpu), str(python), "queue_celery.py", "fill"]
        done = subprocess.run(
            [*fill, str(count)], cwd=BENCH_DIR, env=env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise BenchError(f"filling Celery's queue failed:\n{done.stderr[-2000:]}")
        queue_amqp.wait_ready_count(args.amqp, self.celery_queue, count)
        done_file = self.root / f"celery-done-{round_no}.json"
        env |= {"QBENCH_EXPECT": str(count), "QBENCH_DONE": str(done_file)}
        argv = [str(python), "-m", "celery", "-A", "queue_celery", "worker", "--pool", "solo"]
        argv += ["--concurrency", "1", "--loglevel", "WARNING", "-Q", self.celery_queue]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        argv += ["--hostname", f"{self.celery_queue}@%h"]
        server = servers.Server("celery-worker", argv, args.sut_cpu, 0, None, BENCH_DIR, env)
        background = self.quiet()
        proc, meter, trace, launched = self.launch_worker(server)
        deadline = time.monotonic() + args.drain_timeout
        while not done_file.exists():
            self.tick(proc, trace, deadline, "the Celery worker")
        trace.sample()
        usage = meter.stop()
        time.sleep(ACK_GRACE)
        self.stop(proc)
        times = json.loads(done_file.read_text())
        first, end = times["first"], times["last"]
        left = queue_amqp.ready_count(args.amqp, self.celery_queue)
        self.rows.append(
            Row(
                "drain",
                "celery_drain",
                f"Celery (solo, acks_late, prefetch 100, {args.celery_queue_type})",
                times["n"],
                end - first,
                0,  # a no-op task does not fail (and nothing stores a status)
                sut_cpu_s=trace.between(first, end, "worker"),
                broker_cpu_s=trace.between(first, end, "rabbitmq"),
                usage=usage,
                notes=[
                    f"done {end - launched:.2f} s after launch",
                    f"{usage.process_s['worker']:.2f} CPU-s in all",
                    f"{left} left in the queue after stopping",
                    f"background before: {background:.0f} % of a CPU",
                ],
                round=round_no,
            )
        )

    def quiet(self) -> float:
        """Wait (up to --quiet-wait) for the machine to be idle; the last reading, % of a CPU."""
        return cpu.wait_quiet(timeout=self.args.quiet_wait) if self.args.quiet_wait > 0 else -1

    def tick(self, proc: Process, trace: Trace, deadline: float, what: str) -> None:
        harness.check_alive(proc)
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not finish in {self.args.drain_timeout:g} s")
        time.sleep(0.02)
        trace.sample()

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        self.start_redis()
        self.start_gateway()
        print(f"bench: node queue sn.q.{self.queue}, Redis :{self.redis_port}", file=sys.stderr)
        rounds = range(1, args.rounds + 1)
        if args.only != "drain":
            for n in rounds:
                print(f"bench: enqueue {n}/{args.rounds}: node, then bare ...", file=sys.stderr)
                self.enqueue(n)
        if args.only == "enqueue":
            return
        for n in rounds:
            self.fill_node_queue(n)
            print(f"bench: drain {n}/{args.rounds}: node worker ...", file=sys.stderr)
            count = self.drain_node(n)
            print(f"bench: drain {n}/{args.rounds}: Celery ({count} tasks) ...", file=sys.stderr)
            self.drain_celery(count, n)

    def cleanup(self) -> list[str]:
        for proc in reversed(list(self.running)):
            self.stop(proc)
        try:
            return queue_amqp.delete_queues(self.args.amqp, self.queues())
        except Exception as exc:
            self.problems.append(f"deleting the queues failed: {exc!r}: {self.queues()}")
            return []


def backends_table(redis_port: int, amqp: str) -> str:
    return BACKENDS.replace("$redis_port", str(redis_port)).replace("$amqp", amqp)


def redis_calls(port: int) -> dict[str, int]:
    """Redis's own count of the commands it ran, by command (INFO commandstats)."""
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def per_job(before: dict[str, int], after: dict[str, int], jobs: int, ours: dict[str, int]) -> str:
    """Redis commands per job between two commandstats, less the harness's own."""
    counts = {k: after[k] - before.get(k, 0) - ours.get(k, 0) for k in after}
    shown = [f"{k.upper()} {v / jobs:.2f}" for k, v in sorted(counts.items()) if v / jobs >= 0.01]
    return "Redis per job: " + (", ".join(shown) or "none")


def finished(data: bytes | None) -> bool:
    return data is not None and orjson.loads(data)["status"] in FINISHED


def on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops everything


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for tool in ("taskset", "redis-server"):
            harness.require_tool(tool)
        harness.require_cpus(args.load_cpu, args.sut_cpu)
        if args.only != "enqueue":
            ensure_celery(args.celery_python)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="scalenode-queue-bench-"))
    bench = Bench(args, root)
    deleted: list[str] = []
    try:
        bench.run()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        deleted = bench.cleanup()
        if args.keep_logs:
            print(f"bench: logs and configs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
        for line in bench.problems:
            print(f"bench: warning: {line}", file=sys.stderr)
        print(f"bench: deleted queues: {', '.join(deleted) or 'none'}", file=sys.stderr)
    rows = bench.rows
    if args.only == "drain":
        warmup = ""
    elif args.only == "enqueue":
        warmup = f" (+{args.warmup} warm-up enqueues each, in round 1)"
    else:
        warmup = f" (+{args.warmup} warm-up enqueues each, in round 1)"
    broker = args.amqp.split("@")[-1]
    print(
        f"\n{args.jobs} jobs per system{warmup}, concurrency {args.concurrency}; RabbitMQ {broker}"
    )
    print(
        f"client + Redis on CPU {args.load_cpu}, node / bare publisher / workers on CPU "
        f"{args.sut_cpu}; RabbitMQ unpinned\n"
    )
    print(table(rows, args.load_cpu, args.sut_cpu))
    print(f"\nmedians over {args.rounds} interleaved round(s):\n")
    print(medians_table(rows))
    print()
    print("\n".join(ratio_lines(rows)))
    notes = [
        f"{row.label} (round {row.round}): {'; '.join(row.notes)}" for row in rows if row.notes
    ]
    if notes:
        print("\nnotes:\n" + "\n".join(f"- {note}" for note in notes))
    if args.profile:
        print(f"\nprofiles (py-spy, {args.profile}); rates above are slowed by sampling:")
        by_key = {row.key: row for row in rows if row.round == 1}  # the profiled round
        for path, key in bench.spies:
            row = by_key.get(key)
            per_job = 1e6 * row.sut_cpu_s / row.jobs if row and row.sut_cpu_s else None
            print("\n" + queue_profile.summary(path, per_job))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = [
            {
                **dataclasses.asdict(row),
                "rate": row.rate,
                "usage": row.usage and row.usage.as_dict(),
            }
            for row in rows
        ]
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"profile": str(args.profile)}, "rows": data},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
