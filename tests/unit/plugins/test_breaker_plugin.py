"""plugins/breaker: how a route's table attaches circuits to its pool's members."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from node.app import POOLS, STATS, build_app
from node.config import Settings
from node.errors import ConfigError
from node.schema import build
from plugins.breaker.settings import BreakerSettings
from plugins.breaker.shared import TripExchange

REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(*routes: dict[str, Any], redis: str = "") -> Settings:
    data = {
        "backends": {"redis": redis},
        "upstreams": {
            "app": {"targets": ["http://127.0.0.1:9", "http://127.0.0.1:10"]},
            "other": {"targets": ["http://127.0.0.1:11"]},
        },
        "routes": list(routes),
    }
    return build(Settings, data, "")


def route(path: str, breaker: dict[str, Any], target: str = "upstream:app") -> dict[str, Any]:
    return {"path": path, "target": target, "breaker": breaker}


def test_every_member_of_the_routes_pool_gets_a_circuit() -> None:
    """The route's pool is guarded member by member; other pools stay plain."""
    app = build_app(settings(route("/a", {"open_seconds": 5})), "all")
    pools = app[POOLS]
    assert [m.circuit is not None for m in pools["app"].members] == [True, True]
    assert pools["other"].members[0].circuit is None
    assert pools["other"].send == pools["other"]._send_plain


def test_routes_to_one_pool_with_one_table_share_its_circuits() -> None:
    """Two routes with the same breaker table use the same circuits."""
    table = {"open_seconds": 5}
    app = build_app(settings(route("/a", table), route("/b", table)), "all")
    plugins = [plugin for _, plugin in app_plugins(app)]
    assert plugins[0].circuits is plugins[1].circuits


def app_plugins(app: Any) -> list[tuple[str, Any]]:
    return app[STATS].plugins


def test_routes_to_one_pool_with_different_tables_are_refused() -> None:
    """One pool, two different breaker tables: a ConfigError naming the second route."""
    with pytest.raises(ConfigError) as caught:
        build_app(settings(route("/a", {"open_seconds": 7}), route("/b", {})), "all")
    assert str(caught.value).startswith(
        "routes[1].breaker: upstream 'app' already has a breaker from routes[0].breaker"
    )


def test_a_breaker_needs_an_upstream_target() -> None:
    """A handler route cannot have a member breaker."""
    with pytest.raises(ConfigError, match=r"routes\[0\].breaker: guards upstream members"):
        build_app(settings(route("/a", {}, "handler:node.demo:hello")), "all")


def test_shared_needs_redis() -> None:
    """shared = true without backends.redis is an error, not a silent local breaker."""
    with pytest.raises(ConfigError, match=r"routes\[0\].breaker.shared: sharing trips needs"):
        build_app(settings(route("/a", {"shared": True})), "all")


def test_shared_is_the_default_with_redis() -> None:
    """With Redis configured, circuits are shared (and wait for the trial token to half-open)."""
    app = build_app(settings(route("/a", {}), redis=REDIS_URL), "all")
    circuit = app[POOLS]["app"].members[0].circuit
    assert circuit.auto_half_open is False  # type: ignore[union-attr]
    assert isinstance(circuit.on_trip.__self__, TripExchange)  # type: ignore[union-attr]


def test_shared_false_keeps_circuits_local_with_redis() -> None:
    """shared = false: each node half-opens on its own."""
    app = build_app(settings(route("/a", {"shared": False}), redis=REDIS_URL), "all")
    circuit = app[POOLS]["app"].members[0].circuit
    assert (circuit.auto_half_open, circuit.on_trip) == (True, None)  # type: ignore[union-attr]


def test_a_pools_circuits_answer_to_one_ejection_cap() -> None:
    """The pool's circuits share one cap of max_ejection_percent, shown in the snapshot."""
    app = build_app(settings(route("/a", {"max_ejection_percent": 100})), "all")
    caps = {id(member.circuit.cap) for member in app[POOLS]["app"].members}  # type: ignore[union-attr]
    assert len(caps) == 1
    (_, plugin), *_ = app_plugins(app)
    snapshot = plugin.snapshot()
    assert snapshot["gauges"]["max_open_members"] == 2
    assert (snapshot["counters"]["capped"], snapshot["counters"]["doubts"]) == (0, 0)


def test_the_docs_table_names_every_setting() -> None:
    """docs/plugins/breaker.md's table of keys names every BreakerSettings key, no other."""
    doc = (Path(__file__).parents[3] / "docs/plugins/breaker.md").read_text()
    rows = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row)}
    assert documented == {field.name for field in dataclasses.fields(BreakerSettings)}
