"""python -m func.rollout COMMAND: a canary rollout of a new model on a Knative Service.

  run       start, then analyse until promoted or rolled back (what the JobSink job runs)
  start     create the canary revision (0 %), smoke-test its tag URL, give it the first step
  analyse   every interval, compare canary and stable in Prometheus (counted since the step
            began); step up, promote or roll back
  promote   100 % to the canary, retagged stable; the champion of its store moves to it
  rollback  100 % back to stable, canary tag dropped

Exit codes: 0 promoted, in progress (start) or done (promote, rollback by hand); 2 a
request refused (bad event, unknown revision, unreadable Service) with no traffic change;
3 rolled back by the analysis or the smoke test. Logs are JSON lines on stderr; patches
are JSON lines on stdout, or appended to --patches FILE.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..model import champion
from ..observe.logs import JsonFormatter
from . import analysis, service
from .analysis import Thresholds
from .cluster import FileService, KubernetesService, Recorded, ServiceStore
from .events import RolloutEvents
from .policy import PROMOTE, ROLLBACK, STARTED, STEP, Policy, Progress, decide
from .prometheus import MetricsUnavailable, Prometheus
from .service import Model, RolloutError, Split
from .smoke import Smoke, SmokeFailure
from .trigger import model_by_hand, model_from_event

log = logging.getLogger("warmstart.rollout")

DONE = PROMOTED = 0
REFUSED, ROLLED_BACK = 2, 3


class Rollout:
    """One rollout on one Service: the store it patches, the events it sends."""

    def __init__(self, args: argparse.Namespace, store: ServiceStore) -> None:
        self.args, self.store = args, store
        self.trigger = ""
        self.model: Model | None = None

    def events(self, now: Split, revision: str) -> RolloutEvents:
        extra: dict[str, Any] = {"trigger": self.trigger}
        if self.model:
            extra["model"] = asdict(self.model)
        source = os.environ.get("CE_SOURCE") or f"/warmstart/rollout/{self.args.service}"
        return RolloutEvents(
            os.environ.get("K_SINK"), source, self.args.service, revision, now.stable, extra, send=not self.args.dry_run
        )

    def start(self) -> int | None:
        """Create the canary and give it its first step; an exit code when the rollout
        is over already (promoted, rolled back, smoke test failed), else None."""
        if self.args.event:
            self.model, self.trigger = model_from_event(self.args.event)
        else:
            self.model = model_by_hand(self.args.model_uri, self.args.model_version, self.args.model_sha256)
        current = self.store.get()
        now = service.split(current)
        revision = self.args.revision or service.revision_name(self.args.service, self.model)
        if now.stable == revision:
            log.info("%s already serves 100%% as stable: nothing to do", revision)
            return PROMOTED
        if now.canary is None and current["spec"]["template"].get("metadata", {}).get("name") == revision:
            log.error("%s was rolled back before; publish a new model to roll out again", revision)
            return ROLLED_BACK
        events = self.events(now, revision)
        if now.canary != revision:
            self.store.patch(service.start_patch(current, revision, self.model))
            events.emit(STARTED, 0, f"revision {revision} created for model version {self.model.version}")
        if service.split(self.store.get()).percent > 0:
            return None  # a resumed rollout: the smoke test passed before its first step
        if self.args.dry_run:
            passed = f"dry run: the smoke test of the canary (expecting version {self.model.version}) is not run"
        else:
            try:
                Smoke(self.canary_url(), self.model.version, self.args.smoke_timeout, say=log.info).run()
            except SmokeFailure as exc:
                self.store.patch(service.rollback_patch(now.stable))
                events.emit(ROLLBACK, 0, f"smoke test failed before any traffic: {exc}")
                return ROLLED_BACK
            passed = "smoke test passed"
        first = self.args.steps[0]
        self.store.patch(service.step_patch(now.stable, revision, first))
        events.emit(STEP, first, f"{passed}; first step {first}%")
        return None

    def canary_url(self) -> str:
        """--canary-url, else the canary tag's URL from the Service's status (Knative
        fills it in once the revision is routable)."""
        if self.args.canary_url:
            return self.args.canary_url
        deadline = time.monotonic() + self.args.smoke_timeout
        while time.monotonic() < deadline:
            for entry in self.store.get().get("status", {}).get("traffic", []):
                if entry.get("tag") == service.CANARY and entry.get("url"):
                    return entry["url"]
            time.sleep(2)
        raise RolloutError("the Service's status has no URL for the canary tag; give --canary-url")

    def analyse(self) -> int:
        now = service.split(self.store.get())
        if self.args.canary and self.args.canary not in (now.canary, now.stable):
            raise RolloutError(f"revision {self.args.canary} is not in the Service's traffic ({_describe(now)})")
        if now.canary is None:
            log.info("no canary in the Service's traffic (%s): nothing to analyse", _describe(now))
            return PROMOTED
        if self.args.dry_run:
            # the canary of a dry run exists only in the printed patches: there is nothing
            # to measure, and a verdict on another revision's numbers would mislead
            log.info(
                "dry run: the analysis is not run; every %gs it would read, for %s and %s: %s",
                self.args.interval,
                now.canary,
                now.stable,
                "; ".join(analysis.queries(now.canary, self.args.window or "<time since the step began>").values()),
            )
            return PROMOTED
        if not self.args.prometheus_url:
            raise RolloutError("analyse needs --prometheus-url or PROMETHEUS_URL")
        prometheus = Prometheus(self.args.prometheus_url)
        policy = Policy(
            tuple(self.args.steps), self.args.intervals_per_step, self.args.max_failures, self.args.no_data_deadline
        )
        thresholds = Thresholds(
            self.args.min_requests,
            self.args.max_error_increase,
            self.args.max_p99_ratio,
            self.args.p99_slack,
            self.args.max_psi,
            self.args.min_labels,
            self.args.max_accuracy_drop,
            self.args.max_mae_increase,
        )
        events = self.events(now, now.canary)
        progress = Progress(last_data_at=time.monotonic())
        # counts add up from the step's start (or this analysis', for a resumed Job): a
        # low-traffic canary reaches --min-requests over several intervals. The range
        # reaches one scrape back: increase() counts only the rises between the samples
        # inside it, and the sample before the step's first requests must be one of them.
        step_began = time.monotonic()
        while True:
            time.sleep(self.args.interval)  # numbers of a full interval at this split
            # a person may have promoted, rolled back or moved the split meanwhile: their
            # change wins, and the analysis goes on from it or stops
            found = service.split(self.store.get())
            if found.canary != now.canary or found.stable != now.stable:
                log.info("the Service's traffic changed outside this rollout (%s): stopping", _describe(found))
                return PROMOTED if found.stable == now.canary else ROLLED_BACK
            if found.percent != now.percent:
                step_began = time.monotonic()
            now = found
            window = self.args.window or f"{round(time.monotonic() - step_began + self.args.scrape_interval)}s"
            try:
                canary = analysis.measure(prometheus, now.canary, window)
                stable = analysis.measure(prometheus, now.stable, window)
                why = analysis.missing(canary, stable, thresholds, window)
                numbers = {"canary": _numbers(canary), "stable": _numbers(stable), "window": window}
            except MetricsUnavailable as exc:
                why, numbers = str(exc), {}
            checks = None if why else analysis.compare(canary, stable, thresholds)
            decision = decide(policy, progress, now.percent, checks, why, time.monotonic())
            progress = decision.progress
            if decision.verdict == STEP:
                self.store.patch(service.step_patch(now.stable, now.canary, decision.percent))
                now, step_began = service.split(self.store.get()), time.monotonic()
            elif decision.verdict == PROMOTE:
                self.store.patch(service.promote_patch(now.canary))
            elif decision.verdict == ROLLBACK:
                self.store.patch(service.rollback_patch(now.stable))
            results = [c.as_dict() for c in checks or []]
            events.emit(decision.verdict, decision.percent, decision.reason, results, numbers=numbers)
            if decision.verdict == PROMOTE:
                self.crown()
                return PROMOTED
            if decision.verdict == ROLLBACK:
                return ROLLED_BACK

    def promote(self) -> int:
        now = service.split(self.store.get())
        if now.canary is None:
            log.info("no canary to promote; %s serves as stable", now.stable)
            if self.store.get()["spec"]["template"].get("metadata", {}).get("name") == now.stable:
                self.crown()  # a promotion whose champion did not move: move it now
            return PROMOTED
        self.store.patch(service.promote_patch(now.canary))
        self.events(now, now.canary).emit(PROMOTE, 100, self.args.reason or "promoted by hand")
        self.crown()
        return PROMOTED

    def crown(self) -> None:
        """Move the champion (func/model/champion.py) to the model the promoted revision
        serves: the pointer or registry alias that serving and the next retraining name."""
        model = service.template_model(self.store.get())
        if model is None:
            log.warning("the Service's template sets no MODEL_PATH: no champion to move")
            return
        if self.args.dry_run:
            log.info("dry run: the champion of the store holding %s is not moved", model.uri)
            return
        name = self.model.name if self.model else ""
        fields = {"name": name, "version": model.version, "uri": model.uri, "sha256": model.sha256}
        try:
            moved = champion.move(fields, os.environ.get("MLFLOW_TRACKING_URI"))
        except champion.ChampionError as exc:
            raise RolloutError(
                f"promoted, but the champion was not moved: {exc}; `python -m func.rollout promote` moves it"
            ) from None
        if moved is None:
            log.info("%s was not published by the retraining job: no champion to move", model.uri)
        else:
            log.info("champion moved: %s names version %s (%s)", moved, model.version, model.uri)

    def rollback(self) -> int:
        now = service.split(self.store.get())
        if now.canary is None:
            log.info("no canary to roll back; %s serves as stable", now.stable)
            return DONE
        self.store.patch(service.rollback_patch(now.stable))
        self.events(now, now.canary).emit(ROLLBACK, 0, self.args.reason or "rolled back by hand")
        return DONE


def _numbers(numbers: analysis.Numbers) -> dict[str, Any]:
    return {
        "requests": numbers.requests,
        "error_ratio": numbers.error_ratio,
        "p99_s": numbers.p99_s,
        "labels": numbers.labels,
        "accuracy": numbers.accuracy,
        "mae": numbers.mae,
    }


def _describe(now: Split) -> str:
    canary = f", canary {now.canary} at {now.percent}%" if now.canary else ""
    return f"stable {now.stable}{canary}"


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--steps: comma-separated percentages, not {text!r}") from exc
    if not steps or steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] != 100:
        raise argparse.ArgumentTypeError(f"--steps must rise from 1..99 and end at 100, not {text!r}")
    return steps


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m func.rollout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("the Knative Service")
    where.add_argument("--service", default="warmstart", help="its name (default warmstart)")
    where.add_argument("--namespace", help="its namespace (default: the job's own, or the kubeconfig's)")
    where.add_argument("--service-file", type=Path, help="a Service manifest to patch instead of the cluster's")
    where.add_argument("--dry-run", action="store_true", help="print each patch, apply none")
    where.add_argument("--patches", type=Path, help="append each patch as a JSON line to this file instead of stdout")
    where.add_argument("--reason", help="promote/rollback by hand: why, for the event")

    start = argparse.ArgumentParser(add_help=False)
    group = start.add_argument_group("start: the model (from the trigger event, or by hand)")
    group.add_argument(
        "--event",
        type=Path,
        default=os.environ.get("K_EVENT_PATH") or None,
        help="a warmstart.model.trained.v1 event as JSON (default $K_EVENT_PATH)",
    )
    group.add_argument("--model-uri", help="MODEL_PATH of the new revision (file://, https://, s3://, models:/)")
    group.add_argument("--model-version", help="MODEL_VERSION of the new revision")
    group.add_argument("--model-sha256", help="MODEL_SHA256 of the new revision")
    group.add_argument("--revision", help="the new revision's name (default <service>-v<version>-<sha256[:8]>)")
    group.add_argument("--canary-url", help="where the smoke test reaches the canary (default: its tag URL)")
    group.add_argument(
        "--smoke-timeout", type=float, default=300.0, help="seconds for the canary to become ready (default 300)"
    )

    steps = argparse.ArgumentParser(add_help=False)
    steps.add_argument("--steps", type=_steps, default=[10, 25, 50, 100], help="canary shares (default 10,25,50,100)")

    analyse = argparse.ArgumentParser(add_help=False)
    group = analyse.add_argument_group("analyse: when and what to compare")
    group.add_argument("--prometheus-url", default=os.environ.get("PROMETHEUS_URL"), help="default $PROMETHEUS_URL")
    group.add_argument("--canary", help="the canary revision expected in the Service (an error if it is not)")
    group.add_argument("--interval", type=float, default=60.0, help="seconds between verdicts (default 60)")
    group.add_argument(
        "--window",
        help="a fixed PromQL range for each verdict's numbers (default: the time since the step began, "
        "so counts add up until there are enough)",
    )
    group.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="how often Prometheus scrapes the pods: the counts' range starts this long before the step "
        "(default 15, knative/observability's PodMonitor)",
    )
    group.add_argument("--intervals-per-step", type=int, default=1, help="passes in a row before a step (default 1)")
    group.add_argument("--max-failures", type=int, default=3, help="failed intervals in a row to roll back (default 3)")
    group.add_argument(
        "--no-data-deadline",
        type=float,
        default=600.0,
        help="seconds without a verdict (no data) before rolling back (default 600)",
    )
    defaults = Thresholds()
    group.add_argument(
        "--min-requests",
        type=int,
        default=defaults.min_requests,
        help=f"canary requests in the window before any verdict (default {defaults.min_requests})",
    )
    group.add_argument(
        "--max-error-increase",
        type=float,
        default=defaults.max_error_increase,
        help="canary 5xx ratio may exceed stable's by this (default 0.01)",
    )
    group.add_argument(
        "--max-p99-ratio",
        type=float,
        default=defaults.max_p99_ratio,
        help="canary p99 <= stable p99 x this + slack (default 1.5)",
    )
    group.add_argument("--p99-slack", type=float, default=defaults.p99_slack_s, help="seconds (default 0.025)")
    group.add_argument(
        "--max-psi",
        type=float,
        default=defaults.max_psi,
        help="PSI of the canary's prediction mix from its card's, or from the stable's (default 0.2)",
    )
    group.add_argument(
        "--min-labels",
        type=int,
        default=defaults.min_labels,
        help=f"labelled outcomes per revision before they decide instead of the mix (default {defaults.min_labels})",
    )
    group.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=defaults.max_accuracy_drop,
        help=f"a classifier canary's labelled accuracy >= stable's - this (default {defaults.max_accuracy_drop})",
    )
    group.add_argument(
        "--max-mae-increase",
        type=float,
        default=defaults.max_mae_increase,
        help=f"a regressor canary's labelled MAE <= stable's x (1 + this) (default {defaults.max_mae_increase})",
    )

    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("run", parents=[common, steps, start, analyse], help="start, then analyse")
    commands.add_parser("start", parents=[common, steps, start], help="canary at 0 %%, smoke test, first step")
    commands.add_parser("analyse", parents=[common, steps, analyse], help="the analysis loop on the current canary")
    commands.add_parser("promote", parents=[common], help="100 %% to the canary")
    commands.add_parser("rollback", parents=[common], help="100 %% back to stable")
    return top


def configure_logging(service_name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter({"service": service_name, "component": "rollout"}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.service)
    try:
        store = FileService(args.service_file) if args.service_file else KubernetesService(args.service, args.namespace)
        out = args.patches.open("a") if args.patches else sys.stdout
        rollout = Rollout(args, Recorded(store, args.service, out, args.dry_run))
        if args.command in ("run", "start"):
            over = rollout.start()
            if args.command == "start" or over is not None:
                return PROMOTED if over is None else over
            args.canary = args.revision or service.revision_name(args.service, rollout.model)
        return {"run": rollout.analyse, "analyse": rollout.analyse, "promote": rollout.promote}.get(
            args.command, rollout.rollback
        )()
    except RolloutError as exc:
        log.error("%s", exc)
        return REFUSED


if __name__ == "__main__":
    sys.exit(main())
