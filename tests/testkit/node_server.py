"""aiohttp's TestServer serving a node's app the way `run.py` does."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from node.edge import EdgeRunner
from node.resources import RESOURCES


class NodeServer(TestServer):
    """A TestServer whose connections are node.edge's: its timeouts, its connection cap and
    node.fastpath for route requests, so that a test exercises what a user's node serves
    with (aiohttp's own TestServer would serve every request aiohttp's way)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs.pop("handler_cancellation", None)  # TestServer's True; a node keeps aiohttp's
        return EdgeRunner(self.app, self.app[RESOURCES].settings.node, **kwargs)
