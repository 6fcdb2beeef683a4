"""Build the Quart-trio application from its route modules."""

from __future__ import annotations

import importlib

from appliance.api.asgi import ApplianceQuart
from appliance.api.context import Services
from appliance.api.errors import install_error_handlers
from appliance.api.security import wrap_security

# Each module exposes `bp`, a quart Blueprint. Listed here so the layout reads as the API.
ROUTE_MODULES = (
    "appliance.api.native",  # /, /api/version, generate, chat, embed, embeddings, ps
    "appliance.api.models",  # tags, show, copy, delete, create, blobs
    "appliance.api.transfer",  # pull, push
    "appliance.api.openai",  # /v1/*
)


def create_app(services: Services) -> ApplianceQuart:
    app = ApplianceQuart("llm-appliance")
    app.config["RESPONSE_TIMEOUT"] = None  # streams may run for hours; never cut them at 60 s
    app.config["BODY_TIMEOUT"] = 600
    app.config["MAX_CONTENT_LENGTH"] = None
    app.url_map.strict_slashes = False
    app.extensions["appliance"] = services
    for name in ROUTE_MODULES:
        app.register_blueprint(importlib.import_module(name).bp)
    install_error_handlers(app)
    app.asgi_app = wrap_security(app.asgi_app, services.settings)  # type: ignore[method-assign]
    return app
