"""node/pipeline.py and node/catalogue.py (and their use in node/app.py, node/http.py):
the chain order from the plugins' specs, composing plugins per route."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from node.app import build_app
from node.call import Call, Reply
from node.catalogue import Catalogue, catalogue
from node.config import NodeSettings, RouteSettings, Settings, load_settings
from node.errors import ConfigError, RateLimited, Rejected
from node.http import route_endpoint
from node.metrics import RouteStats
from node.pipeline import build_plugins, compose
from node.plugin import BuildContext, PluginSpec
from node.plugin import Plugin as PluginBase
from node.resources import Resources
from node.schema import join

# Plugin tables listed in the reverse of the chain order, on purpose.
ALL_TABLES = (
    ("breaker", {}),
    ("shard", {}),
    ("queue", {}),
    ("cache", {"ttl": 5}),
    ("ratelimit", {}),
)
# Where each built-in declares itself (plugins/*/__init__.py), with a queue between.
PLACES = {
    "ratelimit": ((), ("cache", "queue", "shard", "breaker")),
    "cache": (("ratelimit",), ("queue", "shard", "breaker")),
    "queue": (("ratelimit", "cache"), ("shard", "breaker")),
    "shard": (("ratelimit", "cache", "queue"), ("breaker",)),
    "breaker": (("ratelimit", "cache", "queue", "shard"), ()),
}


class Recorder(PluginBase):
    """A plugin that notes its name in a shared log and passes the call on."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __call__(self, call: Call, next) -> Reply:
        self.log.append(self.name)
        return await next(call)


def recording_catalogue(log: list[str], built: list | None = None) -> Catalogue:
    def spec_for(name: str) -> PluginSpec:
        def factory(table, path, ctx):
            if built is not None:
                built.append((name, table, path, ctx))
            return Recorder(name, log)

        after, before = PLACES[name]
        return PluginSpec(name, factory, after=after, before=before)

    # Found in reverse: the order must come from the specs, not from discovery.
    return Catalogue(spec_for(name) for name in reversed(PLACES))


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


def route(path: str = "/a", tables=ALL_TABLES) -> RouteSettings:
    return RouteSettings(path=path, target="handler:fake_handlers:ok", plugin_tables=tables)


def context(settings: Settings, index: int = 0) -> BuildContext:
    resources = Resources.build(settings, "all")  # no backends configured: no I/O
    return BuildContext(settings, settings.routes[index], join("routes", index), resources)


async def target(call: Call) -> Reply:
    return Reply.text("from target")


class Plugin(PluginBase):
    """A plugin whose behaviour is the coroutine function given to it."""

    def __init__(self, name: str, run) -> None:
        self.name = name
        self.run = run

    async def __call__(self, call: Call, next) -> Reply:
        return await self.run(call, next)


async def test_plugins_run_in_chain_order(log):
    """Plugins run ratelimit, cache, queue, shard, breaker, target, whatever the TOML order
    and whatever order the plugins were found in."""
    settings = Settings(routes=(route(),))
    plugins = build_plugins(context(settings), recording_catalogue(log))
    handler = compose(plugins, sys.modules["fake_handlers"].ok)
    reply = await handler(Call("GET", "/a"))
    assert log == ["ratelimit", "cache", "queue", "shard", "breaker", "target"]
    assert reply.body == b"ok"


def test_the_built_in_plugins_keep_the_canonical_order():
    """The installed plugins come in the design's order; a plugin from elsewhere that
    declares its place (after the cache, before the queue) lands there."""
    installed = catalogue()
    assert installed.names == ["ratelimit", "cache", "queue", "shard", "breaker"]
    signing = PluginSpec(
        "signing", lambda table, path, ctx: None, after=("cache",), before=("queue",)
    )
    grown = Catalogue([signing, *installed.specs])
    assert grown.names == ["ratelimit", "cache", "signing", "queue", "shard", "breaker"]


def test_a_cycle_of_places_is_a_config_error():
    make = lambda table, path, ctx: None  # noqa: E731
    specs = [PluginSpec("a", make, after=("b",)), PluginSpec("b", make, after=("a",))]
    with pytest.raises(ConfigError, match=r"^plugins: .* cycle among a, b"):
        Catalogue(specs)


def test_a_plugin_command_may_not_take_a_role_or_another_plugins_name():
    def command(argv: list[str]) -> int:
        return 0

    def factory(table, context):  # pragma: no cover - never built
        raise AssertionError

    with pytest.raises(ConfigError, match="'gateway' is taken"):
        Catalogue([PluginSpec("a", factory, commands={"gateway": command})])
    with pytest.raises(ConfigError, match="'tidy' is taken"):
        Catalogue(
            [
                PluginSpec("a", factory, commands={"tidy": command}),
                PluginSpec("b", factory, commands={"tidy": command}),
            ]
        )


def test_run_py_role_names_a_plugins_command(capsys):
    """`run.py --role rebalance` runs the shard plugin's command with the other arguments
    (here: none, so its own usage error, exit 2); an unknown role is still refused."""
    from node.cli import main

    assert "rebalance" in catalogue().commands
    with pytest.raises(SystemExit) as exited:
        main(["--role", "rebalance"])
    assert exited.value.code == 2
    assert "run.py --role rebalance" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["--role", "nonsense"])
    assert refused.value.code == 2


def test_overlapping_key_prefixes_are_a_config_error():
    """Each plugin owns its Redis keys: a prefix inside another's is refused."""
    make = lambda table, path, ctx: None  # noqa: E731
    specs = [PluginSpec("a", make, keys="sn:a:"), PluginSpec("b", make, keys="sn:a:b:")]
    with pytest.raises(ConfigError, match=r"^plugins: b's Redis keys \(sn:a:b:\) overlap a's"):
        Catalogue(specs)


async def test_only_listed_plugins_are_built(log):
    """A route with only a cache table gets only the cache plugin."""
    settings = Settings(routes=(route(tables=(("cache", {}),)),))
    plugins = build_plugins(context(settings), recording_catalogue(log))
    await compose(plugins, sys.modules["fake_handlers"].ok)(Call("GET", "/a"))
    assert log == ["cache", "target"]


def test_factory_gets_its_table_path_and_context(log):
    """Each factory receives its own table, its key path and the route's build context."""
    settings = Settings(routes=(route(), route("/b")))
    built: list = []
    build_plugins(context(settings, 1), recording_catalogue(log, built))
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
    """A plugin whose bind hands back the rest of the chain (the breaker: its pool does
    the work) is never awaited: the chain goes around it."""

    class Silent(PluginBase):
        name = "breaker"

        def bind(self, next):
            return next

        async def __call__(self, call, next):
            raise AssertionError("a pass-through plugin was called")

    handler = compose([Silent()], target)
    assert handler is target
    assert (await handler(Call("GET", "/a"))).body == b"from target"


def test_a_route_naming_an_unknown_plugin_is_a_config_error(tmp_path):
    """A table no loaded plugin owns is refused at load, naming the key, never skipped."""
    text = '[[routes]]\npath = "/a"\ntarget = "handler:node.demo:hello"\nsigning = {}\n'
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, text)
    message = str(caught.value)
    assert message.startswith("routes[0].signing: unknown key (known: ")
    assert "ratelimit" in message and "breaker" in message


def test_a_plugin_table_must_be_a_table(tmp_path):
    text = '[[routes]]\npath = "/a"\ntarget = "handler:node.demo:hello"\ncache = 5\n'
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.cache: must be a table, got an integer$"):
        settings_from(tmp_path, text)


async def test_build_app_uses_the_installed_plugins_by_default(tmp_path):
    """With no catalogue given, build_app builds routes with the installed plugins."""
    text = '[[routes]]\npath = "/a"\ntarget = "handler:node.demo:hello"\ncache = { ttl = 5 }\n'
    app = build_app(settings_from(tmp_path, text), "all")
    async with TestClient(TestServer(app)) as client:
        first, second = await client.get("/a"), await client.get("/a")
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT-L1")


def test_factory_config_error_propagates_with_its_path(tmp_path, log):
    """A factory's ConfigError reaches the caller of build_app with the factory's key path."""

    def cache_factory(table, path, ctx):
        if table.get("ttl", 1) <= 0:
            raise ConfigError(f"{join(path, 'ttl')}: must be > 0")
        return Recorder("cache", log)

    text = '[[routes]]\npath = "/a"\ntarget = "handler:fake_handlers:ok"\ncache = {}\n'
    settings = settings_from(tmp_path, text + text.replace("/a", "/b").replace("{}", "{ ttl = 0 }"))
    with pytest.raises(ConfigError) as caught:
        build_app(settings, "all", Catalogue([PluginSpec("cache", cache_factory)]))
    assert str(caught.value) == "routes[1].cache.ttl: must be > 0"


def test_overlapping_routes_are_a_config_error_in_build_app(log):
    """Routes aiohttp refuses to register together surface as ConfigError, not a traceback."""
    first = RouteSettings(path="/a", target="handler:fake_handlers:ok")
    second = RouteSettings(path="/a", target="handler:fake_handlers:ok", methods=("GET",))
    with pytest.raises(ConfigError, match=r"^routes\[1\]\.path: "):
        build_app(Settings(routes=(first, second)), "all", Catalogue([]))


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


async def test_built_app_serves_route_through_plugins(log):
    """build_app composes the route with the given plugins and serves it over HTTP."""
    settings = Settings(node=NodeSettings(name="n1"), routes=(route(),))
    app = build_app(settings, "all", recording_catalogue(log))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/a")
        assert response.status == 200
        assert await response.text() == "ok"
        assert response.headers["X-Node"] == "n1"
    assert log == ["ratelimit", "cache", "queue", "shard", "breaker", "target"]


async def test_a_crash_is_logged_with_the_request_id_the_reply_carries(caplog):
    """The 500's X-Request-Id (the client's own, when it sent one) is in the log line, so
    "see the node's log" leads to the traceback."""

    async def crash(call, next):
        raise RuntimeError("boom")

    caplog.set_level("ERROR", logger="scalenode.http")
    endpoint = route_endpoint(compose([Plugin("p", crash)], target), RouteStats("/a"), "n1", 9)
    for sent in ({}, {"X-Request-Id": "client-abc-123"}):
        caplog.clear()
        response = await endpoint(make_mocked_request("GET", "/a", headers=sent))
        request_id = response.headers["X-Request-Id"]
        assert request_id == sent.get("X-Request-Id", request_id)
        (record,) = caplog.records
        assert request_id in record.getMessage()
        assert "RuntimeError: boom" in record.exc_text
