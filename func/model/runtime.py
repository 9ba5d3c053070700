"""The model runtime: load a model file, warm it up, predict on a 2-D float array.

ONNX models run on onnxruntime and never import scikit-learn (that import alone costs
more than our whole cold-start budget). skops and joblib models need scikit-learn and
are imported only when such a file is configured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from .card import CARD_METADATA_KEY, CardError, ModelCard, sidecar_path
from .source import FetchError, local_model_file

log = logging.getLogger("warmstart.model")

ONNX_SUFFIXES = (".onnx",)
SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# From this many rows a call runs on the multi-threaded session: below it, handing work to
# a thread pool costs more than it saves (measured: 1,000 rows take 755 us on one thread,
# 548 us on two; 10 rows take the same on both).
BULK_ROWS = 512


class ModelLoadError(Exception):
    """The model file cannot be served; the message says why and what to do."""


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
            settings.model_path, settings.model_cache_dir, settings.mlflow_tracking_uri, settings.model_sha256
        )
    except FetchError as exc:
        raise ModelLoadError(str(exc)) from None
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
        model = _load_onnx(path, settings.inference_threads)
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


def _load_onnx(path: Path, bulk_threads: int) -> Model:
    import onnxruntime as ort

    try:
        # Small requests run on one thread: gunicorn already runs a process per core, and
        # a thread pool per process would fight them for the cores. Large inputs (batch
        # chunks, 10k-row requests) use every CPU the pod has: 1.4x the rows/s on 2 cores.
        session = ort.InferenceSession(str(path), _session_options(ort, 1), providers=["CPUExecutionProvider"])
        bulk_options = _session_options(ort, bulk_threads, spin=True)
        bulk = ort.InferenceSession(str(path), bulk_options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"MODEL_PATH={path}: not a valid ONNX model ({_first_line(exc)})") from None

    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(
            f"MODEL_PATH={path}: the ONNX model has {len(inputs)} inputs; warmstart serves "
            "models with one 2-D float input (export with a single FloatTensorType)"
        )
    input_name = inputs[0].name
    outputs = [o.name for o in session.get_outputs()]
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_METADATA_KEY in meta:
        try:
            card = ModelCard.from_json(meta[CARD_METADATA_KEY], f"{path} metadata {CARD_METADATA_KEY}")
        except CardError as exc:
            raise ModelLoadError(str(exc)) from None
    else:
        card = _card_from_onnx_signature(path, inputs[0], outputs)
    input_width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
    if isinstance(input_width, int) and input_width != card.n_features:
        raise ModelLoadError(
            f"MODEL_PATH={path}: the card names {card.n_features} features but the ONNX input takes {input_width}"
        )

    if card.is_classifier:
        if len(outputs) < 2:
            raise ModelLoadError(
                f"MODEL_PATH={path}: a classifier must output labels and probabilities; this model outputs {outputs}"
            )
        out_names = outputs[:2]
        # skl2onnx writes boolean classes as the integers 0 and 1; answer with the classes
        # the model was trained on, as the scikit-learn model itself would.
        boolean = bool(card.class_labels) and all(isinstance(c, bool) for c in card.class_labels)

        def run(rows: np.ndarray, one_thread: bool) -> Prediction:
            chosen = bulk if len(rows) >= BULK_ROWS and not one_thread else session
            labels, probabilities = chosen.run(out_names, {input_name: rows})
            if not isinstance(probabilities, np.ndarray):
                raise ModelLoadError(
                    f"MODEL_PATH={path}: probabilities come as a ZipMap; export with options={{'zipmap': False}}"
                )
            return Prediction(labels.astype(bool) if boolean else labels, probabilities)
    else:
        out_names = outputs[:1]

        def run(rows: np.ndarray, one_thread: bool) -> Prediction:
            chosen = bulk if len(rows) >= BULK_ROWS and not one_thread else session
            (values,) = chosen.run(out_names, {input_name: rows})
            return Prediction(values.reshape(len(rows)), None)

    return Model(card, run, "onnx")


def _session_options(ort: Any, threads: int, spin: bool = False) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Pool threads spin between work items: 1 ms less on a 10,000-row call (7.8 -> 6.9 ms),
    # worth it on the bulk session, whose calls are large and rare.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


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
