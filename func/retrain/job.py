"""The retraining job: a drift event in, a new validated model version (or a rejection) out.

    python -m func.retrain [--event FILE] [--data URI] [--store URI] [options]

Knative Eventing's JobSink runs it as a Kubernetes Job with the triggering event in
`$K_EVENT_PATH`; by hand, pass the event file or just the options (every option has an
environment variable, shown in --help). The job reads TRAIN_DATA_URI, trains with
TRAINER on a seeded split, exports ONNX with a card (reference statistics from the new
data, version = the served version's successor, lineage), scores candidate and current
model on the held-out rows through the serving runtime, publishes to MODEL_STORE only a
candidate that is not worse on RETRAIN_METRIC beyond RETRAIN_TOLERANCE, and sends
`warmstart.model.trained.v1` or `warmstart.model.rejected.v1` to K_SINK.

Exit codes (for the Job's podFailurePolicy):
  0  published, already published or rejected for this event id, rejected by the
     comparison, or nothing to do: a version from the same parent was published within
     RETRAIN_COOLDOWN, or another event's candidate from it is in flight (logged by name)
  2  permanent: bad event, data, trainer or settings; a retry fails the same way
  3  retryable: the data, the current model, the store, the registry or the sink did not answer
  1  a bug (an uncaught exception, with its traceback)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, Settings
from ..model.card import ModelCard
from ..model.champion import now_iso
from ..model.export import MAX_DIFFERENCE, ExportError, build_card, max_difference, to_onnx_bytes, with_card
from ..model.runtime import Model, ModelLoadError, load_model
from ..observe import logs
from . import training
from .events import REJECTED, TRAINED, Trigger, emit, read_trigger, rejection
from .publish import FileStore, RegistryStore, open_store
from .training import BadInput, Unreachable

log = logging.getLogger("warmstart.retrain")

EXIT_OK, EXIT_BUG, EXIT_PERMANENT, EXIT_RETRYABLE = 0, 1, 2, 3
DEFAULT_TOLERANCE = 0.01
DEFAULT_HOLDOUT = 0.2
# One drift episode, one version: an hour covers a canary's steps at the analysis's
# default interval many times over, so events from the episode that made a version do
# not make another from the same parent while it rolls out.
DEFAULT_COOLDOWN_S = 3600.0


@dataclass(frozen=True)
class Options:
    event: str | None
    event_id: str | None
    data: str
    since: str | None
    target: str
    trainer: str
    model: str
    store: str
    sink: str | None
    mode: str
    tolerance: float
    metric: str | None
    cooldown: float
    holdout: float
    source: str
    settings: Settings


def parse_options(argv: list[str] | None, env: dict[str, str], settings: Settings) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m func.retrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def option(flag: str, var: str, default: Any = None, **kw: Any) -> None:
        parser.add_argument(flag, default=env.get(var) or default, help=f"{kw.pop('help')} (env {var})", **kw)

    option("--event", "K_EVENT_PATH", help="the triggering CloudEvent as a JSON file (structured mode)")
    option("--event-id", "TRIGGER_ID", help="an id for a run by hand without an event (default: a fresh one)")
    option(
        "--data",
        "TRAIN_DATA_URI",
        help="training data: CSV or Parquet with the feature and target columns, or a prediction log's prefix "
        "(PREDICTION_LOG), whose labelled predictions it trains on (python -m func.dataset --help)",
    )
    option("--since", "TRAIN_DATA_SINCE", help="with a prediction log: predictions from this time on (7d, ISO 8601)")
    option("--target", "TARGET_COLUMN", "target", help="the target column")
    option("--trainer", "TRAINER", training.DEFAULT_TRAINER, help="module:function(x, y) -> fitted estimator")
    option("--model", "MODEL_PATH", "models/model.onnx", help="the model served now (path or URI): the parent")
    option("--store", "MODEL_STORE", help="where to publish: a URI prefix, or models:/<name> for MLflow")
    option("--sink", "K_SINK", help="where to send the trained/rejected event")
    option("--mode", "CE_MODE", "binary", choices=("binary", "structured"), help="CloudEvents content mode")
    option("--tolerance", "RETRAIN_TOLERANCE", DEFAULT_TOLERANCE, type=float, help="how much worse is not worse")
    option(
        "--metric",
        "RETRAIN_METRIC",
        help="what the comparison scores: accuracy (default), balanced_accuracy, f1, roc_auc or log_loss for a "
        "classifier; rmse (default), mae or r2 for a regressor",
    )
    option(
        "--cooldown",
        "RETRAIN_COOLDOWN",
        DEFAULT_COOLDOWN_S,
        type=float,
        help="seconds after a version is published (or a candidate claimed) during which events for the same "
        f"parent train nothing (default {DEFAULT_COOLDOWN_S:g})",
    )
    option("--holdout", "HOLDOUT_FRACTION", DEFAULT_HOLDOUT, type=float, help="share of rows held out for scoring")
    option("--source", "CE_SOURCE", "/warmstart/retrain", help="source of the emitted events")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("the training data is required: --data or TRAIN_DATA_URI")
    if not args.store:
        parser.error("where to publish is required: --store or MODEL_STORE")
    if not 0 < float(args.holdout) < 1:
        parser.error(f"--holdout/HOLDOUT_FRACTION={args.holdout}: expected a fraction between 0 and 1")
    if not math.isfinite(float(args.tolerance)):
        # nan rejects every candidate, inf publishes every one
        parser.error(f"--tolerance/RETRAIN_TOLERANCE={args.tolerance}: expected a finite number")
    if args.metric is not None and args.metric not in training.METRICS:
        parser.error(f"--metric/RETRAIN_METRIC={args.metric}: expected one of {', '.join(training.METRICS)}")
    # the parent is what its card says: MODEL_NAME/MODEL_VERSION relabel a served model, not its lineage
    settings = dataclasses.replace(settings, model_path=args.model, model_name=None, model_version=None)
    return Options(
        event=args.event,
        event_id=args.event_id,
        data=args.data,
        since=args.since,
        target=args.target,
        trainer=args.trainer,
        model=args.model,
        store=args.store,
        sink=args.sink,
        mode=args.mode,
        tolerance=float(args.tolerance),
        metric=args.metric,
        cooldown=float(args.cooldown),
        holdout=float(args.holdout),
        source=args.source,
        settings=settings,
    )


def run(options: Options, trigger: Trigger) -> tuple[str, dict[str, Any]] | None:
    """Train, compare, publish: the type and data of the event to send, or None when
    another run for the same parent has it in hand (nothing to send)."""
    given = _load_current(options)
    store = open_store(options.store, given.card.name, options.settings.mlflow_tracking_uri)
    current = _parent(options, store, given)
    card = current.card
    _check_drifted_model(trigger, current, options.model)
    metric = training.choose_metric(current, options.metric)
    done = store.find(trigger.id)
    if done is not None:
        log.info(
            "event %s already published %s version %s; sending its event again",
            trigger.id,
            card.name,
            done["model"]["version"],
        )
        return TRAINED, done
    refused = store.rejected(trigger.id)
    if refused is not None:
        log.info("event %s was rejected before (%s); sending its event again", trigger.id, refused["reason"])
        return REJECTED, refused
    recent = store.recent(current.sha256, options.cooldown)
    if recent is not None:
        log.info(
            "%s version %s was published from the same parent (version %s) at %s for event %s, within "
            "RETRAIN_COOLDOWN=%gs: nothing to train for event %s",
            card.name,
            recent["model"]["version"],
            card.version,
            recent["published"],
            recent["trigger"],
            options.cooldown,
            trigger.id,
        )
        return None
    held = store.claim(current.sha256, trigger.id, options.cooldown)
    if held is not None:
        log.info(
            "a candidate from the same parent (%s version %s) is in flight for event %s since %s: "
            "nothing to train for event %s",
            card.name,
            card.version,
            held["trigger"],
            held["started"],
            trigger.id,
        )
        return None
    try:
        return _train(options, trigger, store, current, metric)
    finally:
        store.release(current.sha256, trigger.id)


def _parent(options: Options, store: FileStore | RegistryStore, given: Model) -> Model:
    """The champion of MODEL_STORE (the model the last promotion moved it to); MODEL_PATH,
    the first model, only while the store has no champion."""
    pointer = store.champion()
    if pointer is None or pointer == options.model:
        return given
    crowned = _load_current(
        dataclasses.replace(
            options,
            model=pointer,
            settings=dataclasses.replace(options.settings, model_path=pointer, model_sha256=None),
        )
    )
    if crowned.sha256 != given.sha256:
        log.info(
            "the parent is the champion %s: %s version %s (MODEL_PATH=%s holds version %s)",
            pointer,
            crowned.card.name,
            crowned.card.version,
            options.model,
            given.card.version,
        )
    return crowned


def _train(
    options: Options, trigger: Trigger, store: FileStore | RegistryStore, current: Model, metric: str
) -> tuple[str, dict[str, Any]]:
    card = current.card
    since = options.since or _drift_began(trigger, options.data)
    data = training.read_dataset(options.data, card.feature_names, options.target, since)
    x_train, x_test, y_train, y_test = training.split(data, options.holdout, card.is_classifier)
    estimator = training.train(options.trainer, x_train, y_train)
    version = store.next_version(card.version)
    new_card = build_card(estimator, data.x, list(card.feature_names), card.name, version, card.description)
    onnx_bytes = _to_onnx(estimator, new_card, x_test)
    scores = {
        "candidate": training.score(_as_served(onnx_bytes), x_test, y_test),
        "current": training.score(current, x_test, y_test),
        "metric": metric,
    }
    parent = {"version": card.version, "sha256": current.sha256}
    data_ref = {"uri": data.uri, "sha256": data.sha256, "rows": data.rows}
    candidate, now = scores["candidate"].get(metric), scores["current"].get(metric)
    if candidate is None or now is None or not training.not_worse(metric, candidate, now, options.tolerance):
        reason = (
            f"the candidate's {metric} {_num(candidate)} is worse than the current model's {_num(now)} "
            f"beyond the tolerance {options.tolerance:g} on {len(y_test)} held-out rows"
        )
        log.info("rejected %s version %s: %s; nothing published", card.name, version, reason)
        rejected = rejection(
            trigger.id, reason, False, {"name": card.name, "version": version}, parent, scores, data_ref
        )
        # recorded, so a re-delivered event sends this again instead of training again
        store.record_rejection(trigger.id, rejected)
        return REJECTED, rejected

    lineage = {"parent": parent, "trigger": trigger.id, "data": data_ref, "trainer": options.trainer}
    onnx_bytes = with_card(onnx_bytes, dataclasses.replace(new_card, metrics=scores["candidate"], lineage=lineage))
    record = {
        "model": {
            "name": card.name,
            "version": version,
            "uri": store.uri(version),
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        },
        "parent": parent,
        "trigger": trigger.id,
        "metrics": scores,
        "data": data_ref,
        "published": now_iso(),
    }
    store.publish(version, onnx_bytes, record)
    log.info(
        "published %s version %s at %s: %s %s, current %s",
        card.name,
        version,
        record["model"]["uri"],
        metric,
        _num(candidate),
        _num(now),
    )
    return TRAINED, record


def _drift_began(trigger: Trigger, data_uri: str) -> str | None:
    """A run a drift event started trains on the world as it is since the drift: with a
    prediction log and no TRAIN_DATA_SINCE, the rows predicted after the drifted window
    closed (the window itself mixes the old world with the new, and older rows would
    teach the candidate, and its card's drift reference, the world before). Until enough
    of those rows are labelled the run exits 3 and the Job tries again."""
    window = trigger.data.get("window")
    closed = window.get("closed_at") if isinstance(window, dict) else None
    if not isinstance(closed, str) or not training.dataset.is_log(data_uri):
        return None
    log.info("training on the log's rows predicted since drift was detected, %s (TRAIN_DATA_SINCE unset)", closed)
    return closed


def _check_drifted_model(trigger: Trigger, current: Model, model_path: str) -> None:
    """The event must be about the model MODEL_PATH holds: the job retrains that one."""
    drifted = trigger.data.get("model", {})
    if drifted.get("name") is not None and drifted["name"] != current.card.name:
        raise BadInput(
            f"the event is about model {drifted['name']!r} but MODEL_PATH={model_path} holds "
            f"{current.card.name!r}; point MODEL_PATH at the model that drifted"
        )
    if drifted.get("sha256") and drifted["sha256"] != current.sha256:
        # e.g. a newer version was rolled out since the event: retraining from it is right
        log.warning(
            "the event names %s sha256 %s, MODEL_PATH=%s holds %s: retraining from the latter",
            current.card.name,
            drifted["sha256"],
            model_path,
            current.sha256,
        )


def _load_current(options: Options) -> Model:
    try:
        return load_model(options.settings)
    except ModelLoadError as exc:
        # A store or registry that did not answer may answer later; a bad file will not change.
        raise (Unreachable if exc.retryable else BadInput)(f"the current model cannot be loaded: {exc}") from None


def _to_onnx(estimator: Any, card: ModelCard, x_check: Any) -> bytes:
    try:
        onnx_bytes = to_onnx_bytes(estimator, card)
    except ExportError as exc:
        raise BadInput(f"the trained model cannot be published: {exc}") from None
    diff = max_difference(estimator, onnx_bytes, x_check, card.is_classifier)
    if diff > MAX_DIFFERENCE:
        raise BadInput(f"the ONNX export of the trained {type(estimator).__name__} differs from it by {diff:.3g}")
    return onnx_bytes


def _as_served(onnx_bytes: bytes) -> Model:
    """The candidate loaded by the serving runtime, so it is scored on what users would get."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "candidate.onnx"
        path.write_bytes(onnx_bytes)
        return load_model(Settings(model_path=str(path), inference_threads=1))


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"retrain: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    logs.configure(settings)
    options = parse_options(argv, env, settings)
    trigger: Trigger | None = None
    try:
        trigger = read_trigger(options.event, options.event_id)
        outcome = run(options, trigger)
    except (BadInput, Unreachable) as exc:
        retryable = isinstance(exc, Unreachable)
        log.error("retraining failed, nothing published: %s", exc)
        try:
            emit(
                options.sink,
                options.mode,
                options.source,
                REJECTED,
                rejection(trigger.id if trigger else None, str(exc), retryable),
                trigger.id if trigger else None,
            )
        except Unreachable as sink_error:
            log.error("%s", sink_error)
        return EXIT_RETRYABLE if retryable else EXIT_PERMANENT
    if outcome is None:
        return EXIT_OK
    kind, data = outcome
    try:
        emit(options.sink, options.mode, options.source, kind, data, trigger.id)
    except Unreachable as exc:
        # Published but not announced: the retry finds the version and announces it.
        log.error("%s", exc)
        return EXIT_RETRYABLE
    return EXIT_OK


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
