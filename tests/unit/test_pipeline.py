"""node/pipeline.py (and its use in node/app.py, node/http.py): composing plugins per route."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from node.app import build_app
from node.call import Call, Reply
from node.config import PLUGIN_NAMES, RouteSettings, Settings, load_settings
from node.errors import ConfigError, RateLimited, Rejected
from node.http import route_endpoint
from node.metrics import RouteStats
from node.pipeline import BuildContext, build_plugins, compose
from node.resources import Resources
from node.schema import join

# Plugin tables listed in the reverse of the canonical order, on purpose.
ALL_PLUGINS = """
[[routes]]
path = "/a"
target = "handler:fake_handlers:ok"
breaker = {}
shard = {}
queue = {}
cache = { ttl = 5 }
ratelimit = {}
"""


class Recorder:
    """A plugin that notes its name in a shared log and passes the call on."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __call__(self, call: Call, next) -> Reply:
        self.log.append(self.name)
        return await next(call)

    def snapshot(self) -> dict:
        return {}


def recording_factories(log: list[str], built: list | None = None) -> dict:
    def factory_for(name: str):
        def factory(table, path, ctx):
            if built is not None:
                built.append((name, table, path, ctx))
            return Recorder(name, log)

        return factory

    return {name: factory_for(name) for name in PLUGIN_NAMES}


@pytest.fixture
def log(monkeypatch) -> list[str]:
    """The shared run log; also installs the `fake_handlers` module routes point at."""
    entries: list[str] = []
    module = types.ModuleType("fake_handlers")

    async def ok(call: Call) -> Reply:
        entries.append("target")
        return Reply.text("ok")

    module.ok = ok
    monkeypatch.setitem(sys.modules, "fake_handlers", module)
    return entries


def settings_from(tmp_path: Path, text: str) -> Settings:
    file = tmp_path / "node.toml"
    file.write_text(text)
    return load_settings(file, environ={})


def context(settings: Settings, index: int = 0) -> BuildContext:
    resources = Resources.build(settings, "all")  # no backends configured: no I/O
    return BuildContext(settings, settings.routes[index], join("routes", index), resources)


async def target(call: Call) -> Reply:
    return Reply.text("from target")


class Plugin:
    """A plugin whose behaviour is the coroutine function given to it."""

    def __init__(self, name: str, run) -> None:
        self.name = name
        self.run = run

    async def __call__(self, call: Call, next) -> Reply:
        return await self.run(call, next)

    def snapshot(self) -> dict:
        return {}


async def test_plugins_run_in_canonical_order(tmp_path, log):
    """Plugins run ratelimit, cache, queue, shard, breaker, target, whatever the TOML order."""
    settings = settings_from(tmp_path, ALL_PLUGINS)
    plugins = build_plugins(context(settings), recording_factories(log))
    handler = compose(plugins, sys.modules["fake_handlers"].ok)
    reply = await handler(Call("GET", "/a"))
    assert log == ["ratelimit", "cache", "queue", "shard", "breaker", "target"]
    assert reply.body == b"ok"


async def test_only_listed_plugins_are_built(tmp_path, log):
    """A route with only a cache table gets only the cache plugin."""
    text = '[[routes]]\npath = "/a"\ntarget = "handler:fake_handlers:ok"\ncache = {}\n'
    plugins = build_plugins(context(settings_from(tmp_path, text)), recording_factories(log))
    await compose(plugins, sys.modules["fake_handlers"].ok)(Call("GET", "/a"))
    assert log == ["cache", "target"]


def test_factory_gets_its_table_path_and_context(tmp_path, log):
    """Each factory receives its own table, its key path and the route's build context."""
    settings = settings_from(tmp_path, ALL_PLUGINS + ALL_PLUGINS.replace('"/a"', '"/b"'))
    built: list = []
    build_plugins(context(settings, 1), recording_factories(log, built))
    name, table, path, ctx = built[1]
    assert (name, table, path) == ("cache", {"ttl": 5}, "routes[1].cache")
    assert ctx.route.path == "/b"
    assert ctx.settings is settings


async def test_plugin_can_answer_early():
    """A plugin that returns without calling next keeps the target from running."""
    reached = []

    async def inner(call):
        reached.append(call)
        return Reply.text("target")

    async def cached(call, next):
        return Reply.text("cached", status=203)

    reply = await compose([Plugin("cache", cached)], inner)(Call("GET", "/a"))
    assert (reply.status, reply.body) == (203, b"cached")
    assert reached == []


async def test_plugin_can_wrap_the_reply():
    """A plugin can act on the reply that the rest of the chain returned."""

    async def stamp(call, next):
        reply = await next(call)
        reply.headers["X-Stamped"] = str(reply.status)
        return reply

    reply = await compose([Plugin("stamp", stamp)], target)(Call("GET", "/a"))
    assert reply.headers["X-Stamped"] == "200"
    assert reply.body == b"from target"


async def test_plugin_can_annotate_the_call():
    """A shard plugin's call.shard is what the target sees."""
    seen = []

    async def shard(call, next):
        call.shard = "s1"
        return await next(call)

    async def inner(call):
        seen.append(call.shard)
        return Reply.text("ok")

    await compose([Plugin("shard", shard)], inner)(Call("GET", "/a"))
    assert seen == ["s1"]


async def test_pass_through_plugin_is_left_out_of_the_chain():
    """A plugin declaring passes_through is never awaited: the chain goes around it."""

    async def explode(call, next):
        raise AssertionError("a pass-through plugin was called")

    silent = Plugin("breaker", explode)
    silent.passes_through = True
    handler = compose([silent], target)
    assert handler is target
    assert (await handler(Call("GET", "/a"))).body == b"from target"


def test_missing_plugin_is_a_config_error(tmp_path, log):
    """A route naming a plugin absent from the factories table is refused, never skipped."""
    text = '[[routes]]\npath = "/a"\ntarget = "handler:fake_handlers:ok"\nratelimit = {}\n'
    with pytest.raises(ConfigError) as caught:
        build_plugins(context(settings_from(tmp_path, text)), {})
    assert (
        str(caught.value)
        == "routes[0].ratelimit: the ratelimit plugin is not available in this version"
    )


def test_build_app_uses_shipped_factories_by_default(tmp_path, log):
    """With no factories given, build_app uses plugins.FACTORIES, which has no queue plugin yet."""
    text = ALL_PLUGINS.replace("ratelimit = {}", "").replace("cache = { ttl = 5 }", "")
    settings = settings_from(tmp_path, text)
    with pytest.raises(
        ConfigError, match=r"^routes\[0\]\.queue: the queue plugin is not available"
    ):
        build_app(settings, "all")


def test_factory_config_error_propagates_with_its_path(tmp_path, log):
    """A factory's ConfigError reaches the caller of build_app with the factory's key path."""

    def cache_factory(table, path, ctx):
        if table.get("ttl", 1) <= 0:
            raise ConfigError(f"{join(path, 'ttl')}: must be > 0")
        return Recorder("cache", log)

    text = '[[routes]]\npath = "/a"\ntarget = "handler:fake_handlers:ok"\ncache = {}\n'
    settings = settings_from(tmp_path, text + text.replace("/a", "/b").replace("{}", "{ ttl = 0 }"))
    with pytest.raises(ConfigError) as caught:
        build_app(settings, "all", {"cache": cache_factory})
    assert str(caught.value) == "routes[1].cache.ttl: must be > 0"


def test_overlapping_routes_are_a_config_error_in_build_app(log):
    """Routes aiohttp refuses to register together surface as ConfigError, not a traceback."""
    first = RouteSettings(path="/a", target="handler:fake_handlers:ok")
    second = RouteSettings(path="/a", target="handler:fake_handlers:ok", methods=("GET",))
    with pytest.raises(ConfigError, match=r"^routes\[1\]\.path: "):
        build_app(Settings(routes=(first, second)), "all", {})


async def test_rejected_becomes_json_reply():
    """A Rejected raised by a plugin becomes its status, headers and {"error", "detail"} JSON."""

    async def limit(call, next):
        raise RateLimited("slow down", headers={"Retry-After": "3"})

    stats = RouteStats("/a")
    endpoint = route_endpoint(compose([Plugin("ratelimit", limit)], target), stats, "n1", 1024)
    response = await endpoint(make_mocked_request("GET", "/a"))
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    assert response.headers["X-Node"] == "n1"
    assert response.headers["Content-Type"] == "application/json"
    assert orjson.loads(response.body) == {"error": "rate_limited", "detail": "slow down"}
    assert stats.statuses == {429: 1}


async def test_custom_rejected_keeps_its_status_and_code():
    """Rejected("why", status=409, code="conflict") answers 409 with that code."""

    async def conflict(call, next):
        raise Rejected("taken", status=409, code="conflict")

    endpoint = route_endpoint(compose([Plugin("p", conflict)], target), RouteStats("/a"), "n1", 9)
    response = await endpoint(make_mocked_request("POST", "/a"))
    assert response.status == 409
    assert orjson.loads(response.body) == {"error": "conflict", "detail": "taken"}


async def test_plugin_crash_becomes_500_naming_no_internals():
    """An unexpected exception answers 500 JSON without the exception's text."""

    async def crash(call, next):
        raise RuntimeError("password=hunter2")

    endpoint = route_endpoint(compose([Plugin("p", crash)], target), RouteStats("/a"), "n1", 9)
    response = await endpoint(make_mocked_request("GET", "/a"))
    assert response.status == 500
    assert orjson.loads(response.body)["error"] == "internal"
    assert b"hunter2" not in response.body


async def test_built_app_serves_route_through_plugins(tmp_path, log):
    """build_app composes the route with the given factories and serves it over HTTP."""
    settings = settings_from(tmp_path, '[node]\nname = "n1"\n' + ALL_PLUGINS)
    app = build_app(settings, "all", recording_factories(log))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/a")
        assert response.status == 200
        assert await response.text() == "ok"
        assert response.headers["X-Node"] == "n1"
    assert log == ["ratelimit", "cache", "queue", "shard", "breaker", "target"]
