"""The upstream stack: pools and their members, failover, the lean HTTP/1.1 client and its
exchange, the hash ring, active health checks, the reverse proxy target, pool settings."""
