"""The live cluster dashboard (templates, static files, WebSocket feed)."""
