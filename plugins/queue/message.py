"""A queued call as a broker message and back: what the worker needs to run the rest of
the route as the gateway would have (W3C Trace Context's traceparent and the request id
travel in the headers)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
from multidict import CIMultiDict

from node.call import Call

# Headers that described the client's connection to the gateway, not the request.
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length")
)
NOT_COPIED = HOP_BY_HOP | {"traceparent"}  # the call's own is added (node.trace)


@dataclass(frozen=True, slots=True)
class JobMessage:
    job_id: str
    route: str
    call: Call

    def encode(self) -> bytes:
        call = self.call
        headers = [[k, v] for k, v in call.headers.items() if k.lower() not in NOT_COPIED]
        headers.append(["X-Request-Id", call.request_id])  # the id the client was answered with
        headers.append(["traceparent", call.traceparent])  # the client's, or the trace begun
        return orjson.dumps(
            {
                "job": self.job_id,
                "route": self.route,
                "method": call.method,
                "path": call.path,
                "raw_path": call.raw_path,
                "params": dict(call.params),
                "query": call.query_string,
                "headers": headers,
                "body": base64.b64encode(call.body).decode(),
                "client": call.client,
                "scheme": call.scheme,
                "host": call.host,
                "shard": call.shard,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> JobMessage:
        """Raises ValueError (or KeyError) for a message that is not a job."""
        fields: dict[str, Any] = orjson.loads(data)
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in fields["headers"]:
            if name.lower() == "x-request-id":
                headers.popall(name, None)
            headers.add(name, value)
        call = Call(
            fields["method"],
            fields["path"],
            raw_path=fields["raw_path"],
            route=fields["route"],
            params=fields["params"],
            query_string=fields["query"],
            headers=headers,
            body=base64.b64decode(fields["body"]),
            client=fields["client"],
            scheme=fields["scheme"],
            host=fields["host"],
            shard=fields["shard"],
        )
        return cls(fields["job"], fields["route"], call)
