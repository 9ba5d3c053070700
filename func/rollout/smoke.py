"""Post-deployment smoke test of one warmstart URL: `python -m func.smoke URL
[--expect-version V]`.

Readiness, one prediction on each protocol (own JSON, KServe V1, Open Inference V2), a
CloudEvent round trip, /metrics, and the expected X-Model-Version on every answer. One
line per check; exit 1 at the first failure, with a line saying what and where.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:  # cloudevents 2.x keeps the 1.x API under cloudevents.v1
    from cloudevents.v1.conversion import to_binary
    from cloudevents.v1.http import CloudEvent
except ImportError:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

TIMEOUT_S = 10.0


class SmokeFailure(Exception):
    pass


class WrongVersion(SmokeFailure):
    """The URL answers, with another model version: waiting will not change that."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise SmokeFailure(f"answer is not JSON: {self.body[:200]!r}") from exc


@dataclass
class Smoke:
    url: str
    expect_version: str | None = None
    ready_timeout_s: float = 60.0
    say: Callable[[str], None] = print
    name: str = ""
    features: int = 0
    checked: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in request.headers:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                answer = Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
        except urllib.error.HTTPError as exc:
            answer = Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())
        except (OSError, ValueError) as exc:
            raise SmokeFailure(f"{method} {path}: {getattr(exc, 'reason', exc)}") from exc
        if answer.status != 200:
            raise SmokeFailure(
                f"{method} {path} answered {answer.status}: {answer.body[:300].decode(errors='replace')}"
            )
        version = answer.headers.get("x-model-version")
        if self.expect_version is not None and version != self.expect_version:
            raise WrongVersion(f"{method} {path}: X-Model-Version is {version!r}, expected {self.expect_version!r}")
        return answer

    def readiness(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                answer = self.call("GET", "/health/readiness")
                break
            except WrongVersion:
                raise
            except SmokeFailure as exc:  # not ready yet: a new revision takes its time
                if time.monotonic() > deadline:
                    raise SmokeFailure(f"not ready after {self.ready_timeout_s:g}s: {exc}") from exc
                time.sleep(1.0)
        self.name = answer.headers.get("x-model-name", "")
        if not self.name:
            raise SmokeFailure("GET /health/readiness: no X-Model-Name header")
        inputs = self.call("GET", f"/v2/models/{self.name}").json()["inputs"]
        self.features = int(inputs[0]["shape"][-1])

    def rows(self) -> list[list[float]]:
        return [[0.0] * self.features]

    def own_json(self) -> None:
        body = self.call("POST", "/predict", {"instances": self.rows()}).json()
        if len(body.get("predictions", [])) != 1:
            raise SmokeFailure(f"POST /predict: expected 1 prediction, got {body}")

    def kserve_v1(self) -> None:
        body = self.call("POST", f"/v1/models/{self.name}:predict", {"instances": self.rows()}).json()
        if len(body.get("predictions", [])) != 1:
            raise SmokeFailure(f"POST /v1/models/{self.name}:predict: expected 1 prediction, got {body}")

    def v2(self) -> None:
        tensor = {"name": "input", "shape": [1, self.features], "datatype": "FP32", "data": self.rows()[0]}
        body = self.call("POST", f"/v2/models/{self.name}/infer", {"inputs": [tensor]}).json()
        if not body.get("outputs"):
            raise SmokeFailure(f"POST /v2/models/{self.name}/infer: no outputs in {body}")

    def cloudevent(self) -> None:
        event_id = f"smoke-{uuid.uuid4()}"
        event = CloudEvent(
            {"type": "warmstart.predict.v1", "source": "/warmstart/smoke", "id": event_id}, {"instances": self.rows()}
        )
        headers, body = to_binary(event, data_marshaller=lambda d: json.dumps(d).encode())
        answer = self.call("POST", "/", body, {**headers, "Content-Type": "application/json"})
        kind, cause = answer.headers.get("ce-type"), answer.headers.get("ce-causationid")
        if kind != "warmstart.prediction.v1" or cause != event_id:
            raise SmokeFailure(
                f"POST / (CloudEvent): reply type {kind!r}, causationid {cause!r};"
                f" expected 'warmstart.prediction.v1', {event_id!r}"
            )

    def metrics(self) -> None:
        text = self.call("GET", "/metrics").body.decode(errors="replace")
        if "warmstart_requests_total" not in text:
            raise SmokeFailure("GET /metrics: no warmstart_requests_total series")

    def run(self) -> None:
        """Every check in order; raises SmokeFailure at the first that fails."""
        for check in (self.readiness, self.own_json, self.kserve_v1, self.v2, self.cloudevent, self.metrics):
            started = time.monotonic()
            try:
                check()
            except SmokeFailure as exc:
                raise SmokeFailure(f"{check.__name__}: {exc}") from exc
            self.checked.append(check.__name__)
            self.say(f"ok   {check.__name__} ({(time.monotonic() - started) * 1000:.0f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m func.smoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the function's base URL, e.g. a revision's tag URL")
    parser.add_argument("--expect-version", help="the model version every answer must name in X-Model-Version")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for readiness (default 60)")
    args = parser.parse_args(argv)
    smoke = Smoke(args.url, args.expect_version, args.ready_timeout)
    try:
        smoke.run()
    except SmokeFailure as exc:
        print(f"FAIL {exc} ({args.url})")
        return 1
    print(f"smoke test passed: {args.url} serves {smoke.name} version {args.expect_version or '(any)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
