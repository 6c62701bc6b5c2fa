"""node.edge_loop copies aiohttp's request loop: an aiohttp that changed it must be re-read."""

from __future__ import annotations

import hashlib
import inspect

from aiohttp.web_protocol import RequestHandler

# sha256 of aiohttp 3.14.5's RequestHandler.start and ._handle_request source.
COPIED = {
    "start": "2e565fd40c8e04fb3afb481d5ba52691a61d28396573b4b8a4cf3b168782288e",
    "_handle_request": "a88a34ee65a2714c6b392d23963ba9a80e7d50d4889905cd949a94d479102d8f",
}


def test_aiohttps_request_loop_is_the_one_edge_loop_copies():
    """node/edge_loop.py's `start` and `serve_aiohttp` are aiohttp's `start`, split in two
    around node.fastpath; `_handle_request` is what `serve_aiohttp` relies on. If this
    fails after an aiohttp upgrade, port the change into node/edge_loop.py, then update
    the hashes."""
    for name, digest in COPIED.items():
        source = inspect.getsource(getattr(RequestHandler, name))
        assert hashlib.sha256(source.encode()).hexdigest() == digest, name
