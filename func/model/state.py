"""What a serving process knows about itself: is the model loaded, and is it stopping.

The model loads on a background thread so the process answers liveness at once (a
slow model must not make Knative restart the pod) while readiness stays 503 until the
model is loaded and warmed up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..config import Settings
from ..errors import NotReady
from . import readiness
from .runtime import Model, ModelLoadError, load_model

log = logging.getLogger("warmstart.state")


class ServingState:
    def __init__(self, settings: Settings, on_loaded: Callable[[Model, float], None] | None = None) -> None:
        """`on_loaded(model, seconds)` runs once the model is loaded and warmed up."""
        self.settings = settings
        self._on_loaded = on_loaded
        self._siblings_seen_loaded = False
        self._model: Model | None = None
        self.load_error: str | None = None
        # This worker loaded other bytes than the pod serves (func/model/readiness.py's pin).
        self.model_changed = False
        self.shutting_down = False
        self._loaded = threading.Event()

    @property
    def model(self) -> Model:
        """The loaded model; raises NotReady (503) while loading or after a failed load.

        Shutdown only turns readiness off: requests already accepted while the server
        drains are still answered, so none is lost."""
        model = self._model
        if model is None:
            raise NotReady(self.not_ready_reason())
        return model

    @property
    def loaded(self) -> Model | None:
        """The model if it has loaded, else None."""
        return self._model

    @property
    def ready(self) -> bool:
        """This process can predict and so can every other worker of the server."""
        return self._model is not None and not self.shutting_down and self._siblings_loaded()

    def _siblings_loaded(self) -> bool:
        # Once every first-generation worker has loaded, no mark comes back (replacements
        # get none): stop looking at the folder on every probe.
        if not self._siblings_seen_loaded:
            shared = self.settings.shared_dir
            self._siblings_seen_loaded = shared is None or readiness.all_loaded(shared)
        return self._siblings_seen_loaded

    def not_ready_reason(self) -> str:
        if self.shutting_down:
            return "the server is shutting down; retry on another instance"
        if self.load_error:
            # The reason names server paths and digests: it goes to the log, not to callers.
            return "the model failed to load; the server log says why"
        if self._model is not None:
            return "another worker of this server is still loading the model"
        return "the model is still loading"

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="model-loader", daemon=True)
        thread.start()
        return thread

    def refuse(self, reason: str) -> None:
        """Serve liveness only: the process cannot serve the model (`reason` is logged)."""
        self.load_error = reason
        log.error("model not loaded, readiness stays 503: %s", reason)
        self._loaded.set()

    def load(self) -> None:
        """Load and warm up the model; on failure log one line and stay not-ready."""
        started = time.perf_counter()
        try:
            model = load_model(self.settings)
            shared = self.settings.shared_dir
            pinned = readiness.pin_model(shared, model.sha256) if shared else model.sha256
            if pinned != model.sha256:
                self.model_changed = True
                raise ModelLoadError(
                    f"MODEL_PATH={self.settings.model_path}: this worker loaded sha256 {model.sha256}, but the "
                    f"pod serves {pinned}; the file changed after the pod started"
                )
            seconds = time.perf_counter() - started
            if self._on_loaded is not None:
                self._on_loaded(model, seconds)  # may find the shared folder full
        except ModelLoadError as exc:
            self.load_error = str(exc)
            log.error("model not loaded, readiness stays 503: %s", exc)
        except Exception as exc:  # any other failure must not crash-loop the pod either
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model not loaded, readiness stays 503: %s", self.load_error)
        else:
            self._model = model
            log.info(
                "model %s version %s (%s, answered by %s) ready in %.3f s",
                model.card.name,
                model.card.version,
                model.format,
                model.evaluator,
                seconds,
            )
        finally:
            self._loaded.set()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading has finished, successfully or not."""
        return self._loaded.wait(timeout)

    def begin_shutdown(self) -> None:
        if not self.shutting_down:
            self.shutting_down = True
            log.info("shutdown started: readiness is 503, finishing in-flight requests")
