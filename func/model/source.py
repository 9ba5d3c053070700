"""Where the model file comes from: MODEL_PATH as a local path or a URI, made a local file.

A plain path is used where it is, and so is a `file://` URI. `https://`, `s3://`, `gs://`
(any fsspec scheme whose backend is installed: requirements-stores.txt) and MLflow
registry references (`models:/<name>/<version>`, `models:/<name>@<alias>`, resolved
over the REST API at MLFLOW_TRACKING_URI) are fetched once per pod into MODEL_CACHE_DIR:
streamed into a temporary file, checked against MODEL_SHA256 when it is set, then
renamed into place, so a reader never sees half a file and a file with the wrong digest
never enters the cache. Workers of one pod take a file lock, so one of them fetches and
the others find the file. The registry client loads only for a `models:/` reference, so
a local model's cold start pays nothing for it.

A champion pointer (`<store>/<name>/champion.json`, func/model/champion.py) is read on
every start, as an alias is, and the model it names is fetched into the cache and
checked against the digest the pointer gives (MODEL_SHA256, when set, wins).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

MODEL_SUFFIXES = (".onnx", ".skops", ".joblib", ".pkl", ".pickle")
CHUNK = 1 << 20


class FetchError(Exception):
    """The model could not be fetched; the message says from where and why."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def is_uri(location: str) -> bool:
    """A scheme of two letters or more: `C:` style drive letters stay paths."""
    return len(urllib.parse.urlsplit(location).scheme) > 1


def local_model_file(location: str, cache_dir: str, tracking_uri: str | None, sha256: str | None) -> Path:
    """The local file to load for MODEL_PATH=`location`, fetched into the cache if remote."""
    if location.lower().endswith(".json"):
        from .champion import is_pointer

        if is_pointer(location):
            return _from_pointer(location, cache_dir, tracking_uri, sha256)
    if not is_uri(location):
        return Path(location)
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme == "models":
        return _from_registry(location, cache_dir, tracking_uri, sha256)
    return _cached(location, location, cache_dir, sha256, lambda: _open_fsspec(location))


def _from_registry(location: str, cache_dir: str, tracking_uri: str | None, sha256: str | None) -> Path:
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

    def open_source() -> AbstractContextManager[IO[bytes]]:
        if source.startswith(ARTIFACTS_SCHEME):
            return _open_url(registry.artifact_url(source), registry.timeout)
        return _open_fsspec(source)

    where = f"{location} (version {version.version}, {source})"
    return _cached(where, source, cache_dir, sha256, open_source)


def _from_pointer(location: str, cache_dir: str, tracking_uri: str | None, sha256: str | None) -> Path:
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
        return _from_registry(target, cache_dir, tracking_uri, digest)
    return _cached(f"{location} ({target})", target, cache_dir, digest, lambda: _open_fsspec(target), required_by)


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
    open_source: Callable[[], AbstractContextManager[IO[bytes]]],
    required_by: str = "MODEL_SHA256",
) -> Path:
    """The cached copy of `source`, fetched first if this pod has none; `required_by`
    names where `sha256` came from, for the error."""
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    name = urllib.parse.unquote(urllib.parse.urlsplit(source).path).rstrip("/").rsplit("/", 1)[-1] or "model"
    folder = Path(cache_dir)
    target = folder / f"{key}-{name}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f".{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_file():
                _fetch(where, open_source, target, sha256, required_by)
    except OSError as exc:
        raise FetchError(f"MODEL_PATH={where}: cannot write MODEL_CACHE_DIR={cache_dir} ({exc})") from None
    return target


def _fetch(
    where: str,
    open_source: Callable[[], AbstractContextManager[IO[bytes]]],
    target: Path,
    sha256: str | None,
    required_by: str,
) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with open_source() as src:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        digest.update(block)
                        out.write(block)
            except FetchError:
                raise
            except FileNotFoundError as exc:
                cause = exc.__cause__
                # fsspec's http backend reports a refused connection as not found, too
                if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                    raise FetchError(
                        f"MODEL_PATH={where}: cannot fetch ({first_line(cause)})", retryable=True
                    ) from None
                raise FetchError(f"MODEL_PATH={where}: not found") from None
            except ImportError as exc:
                raise FetchError(
                    f"MODEL_PATH={where}: no fsspec backend for this scheme is installed "
                    f"(pip install -r requirements-stores.txt): {first_line(exc)}"
                ) from None
            except Exception as exc:  # network, permission, protocol: the store's own words
                raise FetchError(f"MODEL_PATH={where}: cannot fetch ({first_line(exc)})", retryable=True) from None
        if sha256 and digest.hexdigest() != sha256:
            raise FetchError(
                f"MODEL_PATH={where}: sha256 is {digest.hexdigest()}, but {required_by} requires {sha256}; "
                "refusing to load it"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)


def _open_fsspec(uri: str) -> AbstractContextManager[IO[bytes]]:
    fs, path = _filesystem(uri)
    return fs.open(path, "rb")


def _open_url(url: str, timeout: float) -> AbstractContextManager[IO[bytes]]:
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(url) from None
        raise


def first_line(exc: BaseException) -> str:
    """An exception as one short line, for a one-line log or error message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
