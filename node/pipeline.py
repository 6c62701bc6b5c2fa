"""Composes each route's plugins around its target, once, at start-up.

The route's plugin tables are built by their specs' factories in the catalogue's chain
order; each plugin's `bind(next)` wraps the rest of the chain (node/plugin.py).
"""

from __future__ import annotations

from node.call import Handler
from node.catalogue import Catalogue
from node.plugin import BuildContext, Plugin
from node.schema import join


def build_plugins(ctx: BuildContext, catalogue: Catalogue) -> list[Plugin]:
    """The route's plugins, in chain order (the route's tables were checked by Settings)."""
    return [
        spec.build(table, join(ctx.path, spec.name), ctx)
        for spec, table in catalogue.ordered(ctx.route.plugin_tables)
    ]


def compose(plugins: list[Plugin], target: Handler) -> Handler:
    """Fold the plugins around the target: plugins[0] runs first."""
    handler = target
    for plugin in reversed(plugins):
        handler = plugin.bind(handler)
    return handler
