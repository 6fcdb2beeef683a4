"""Domain errors that users can act on.

Each carries the HTTP status and the exact message Ollama answers with; `appliance.api.errors`
is the one place that turns them into responses. Raise these anywhere (store, scheduler, routes);
never build an error response by hand.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """A failure with a status and a message meant for the client."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(ApplianceError):
    status = 400


class Unauthorized(ApplianceError):
    """No valid API key (only when keys are configured); answered with `WWW-Authenticate`."""

    status = 401

    def __init__(self, message: str = "unauthorized") -> None:
        super().__init__(message)


class Forbidden(ApplianceError):
    status = 403


class NotFound(ApplianceError):
    status = 404


class Conflict(ApplianceError):
    status = 409


class PayloadTooLarge(ApplianceError):
    """A request body over its limit, refused before (or as soon as) it passes the limit."""

    status = 413

    def __init__(self, message: str = "request body too large") -> None:
        super().__init__(message)


class RequestCanceled(ApplianceError):
    """The client went away while its request waited (Ollama's 499)."""

    status = 499

    def __init__(self, message: str = "request canceled") -> None:
        super().__init__(message)


class ServerBusy(ApplianceError):
    """The bounded queue is full; the client should retry later."""

    status = 503

    def __init__(
        self,
        message: str = "server busy, please try again.  maximum pending requests exceeded",
        *,
        retry_after: int = 1,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoadError(ApplianceError):
    status = 500


class ShuttingDown(ApplianceError):
    status = 503

    def __init__(self, message: str = "server is shutting down") -> None:
        super().__init__(message)
