"""warmstart as a Knative Functions (func) Python function.

`func build` installs this repository as the package "function" and serves `new()` with
the func-python middleware (ASGI on Hypercorn). The object serves the same Flask app as
`python -m func`: one app, reached through an ASGI bridge.
"""

from __future__ import annotations

import logging
from typing import Any

from a2wsgi import WSGIMiddleware

from func.api.app import create_app
from func.config import Settings

log = logging.getLogger("warmstart.function")


class Function:
    """func-python's instanced function: start, handle, ready, alive, stop."""

    def __init__(self) -> None:
        self._asgi: Any = None
        self._state: Any = None

    def start(self, cfg: dict[str, str]) -> None:
        """Called once with the environment before traffic: build the app; the model
        loads on a thread, so liveness answers while readiness waits for it."""
        app = create_app(Settings.from_env(cfg))
        self._state = app.extensions["warmstart"]
        self._asgi = WSGIMiddleware(app)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)

    def alive(self) -> tuple[bool, str]:
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        if self._state is None:
            return False, "starting"
        return (True, "ready") if self._state.ready else (False, self._state.not_ready_reason())

    def stop(self) -> None:
        if self._state is not None:
            self._state.begin_shutdown()


def new() -> Function:
    return Function()
