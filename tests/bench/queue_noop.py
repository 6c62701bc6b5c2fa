"""The no-op target of queue_bench.py's queued route: a worker runs it for every job.

`handler:tests.bench.queue_noop:noop` (the node starts in the project directory, where
`tests.bench` imports as a namespace package). Annotated `-> Reply`, so the node calls it
as it is, with no JSON conversion around it: the job's cost is the queue's, not the handler's.
"""

from __future__ import annotations

from node.call import JSON_TYPE, Call, Reply

DONE = b'{"ok":true}'


async def noop(call: Call) -> Reply:
    return Reply(200, DONE, {}, JSON_TYPE)
