"""A user's own package, outside Scalenode: see signing.py and docs/writing-a-plugin.md."""
