"""A plugin from the user's own package (tests/example_plugin/acme/signing.py), in a real
node: enabled by config or by an installed entry point, configured by its name, run in
the place it declares (after the rate limit, before the cache), with no edit to Scalenode."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from e2e_harness import REPO, free_port, request, run_cli

PACKAGE_DIR = REPO / "tests" / "example_plugin"
SECRET = "a-secret-of-sixteen-plus"
ROUTE = f"""
[[routes]]
path = "/signed/{{tail:.*}}"
methods = ["GET"]
target = "handler:node.demo:echo"
cache = {{ ttl = 30 }}
signing = {{ secret = "{SECRET}" }}
ratelimit = {{ limit = 2, window = 60 }}
"""
CHAIN = "route GET /signed/{tail:.*} -> ratelimit -> signing -> cache -> handler:node.demo:echo"


def signature(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_a_plugin_loaded_by_config_runs_in_its_declared_place(start_node, tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text('[plugins]\nload = ["acme.signing"]\n' + ROUTE)
    node = start_node("--config", str(config), env={"PYTHONPATH": str(PACKAGE_DIR)})

    miss = request(node.port, "/signed/a")
    assert (miss.status, miss.headers["x-cache"]) == (200, "MISS")
    assert miss.headers["x-signature"] == signature(miss.body)
    hit = request(node.port, "/signed/a")  # the cache answers; signing wraps the cache
    assert (hit.status, hit.headers["x-cache"]) == (200, "HIT-L1")
    assert hit.headers["x-signature"] == signature(hit.body)
    limited = request(node.port, "/signed/a")  # the rate limit answers before signing
    assert limited.status == 429
    assert "x-signature" not in limited.headers
    # Its snapshot reaches /metrics like a built-in's: two replies signed, the hit too.
    metrics = request(node.port, "/metrics").body.decode()
    signed = [line for line in metrics.splitlines() if line.startswith("scalenode_signing_signed")]
    assert len(signed) == 1 and signed[0].endswith(" 2.0"), signed


def test_a_plugin_installed_with_an_entry_point_needs_no_config(tmp_path: Path):
    """What `pip install acme-signing` leaves on the path (its dist-info with the entry
    point) is enough: the route names `signing` and the chain puts it in its place."""
    dist = tmp_path / "site" / "acme_signing-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-signing\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[scalenode.plugins]\nsigning = acme.signing:PLUGIN\n")
    config = tmp_path / "node.toml"
    config.write_text(ROUTE)
    path = f"{tmp_path / 'site'}:{PACKAGE_DIR}"
    result = run_cli(
        ["--check-config", "--config", str(config), "--port", str(free_port())],
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stderr
    assert CHAIN in result.stdout.splitlines()


def test_without_the_plugin_its_table_is_an_unknown_key(tmp_path: Path):
    """Not installed, not loaded: the route's `signing` table is refused, naming it."""
    config = tmp_path / "node.toml"
    config.write_text(ROUTE)
    result = run_cli(["--check-config", "--config", str(config)])
    assert result.returncode == 2
    assert result.stderr.startswith("config error: routes[0].signing: unknown key")


def test_a_bad_plugin_module_is_a_config_error(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text('[plugins]\nload = ["acme.nothing_here"]\n' + ROUTE)
    result = run_cli(
        ["--check-config", "--config", str(config)], env={"PYTHONPATH": str(PACKAGE_DIR)}
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "config error: plugins.load[0]: cannot import 'acme.nothing_here'"
    )
