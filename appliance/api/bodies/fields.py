"""Shared readers of typed JSON fields for the typed request bodies."""

from appliance.api.requests import field_of_type  # noqa: F401
