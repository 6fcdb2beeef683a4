"""Build the Quart-trio application from its route modules."""

from __future__ import annotations

from appliance.api.context import Services
from appliance.api.errors import install_error_handlers
from appliance.api.middleware.asgi import ApplianceQuart
from appliance.api.middleware.auth import wrap_auth
from appliance.api.middleware.security import wrap_security
from appliance.api.routes import anthropic, metrics, models, native, openai, responses, transfer
from appliance.api.routes.metrics import wrap_http_metrics

# Each module exposes `bp`, a quart Blueprint. Listed here so the layout reads as the API.
ROUTE_MODULES = (
    native,  # /, /api/version, generate, chat, embed, embeddings, ps
    models,  # tags, show, copy, delete, create, blobs
    transfer,  # pull, push
    openai,  # /v1/*
    metrics,  # /metrics
    responses,  # /v1/responses
    anthropic,  # /v1/messages, /v1/messages/count_tokens
)


def create_app(services: Services) -> ApplianceQuart:
    app = ApplianceQuart("llm-appliance")
    app.config["RESPONSE_TIMEOUT"] = None  # streams may run for hours; never cut them at 60 s
    app.config["BODY_TIMEOUT"] = 600
    app.config["MAX_CONTENT_LENGTH"] = None
    app.url_map.strict_slashes = False
    app.extensions["appliance"] = services
    for module in ROUTE_MODULES:
        app.register_blueprint(module.bp)
    install_error_handlers(app)
    # Outermost first: count every answer, then CORS and allowed hosts, then API keys.
    asgi = wrap_auth(app.asgi_app, services.settings)
    asgi = wrap_security(asgi, services.settings)
    counters = services.extras.get("metrics")
    if counters is not None:
        asgi = wrap_http_metrics(asgi, counters, app.url_map)
    app.asgi_app = asgi  # type: ignore[method-assign]
    return app
