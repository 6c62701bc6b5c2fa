"""The servers a benchmark can start: nginx (upstream or proxy), the node, the bare baselines.

Each builder writes what its server needs under its own directory and returns a `Server`:
the argv to start, pinned to a CPU by `harness.start`. Nothing here starts a process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from harness import fetch

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent.parent
UPSTREAM_BODY = b'{"message":"hello from upstream"}'
HELLO_BODY = b'{"message":"hello from scalenode"}'  # node.demo:hello and bare_hello.py


@dataclass(frozen=True)
class Server:
    name: str
    argv: list[str]
    cpu: int | str  # taskset's CPU list: one CPU, or "0,1" for a server spread over both
    port: int
    ready_path: str | None = "/hello"  # answers 200 once up; None: wait for the port only
    cwd: Path | None = None
    env: dict[str, str] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


# ----- nginx ---------------------------------------------------------------------------------

NGINX_CONF = Template("""\
$user
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $prefix/tmp/client_body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
$http
    server {
        listen 127.0.0.1:$port;
$server
    }
}
""")

UPSTREAM_LOCATIONS = f"""\
        default_type application/json;
        location = /hello {{ return 200 '{UPSTREAM_BODY.decode()}'; }}
        location = /nginx_status {{ stub_status; }}
        location / {{ return 404; }}
"""

PROXY_HTTP = Template("""\
    upstream origin {
        server 127.0.0.1:$upstream_port;
        keepalive $keepalive;
        keepalive_requests 1000000;
    }
""")

PROXY_LOCATIONS = """\
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""


def nginx(
    name: str, nginx_bin: str, root: Path, port: int, cpu: int, http: str, server: str
) -> Server:
    """A private nginx instance: its own prefix, conf, pid and logs under `root/name`."""
    prefix = root / name
    (prefix / "tmp").mkdir(parents=True)
    # As root, nginx would hand its worker to `nobody`; keep it the current user.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.substitute(user=user, prefix=prefix, port=port, http=http, server=server)
    )
    argv = [nginx_bin, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Server(name, [*argv, "-g", "daemon off;"], cpu, port, notes={"conf": str(conf)})


def upstream_nginx(nginx_bin: str, root: Path, port: int, cpu: int) -> Server:
    """The origin every proxy forwards to: GET /hello answers UPSTREAM_BODY as JSON."""
    return nginx("upstream-nginx", nginx_bin, root, port, cpu, "", UPSTREAM_LOCATIONS)


def proxy_nginx(
    nginx_bin: str, root: Path, port: int, cpu: int, upstream_port: int, keepalive: int = 256
) -> Server:
    """nginx as the reference reverse proxy, with a keep-alive pool to the origin."""
    http = PROXY_HTTP.substitute(upstream_port=upstream_port, keepalive=keepalive)
    return nginx("proxy-nginx", nginx_bin, root, port, cpu, http, PROXY_LOCATIONS)


# The gateway's reference: the same proxy behind a rate limit it never reaches (limit_req
# counts every request in its shared zone) and a cache that answers every request after
# the first (proxy_cache hits; the origin's reply declares no freshness, so an hour is given).
GATEWAY_HTTP = Template("""\
    limit_req_zone $$binary_remote_addr zone=perip:10m rate=100000000r/s;
    proxy_cache_path $prefix/cache levels=1:2 keys_zone=hot:10m max_size=64m inactive=1h;
""")

GATEWAY_LOCATIONS = """\
        location / {
            limit_req zone=perip burst=100000000 nodelay;
            proxy_cache hot;
            proxy_cache_valid 200 1h;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""


def gateway_nginx(
    nginx_bin: str, root: Path, port: int, cpu: int, upstream_port: int, keepalive: int = 256
) -> Server:
    """nginx as the reference gateway: proxy_nginx's proxy with limit_req and proxy_cache."""
    prefix = root / "gateway-nginx"
    http = GATEWAY_HTTP.substitute(prefix=prefix) + PROXY_HTTP.substitute(
        upstream_port=upstream_port, keepalive=keepalive
    )
    return nginx("gateway-nginx", nginx_bin, root, port, cpu, http, GATEWAY_LOCATIONS)


def nginx_counters(server: Server) -> dict[str, int]:
    """The origin's stub_status counters: connections accepted and requests served so far."""
    text = fetch(server.url("/nginx_status")).body.decode()
    accepts, _handled, requests = (int(n) for n in text.splitlines()[2].split())
    return {"connections": accepts, "requests": requests}


# ----- Python servers ------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The harness's environment without SCALENODE__* overrides, so runs are reproducible."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SCALENODE__")}


NODE_TOML = Template("""\
[node]
host = "127.0.0.1"
port = $port
name = "bench"
access_log = false
drain_timeout = 1.0
log_level = "info"

$backends

[upstreams.origin]
targets = ["http://127.0.0.1:$upstream_port"]
timeout = 5.0

$routes
""")


def node(
    root: Path,
    port: int,
    cpu: int,
    upstream_port: int,
    routes: str,
    project: Path = PROJECT_DIR,
    *,
    name: str = "node",
    backends: str = "",
    processes: int = 1,
) -> Server:
    """`python run.py` of `project` on a generated config; `routes` is TOML ($$upstream_port),
    `backends` an optional [backends] table, `processes` its --processes."""
    directory = root / name
    directory.mkdir()
    config = directory / "bench.toml"
    body = Template(routes).substitute(upstream_port=upstream_port)
    text = NODE_TOML.substitute(
        port=port, upstream_port=upstream_port, routes=body, backends=backends
    )
    config.write_text(text)
    argv = [sys.executable, str(project / "run.py"), "--config", str(config)]
    argv += ["--port", str(port), "--name", "bench"]
    if processes > 1:
        argv += ["--processes", str(processes)]
    return Server(name, argv, cpu, port, "/health", project, clean_env(), {"config": str(config)})


def redis(root: Path, port: int, cpu: int) -> Server:
    """A private redis-server (no persistence), pinned like the load side: the node's CPU
    measures the node, not Redis."""
    directory = root / "redis"
    directory.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(directory)]
    return Server("redis", argv, cpu, port, None, directory, clean_env())


def bare_hello(port: int, cpu: int) -> Server:
    argv = [sys.executable, str(BENCH_DIR / "bare_hello.py"), str(port)]
    return Server("bare-hello", argv, cpu, port, cwd=BENCH_DIR, env=clean_env())


def bare_proxy(port: int, cpu: int, upstream_port: int) -> Server:
    upstream = f"http://127.0.0.1:{upstream_port}"
    argv = [sys.executable, str(BENCH_DIR / "bare_proxy.py"), str(port), upstream]
    return Server("bare-proxy", argv, cpu, port, cwd=BENCH_DIR, env=clean_env())
