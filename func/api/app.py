"""create_app(): the HTTP routes. Each route decodes, predicts, and encodes; nothing else."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, request
from flask.sessions import NullSession, SessionInterface
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter

from ..codecs import rows as codecs
from ..config import Settings
from ..errors import NotReady, WarmstartError, body_too_large
from ..explain.explainers import Explainers, explanation_body, usage
from ..model.runtime import Model
from ..model.state import ServingState
from ..observe.drift import DRIFT_EVENT, Drift
from ..observe.emit import Emitter
from ..observe.metrics import Metrics
from ..observe.observer import ObservedFlask, Observer
from ..process import process_started
from . import events, openapi, pages, v2
from .serving import Serving

log = logging.getLogger("warmstart.app")


class ModelNameConverter(BaseConverter):
    """A model name in a V1 path. A ':' starts the verb (`:predict`, `:explain`), so a
    name never holds one: GET /v1/models/m:predict is then a 405, not model 'm:predict'."""

    regex = "[^/:]+"


class NoSessions(SessionInterface):
    """warmstart keeps no sessions: every request shares one read-only null session,
    where Flask would look for a signing key and build a new one per request."""

    null = NullSession()

    def open_session(self, app: Flask, request: object) -> NullSession:
        return self.null

    def save_session(self, app: Flask, session: object, response: object) -> None:
        pass


_WERKZEUG_CODES = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def create_app(settings: Settings | None = None, *, load: bool = True, started: float | None = -1.0) -> Flask:
    """Build the WSGI app. With `load`, the model starts loading on a background thread;
    `app.extensions["warmstart"]` is the ServingState that readiness reports.

    `started` is when the server started (seconds since the epoch), for the startup
    metric: this process's own start by default; None for a worker that replaces another
    long after the start, whose readiness is no cold start."""
    settings = settings or Settings.from_env()
    metrics = Metrics(settings)
    started_at = process_started() if started == -1.0 else started

    emitter = Emitter(settings.k_sink, settings.ce_source, metrics.event_sent)

    def on_loaded(model: Model, seconds: float) -> None:
        card = model.card
        metrics.bind_model(card.name, card.version, model.sha256, model.card_version)
        serving.watch(model)
        if settings.drift:
            serving.drift = Drift(
                card,
                model.sha256,
                settings.k_revision,
                settings.shared_dir,
                settings.drift_window,
                settings.drift_threshold,
                settings.drift_cooldown_s,
                lambda event_id, data: emitter.send(DRIFT_EVENT, event_id, data, subject=card.name),
                metrics.model_labels,
            )
            metrics.add_collector(serving.drift)
        labels = metrics.model_labels()
        metrics.load_seconds.labels(*labels).set(seconds)
        if started_at is not None:
            metrics.startup_seconds.labels(*labels).set(time.time() - started_at)

    state = ServingState(settings, on_loaded)
    serving = Serving(settings, state, metrics)
    if metrics.problem:
        state.refuse(metrics.problem)
    elif load:
        # Before the routes are built: onnxruntime's import and sessions overlap the 20 ms
        # werkzeug spends compiling them.
        state.start_loading()
    respond = serving.respond
    app = ObservedFlask("warmstart")
    app.url_map.converters["model"] = ModelNameConverter
    app.session_interface = NoSessions()
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["warmstart"] = state
    # The server's own error responses (func/server/worker.py) carry the same model headers.
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
            message = body_too_large(settings.max_request_bytes).message
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

    observer = Observer(settings, metrics, lambda: serving.model_headers()["X-Model-Version"])
    observer.install(app)
    serving.tracing = observer.tracing
    event_handler = events.EventHandler(serving)

    @app.get("/metrics", endpoint="metrics")
    def scrape() -> Response:
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return Response(body, 200, {**serving.model_headers(), "Content-Type": content_type})

    @app.post("/")
    def root() -> Response:
        if events.is_cloudevent(request):
            return event_handler.handle()
        return predict()

    @app.post("/predict")
    def predict() -> Response:
        body = serving.json_bytes()
        model = state.model
        rows, single, request_id = codecs.decode_predict_body(body, model.card, settings.max_rows)
        return respond(codecs.prediction_body(serving.predict(model, rows, request_id), model.card, single))

    @app.post("/v1/models/<model:name>:predict")
    def v1_predict(name: str) -> Response:
        body = serving.json_bytes()
        model = serving.model_named(name)
        rows, request_id = codecs.decode_v1_body(body, model.card, settings.max_rows)
        return respond({"predictions": serving.predict(model, rows, request_id).labels})

    @app.post("/feedback")
    def feedback() -> Response:
        return respond(serving.take_feedback(codecs.parse_json(serving.json_bytes())))

    explainers = Explainers()

    @app.post("/explain")
    def explain_rows() -> Response:
        body = serving.json_bytes()
        model = state.model
        rows, _, _ = codecs.decode_predict_body(body, model.card, settings.max_rows)
        prediction, explanation = explainers.explain(model, rows, serving.predict)
        return respond(explanation_body(explanation, prediction, model.card))

    @app.get("/explain")
    def explain_page() -> Response:
        if pages.wants_html(request.accept_mimetypes):
            return serving.respond_bytes(*pages.page("explain"))
        return respond(usage(state.model.card), headers=pages.VARY)

    @app.post("/v1/models/<model:name>:explain")
    def v1_explain(name: str) -> Response:
        body = serving.json_bytes()
        model = serving.model_named(name)
        rows, _ = codecs.decode_v1_body(body, model.card, settings.max_rows)
        prediction, explanation = explainers.explain(model, rows, serving.predict)
        answer = explanation_body(explanation, prediction, model.card)
        return respond({"predictions": prediction.labels, **answer})

    @app.get("/v1/models")
    def v1_models() -> Response:
        return respond({"models": [state.model.card.name]})

    @app.get("/v1/models/<model:name>")
    def v1_model(name: str) -> Response:
        return respond({"name": serving.model_named(name).card.name, "ready": state.ready})

    @app.get("/model")
    def model_card() -> Response:
        model = state.model
        return respond({**model.card.to_dict(), "format": model.format, "evaluator": model.evaluator})

    @app.get("/health/liveness")
    def liveness() -> Response:
        return respond({"status": "alive"})

    @app.get("/health/readiness")
    def readiness() -> Response:
        if not state.ready:
            raise NotReady(state.not_ready_reason())
        return respond({"status": "ready"})

    @app.get("/drift")
    def drift() -> Response:
        if pages.wants_html(request.accept_mimetypes):
            return serving.respond_bytes(*pages.page("drift"))
        if state.loaded is None:
            raise NotReady(state.not_ready_reason())
        if serving.drift is None:
            return respond({"enabled": False, "reason": "drift detection is off (DRIFT=0)"}, headers=pages.VARY)
        return respond(serving.drift.report(), headers=pages.VARY)

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        model = state.loaded
        return respond(openapi.document(model.card if model else None))

    v2.register(app, serving)
    return app
