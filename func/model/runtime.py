"""The model runtime: load a model file, warm it up, predict on a 2-D float array.

ONNX models run on onnxruntime and never import scikit-learn (that import alone costs
more than our whole cold-start budget). skops and joblib models need scikit-learn and
are imported only when such a file is configured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import mmap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from .card import CARD_METADATA_KEY, CardError, ModelCard, sidecar_path
from .forest import Forest, forest_path, open_forest
from .source import Fetch, FetchError, local_model_file

log = logging.getLogger("warmstart.model")

ONNX_SUFFIXES = (".onnx",)
SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# From this many rows an input runs on INFERENCE_THREADS threads: below it, handing work to
# a thread pool costs more than it saves (measured: 1,000 rows take 755 us on one thread,
# 548 us on two; 10 rows take the same on both; 512 rows split in two 419-428 us, against
# 790-817 us on one thread).
BULK_ROWS = 512
# From this size an ONNX model's graph is looked at before its session is built (_lone_tree_ensemble).
LONE_TREES_CHECK_BYTES = 4 << 20


class ModelLoadError(Exception):
    """The model file cannot be served; the message says why and what to do. `retryable`:
    its store did not answer, so a later try may load it."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Prediction:
    """Model output for a batch of rows: one label per row and, for classifiers,
    one probability per class per row (columns in `card.class_labels` order)."""

    labels: np.ndarray
    probabilities: np.ndarray | None


class Model:
    """A loaded model and its card. `predict` takes float32 rows in card feature order."""

    def __init__(self, card: ModelCard, run: Callable[[np.ndarray, bool], Prediction], fmt: str) -> None:
        self.card = card
        self.format = fmt
        # The file it was loaded from: explanations read an ONNX model's trees from it.
        self.path: Path | None = None
        self._run = run
        # What answers: "onnxruntime", or "forest" (the mapped trees, func/model/forest.py)
        # until onnxruntime's session is built; the answers are the same.
        self.evaluator = fmt
        # The served file's digest: metrics, drift events and lineage name the exact model.
        self.sha256 = ""
        # The version the card itself gives, whatever MODEL_VERSION says.
        self.card_version = card.version

    def predict(self, rows: np.ndarray, one_thread: bool = False) -> Prediction:
        """`one_thread` keeps a large input on one thread, for a caller that keeps the
        other cores busy itself (a batch job parsing its next chunk)."""
        return self._run(rows, one_thread)

    def warm_up(self) -> None:
        """One inference on a plausible row so the first real request pays no lazy setup."""
        ref = self.card.reference
        row = [float(ref.get(n, {}).get("mean", 0.0)) for n in self.card.feature_names]
        self.predict(np.asarray([row], dtype=np.float32))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(settings: Settings) -> Model:
    """Fetch (if MODEL_PATH is a URI), load and warm up the model named by settings;
    raise ModelLoadError with the reason."""
    try:
        path = local_model_file(
            settings.model_path,
            settings.model_cache_dir,
            settings.mlflow_tracking_uri,
            settings.model_sha256,
            Fetch(settings.model_fetch_attempts, settings.model_fetch_timeout_s),
        )
    except FetchError as exc:
        raise ModelLoadError(str(exc), exc.retryable) from None
    if not path.is_file():
        raise ModelLoadError(f"MODEL_PATH={settings.model_path}: no such file")
    digest = file_sha256(path)
    if settings.model_sha256 and digest != settings.model_sha256:
        raise ModelLoadError(
            f"MODEL_PATH={settings.model_path}: sha256 is {digest}, but MODEL_SHA256 "
            f"requires {settings.model_sha256}; refusing to load it"
        )
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        bulk_session = path.stat().st_size <= settings.bulk_session_max_mb * 1e6
        model = _load_onnx(path, settings.inference_threads, digest, bulk_session)
    elif suffix in SKOPS_SUFFIXES:
        model = _load_skops(path, settings.skops_trusted)
    elif suffix in PICKLE_SUFFIXES:
        if not settings.allow_pickle:
            raise ModelLoadError(
                f"MODEL_PATH={settings.model_path}: joblib/pickle files run arbitrary code "
                "when loaded; set ALLOW_PICKLE=1 if you trust this file, or export it to "
                "ONNX (scripts/export_onnx.py) or skops"
            )
        model = _load_pickle(path)
    else:
        raise ModelLoadError(
            f"MODEL_PATH={settings.model_path}: unknown model format {suffix!r}; use .onnx, .skops, .joblib or .pkl"
        )
    overrides = {}
    if settings.model_name:
        overrides["name"] = settings.model_name
    if settings.model_version:
        overrides["version"] = settings.model_version
    if overrides:
        try:
            model.card = dataclasses.replace(model.card, **overrides)
        except CardError as exc:
            raise ModelLoadError(f"MODEL_NAME/MODEL_VERSION: {exc}") from None
    model.sha256 = digest
    model.path = path
    try:
        model.warm_up()
    except Exception as exc:  # a model that cannot predict one row is not servable
        raise ModelLoadError(f"MODEL_PATH={settings.model_path}: warm-up inference failed: {exc}") from exc
    return model


def _load_onnx(path: Path, bulk_threads: int, digest: str, bulk_session: bool = True) -> Model:
    """A model answering from its mapped forest at once, if it has a fresh one, while
    onnxruntime builds its session in the background; else from onnxruntime, once built.
    With `bulk_session`, a multi-threaded session for large inputs is built after the
    model is ready (until then they run on one thread)."""
    sessions = _OnnxSessions(path, bulk_threads, bulk_session)
    forest = open_forest(forest_path(path), digest)
    card = _forest_card(forest, path) if forest is not None else None
    if forest is None or card is None:
        sessions.optimize = not _lone_tree_ensemble(path)
        sessions.build()
        assert sessions.card is not None
        model = Model(sessions.card, sessions.run, "onnx")
        model.evaluator = "onnxruntime"
        sessions.start(model, build_first=False)
        return model
    sessions.forest = forest
    sessions.boolean = _boolean_labels(card)
    sessions.optimize = False  # the forest file vouches for a lone TreeEnsemble node
    model = Model(card, sessions.run, "onnx")
    model.evaluator = "forest"
    log.info(
        "%s: answering from the mapped forest %s while onnxruntime builds its session",
        path.name,
        forest_path(path).name,
    )
    sessions.start(model, build_first=True)
    return model


def _lone_tree_ensemble(path: Path) -> bool:
    """The graph is one TreeEnsemble node: graph optimisations have nothing to fuse, and
    skipping them builds its session sooner (a 25 MB forest: 0.26 -> 0.19 s). Smaller
    models are not looked at: importing the ONNX reader (2 ms) costs what it would save."""
    if path.stat().st_size < LONE_TREES_CHECK_BYTES:
        return False
    from .onnx_reader import node_ops
    from .trees import ML_DOMAIN, TREE_OPS

    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                ops = node_ops(view)
            finally:
                view.release()
    except (OSError, ValueError):
        return False
    return len(ops) == 1 and ops[0][0] == ML_DOMAIN and ops[0][1] in TREE_OPS


def _forest_card(forest: Forest, path: Path) -> ModelCard | None:
    try:
        return ModelCard.from_json(forest.card_json, f"{forest_path(path)} card")
    except CardError as exc:
        log.warning("forest %s not used, onnxruntime alone serves the model: %s", forest_path(path), exc)
        return None


class _OnnxSessions:
    """onnxruntime's sessions of one model, and the forest that answers until the first
    is built. Building a session releases the GIL, so requests are answered meanwhile (a
    100-tree, 19.5 MB forest: 0.27 s, a thread beside it never paused > 8 ms).

    Inputs of BULK_ROWS rows or more run on `bulk_threads` threads. For a model of up to
    BULK_SESSION_MAX_MB, on a second session with a thread pool of its own. A larger
    model's second session would cost what its first does again (a forest's session holds
    several times its ONNX size: for 100 MB of ONNX, 940 MB and then 730 MB more, and
    1.1 s of CPU to build), so its large inputs are split over one-thread calls of the one
    session, run at once on a Python thread pool. That costs time, so small models keep
    their second session: onnxruntime's pool gives each thread its share of the trees,
    which stays in its cache, where each part of a split walks every tree (10,000 rows in
    a server, inference: 19.0 against 13.0 ms for the default forest, 24.2 against 17.1
    ms for 25 MB of ONNX, 85 against 69 ms for 100 MB). Split, a row's answer is the
    one-thread session's whatever the size of its request; the second session sums a
    forest's trees in another order, so a row in a large request can differ from the same
    row alone in the last bit of its probabilities.
    """

    def __init__(self, path: Path, bulk_threads: int, bulk_session: bool = True) -> None:
        self.path = path
        self.bulk_threads = bulk_threads
        self.bulk_session = bulk_session
        self._bulk: Any = None
        self._split_pool: ThreadPoolExecutor | None = None
        self._split_pool_lock = threading.Lock()
        self.forest: Forest | None = None
        self.card: ModelCard | None = None
        self._session: Any = None
        self._input = ""
        self._outputs: list[str] = []
        self._outputs_labels = False
        self.boolean = False
        self.optimize = True
        # Set once the one-thread session is built, or could not be.
        self._built = threading.Event()

    def start(self, model: Model, build_first: bool) -> None:
        """Build in the background what is left: the one-thread session (`build_first`;
        the forest answers until then), then the bulk session if the model gets one."""
        # Not a daemon: a process leaving while onnxruntime is still building a session
        # (a worker refusing its model, a SIGTERM just after start) tore its C++ state down
        # under the builder and aborted (SIGABRT instead of its exit code). Exit waits for
        # the build instead. Said explicitly: a thread is a daemon by default when the
        # thread starting it is one, as the model loader is (func/model/state.py).
        thread = threading.Thread(
            target=self._build_rest, args=(model, build_first), name="onnx-sessions", daemon=False
        )
        thread.start()

    def _build_rest(self, model: Model, build_first: bool) -> None:
        if build_first:
            started = time.perf_counter()
            try:
                self.build()
            except ModelLoadError as exc:
                log.error("onnxruntime session not built, the mapped forest keeps answering: %s", exc)
                return
            finally:
                self._built.set()
            model.evaluator = "onnxruntime"
            log.info("onnxruntime session built in %.3f s; it answers from now on", time.perf_counter() - started)
        if not self.bulk_session or self.bulk_threads == 1:
            return
        if not threading.main_thread().is_alive():
            return  # the process is leaving: it would only wait for a session it never uses
        try:
            self._bulk = _session(self.path, self.bulk_threads, spin=True, optimize=self.optimize)
        except ModelLoadError as exc:
            log.error("the multi-threaded session was not built, large inputs run on one thread: %s", exc)

    def build(self) -> None:
        """The one-thread session and the card it carries; ModelLoadError says what is wrong."""
        session = _session(self.path, 1, optimize=self.optimize)
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(
                f"MODEL_PATH={self.path}: the ONNX model has {len(inputs)} inputs; warmstart serves "
                "models with one 2-D float input (export with a single FloatTensorType)"
            )
        outputs = [o.name for o in session.get_outputs()]
        meta = session.get_modelmeta().custom_metadata_map
        if CARD_METADATA_KEY in meta:
            try:
                card = ModelCard.from_json(meta[CARD_METADATA_KEY], f"{self.path} metadata {CARD_METADATA_KEY}")
            except CardError as exc:
                raise ModelLoadError(str(exc)) from None
        else:
            card = _card_from_onnx_signature(self.path, inputs[0], outputs)
        input_width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(input_width, int) and input_width != card.n_features:
            raise ModelLoadError(
                f"MODEL_PATH={self.path}: the card names {card.n_features} features but the ONNX input "
                f"takes {input_width}"
            )
        if card.is_classifier and len(outputs) < 2:
            raise ModelLoadError(
                f"MODEL_PATH={self.path}: a classifier must output labels and probabilities; this model "
                f"outputs {outputs}"
            )
        self.card = card
        self._input = inputs[0].name
        self._outputs = outputs[:2] if card.is_classifier else outputs[:1]
        self._outputs_labels = card.is_classifier
        self.boolean = _boolean_labels(card)
        self._session = session

    def run(self, rows: np.ndarray, one_thread: bool) -> Prediction:
        session = self._session
        if session is None and len(rows) >= BULK_ROWS:
            # Large inputs wait for onnxruntime: the forest walks its trees one level per
            # NumPy call, far slower per row than onnxruntime's kernel.
            self._built.wait()
            session = self._session
        if session is None:
            return self._forest_prediction(rows)
        if one_thread or len(rows) < BULK_ROWS or self.bulk_threads == 1:
            outputs = self._outputs_of(session, rows)
        elif self._bulk is not None:
            outputs = self._outputs_of(self._bulk, rows)
        elif not self.bulk_session:
            outputs = self._split_outputs(session, rows)
        else:
            outputs = self._outputs_of(session, rows)  # the bulk session is not built yet
        if self._outputs_labels:
            labels, probabilities = outputs
            return Prediction(labels.astype(bool) if self.boolean else labels, probabilities)
        return Prediction(outputs[0].reshape(len(rows)), None)

    def _outputs_of(self, session: Any, rows: np.ndarray) -> list[np.ndarray]:
        outputs = session.run(self._outputs, {self._input: rows})
        if self._outputs_labels and not isinstance(outputs[1], np.ndarray):
            raise ModelLoadError(
                f"MODEL_PATH={self.path}: probabilities come as a ZipMap; export with options={{'zipmap': False}}"
            )
        return outputs

    def _split_outputs(self, session: Any, rows: np.ndarray) -> list[np.ndarray]:
        """The rows in `bulk_threads` parts (no part under BULK_ROWS // 2 rows), run at
        once: this thread runs the first part, the split pool the others."""
        parts = np.array_split(rows, max(1, min(self.bulk_threads, len(rows) // (BULK_ROWS // 2))))
        pool = self._pool()
        rest = [pool.submit(self._outputs_of, session, part) for part in parts[1:]]
        results = [self._outputs_of(session, parts[0]), *(future.result() for future in rest)]
        return [np.concatenate(output) for output in zip(*results)]

    def _pool(self) -> ThreadPoolExecutor:
        """The split pool, its `bulk_threads` - 1 threads all started on first use: an
        executor starts a thread for a task only while it counts none idle, and it counts
        finished tasks, not idle threads, so it can leave a part waiting for a busy one."""
        with self._split_pool_lock:
            if self._split_pool is None:
                size = self.bulk_threads - 1
                pool = ThreadPoolExecutor(size, thread_name_prefix="onnx-split")
                started = threading.Barrier(size)
                for waited in [pool.submit(started.wait) for _ in range(size)]:
                    waited.result()
                self._split_pool = pool
            return self._split_pool

    def _forest_prediction(self, rows: np.ndarray) -> Prediction:
        assert self.forest is not None
        labels, values = self.forest.predict(rows)
        if labels is None:
            return Prediction(values, None)
        return Prediction(labels.astype(bool) if self.boolean else labels, values)


def _boolean_labels(card: ModelCard) -> bool:
    """skl2onnx writes boolean classes as the integers 0 and 1; answer with the classes
    the model was trained on, as the scikit-learn model itself would."""
    return bool(card.class_labels) and all(isinstance(c, bool) for c in card.class_labels)


def _session(path: Path, threads: int, spin: bool = False, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Pool threads spin between work items: 1 ms less on a 10,000-row call (7.8 -> 6.9 ms),
    # worth it on the bulk session, whose calls are large and rare.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"MODEL_PATH={path}: not a valid ONNX model ({_first_line(exc)})") from None


def _card_from_onnx_signature(path: Path, model_input: Any, outputs: list[str]) -> ModelCard:
    """A plain ONNX file without our card: name features f0..fn-1, infer the task."""
    width = model_input.shape[1] if len(model_input.shape) == 2 else None
    if not isinstance(width, int):
        raise ModelLoadError(
            f"MODEL_PATH={path}: the ONNX model has no warmstart card and its input width "
            "is not fixed; export it with scripts/export_onnx.py to add a card"
        )
    log.warning("model has no warmstart card; features are named f0..f%d", width - 1)
    return ModelCard(
        name=path.stem,
        version="1",
        task="classification" if len(outputs) >= 2 else "regression",
        feature_names=tuple(f"f{i}" for i in range(width)),
    )


def _load_skops(path: Path, trusted: tuple[str, ...]) -> Model:
    """Load only types skops trusts by default plus those the operator listed in
    SKOPS_TRUSTED after reviewing them (skops.io.get_untrusted_types)."""
    try:
        import skops.io as sio
    except ImportError:
        raise ModelLoadError(
            f"MODEL_PATH={path}: .skops models need the skops and scikit-learn packages "
            "(pip install -r requirements-sklearn.txt)"
        ) from None
    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:
        raise ModelLoadError(f"MODEL_PATH={path}: not a valid skops file ({_first_line(exc)})") from None
    unlisted = [t for t in untrusted if t not in trusted]
    if unlisted:
        raise ModelLoadError(
            f"MODEL_PATH={path}: the skops file contains types skops does not trust by default: "
            f"{', '.join(unlisted)}; review them and list them in SKOPS_TRUSTED (comma-separated), "
            "or export the model to ONNX"
        )
    try:
        estimator = sio.load(str(path), trusted=untrusted)
    except Exception as exc:
        raise ModelLoadError(f"MODEL_PATH={path}: not a valid skops file ({_first_line(exc)})") from None
    return _sklearn_model(path, estimator, "skops")


def _load_pickle(path: Path) -> Model:
    try:
        import joblib
    except ImportError:
        raise ModelLoadError(
            f"MODEL_PATH={path}: joblib models need the joblib and scikit-learn packages "
            "(pip install -r requirements-sklearn.txt)"
        ) from None
    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(f"MODEL_PATH={path}: not a valid joblib file ({_first_line(exc)})") from None
    return _sklearn_model(path, estimator, "joblib")


def _sklearn_model(path: Path, estimator: Any, fmt: str) -> Model:
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(f"MODEL_PATH={path}: the file holds a {type(estimator).__name__}, not a model")
    card_file = sidecar_path(path)
    if card_file.is_file():
        try:
            card = ModelCard.from_json(card_file.read_text(), str(card_file))
        except CardError as exc:
            raise ModelLoadError(str(exc)) from None
    else:
        card = _card_from_estimator(path, estimator)
    n_in = getattr(estimator, "n_features_in_", card.n_features)
    if n_in != card.n_features:
        raise ModelLoadError(f"{card_file}: the card names {card.n_features} features but the model takes {n_in}")
    # The model was fitted on float64; our rows arrive as float32, which the model
    # accepts, but float64 keeps its thresholds' exact semantics.
    if card.is_classifier and hasattr(estimator, "predict_proba"):

        def run(rows: np.ndarray, one_thread: bool) -> Prediction:
            x = np.asarray(rows, dtype=np.float64)
            return Prediction(np.asarray(estimator.predict(x)), estimator.predict_proba(x))
    else:

        def run(rows: np.ndarray, one_thread: bool) -> Prediction:
            x = np.asarray(rows, dtype=np.float64)
            return Prediction(np.asarray(estimator.predict(x)).reshape(len(rows)), None)

    return Model(card, run, fmt)


def _card_from_estimator(path: Path, estimator: Any) -> ModelCard:
    names = getattr(estimator, "feature_names_in_", None)
    width = getattr(estimator, "n_features_in_", None)
    if names is None and width is None:
        raise ModelLoadError(
            f"MODEL_PATH={path}: no card at {sidecar_path(path)} and the model does not say how many features it takes"
        )
    feature_names = tuple(str(n) for n in names) if names is not None else tuple(f"f{i}" for i in range(width))
    classes = getattr(estimator, "classes_", None)
    log.warning("no model card at %s; using the estimator's own feature names", sidecar_path(path))
    return ModelCard(
        name=path.stem,
        version="1",
        task="classification" if classes is not None else "regression",
        feature_names=feature_names,
        class_labels=tuple(c.item() if hasattr(c, "item") else c for c in classes) if classes is not None else (),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
