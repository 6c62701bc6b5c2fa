"""Every error the node raises on purpose, and the JSON reply each one becomes."""

from __future__ import annotations


class ConfigError(Exception):
    """A bad setting, found before the port binds. The message starts with the key path."""


class BackendUnavailable(Exception):
    """A backend (Redis, RabbitMQ, PostgreSQL) did not answer; driver errors are chained."""


class Rejected(Exception):
    """A call answered with an error status instead of reaching its target.

    Plugins and targets raise it (or a subclass); one outer layer turns it into
    `{"error": code, "detail": detail}` with `status` and `headers`.
    """

    status = 400
    code = "bad_request"

    def __init__(
        self,
        detail: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}


class NotFound(Rejected):
    status = 404
    code = "not_found"


class MethodNotAllowed(Rejected):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(Rejected):
    """The client stopped sending its request (node.body_timeout); the connection closes."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(Rejected):
    status = 413
    code = "payload_too_large"


class BadGateway(Rejected):
    status = 502
    code = "bad_gateway"


class UpstreamUnreachable(BadGateway):
    """A member refused the connection or could not be reached: nothing was sent to it, so
    any request, idempotent or not, may go to another member (nginx's `proxy_next_upstream
    error`)."""


class GatewayTimeout(Rejected):
    status = 504
    code = "gateway_timeout"


class ServiceUnavailable(Rejected):
    status = 503
    code = "service_unavailable"


class RateLimited(Rejected):
    status = 429
    code = "rate_limited"


class CircuitOpen(ServiceUnavailable):
    code = "circuit_open"
