"""The drain a load balancer sees: after SIGTERM /ready answers 503 `draining` and replies
say `Connection: close` for node.drain_delay while the node serves; then the port closes."""

from __future__ import annotations

import http.client
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from e2e_harness import in_flight, refuses_connections, request, wait_for

CONFIG = """
[node]
name = "drainer"
drain_timeout = 5

[[routes]]
path = "/slow"
methods = ["GET", "POST"]
target = "handler:slow_app:slow"
"""
DELAY = 1.5  # seconds of node.drain_delay in these tests


def delayed(start_node, write_config):
    return start_node(
        "--config",
        str(write_config(CONFIG)),
        env={"SCALENODE__NODE__DRAIN_DELAY": str(DELAY)},
    )


def keep_alive_get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp


def test_ready_turns_503_while_the_node_still_serves(start_node, write_config) -> None:
    """For drain_delay after SIGTERM: /ready 503 draining, routes 200, the port open."""
    node = delayed(start_node, write_config)
    assert request(node.port, "/ready").status == 200
    node.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert wait_for(lambda: request(node.port, "/ready").status == 503, timeout=0.5)
    ready = request(node.port, "/ready")
    assert ready.json()["status"] == "draining"
    served = request(node.port, "/slow?seconds=0")
    assert served.status == 200
    assert served.headers["connection"] == "close"
    assert time.monotonic() - signalled < DELAY
    assert wait_for(lambda: refuses_connections(node.port), timeout=DELAY + 1.0)
    assert time.monotonic() - signalled >= DELAY * 0.9
    assert node.proc.wait(timeout=10.0) == 0
    assert "Traceback" not in node.stderr()


def test_kept_alive_connection_is_answered_with_connection_close(start_node, write_config) -> None:
    """A request on a connection kept alive from before SIGTERM is answered, then closed."""
    node = delayed(start_node, write_config)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5.0)
    try:
        first = keep_alive_get(conn, "/slow?seconds=0")
        assert first.status == 200
        assert first.getheader("Connection") != "close"
        node.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: request(node.port, "/ready").status == 503, timeout=0.5)
        second = keep_alive_get(conn, "/slow?seconds=0")
        assert second.status == 200
        assert second.getheader("Connection") == "close"
    finally:
        conn.close()
    assert node.proc.wait(timeout=10.0) == 0


def test_request_in_flight_at_sigterm_finishes_with_connection_close(
    start_node, write_config
) -> None:
    """A request in flight when SIGTERM comes gets its 200 (told to close), after the delay."""
    node = delayed(start_node, write_config)
    with ThreadPoolExecutor(max_workers=1) as pool:
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10.0)
        slow = pool.submit(keep_alive_get, conn, f"/slow?seconds={DELAY + 1}")
        assert wait_for(lambda: in_flight(node.port, "/slow") >= 1, timeout=5.0)
        node.proc.send_signal(signal.SIGTERM)
        response = slow.result(timeout=10.0)
        conn.close()
    assert response.status == 200
    assert response.getheader("Connection") == "close"
    assert node.proc.wait(timeout=10.0) == 0


def test_idle_kept_alive_connection_is_closed_after_the_delay(start_node, write_config) -> None:
    """A connection idle through the whole delay is closed by the node, not left open."""
    node = delayed(start_node, write_config)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5.0)
    try:
        assert keep_alive_get(conn, "/slow?seconds=0").status == 200
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=10.0) == 0
        assert conn.sock is not None
        assert conn.sock.recv(1) == b""  # the node closed it: end of stream, no reply
    finally:
        conn.close()


def test_sigint_skips_the_delay(start_node, write_config) -> None:
    """Ctrl-C (SIGINT) stops an idle node at once, without drain_delay."""
    node = delayed(start_node, write_config)
    signalled = time.monotonic()
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(timeout=10.0) == 0
    assert time.monotonic() - signalled < DELAY


def test_connections_queued_when_the_port_closes_are_served(start_node, write_config) -> None:
    """Connections the kernel accepted but the node had not (its loop busy, here stopped)
    when SIGTERM came are served, not reset: closing a listener resets its accept queue,
    and a balancer that had sent a POST there cannot retry it (nginx answers 502)."""
    node = start_node("--config", str(write_config(CONFIG)))  # drain_delay 0: the harness's
    assert request(node.port, "/ready").status == 200
    post = b"POST /slow?seconds=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    node.proc.send_signal(signal.SIGSTOP)
    clients = []
    try:
        for _ in range(20):
            client = socket.create_connection(("127.0.0.1", node.port), timeout=10.0)
            client.sendall(post)  # into the node's receive buffer: the node is stopped
            clients.append(client)
        node.proc.send_signal(signal.SIGTERM)
    finally:
        node.proc.send_signal(signal.SIGCONT)
    statuses = []
    for client in clients:
        with client:
            reply = b""
            while b"\r\n" not in reply:
                chunk = client.recv(4096)
                if not chunk:
                    break
                reply += chunk
            statuses.append(reply.split(b" ", 2)[1].decode() if reply else "reset/closed")
    assert statuses == ["200"] * 20
    assert node.proc.wait(timeout=10.0) == 0
