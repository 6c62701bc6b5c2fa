"""Three nodes behind real nginx and real HAProxy, configured by deploy/'s files rendered for
the test's ports: a rolling restart of every node under GET and POST load loses nothing,
SIGKILL of a node loses no idempotent request through nginx, HAProxy's agent-check sees a
draining node as DRAIN and a loaded one with a lower weight."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from e2e_harness import REPO, NodeProcess, free_port, wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DEPLOY = REPO / "deploy"
DRAIN_DELAY = 1.2  # seconds: node.drain_delay in these tests (5 by default)
NODES = 3

pytestmark = pytest.mark.skipif(
    not (Path(NGINX).exists() and Path(HAPROXY).exists()), reason="needs nginx and haproxy"
)

NODE_CONFIG = """
[node]
trusted_proxies = ["127.0.0.1/32"]
drain_timeout = 5
drain_delay = {delay}
agent_port = {agent_port}

[[routes]]
path = "/slow"
methods = ["GET", "POST"]
target = "handler:slow_app:slow"
"""


def render(text: str, replacements: dict[str, str]) -> str:
    """deploy/'s file with each shipped value replaced by the test's (each must be there)."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the shipped file"
        text = text.replace(old, new)
    return text


@dataclass
class Cluster:
    """NODES nodes on free ports (with agent ports), restartable where they were."""

    workdir: Path
    start_node: Callable[..., NodeProcess]
    ports: list[int] = field(default_factory=list)
    agent_ports: list[int] = field(default_factory=list)
    nodes: list[NodeProcess] = field(default_factory=list)

    def start(self, i: int, wait: bool = True) -> NodeProcess:
        config = self.workdir / f"node{i}.toml"
        config.write_text(NODE_CONFIG.format(delay=DRAIN_DELAY, agent_port=self.agent_ports[i]))
        # Env beats the harness's default of no delay (and the file): this test drains.
        env = {"SCALENODE__NODE__DRAIN_DELAY": str(DRAIN_DELAY)}
        return self.start_node(
            "--config", str(config), "--name", f"n{i}", port=self.ports[i], env=env, wait=wait
        )

    def up(self) -> Cluster:
        for i in range(NODES):
            self.ports.append(free_port())
            self.agent_ports.append(free_port())
            self.nodes.append(self.start(i, wait=False))
        for node in self.nodes:
            node.wait_healthy()
        return self

    def interrupt(self) -> None:
        """SIGINT to every node still running: a stop without the drain's delay."""
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGINT)

    def restart(self, i: int, up_again: Callable[[int], bool]) -> None:
        """SIGTERM node i, wait for its drain and exit, start it again, wait for `up_again`."""
        old = self.nodes[i]
        assert old.terminate(timeout=15.0) == 0, old.stderr()
        assert "Traceback" not in old.stderr()
        self.nodes[i] = self.start(i)
        assert wait_for(lambda: up_again(i), timeout=10.0), f"node {i} not back in the balancer"


@pytest.fixture
def cluster(tmp_path: Path, start_node) -> Iterator[Cluster]:
    made = Cluster(tmp_path, start_node)
    try:
        yield made.up()
    finally:
        made.interrupt()  # then start_node's teardown waits for each by its pid


class Balancer:
    """A balancer process started by the test, stopped by its pid."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_serving(self) -> None:
        def serving() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/slow?seconds=0", timeout=1
                ):
                    return True
            except OSError:
                return False

        if not wait_for(serving, timeout=10.0):
            raise AssertionError(f"balancer not serving:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nginx(tmp_path: Path, cluster: Cluster) -> Iterator[Balancer]:
    port = free_port()
    shipped = (DEPLOY / "nginx/scalenode.conf").read_text()
    site = render(
        shipped,
        {
            **{f"127.0.0.1:{8081 + i}": f"127.0.0.1:{p}" for i, p in enumerate(cluster.ports)},
            "listen 8080;": f"listen 127.0.0.1:{port};",
            # Shorter than the test's drain_delay, as the shipped 4 s is shorter than 5 s.
            "keepalive_timeout 4s;": "keepalive_timeout 800ms;",
        },
    )
    (tmp_path / "scalenode.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"""
worker_processes 1;
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/scalenode.conf;
}}
"""
    )
    made = Balancer([NGINX, "-c", str(main), "-p", str(tmp_path)], port, tmp_path / "nginx.out")
    try:
        made.wait_serving()
        yield made
    finally:
        made.stop()


def haproxy_config(tmp_path: Path, cluster: Cluster, port: int, stats: int, **timing: str) -> Path:
    shipped = (DEPLOY / "haproxy/haproxy.cfg").read_text()
    servers = {
        f"127.0.0.1:{8081 + i} agent-port {9081 + i}": f"127.0.0.1:{p} agent-port {a}"
        for i, (p, a) in enumerate(zip(cluster.ports, cluster.agent_ports, strict=True))
    }
    text = render(
        shipped,
        {
            **servers,
            "bind :8080": f"bind 127.0.0.1:{port}",
            "bind 127.0.0.1:8404": f"bind 127.0.0.1:{stats}",
            "    stats socket /run/haproxy/admin.sock": "    # stats socket",
            "log stdout format raw local0 info": "log stdout format raw local0 warning",
            "maxconn 20000": "maxconn 1000",  # within this machine's open-file limit
            # The shipped timing scaled down to the test's drain_delay.
            "check inter 2s fastinter 500ms fall 2 rise 2 slowstart 10s": timing.get(
                "check", "check inter 200ms fastinter 100ms fall 2 rise 2 slowstart 1s"
            ),
            "agent-inter 2s": timing.get("agent", "agent-inter 200ms"),
        },
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path


def haproxy_servers(stats_port: int) -> dict[str, dict[str, str]]:
    """HAProxy's view of the backend's servers (status, weight...) from its CSV stats."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2) as resp:
        text = resp.read().decode().lstrip("# ")
    return {
        row["svname"]: row
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == "scalenode" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


@pytest.fixture
def haproxy_factory(
    tmp_path: Path, cluster: Cluster
) -> Iterator[Callable[..., tuple[Balancer, int]]]:
    made: list[Balancer] = []

    def start(**timing: str) -> tuple[Balancer, int]:
        port, stats = free_port(), free_port()
        config = haproxy_config(tmp_path, cluster, port, stats, **timing)
        balancer = Balancer([HAPROXY, "-db", "-f", str(config)], port, tmp_path / "haproxy.out")
        made.append(balancer)
        balancer.wait_serving()
        assert wait_for(
            lambda: all(s["status"] == "UP" for s in haproxy_servers(stats).values()), 10.0
        ), haproxy_servers(stats)
        return balancer, stats

    yield start
    for balancer in made:
        balancer.stop()


@dataclass
class LoadResult:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    by_node: Counter[str] = field(default_factory=Counter)

    def failed(self) -> int:
        return sum(self.errors.values()) + sum(
            n for (_, status), n in self.statuses.items() if not 200 <= status < 300
        )


async def load(
    port: int, done: asyncio.Event, methods: tuple[str, ...], workers: int = 8
) -> LoadResult:
    """GETs and POSTs on kept-alive connections to 127.0.0.1:port until `done`."""
    result = LoadResult()
    url = f"http://127.0.0.1:{port}/slow?seconds=0.01"
    timeout = aiohttp.ClientTimeout(total=15)

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        i = n
        while not done.is_set():
            method = methods[i % len(methods)]
            i += 1
            try:
                async with session.request(
                    method, url, data=b"x" * 64 if method == "POST" else None
                ) as resp:
                    await resp.read()
                    result.statuses[method, resp.status] += 1
                    result.by_node[resp.headers.get("X-Node", "?")] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                result.errors[f"{method} {type(exc).__name__}: {exc}"] += 1

    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session, n) for n in range(workers)))
    return result


async def under_load(port: int, action: Callable[[], None], methods=("GET", "POST")) -> LoadResult:
    """Run `action` (blocking: restarts, kills) in a thread while the load runs."""
    done = asyncio.Event()
    running = asyncio.create_task(load(port, done, methods))
    await asyncio.sleep(0.5)
    try:
        await asyncio.to_thread(action)
        await asyncio.sleep(0.5)
    finally:
        done.set()
    return await running


def accepts(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.timeout(60)
async def test_rolling_restart_behind_nginx_loses_nothing(
    cluster: Cluster, nginx: Balancer
) -> None:
    """Every node SIGTERMed and restarted in turn under GET+POST load: 0 failed, 0 non-2xx."""

    def roll() -> None:
        for i in range(NODES):
            cluster.restart(i, lambda i: accepts(cluster.ports[i]))
            time.sleep(0.3)  # nginx's passive check lets the node back after a failure

    result = await under_load(nginx.port, roll)
    assert result.failed() == 0, (result.statuses, result.errors)
    assert result.statuses["GET", 200] > 100 and result.statuses["POST", 200] > 100
    assert len(result.by_node) == NODES


@pytest.mark.timeout(60)
async def test_rolling_restart_behind_haproxy_loses_nothing(
    cluster: Cluster, haproxy_factory
) -> None:
    """The same rolling restart behind HAProxy (httpchk /ready, agent-check): 0 failed."""
    balancer, stats = haproxy_factory()

    def back_in(i: int) -> bool:
        return haproxy_servers(stats)["abc"[i]]["status"] == "UP"

    def roll() -> None:
        for i in range(NODES):
            cluster.restart(i, back_in)

    result = await under_load(balancer.port, roll)
    assert result.failed() == 0, (result.statuses, result.errors)
    assert result.statuses["GET", 200] > 100 and result.statuses["POST", 200] > 100


@pytest.mark.timeout(60)
async def test_sigkill_behind_nginx_loses_no_idempotent_request(
    cluster: Cluster, nginx: Balancer
) -> None:
    """SIGKILL of one node under GET load: only requests in flight on it may fail (counted);
    nginx's proxy_next_upstream retries them, so none does."""

    def kill() -> None:
        victim = cluster.nodes[1]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=5.0)
        time.sleep(1.0)

    result = await under_load(nginx.port, kill, methods=("GET",))
    failed = result.failed()
    # At most the load's concurrency can have been in flight on the killed node.
    assert failed <= 8, (result.statuses, result.errors)
    assert failed == 0, f"{failed} GETs in flight on the killed node failed: {result.errors}"
    assert result.statuses["GET", 200] > 100


@pytest.mark.timeout(30)
async def test_haproxy_agent_drains_a_stopping_node_and_weighs_a_loaded_one(
    cluster: Cluster, haproxy_factory
) -> None:
    """The agent's `drain` shows as DRAIN before the health check's DOWN; in-flight load
    lowers a node's weight."""
    # Slow health checks, fast agent: what HAProxy shows first is the agent's doing.
    _, stats = haproxy_factory(
        check="check inter 1s fastinter 1s fall 3 rise 2 slowstart 1s",
        agent="agent-inter 100ms",
    )
    assert int(haproxy_servers(stats)["b"]["weight"]) >= 80  # idle but for the checks

    async with aiohttp.ClientSession() as session:
        # Requests held in flight on node b (straight to it): its agent reports the load.
        url = f"http://127.0.0.1:{cluster.ports[1]}/slow?seconds=3"
        held = [asyncio.create_task(session.get(url)) for _ in range(60)]
        lowered = await asyncio.to_thread(
            wait_for, lambda: int(haproxy_servers(stats)["b"]["weight"]) <= 50, 2.5
        )
        for task in held:
            (await task).release()
    assert lowered, haproxy_servers(stats)["b"]

    seen: list[str] = []

    def status_of_a() -> bool:
        seen.append(haproxy_servers(stats)["a"]["status"])
        return seen[-1].startswith("DRAIN")

    cluster.nodes[0].proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(wait_for, status_of_a, DRAIN_DELAY), seen
    assert cluster.nodes[0].proc.wait(timeout=10.0) == 0
