"""create_app(): the HTTP routes. Each route decodes, predicts, and encodes; nothing else."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import codecs, events, openapi, v2
from .config import Settings
from .errors import NotReady, WarmstartError
from .serving import Serving
from .state import ServingState

log = logging.getLogger("warmstart.app")

_WERKZEUG_CODES = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def create_app(settings: Settings | None = None, *, load: bool = True) -> Flask:
    """Build the WSGI app. With `load`, the model starts loading on a background thread;
    `app.extensions["warmstart"]` is the ServingState that readiness reports."""
    settings = settings or Settings.from_env()
    state = ServingState(settings)
    serving = Serving(settings, state)
    respond = serving.respond
    app = Flask("warmstart")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["warmstart"] = state
    # The server's own error responses (func/worker.py) carry the same model headers.
    app.extensions["warmstart.serving"] = serving

    @app.errorhandler(WarmstartError)
    def warmstart_error(exc: WarmstartError) -> Response:
        return respond(exc.body(), exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        headers = None
        if status == 413:
            message = f"request body is larger than MAX_REQUEST_BYTES={settings.max_request_bytes} bytes"
        elif status == 404:
            message = f"no route {request.method} {request.path}; see /openapi.json"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}; see /openapi.json"
            if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
                headers = {"Allow": ", ".join(exc.valid_methods)}
        body = {"error": {"code": _WERKZEUG_CODES.get(status, "http_error"), "message": message}}
        return respond(body, status, headers)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return respond({"error": {"code": "internal", "message": "internal error; see the server log"}}, 500)

    event_handler = events.EventHandler(serving)

    @app.post("/")
    def root() -> Response:
        if events.is_cloudevent(request):
            return event_handler.handle()
        return predict()

    @app.post("/predict")
    def predict() -> Response:
        body = serving.json_bytes()
        model = state.model
        rows, single = codecs.decode_predict_body(body, model.card, settings.max_rows)
        return respond(codecs.prediction_body(serving.predict(model, rows), model.card, single))

    @app.post("/v1/models/<name>:predict")
    def v1_predict(name: str) -> Response:
        body = serving.json_bytes()
        model = serving.model_named(name)
        rows = codecs.decode_v1_body(body, model.card, settings.max_rows)
        return respond({"predictions": serving.predict(model, rows).labels})

    @app.get("/v1/models")
    def v1_models() -> Response:
        return respond({"models": [state.model.card.name]})

    @app.get("/v1/models/<name>")
    def v1_model(name: str) -> Response:
        return respond({"name": serving.model_named(name).card.name, "ready": state.ready})

    @app.get("/model")
    def model_card() -> Response:
        model = state.model
        return respond({**model.card.to_dict(), "format": model.format})

    @app.get("/health/liveness")
    def liveness() -> Response:
        return respond({"status": "alive"})

    @app.get("/health/readiness")
    def readiness() -> Response:
        if not state.ready:
            raise NotReady(state.not_ready_reason())
        return respond({"status": "ready"})

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        model = state.loaded
        return respond(openapi.document(model.card if model else None))

    v2.register(app, serving)
    if load:
        state.start_loading()
    return app
