"""One typed Settings object, read from the environment once."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from .cpus import available_cpus

# Knative's queue-proxy forwards at most containerConcurrency requests per pod; two
# gunicorn processes with a few threads each keep both cores busy while one thread
# waits on the network. The benchmark (loadtests/bench.py) is what justifies them.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4


class ConfigError(ValueError):
    """An environment variable holds a value warmstart cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r}: expected a finite number")
    if minimum is not None and not value >= minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum:g}")
    return value


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default, minimum=0)
    if value > 1:
        raise ConfigError(f"{name}={env[name].strip()!r}: a rate, at most 1")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower() or ("1" if default else "0")
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected 0 or 1")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off", "warn": "warning"}
    value = aliases.get(raw, raw) if raw not in choices else raw
    if value not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


def _check_uri(uri: str, name: str) -> None:
    """A URI prefix fsspec can open here (its scheme's backend installed)."""
    import fsspec

    try:
        fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{name}={uri!r}: no filesystem for it here ({exc})") from None


LOG_LEVELS = ("debug", "info", "warning", "error")
ACCESS_LOG_CHOICES = ("on", "off", "all")


@dataclass(frozen=True)
class Settings:
    """Everything warmstart reads from its environment, parsed and checked."""

    host: str = "0.0.0.0"
    port: int = 8080
    model_path: str = "models/model.onnx"
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    # where models fetched from a URI are kept: one fetch per pod
    model_cache_dir: str = "/tmp/warmstart-models"
    # a fetch from a store: attempts in all (with backoff), seconds without a byte
    model_fetch_attempts: int = 5
    model_fetch_timeout_s: float = 30.0
    mlflow_tracking_uri: str | None = None
    allow_pickle: bool = False
    skops_trusted: tuple[str, ...] = ()
    max_request_bytes: int = 10 * 1024 * 1024
    max_rows: int = 10_000
    ce_source: str = "/warmstart/local"
    k_sink: str | None = None
    drift_threshold: float = 0.2
    drift_window: int = 1000
    # seconds a drift episode stays open (one event) while windows stay over the threshold
    drift_cooldown_s: float = 3600.0
    # on by default when the model card has reference statistics; 0 turns it off
    drift: bool = True
    batch_allow: tuple[str, ...] = ("./data/",)
    # a job running longer logs its rows so far this often
    batch_progress_s: float = 5.0
    adaptive_batch_rows: int = 0
    adaptive_batch_delay_ms: float = 2.0
    k_service: str | None = None
    k_revision: str | None = None
    k_configuration: str | None = None
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    # onnxruntime threads for one large input: by default the CPUs this process may use
    inference_threads: int = field(default_factory=available_cpus)
    # ONNX models up to this size get a second onnxruntime session for large inputs
    bulk_session_max_mb: float = 16.0
    graceful_timeout: int = 25
    log_level: str = "info"
    # Request metrics on /metrics; off only to measure what they cost (loadtests/bench.py).
    metrics: bool = True
    # "on": a JSON line per request; "all": probes and scrapes too; "off": none
    access_log: str = "on"
    # Seconds a worker keeps accepting new connections after SIGTERM (readiness already
    # 503), for clients that have not yet learned the instance is going away.
    drain_s: float = 1.0
    # Seconds a client has to send one whole request, header and body, from its first
    # byte; a slower one gets 408 and its connection closes.
    read_timeout: float = 30.0
    # Seconds a kept-alive connection is reused before a response closes it, so clients
    # spread again over workers that started after them.
    connection_max_age: float = 5.0
    # Where the server makes the folder its workers share (a writable emptyDir on a pod
    # with a read-only root filesystem); the system's temporary folder by default.
    shared_dir_base: str | None = None
    # Set by the server for its workers (func/server/shared_dir.py), not by the environment.
    shared_dir: str | None = None
    # Where predictions and feedback are logged (a URI prefix through fsspec); off when unset.
    prediction_log: str | None = None
    # The share of prediction requests logged (batch jobs: every 1/rate-th row).
    prediction_log_sample: float = 1.0
    # Seconds between parts a worker writes; a part is written sooner when its rows fill
    # a quarter of the buffer.
    prediction_log_flush_s: float = 10.0
    # Rows a worker holds for the log at most; past it rows are dropped and counted.
    prediction_log_buffer: int = 100_000
    # POST /feedback and warmstart.feedback.v1 (0 turns both off, and the recent index).
    feedback: bool = True
    # Rows each worker remembers to match feedback against (32 bytes each).
    feedback_recent: int = 131_072

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: os.environ); raise ConfigError on bad values."""
        env = os.environ if env is None else env
        k_service = env.get("K_SERVICE") or None
        sha = (env.get("MODEL_SHA256") or "").strip().lower() or None
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise ConfigError(f"MODEL_SHA256={sha!r}: expected 64 hexadecimal digits")
        allow = tuple(p.strip() for p in env.get("BATCH_ALLOW", "./data/").split(",") if p.strip())
        graceful_timeout = _int(env, "GRACEFUL_TIMEOUT", 25, minimum=1)
        drain_s = _float(env, "DRAIN_S", 1.0, minimum=0)
        if drain_s >= graceful_timeout:
            # accepting until the end would leave the last requests no time to finish
            raise ConfigError(f"DRAIN_S={drain_s:g}: must be less than GRACEFUL_TIMEOUT={graceful_timeout}")
        prediction_log = (env.get("PREDICTION_LOG") or "").strip() or None
        if prediction_log:
            _check_uri(prediction_log, "PREDICTION_LOG")
        return cls(
            host=env.get("HOST") or "0.0.0.0",
            port=_int(env, "PORT", 8080, minimum=1),
            model_path=env.get("MODEL_PATH") or "models/model.onnx",
            model_name=env.get("MODEL_NAME") or None,
            model_version=env.get("MODEL_VERSION") or None,
            model_sha256=sha,
            model_cache_dir=env.get("MODEL_CACHE_DIR") or "/tmp/warmstart-models",
            model_fetch_attempts=_int(env, "MODEL_FETCH_ATTEMPTS", 5, minimum=1),
            model_fetch_timeout_s=_float(env, "MODEL_FETCH_TIMEOUT_S", 30.0, minimum=0.1),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            allow_pickle=_flag(env, "ALLOW_PICKLE"),
            skops_trusted=tuple(t.strip() for t in env.get("SKOPS_TRUSTED", "").split(",") if t.strip()),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 10 * 1024 * 1024, minimum=1),
            max_rows=_int(env, "MAX_ROWS", 10_000, minimum=1),
            ce_source=env.get("CE_SOURCE") or f"/warmstart/{k_service or socket.gethostname()}",
            k_sink=env.get("K_SINK") or None,
            drift_threshold=_float(env, "DRIFT_THRESHOLD", 0.2),
            drift_window=_int(env, "DRIFT_WINDOW", 1000, minimum=1),
            drift_cooldown_s=_float(env, "DRIFT_COOLDOWN", 3600.0, minimum=0),
            drift=_flag(env, "DRIFT", default=True),
            batch_allow=allow,
            batch_progress_s=_float(env, "BATCH_PROGRESS_S", 5.0, minimum=0),
            adaptive_batch_rows=_int(env, "ADAPTIVE_BATCH_ROWS", 0),
            adaptive_batch_delay_ms=_float(env, "ADAPTIVE_BATCH_DELAY_MS", 2.0),
            k_service=k_service,
            k_revision=env.get("K_REVISION") or None,
            k_configuration=env.get("K_CONFIGURATION") or None,
            workers=_int(env, "WORKERS", DEFAULT_WORKERS, minimum=1),
            threads=_int(env, "THREADS", DEFAULT_THREADS, minimum=1),
            inference_threads=_int(env, "INFERENCE_THREADS", available_cpus(), minimum=1),
            bulk_session_max_mb=_float(env, "BULK_SESSION_MAX_MB", 16.0, minimum=0),
            graceful_timeout=graceful_timeout,
            drain_s=drain_s,
            read_timeout=_float(env, "READ_TIMEOUT", 30.0, minimum=0.1),
            connection_max_age=_float(env, "CONNECTION_MAX_AGE", 5.0, minimum=0),
            shared_dir_base=env.get("SHARED_DIR") or None,
            prediction_log=prediction_log,
            prediction_log_sample=_rate(env, "PREDICTION_LOG_SAMPLE", 1.0),
            prediction_log_flush_s=_float(env, "PREDICTION_LOG_FLUSH_S", 10.0, minimum=0.01),
            prediction_log_buffer=_int(env, "PREDICTION_LOG_BUFFER", 100_000, minimum=1),
            feedback=_flag(env, "FEEDBACK", default=True),
            feedback_recent=_int(env, "FEEDBACK_RECENT", 131_072, minimum=1),
            metrics=_flag(env, "METRICS", default=True),
            log_level=_choice(env, "LOG_LEVEL", "info", LOG_LEVELS),
            access_log=_choice(env, "ACCESS_LOG", "on", ACCESS_LOG_CHOICES),
        )
