"""A running `python run.py`: default config, roles, env overrides, a port already taken."""

from __future__ import annotations

import socket
from pathlib import Path

from e2e_harness import REPO, free_port, request, run_cli
from testkit.postgres import fresh_database

GATEWAY_CONFIG = """
[node]
name = "from-file"

[upstreams.users]
targets = ["http://127.0.0.1:{upstream_port}"]

[[routes]]
path = "/hi"
methods = ["GET"]
target = "handler:node.demo:hello"

[[routes]]
path = "/users/{{tail:.*}}"
target = "upstream:users"
strip_prefix = "/users"
"""


def test_default_config_serves_demo_and_system_routes(start_node) -> None:
    """`python run.py` with the default config answers /hello, /echo, /health, /ready, /metrics."""
    node = start_node("--name", "n1")
    port = node.port

    hello = request(port, "/hello")
    assert hello.status == 200
    assert hello.headers["content-type"].startswith("application/json")
    assert hello.json() == {"message": "hello from scalenode"}
    assert hello.headers["x-node"] == "n1"

    echo = request(port, "/echo/x?a=1")
    assert echo.status == 200
    data = echo.json()
    assert (data["method"], data["path"], data["query"]) == ("GET", "/echo/x", {"a": "1"})
    assert echo.headers["x-node"] == "n1"

    health = request(port, "/health")
    assert health.status == 200
    assert health.json() == {"status": "ok", "node": "n1", "role": "all", "pid": node.pid}
    assert health.headers["x-node"] == "n1"

    ready = request(port, "/ready")
    assert ready.status == 200
    assert ready.json()["status"] == "ready"
    assert ready.headers["x-node"] == "n1"

    metrics = request(port, "/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert metrics.headers["x-node"] == "n1"
    text = metrics.body.decode()
    assert 'scalenode_requests_total{node="n1",route="/hello",status="200"} 1.0' in text


def test_unknown_path_and_wrong_method_are_json_errors(start_node) -> None:
    """An unknown path is a JSON 404, a wrong method a JSON 405 with Allow; both carry X-Node."""
    node = start_node("--name", "n2")
    missing = request(node.port, "/nope")
    assert missing.status == 404
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json()["error"] == "not_found"
    assert missing.headers["x-node"] == "n2"

    wrong = request(node.port, "/hello", method="POST")
    assert wrong.status == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]
    assert wrong.headers["x-node"] == "n2"


def test_default_name_is_host_and_port(start_node) -> None:
    """Without --name (and none in the config) the node is called host:port."""
    node = start_node()
    health = request(node.port, "/health").json()
    assert health["node"] == f"{socket.gethostname()}:{node.port}"


def test_started_from_another_directory(start_node, tmp_path: Path) -> None:
    """`python /path/to/run.py` from another working directory still finds the default config."""
    node = start_node("--name", "elsewhere", cwd=tmp_path)
    assert request(node.port, "/hello").status == 200


def test_gateway_serves_config_routes(start_node, write_config) -> None:
    """--role gateway --config my.toml serves its handler and upstream routes under --name."""
    upstream = start_node("--name", "backend")
    config = write_config(GATEWAY_CONFIG.format(upstream_port=upstream.port), "my.toml")
    gateway = start_node("--role", "gateway", "--config", str(config), "--name", "a")

    health = request(gateway.port, "/health").json()
    assert (health["node"], health["role"]) == ("a", "gateway")

    hi = request(gateway.port, "/hi")
    assert hi.status == 200
    assert hi.json() == {"message": "hello from scalenode"}
    assert hi.headers["x-node"] == "a"

    # The default config's routes are not served: only my.toml's.
    assert request(gateway.port, "/hello").status == 404

    proxied = request(gateway.port, "/users/echo/42?q=1")
    assert proxied.status == 200
    assert proxied.headers["x-node"] == "a"
    echoed = proxied.json()
    assert (echoed["path"], echoed["query"]) == ("/echo/42", {"q": "1"})
    assert echoed["headers"]["X-Forwarded-For"] == "127.0.0.1"


def test_worker_serves_health_but_not_routes(start_node, write_config) -> None:
    """--role worker answers /health (role worker) but 404 on the config's routes."""
    config = write_config(GATEWAY_CONFIG.format(upstream_port=9), "my.toml")
    worker = start_node("--role", "worker", "--config", str(config), "--name", "w")
    health = request(worker.port, "/health")
    assert health.status == 200
    assert health.json()["role"] == "worker"
    hi = request(worker.port, "/hi")
    assert hi.status == 404
    assert hi.headers["x-node"] == "w"
    assert request(worker.port, "/users/x").status == 404


def test_env_overrides_name_and_port(start_node) -> None:
    """SCALENODE__NODE__NAME and SCALENODE__NODE__PORT take effect without flags."""
    port = free_port()
    env = {"SCALENODE__NODE__NAME": "from-env", "SCALENODE__NODE__PORT": str(port)}
    node = start_node(port=port, add_port=False, env=env)
    health = request(port, "/health")
    assert health.json()["node"] == "from-env"
    assert health.json()["pid"] == node.pid
    assert health.headers["x-node"] == "from-env"


def test_port_in_use_exits_nonzero_with_one_line() -> None:
    """A port held by a plain (non-SO_REUSEPORT) socket: exit non-zero, one stderr line."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(["--port", str(port), "--name", "blocked"], timeout=10)
    assert result.returncode not in (0, None), result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith("error: cannot listen on 127.0.0.1:")
    assert str(port) in lines[0]


def test_the_shipped_cluster_config_starts_without_a_warning(start_node) -> None:
    """`config/cluster.toml` against the real Redis, RabbitMQ and PostgreSQL (its two shard
    databases made fresh for the test): ready, its store and cache routes answer, and stderr
    holds the node's own INFO lines only (a library's warning there looks like an error)."""
    with fresh_database() as s0, fresh_database() as s1:
        env = {
            "SCALENODE__SHARDS__USERS__MEMBERS__0__DSN": s0,
            "SCALENODE__SHARDS__USERS__MEMBERS__1__DSN": s1,
        }
        config = str(REPO / "config" / "cluster.toml")
        node = start_node("--config", config, "--name", "c1", env=env)
        ready = request(node.port, "/ready")
        assert ready.status == 200, ready.body
        assert ready.json()["status"] == "ready"
        assert request(node.port, "/cached/x").status == 200  # a route that uses Redis
        assert request(node.port, "/users/ada", method="PUT").status == 400  # no JSON body
        assert request(node.port, "/users").json()["items"] == []
        assert node.terminate() == 0
    lines = node.stderr().splitlines()
    assert lines, "the node logs its start"
    assert all(" INFO " in line for line in lines), node.stderr()


def test_the_default_config_serves_the_embedded_store(start_node, tmp_path: Path) -> None:
    """`python run.py` alone: the document store on SQLite files under ./data, no service."""
    import http.client
    import json

    node = start_node("--name", "n1", cwd=tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        conn.request("PUT", "/users/ada", body=b'{"name": "Ada"}')
        created = conn.getresponse()
        assert created.status == 201, created.read()
        created.read()
        conn.request("GET", "/users/ada")
        got = conn.getresponse()
        assert (got.status, json.loads(got.read())) == (200, {"name": "Ada"})
        assert got.getheader("X-Shard") in ("s0", "s1")
    finally:
        conn.close()
    assert sorted(p.name for p in (tmp_path / "data" / "users").glob("*.sqlite3")) == [
        "s0.sqlite3",
        "s1.sqlite3",
    ]
