"""The security suite uses the integration suite's nodes and upstreams."""

from integration.conftest import node_factory, proxy_settings  # noqa: F401
