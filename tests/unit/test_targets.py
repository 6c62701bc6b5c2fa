"""node/targets.py: importing handler functions and adapting what they return."""

from __future__ import annotations

import sys
import types

import orjson
import pytest

from node.call import Call, Reply
from node.errors import ConfigError
from node.forwarding import TrustedProxies
from node.targets import build_target, handler_target, import_handler
from node.upstream.pool import UpstreamPool
from node.upstream.proxy import UpstreamProxy
from node.upstream.settings import UpstreamSettings

PATH = "routes[0].target"


class LoudReply(Reply):
    """A Reply subclass a user might return."""


@pytest.fixture(autouse=True)
def fake_module(monkeypatch) -> types.ModuleType:
    """An importable `fake_handlers` module with async and plain functions."""
    module = types.ModuleType("fake_handlers")

    async def ok(call: Call) -> dict:
        return {"path": call.path}

    def plain(call: Call) -> dict:
        return {}

    module.ok = ok
    module.plain = plain
    module.CONSTANT = 3
    monkeypatch.setitem(sys.modules, "fake_handlers", module)
    return module


def config_error(spec: str) -> str:
    with pytest.raises(ConfigError) as caught:
        import_handler(spec, PATH)
    return str(caught.value)


def returning(value):
    async def handler(call: Call):
        return value

    return handler_target(handler)


def test_import_handler_returns_the_function(fake_module):
    """module:function gives back that async function."""
    assert import_handler("fake_handlers:ok", PATH) is fake_module.ok


@pytest.mark.parametrize("spec", ["fake_handlers", "fake_handlers:", ":ok", ""])
def test_import_handler_rejects_bad_spec(spec):
    """A spec without both a module and a function names the expected form."""
    message = f"{PATH}: handler must be handler:package.module:function, got {spec!r}"
    assert config_error(spec) == message


def test_import_handler_reports_missing_module():
    """A module that cannot be imported is named, with the import error."""
    message = config_error("no_such_module_xyz:fn")
    assert message.startswith(f"{PATH}: cannot import module 'no_such_module_xyz': ")
    assert "No module named 'no_such_module_xyz'" in message


def test_import_handler_reports_missing_submodule():
    """A missing module inside an existing package is reported the same way."""
    message = config_error("node.no_such_module:fn")
    assert message.startswith(f"{PATH}: cannot import module 'node.no_such_module': ")


def test_import_handler_reports_missing_function():
    """A module without the named function is reported with both names."""
    assert config_error("fake_handlers:nope") == f"{PATH}: module 'fake_handlers' has no 'nope'"


@pytest.mark.parametrize("attr", ["plain", "CONSTANT"])
def test_import_handler_rejects_non_async_callables(attr):
    """A plain function or a non-function must be an async function taking a Call."""
    message = f"{PATH}: fake_handlers:{attr} must be an async function taking a Call"
    assert config_error(f"fake_handlers:{attr}") == message


def test_import_handler_reports_relative_module_as_config_error():
    """A relative module name (.mod) is a config error naming the path, not a TypeError."""
    assert config_error(".fake_handlers:ok").startswith(f"{PATH}: ")


async def test_handler_dict_becomes_json():
    """A dict result becomes a 200 JSON reply."""
    reply = await returning({"id": 7})(Call("GET", "/"))
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert orjson.loads(reply.body) == {"id": 7}


async def test_handler_list_becomes_json():
    """A list result becomes a JSON array."""
    reply = await returning([1, "two"])(Call("GET", "/"))
    assert orjson.loads(reply.body) == [1, "two"]


async def test_handler_reply_passes_through():
    """A Reply result is returned as is, status and headers included."""
    original = Reply(418, b"teapot", {"X-Tea": "1"})
    assert await returning(original)(Call("GET", "/")) is original


async def test_handler_reply_subclass_passes_through():
    """A Reply subclass is also passed through unchanged."""
    original = LoudReply(201, b"made")
    assert await returning(original)(Call("GET", "/")) is original


@pytest.mark.parametrize(("value", "kind"), [("text", "str"), (None, "NoneType"), (b"x", "bytes")])
async def test_handler_other_result_raises_type_error(value, kind):
    """Anything but Reply, dict or list is a TypeError naming the returned type."""
    with pytest.raises(
        TypeError, match=rf"^handler returned {kind}, expected Reply, dict or list$"
    ):
        await returning(value)(Call("GET", "/"))


async def test_handler_target_passes_the_call(fake_module):
    """The user function receives the call itself."""
    reply = await build_target("handler:fake_handlers:ok", PATH, {}, TrustedProxies(()))(
        Call("GET", "/seen")
    )
    assert orjson.loads(reply.body) == {"path": "/seen"}


def test_build_target_upstream_makes_a_proxy():
    """upstream:NAME builds a proxy to that pool, keeping strip_prefix."""
    pool = UpstreamPool("users", UpstreamSettings(targets=("http://a",)), client=None)
    target = build_target("upstream:users", PATH, {"users": pool}, TrustedProxies(()), "/u")
    assert isinstance(target, UpstreamProxy)
    assert (target.pool, target.strip_prefix) == (pool, "/u")


def test_build_target_of_a_kind_no_plugin_provides_is_refused():
    """store:NAME without a plugin providing it (none passed here) is refused naming the path."""
    with pytest.raises(ConfigError) as caught:
        build_target("store:main", PATH, {}, TrustedProxies(()))
    assert str(caught.value) == f"{PATH}: no loaded plugin provides the store: target"
