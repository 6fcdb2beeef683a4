"""The services a route needs, reachable from inside a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import current_app

if TYPE_CHECKING:
    from appliance.serving.scheduler import Scheduler
    from appliance.settings.config import Settings
    from appliance.store.store import Store


@dataclass
class Services:
    """Everything long-lived that routes use; built once by `appliance.host.server`."""

    settings: Settings
    store: Store
    scheduler: Scheduler
    extras: dict[str, Any] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    """What was warned about once for this server's life (removed options, a model's dropped
    tools): kept here, not in a module, so each server (and each test's) starts fresh."""


def services() -> Services:
    return current_app.extensions["appliance"]
