"""`GET /metrics` (Prometheus text format) and the ASGI middleware that counts HTTP answers.

The counting sits outside every other middleware so answers that never reach a route (a 401 for a
missing key, a 403 for a foreign Origin) are counted too. It labels a request with the route
pattern it matched (`/v1/models/<path:model>`), never the raw path, so a scanner cannot grow the
series without bound. With metrics off (`LLM_APPLIANCE_METRICS=0`) the path answers Go's plain
404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, abort
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from appliance.api.context import services
from appliance.api.middleware.security import ASGIApp, Message, Receive, Scope, Send
from appliance.serving.metrics import CONTENT_TYPE, Metrics

bp = Blueprint("metrics", __name__)

UNMATCHED = "unmatched"


@bp.route("/metrics", methods=["GET", "HEAD"])
async def metrics() -> Response:
    registry: Metrics | None = services().extras.get("metrics")
    if registry is None:
        abort(404)
    return Response(registry.render(), status=200, content_type=CONTENT_TYPE)


class HTTPMetricsMiddleware:
    """Count each answered request by (route pattern, method, status)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, url_map: Map) -> None:
        self.app = app
        self.metrics = metrics
        self.adapter = url_map.bind("localhost")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        route = self.route_of(scope.get("path", "/"), method)
        status: int | None = None

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if status is not None:  # no answer started: the client went away first
                self.metrics.http_request(route, method, status)

    def route_of(self, path: str, method: str) -> str:
        """The pattern of the rule `path` matches, or "unmatched" (404, 405, redirects)."""
        try:
            rule, _ = self.adapter.match(path, method=method, return_rule=True)
        except HTTPException:
            return UNMATCHED
        return str(rule.rule)


def wrap_http_metrics(asgi_app: ASGIApp, metrics: Metrics, url_map: Any) -> ASGIApp:
    """`asgi_app` with every answer counted in `metrics`."""
    return HTTPMetricsMiddleware(asgi_app, metrics, url_map)
