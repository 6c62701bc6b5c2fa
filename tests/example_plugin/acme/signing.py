"""An out-of-tree Scalenode plugin: signs each reply of its route with HMAC-SHA256.

Enabled by config (`[plugins] load = ["acme.signing"]`) or, once this package is
installed, by its `scalenode.plugins` entry point (pyproject.toml beside it); configured
in a route by its name: `signing = { secret = "..." }`. It runs after the rate limit (a
429 is not signed) and before the cache (a cached reply is signed as it leaves).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from node.call import Call, Handler, Reply
from node.plugin import BuildContext, Plugin, PluginSpec
from node.schema import build, join, require


@dataclass(frozen=True, slots=True)
class SigningSettings:
    secret: str = ""
    header: str = "X-Signature"

    def check(self, path: str) -> None:
        require(len(self.secret) >= 16, join(path, "secret"), "must be at least 16 characters")
        require(bool(self.header), join(path, "header"), "must not be empty")


class Signer(Plugin):
    name = "signing"

    def __init__(self, settings: SigningSettings) -> None:
        self.key = settings.secret.encode()
        self.header = settings.header
        self.signed = 0

    async def __call__(self, call: Call, next: Handler) -> Reply:
        reply = await next(call)
        if reply.stream is not None:  # a streamed body is not in hand to sign
            return reply
        signature = hmac.new(self.key, reply.body, hashlib.sha256).hexdigest()
        headers = CIMultiDict(reply.headers)
        headers[self.header] = signature
        self.signed += 1
        return Reply(reply.status, reply.body, headers, reply.content_type)

    def snapshot(self) -> dict[str, Any]:
        return {"counters": {"signed": self.signed}}


def build_signer(table: dict[str, Any], path: str, ctx: BuildContext) -> Signer:
    return Signer(build(SigningSettings, table, path))


PLUGIN = PluginSpec(
    name="signing",
    build=build_signer,
    after=("ratelimit",),
    before=("cache",),
    summary="signs each reply with HMAC-SHA256 (X-Signature)",
)
