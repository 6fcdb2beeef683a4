"""The one exception the Go template package raises."""

from __future__ import annotations


class TemplateError(ValueError):
    """A template that is outside the supported subset, malformed, or fails while rendering."""
