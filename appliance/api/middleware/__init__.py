"""ASGI layers around the routes: ASGI fixes, CORS and hosts, API keys."""
