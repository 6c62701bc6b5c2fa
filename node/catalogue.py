"""The plugins a node knows, found once: the `scalenode.plugins` entry points (the built-in
ones are declared in pyproject.toml the same way a user's package declares its own), then
the modules named in `[plugins] load`. The chain order comes from their specs."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any

from node.errors import ConfigError
from node.plugin import PluginSpec, TargetFactory
from node.roles import ROLES
from node.schema import join

ENTRY_POINT_GROUP = "scalenode.plugins"


class Catalogue:
    """Plugin specs by name, in chain order."""

    def __init__(self, specs: Iterable[PluginSpec]) -> None:
        found: dict[str, PluginSpec] = {}
        for spec in specs:
            if spec.name in found and found[spec.name] is not spec:
                raise ConfigError(f"plugins: two plugins are called {spec.name!r}")
            found[spec.name] = spec
        check_key_prefixes(found.values())
        self.specs = chain_order(list(found.values()))
        self.by_name = {spec.name: spec for spec in self.specs}
        self.rank = {spec.name: i for i, spec in enumerate(self.specs)}
        self.targets: dict[str, TargetFactory] = {}
        self.commands: dict[str, Callable[[list[str]], int]] = {}
        for spec in self.specs:
            for kind, factory in spec.targets.items():
                if kind in self.targets:
                    raise ConfigError(f"plugins: two plugins provide the {kind}: target")
                self.targets[kind] = factory
            for name, command in spec.commands.items():
                if name in self.commands or name in ROLES:
                    raise ConfigError(f"plugins: the command {name!r} is taken")
                self.commands[name] = command

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def ordered(self, tables: Iterable[tuple[str, Any]]) -> list[tuple[PluginSpec, Any]]:
        """A route's plugin tables as (spec, table), in chain order (names must be known)."""
        chosen = sorted(tables, key=lambda item: self.rank[item[0]])
        return [(self.by_name[name], table) for name, table in chosen]


def chain_order(specs: list[PluginSpec]) -> list[PluginSpec]:
    """The specs sorted so each runs after those it names in `after` and before those in
    `before` (a stable topological sort: ties keep the order they were found in)."""
    index = {spec.name: i for i, spec in enumerate(specs)}
    later: dict[str, set[str]] = {spec.name: set() for spec in specs}  # name -> runs after it
    for spec in specs:
        for earlier in spec.after:
            if earlier in index:
                later[earlier].add(spec.name)
        for following in spec.before:
            if following in index:
                later[spec.name].add(following)
    waiting = {name: 0 for name in index}
    for followers in later.values():
        for name in followers:
            waiting[name] += 1
    ready = sorted((name for name, count in waiting.items() if count == 0), key=index.get)
    ordered: list[PluginSpec] = []
    while ready:
        name = ready.pop(0)
        ordered.append(specs[index[name]])
        for follower in later[name]:
            waiting[follower] -= 1
            if waiting[follower] == 0:
                ready.append(follower)
        ready.sort(key=index.get)
    if len(ordered) < len(specs):
        stuck = sorted(name for name, count in waiting.items() if count > 0)
        raise ConfigError(f"plugins: their after/before form a cycle among {', '.join(stuck)}")
    return ordered


def check_key_prefixes(specs: Iterable[PluginSpec]) -> None:
    """No plugin's Redis key prefix may contain another's: each owns its keys alone."""
    owned = [(spec.keys, spec.name) for spec in specs if spec.keys]
    for prefix, name in owned:
        for other, other_name in owned:
            if other_name != name and other.startswith(prefix):
                raise ConfigError(
                    f"plugins: {other_name}'s Redis keys ({other}) overlap {name}'s ({prefix})"
                )


def specs_of(value: Any, origin: str) -> list[PluginSpec]:
    """A module's `PLUGIN` / `PLUGINS`, or an entry point's object, as a list of specs."""
    if isinstance(value, PluginSpec):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, PluginSpec) for v in value):
        return list(value)
    raise ConfigError(f"{origin}: not a scalenode.plugin.PluginSpec (or a list of them)")


def installed_specs() -> list[PluginSpec]:
    """The specs every installed package declares under the entry point group."""
    specs: list[PluginSpec] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=entry_point_rank):
        try:
            value = point.load()
        except Exception as exc:  # a broken plugin package names itself, not a traceback
            raise ConfigError(
                f"plugins: entry point {point.name} = {point.value!r} failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        specs.extend(specs_of(value, f"plugins: entry point {point.name}"))
    return specs


def entry_point_rank(point: Any) -> tuple[int, str]:
    """Scalenode's own plugins first (in pyproject.toml's order, which entry_points keeps
    only per distribution), then other packages' by name."""
    own = point.dist is not None and point.dist.name == "scalenode"
    return (0 if own else 1, "" if own else point.value)


def module_specs(module_name: str, path: str) -> list[PluginSpec]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{path}: cannot import {module_name!r}: {exc}") from None
    value = getattr(module, "PLUGINS", getattr(module, "PLUGIN", None))
    if value is None:
        raise ConfigError(f"{path}: module {module_name!r} defines no PLUGIN or PLUGINS")
    return specs_of(value, path)


@functools.cache
def catalogue(load: Sequence[str] = ()) -> Catalogue:
    """The node's plugins: installed ones, then the modules `load` names (a tuple)."""
    specs = installed_specs()
    for i, module_name in enumerate(load):
        specs.extend(module_specs(module_name, join(join("plugins", "load"), i)))
    return Catalogue(specs)
