"""Builds a node's aiohttp application from settings and a role: every route's pipeline is
composed here, once, before the port binds."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from aiohttp import web

from node.admin import admin_app
from node.agent import state_routes
from node.backends import build_probes
from node.catalogue import Catalogue, catalogue
from node.config import Settings, route_methods
from node.drain import NODE_STATE, NodeState
from node.edge_replies import json_errors
from node.edge_stats import EDGE, EdgeCollector, EdgeStats
from node.errors import ConfigError
from node.fastpath import FAST_ROUTES, Route, Routes
from node.http import expect_continue, route_endpoint, unmatched_endpoint
from node.metrics import NodeCollector, NodeStats, make_registry
from node.pipeline import build_plugins, compose
from node.plugin import BuildContext
from node.resources import RESOURCES, Resources
from node.roles import DASHBOARD, ROLE_COMPONENTS, ROUTES, WORKER
from node.sampler import NodeSampler
from node.schema import join
from node.system import add_system_routes
from node.targets import build_target
from node.upstream.fastclient import FastClient
from node.upstream.health import health_context
from node.upstream.pool import AiohttpClient, UpstreamClient, UpstreamPool, close_pools
from node.upstream.settings import UpstreamSettings
from node.wire import identify

STATS = web.AppKey("stats", NodeStats)
POOLS = web.AppKey("pools", dict[str, UpstreamPool])


def build_app(settings: Settings, role: str, plugins: Catalogue | None = None) -> web.Application:
    """The node's application; raises ConfigError for anything wrong in `settings`.
    `plugins`: the plugins to build routes with (default: the settings' catalogue)."""
    if plugins is None:
        plugins = catalogue(settings.plugins.load)
    node = settings.node.name
    largest_body = max([settings.node.max_body, *(r.max_body or 0 for r in settings.routes)])
    # aiohttp's own limit is the largest any route allows; each route checks its own.
    app = web.Application(client_max_size=largest_body)
    stats = NodeStats()
    pools = {
        name: UpstreamPool(name, pool, upstream_client(pool))
        for name, pool in settings.upstreams.items()
    }
    resources = Resources.build(settings, role)
    app[STATS] = stats
    app[POOLS] = pools
    app[RESOURCES] = resources
    app[NODE_STATE] = state = NodeState()  # /ready and the agent-check answer from it
    app[FAST_ROUTES] = Routes(app, resources)  # filled by add_routes
    app[EDGE] = edge = EdgeStats()  # filled by node.edge's handler when served by EdgeRunner
    app.on_response_prepare.append(identify(node))
    app.on_response_prepare.append(json_errors)

    def pool_snapshots() -> dict[str, dict]:
        return {name: pool.snapshot() for name, pool in pools.items()}

    registry = make_registry(NodeCollector(node, stats, pool_snapshots))
    registry.register(EdgeCollector(node, edge))
    resources.registry.snapshot = NodeSampler(stats, pool_snapshots).snapshot
    add_system_routes(
        app,
        node=node,
        role=role,
        probes=build_probes(settings, resources.redis),
        tolerated=resources.tolerated,
        required=resources.required,
        registry=registry,
        state=state,
    )
    components = ROLE_COMPONENTS[role]
    # A worker composes the routes too (it runs queued jobs through them) but serves none.
    composes = ROUTES in components or WORKER in components
    if composes:
        add_routes(app, settings, plugins, pools, stats, resources, serve=ROUTES in components)
    app.router.add_routes(resources.public_routes)
    if DASHBOARD in components:
        from dashboard import build_dashboard  # a worker-only node never loads it

        app.add_subapp("/dashboard", build_dashboard(settings, resources.registry, registry))
    resources.admin_routes.extend(state_routes(state, node))  # /admin/node/state
    if resources.admin_routes:
        admin = admin_app(node, settings.node.admin_token, resources.admin_routes)
        app.add_subapp("/admin", admin)
    app.cleanup_ctx.append(resources.lifespan)
    app.cleanup_ctx.append(pools_context)
    if composes:
        app.cleanup_ctx.append(health_context(pools))  # stopped before the pools close
    resources = list(app.router.resources())
    app.router.add_route(
        "*", "/{tail:.*}", unmatched_endpoint(node, resources), expect_handler=expect_continue
    )
    return app


def add_routes(
    app: web.Application,
    settings: Settings,
    plugins: Catalogue,
    pools: dict[str, UpstreamPool],
    stats: NodeStats,
    resources: Resources,
    *,
    serve: bool = True,
) -> None:
    """Compose every route's pipeline; with `serve`, answer it over HTTP too."""
    trusted = resources.trusted
    for i, route in enumerate(settings.routes):
        path = join("routes", i)
        ctx = BuildContext(settings, route, path, resources, pools)
        chain = build_plugins(ctx, plugins)
        stats.plugins.extend((route.label, plugin) for plugin in chain)
        provided = {
            kind: functools.partial(factory, ctx=ctx) for kind, factory in plugins.targets.items()
        }
        target = build_target(
            route.target, join(path, "target"), pools, trusted, route.strip_prefix, provided
        )
        if hasattr(target, "snapshot") and hasattr(target, "name"):
            stats.plugins.append((route.label, target))  # a plugin's target reports as it
        fast = Route(
            compose(chain, target),
            stats.route(route.label),
            settings.node.name,
            route.max_body or settings.node.max_body,
        )
        endpoint = route_endpoint(fast.handler, fast.stats, fast.node, fast.max_body)
        if not serve:
            continue
        app[FAST_ROUTES].add(endpoint, fast)
        try:
            for method in route_methods(route):
                app.router.add_route(method, route.path, endpoint, expect_handler=expect_continue)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{join(path, 'path')}: {exc}") from None


def upstream_client(pool: UpstreamSettings) -> UpstreamClient:
    """The lean client for plain-http pools; aiohttp's for TLS and for members with
    credentials in their URL (which aiohttp sends as Basic auth)."""
    if all(target.startswith("http://") and "@" not in target for target in pool.targets):
        return FastClient(pool)
    return AiohttpClient(pool)


async def pools_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await close_pools(app[POOLS])
