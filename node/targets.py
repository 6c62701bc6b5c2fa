"""Builds a route's target, the innermost handler of its pipeline, from `kind:spec`."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from node.call import Call, Handler, Reply
from node.errors import ConfigError
from node.forwarding import TrustedProxies
from node.upstream.pool import UpstreamPool
from node.upstream.proxy import UpstreamProxy

UserHandler = Callable[[Call], Awaitable[Reply | dict[str, Any] | list[Any]]]


def import_handler(spec: str, path: str) -> UserHandler:
    """`package.module:function` → the async function, checked before the node starts."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or module_name.startswith("."):
        raise ConfigError(f"{path}: handler must be handler:package.module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a syntax error or a failing import inside the module too
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(f"{path}: cannot import module {module_name!r}: {reason}") from None
    func = getattr(module, attr, None)
    if func is None:
        raise ConfigError(f"{path}: module {module_name!r} has no {attr!r}")
    if not inspect.iscoroutinefunction(func):
        raise ConfigError(f"{path}: {spec} must be an async function taking a Call")
    return func


def as_reply(result: object) -> Reply:
    """A handler's result as a Reply: a Reply passes through, a dict or list becomes JSON."""
    if isinstance(result, Reply):
        return result
    if isinstance(result, dict | list):
        return Reply.json(result)
    raise TypeError(f"handler returned {type(result).__name__}, expected Reply, dict or list")


def returns_reply(func: UserHandler) -> bool:
    try:
        return typing.get_type_hints(func).get("return") is Reply
    except Exception:  # unresolvable annotations: assume nothing
        return False


def handler_target(func: UserHandler) -> Handler:
    """Adapts a user function to the pipeline. One annotated `-> Reply` is used as it is
    (a coroutine frame less per request); others get their dict or list turned into JSON."""
    if returns_reply(func):
        return func  # type: ignore[return-value]

    async def target(call: Call) -> Reply:
        return as_reply(await func(call))

    return target


def build_target(
    target: str,
    path: str,
    pools: dict[str, UpstreamPool],
    trusted: TrustedProxies,
    strip_prefix: str = "",
    provided: Mapping[str, Callable[[str, str], Handler]] | None = None,
) -> Handler:
    """The route's target; kinds other than handler and upstream come from plugins
    (`provided`: kind -> its factory, bound to the route's build context)."""
    kind, _, spec = target.partition(":")
    if kind == "handler":
        return handler_target(import_handler(spec, path))
    if kind == "upstream":
        return UpstreamProxy(pools[spec], trusted, strip_prefix)
    factory = (provided or {}).get(kind)
    if factory is None:
        raise ConfigError(f"{path}: no loaded plugin provides the {kind}: target")
    return factory(spec, path)
