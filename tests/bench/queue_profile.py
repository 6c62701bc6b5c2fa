"""Where a py-spy recording of the node spent its time: queue_bench.py --profile prints this.

    python queue_profile.py STACKS.txt [US_PER_JOB]

Reads py-spy's raw (collapsed) stacks (`frame;frame;... count`, frames `function
(file:line)`, recorded with --full-filenames; idle samples excluded, py-spy's default), so
shares are of the process's busy time. Start-up samples (imports) are left out. Prints:
- self time by library (the file of the innermost Python frame; C code such as orjson or
  hiredis counts to the Python function that called it), summing to 100 %; then again with
  the standard library's share (asyncio's socket writes, timeouts) counted to its caller;
- the top functions by self time;
- the inclusive share of the queue plugin's own steps and of a few node ones (a sample
  counts once per step).
With US_PER_JOB (the process's CPU microseconds per job, from the table) each share is
also shown as microseconds per job.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pyspy
from pyspy import parse, short

# Self time by the innermost frame's file: the first label whose needle it contains.
LIBRARIES = [
    ("redis-py (with node/cluster/redis.py's wrapper)", ("/redis/", "/node/cluster/redis.py")),
    ("aio-pika", ("/aio_pika/",)),
    ("aiormq", ("/aiormq/",)),
    ("pamqp", ("/pamqp/",)),
    ("aiohttp", ("/aiohttp/",)),
    ("multidict/yarl", ("/multidict/", "/yarl/")),
    ("plugins/queue", ("/plugins/queue/",)),
    ("node (pipeline, HTTP adapter, ...)", ("/node/",)),
    ("the no-op handler", ("queue_noop",)),
    ("asyncio", ("/asyncio/",)),
    ("dataclasses (asdict)", ("/dataclasses.py",)),
    ("uuid", ("/uuid.py",)),
    ("logging", ("/logging/",)),
    ("other stdlib", ("/lib/python3",)),
]
# Inclusive: samples with a frame of this function (plugins/queue, node) anywhere.
STEPS = [
    ("JobQueue.enqueue", "gateway: the route's 202"),
    ("JobQueue.submit", "  store + publish"),
    ("RedisJobs.create", "  Redis: create the record"),
    ("RedisJobs.save", "  Redis: a record SET"),
    ("RedisJobs.get", "  Redis: the record GET"),
    ("RabbitBroker._publish", "  publish + confirm"),
    ("JobMessage.encode", "  message JSON"),
    ("JobRecord.to_json", "  record JSON (asdict + orjson)"),
    ("JobRecord.from_json", "  record from JSON"),
    ("RabbitBroker._on_message", "worker: a delivery, whole"),
    ("Worker.handle", "  handle"),
    ("Worker.run", "  run: the bookkeeping around the attempt"),
    ("JobMessage.decode", "  message from JSON (a Call)"),
    ("attempt", "  the attempt (wait_for + the chain)"),
    ("noop", "  the no-op handler"),
    ("stored_reply", "  the result as JSON-safe data"),
    ("RabbitDelivery.ack", "  ack"),
]


STDLIB = ("asyncio", "dataclasses (asdict)", "uuid", "logging", "other stdlib")
ENTRY = ("/node/server.py", "/node/cli.py", "/run.py")  # below them: the loop itself
LOOP = "the event loop alone (uvloop's C: epoll, socket reads, callbacks)"


def library(file: str) -> str:
    return pyspy.library(file, LIBRARIES)


def caller_library(frames: list[tuple[str, str]]) -> str:
    """The innermost frame's library, the stdlib it calls counted to whoever called it."""
    for _, file in reversed(frames):
        if file.endswith(ENTRY):
            break
        label = library(file)
        if label not in STDLIB:
            return label
    return LOOP


def summary(path: Path, us_per_job: float | None = None, top: int = 12) -> str:
    stacks, startup = parse(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"{path.name}: no samples"
    own: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    callers: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    for frames, count in stacks:
        func, file = frames[-1]
        own[f"{func} ({short(file)})"] += count
        libraries[library(file)] += count
        callers[caller_library(frames)] += count
        present = {fn for fn, f in frames if "/plugins/queue/" in f or "queue_noop" in f}
        for name, _ in STEPS:
            if name in present:
                steps[name] += count

    def share(n: int) -> str:
        text = f"{100 * n / total:5.1f} %"
        if us_per_job:
            text += f" {us_per_job * n / total:5.0f} us/job"
        return text

    lines = [f"{path.name}: {total} busy samples (+{startup} of start-up, left out)"]
    lines.append("  self time by library:")
    lines += [f"    {share(n)}  {label}" for label, n in libraries.most_common()]
    lines.append("  self time by library, the stdlib's (socket writes, timeouts) to its caller:")
    lines += [f"    {share(n)}  {label}" for label, n in callers.most_common()]
    lines.append("  self time, top functions:")
    lines += [f"    {share(n)}  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive, the queue's steps:")
    lines += [f"    {share(steps[name])}  {label} ({name})" for name, label in STEPS if steps[name]]
    return "\n".join(lines)


if __name__ == "__main__":
    per_job = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print(summary(Path(sys.argv[1]), per_job))
