"""The security suite uses the integration suite's nodes and upstreams."""

from integration.conftest import (  # noqa: F401
    node_factory,
    proxy_settings,
    upstream,
    upstream_factory,
)
