"""The built-in plugins, one package each. Each declares itself with a `PLUGIN` spec
(node/plugin.py), registered as a `scalenode.plugins` entry point in pyproject.toml, the
same way a plugin in another package registers: node/ imports none of them."""
