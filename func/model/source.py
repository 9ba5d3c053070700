"""Where the model file comes from: MODEL_PATH as a local path or a URI, made a local file.

A plain path is used where it is, and so is a `file://` URI. `https://` (one streamed
GET), `s3://`, `gs://` (any fsspec scheme whose backend is installed:
requirements-stores.txt) and MLflow
registry references (`models:/<name>/<version>`, `models:/<name>@<alias>`, resolved
over the REST API at MLFLOW_TRACKING_URI) are fetched once per pod into MODEL_CACHE_DIR:
streamed into a temporary file, checked against MODEL_SHA256 when it is set, then
renamed into place, so a reader never sees half a file and a file with the wrong digest
never enters the cache. Workers of one pod take a file lock, so one of them fetches and
the others find the file (or its failure). A store that does not answer is tried again
with backoff, and every error says what it was: not found, refused, a refused redirect,
or unreachable (the only retryable one). The registry client loads only for a `models:/` reference, so
a local model's cold start pays nothing for it.

An ONNX model's forest file (`model.forest` beside `model.onnx` in the store or in a
registered version's folder, which makes a large tree ensemble ready at once:
func/model/forest.py) is fetched with it, once, if the store has one.

A champion pointer (`<store>/<name>/champion.json`, func/model/champion.py) is read on
every start, as an alias is, and the model it names is fetched into the cache and
checked against the digest the pointer gives (MODEL_SHA256, when set, wins).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..atomic_file import PART_SUFFIX, atomic_file, part_name

log = logging.getLogger("warmstart.model")

MODEL_SUFFIXES = (".onnx", ".skops", ".joblib", ".pkl", ".pickle")
CHUNK = 1 << 20
# Opens a store's file for reading, fresh on every call (an attempt each).
Opener = Callable[[], AbstractContextManager[IO[bytes]]]
# Between attempts: 1, 2, 4, 8 s... A store that answers 503 for a moment (a rolling
# restart, a throttled burst) is waited for; one that is down for good fails in seconds.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# HTTP answers that say "later", not "never".
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(Exception):
    """The model could not be fetched; the message says from where and why. `retryable`:
    the store did not answer or answered "later"; a missing file or a refused redirect
    is not."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Fetch:
    """How a model is fetched: attempts in all, and seconds without a byte before one
    attempt gives up (a stalled store)."""

    attempts: int = 5
    timeout: float = 30.0


def is_uri(location: str) -> bool:
    """A scheme of two letters or more: `C:` style drive letters stay paths."""
    return len(urllib.parse.urlsplit(location).scheme) > 1


def local_model_file(
    location: str, cache_dir: str, tracking_uri: str | None, sha256: str | None, fetch: Fetch = Fetch()
) -> Path:
    """The local file to load for MODEL_PATH=`location`, fetched into the cache if remote."""
    if location.lower().endswith(".json"):
        from .champion import is_pointer

        if is_pointer(location):
            return _from_pointer(location, cache_dir, tracking_uri, sha256, fetch)
    if not is_uri(location):
        return Path(location)
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme == "models":
        return _from_registry(location, cache_dir, tracking_uri, sha256, fetch)
    openers = _openers(fetch)
    return _cached(location, location, cache_dir, sha256, fetch, openers(location), forest=openers)


def _openers(fetch: Fetch) -> Callable[[str], Opener]:
    """The opener of a URI: http(s), one streamed GET of our own; any other scheme, its fsspec backend."""

    def opener(uri: str) -> Opener:
        if urllib.parse.urlsplit(uri).scheme in ("http", "https"):
            return lambda: _open_url(uri, fetch.timeout)
        return lambda: _open_fsspec(uri)

    return opener


def _from_registry(location: str, cache_dir: str, tracking_uri: str | None, sha256: str | None, fetch: Fetch) -> Path:
    from .registry import ARTIFACTS_SCHEME, Registry, RegistryError

    try:
        registry = Registry(tracking_uri)
        version = registry.resolve(location)
        folder = registry.download_uri(version)
        source = folder if folder.lower().endswith(MODEL_SUFFIXES) else f"{folder}/{_model_file_in(registry, folder)}"
    except (RegistryError, ValueError) as exc:
        raise FetchError(f"MODEL_PATH={location}: {exc}", getattr(exc, "retryable", False)) from None
    except Exception as exc:  # listing a version's folder in its own store (s3://, gs://...)
        raise FetchError(f"MODEL_PATH={location}: cannot list its files ({first_line(exc)})", True) from None

    def opener(uri: str) -> Opener:
        """A version's file: through the server's artifact proxy, or in its own store (s3://...)."""
        if uri.startswith(ARTIFACTS_SCHEME):
            return lambda: _open_url(registry.artifact_url(uri), fetch.timeout)
        return lambda: _open_fsspec(uri)

    where = f"{location} (version {version.version}, {source})"
    return _cached(where, source, cache_dir, sha256, fetch, opener(source), forest=opener)


def _from_pointer(location: str, cache_dir: str, tracking_uri: str | None, sha256: str | None, fetch: Fetch) -> Path:
    """The model a champion pointer names, fetched into the cache under its own URI."""
    from .champion import ChampionError, is_pointer, read

    try:
        named = read(location)
    except ChampionError as exc:
        raise FetchError(f"MODEL_PATH={location}: {exc}", exc.retryable) from None
    if named is None:
        raise FetchError(f"MODEL_PATH={location}: no such champion pointer; a promotion writes it")
    target, digest = named["uri"], sha256 or named["sha256"].lower()
    required_by = "MODEL_SHA256" if sha256 else "the champion pointer"
    if is_pointer(target):
        raise FetchError(f"MODEL_PATH={location}: the pointer names another pointer, {target}; it must name a model")
    if target.startswith("models:/"):
        return _from_registry(target, cache_dir, tracking_uri, digest, fetch)
    where = f"{location} ({target})"
    openers = _openers(fetch)
    return _cached(where, target, cache_dir, digest, fetch, openers(target), required_by, forest=openers)


def _model_file_in(registry: Any, folder: str) -> str:
    """The one model file in a registered version's folder."""
    from .registry import ARTIFACTS_SCHEME

    if folder.startswith(ARTIFACTS_SCHEME):
        names = registry.list_artifacts(folder)
    else:
        fs, path = _filesystem(folder)
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    models = sorted(n for n in names if n.lower().endswith(MODEL_SUFFIXES))
    if len(models) != 1:
        found = ", ".join(names) or "nothing"
        raise ValueError(f"{folder} must hold exactly one model file ({', '.join(MODEL_SUFFIXES)}); it holds {found}")
    return models[0]


def _cached(
    where: str,
    source: str,
    cache_dir: str,
    sha256: str | None,
    fetch: Fetch,
    open_source: Opener,
    required_by: str = "MODEL_SHA256",
    forest: Callable[[str], Opener] | None = None,
) -> Path:
    """The cached copy of `source`, fetched first if this pod has none; `required_by`
    names where `sha256` came from, for the error. `forest`, the opener of a URI in the
    model's store: fetch the ONNX model's forest file beside it too, if the store has
    one (_fetch_forest).

    The processes of a pod take one lock per source, so one fetches while the others
    wait and then find the file, or its failure: one fetch per pod, never one per
    worker in turn."""
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    name = urllib.parse.unquote(urllib.parse.urlsplit(source).path).rstrip("/").rsplit("/", 1)[-1] or "model"
    folder = Path(cache_dir)
    target = folder / f"{key}-{name}"
    failed = folder / f".{key}.failed"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f".{key}.lock").open("w") as lock:
            waiting_since = time.time()
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_file():
                _raise_failure_since(failed, waiting_since)
                # whoever wrote these was killed mid-fetch: nobody else holds the lock
                for stale in folder.glob(f"{part_name(target)}*{PART_SUFFIX}"):
                    stale.unlink(missing_ok=True)
                try:
                    _fetch_with_retries(where, open_source, target, sha256, fetch, required_by)
                except FetchError as exc:
                    failed.write_text(json.dumps({"message": str(exc), "retryable": exc.retryable}))
                    raise
                failed.unlink(missing_ok=True)
            if forest is not None:
                _fetch_forest(source, target, forest)
    except OSError as exc:
        raise FetchError(f"MODEL_PATH={where}: cannot write MODEL_CACHE_DIR={cache_dir} ({exc})") from None
    return target


def _fetch_forest(source: str, target: Path, opener: Callable[[str], Opener]) -> None:
    """The forest file beside an ONNX model in its store (`model.forest` beside
    `model.onnx`: func/model/forest.py), fetched once beside the cached model. It only
    makes a large model ready sooner, so one try, and a failure costs nothing but a log
    line; it names its model's sha256, which the runtime checks before using it."""
    parts = urllib.parse.urlsplit(source)
    if not parts.path.lower().endswith(".onnx"):
        return
    uri = urllib.parse.urlunsplit(parts._replace(path=parts.path[: -len(".onnx")] + ".forest"))
    forest = target.with_suffix(".forest")
    absent = target.with_name(f".{target.name}.no-forest")  # the store has none: ask once
    if forest.is_file() or absent.exists():
        return
    try:
        _fetch(uri, opener(uri), forest, None, "")
    except FetchError as exc:
        if not exc.retryable:
            absent.touch()
        log.info("no forest file fetched, onnxruntime alone will serve the model: %s", exc)


def _raise_failure_since(failed: Path, since: float) -> None:
    """The fetch another process of the pod failed while this one waited for the lock."""
    try:
        # a file's mtime lags the clock by up to a scheduler tick: a second's margin
        if failed.stat().st_mtime < since - 1.0:
            return  # an earlier start's (a restarted container tries again)
        record = json.loads(failed.read_text())
    except (OSError, ValueError):
        return
    raise FetchError(record["message"], bool(record["retryable"]))


def _fetch_with_retries(
    where: str,
    open_source: Opener,
    target: Path,
    sha256: str | None,
    fetch: Fetch,
    required_by: str,
) -> None:
    log.info("fetching MODEL_PATH=%s into the cache", where)
    for attempt in range(1, fetch.attempts + 1):
        try:
            _fetch(where, open_source, target, sha256, required_by)
            return
        except FetchError as exc:
            if not exc.retryable or attempt == fetch.attempts:
                if exc.retryable and attempt > 1:
                    raise FetchError(f"{exc} ({attempt} attempts)", retryable=True) from None
                raise
            delay = min(FIRST_BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S)
            log.warning("%s; attempt %d of %d, next in %g s", exc, attempt, fetch.attempts, delay)
            time.sleep(delay)


def _fetch(
    where: str,
    open_source: Opener,
    target: Path,
    sha256: str | None,
    required_by: str,
) -> None:
    digest = hashlib.sha256()
    with atomic_file(target) as out:
        try:
            with open_source() as src:
                for block in iter(lambda: src.read(CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        except FetchError as exc:
            raise FetchError(f"MODEL_PATH={where}: {exc}", exc.retryable) from None
        except FileNotFoundError as exc:
            cause = exc.__cause__
            # fsspec's backends report a refused connection as not found, too
            if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                raise FetchError(f"MODEL_PATH={where}: unreachable ({first_line(cause)})", retryable=True) from None
            raise FetchError(f"MODEL_PATH={where}: not found") from None
        except ImportError as exc:
            raise FetchError(
                f"MODEL_PATH={where}: no fsspec backend for this scheme is installed "
                f"(pip install -r requirements-stores.txt): {first_line(exc)}"
            ) from None
        except Exception as exc:  # network, permission, protocol: the store's own words
            raise FetchError(f"MODEL_PATH={where}: unreachable ({first_line(exc)})", retryable=True) from None
        if sha256 and digest.hexdigest() != sha256:
            raise FetchError(
                f"MODEL_PATH={where}: sha256 is {digest.hexdigest()}, but {required_by} requires {sha256}; "
                "refusing to load it"
            )


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)


def _open_fsspec(uri: str) -> AbstractContextManager[IO[bytes]]:
    fs, path = _filesystem(uri)
    return fs.open(path, "rb")


def _open_url(url: str, timeout: float) -> AbstractContextManager[IO[bytes]]:
    """A plain GET whose body is read as it arrives: no Range requests, which some
    servers ignore, and `timeout` seconds at most without a byte. Redirects to http(s)
    are followed; a loop, or one to another scheme (file://), is refused and said so."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            raise FetchError("not found") from None
        if 300 <= exc.code < 400:
            raise FetchError(f"refused redirect ({exc.code} {exc.reason})") from None
        if exc.code in RETRY_STATUS:
            raise FetchError(f"unreachable (the store answered {exc.code} {exc.reason})", retryable=True) from None
        raise FetchError(f"refused (the store answered {exc.code} {exc.reason})") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"unreachable ({exc.reason})", retryable=True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"unreachable ({first_line(exc)})", retryable=True) from None


def first_line(exc: BaseException) -> str:
    """An exception as one short line, for a one-line log or error message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
