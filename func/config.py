"""One typed Settings object, read from the environment once."""

from __future__ import annotations

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


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected 0 or 1")


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
    mlflow_tracking_uri: str | None = None
    allow_pickle: bool = False
    skops_trusted: tuple[str, ...] = ()
    max_request_bytes: int = 10 * 1024 * 1024
    max_rows: int = 10_000
    ce_source: str = "/warmstart/local"
    k_sink: str | None = None
    drift_threshold: float = 0.2
    drift_window: int = 1000
    batch_allow: tuple[str, ...] = ("./data/",)
    batch_wait_s: float = 30.0
    adaptive_batch_rows: int = 0
    adaptive_batch_delay_ms: float = 2.0
    k_service: str | None = None
    k_revision: str | None = None
    k_configuration: str | None = None
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    # onnxruntime threads for one large input: by default the CPUs this process may use
    inference_threads: int = field(default_factory=available_cpus)
    graceful_timeout: int = 25

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: os.environ); raise ConfigError on bad values."""
        env = os.environ if env is None else env
        k_service = env.get("K_SERVICE") or None
        sha = (env.get("MODEL_SHA256") or "").strip().lower() or None
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise ConfigError(f"MODEL_SHA256={sha!r}: expected 64 hexadecimal digits")
        allow = tuple(p.strip() for p in env.get("BATCH_ALLOW", "./data/").split(",") if p.strip())
        return cls(
            host=env.get("HOST") or "0.0.0.0",
            port=_int(env, "PORT", 8080, minimum=1),
            model_path=env.get("MODEL_PATH") or "models/model.onnx",
            model_name=env.get("MODEL_NAME") or None,
            model_version=env.get("MODEL_VERSION") or None,
            model_sha256=sha,
            model_cache_dir=env.get("MODEL_CACHE_DIR") or "/tmp/warmstart-models",
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            allow_pickle=_flag(env, "ALLOW_PICKLE"),
            skops_trusted=tuple(t.strip() for t in env.get("SKOPS_TRUSTED", "").split(",") if t.strip()),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 10 * 1024 * 1024, minimum=1),
            max_rows=_int(env, "MAX_ROWS", 10_000, minimum=1),
            ce_source=env.get("CE_SOURCE") or f"/warmstart/{k_service or socket.gethostname()}",
            k_sink=env.get("K_SINK") or None,
            drift_threshold=_float(env, "DRIFT_THRESHOLD", 0.2),
            drift_window=_int(env, "DRIFT_WINDOW", 1000, minimum=1),
            batch_allow=allow,
            batch_wait_s=_float(env, "BATCH_WAIT_S", 30.0),
            adaptive_batch_rows=_int(env, "ADAPTIVE_BATCH_ROWS", 0),
            adaptive_batch_delay_ms=_float(env, "ADAPTIVE_BATCH_DELAY_MS", 2.0),
            k_service=k_service,
            k_revision=env.get("K_REVISION") or None,
            k_configuration=env.get("K_CONFIGURATION") or None,
            workers=_int(env, "WORKERS", DEFAULT_WORKERS, minimum=1),
            threads=_int(env, "THREADS", DEFAULT_THREADS, minimum=1),
            inference_threads=_int(env, "INFERENCE_THREADS", available_cpus(), minimum=1),
            graceful_timeout=_int(env, "GRACEFUL_TIMEOUT", 25, minimum=1),
        )
