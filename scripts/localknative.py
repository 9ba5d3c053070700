"""Knative on one machine, for scripts/loop.py: just enough of Serving and Eventing to run
warmstart's loop as processes, wired the way the shipped manifests wire it.

- `Revisions` plays Serving: it watches a Service manifest (the file `python -m
  func.rollout --service-file` patches) and starts one `python -m func` per revision the
  template names, with that template's env, as Knative starts a revision's pod.
- `Router` plays the ingress: each request goes to a revision drawn by the Service's
  traffic split; a second port is the canary tag's URL.
- `Broker` plays the broker: it takes CloudEvents (from the pods' K_SINK and from the
  jobs) and delivers each to the subscribers of the Triggers under knative/, read from
  the manifests, not from a second copy. A JobSink subscriber runs its Job as a process:
  the container's image names a Dockerfile target, whose ENTRYPOINT is the command; the
  event is written to a file where the JobSink would mount it.

Only the parts the loop needs are here; it is not a Knative implementation.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
JOBSINK_EVENT_PATH = "/etc/jobsink-event/event"  # where a JobSink mounts the event (Knative's fixed path)
JOB_BACKOFF_S = 10.0  # Kubernetes' Job controller: 10 s before the second pod, then doubling
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifests(kind: str, root: Path = ROOT / "knative") -> list[dict[str, Any]]:
    """Every document of `kind` in the YAML files under knative/."""
    found = []
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                found.append(doc)
    return found


def dockerfile_entrypoints(path: Path = ROOT / "Dockerfile") -> dict[str, list[str]]:
    """Stage name -> its ENTRYPOINT (exec form); the last stage is also under ""."""
    entrypoints: dict[str, list[str]] = {}
    stage = ""
    for line in path.read_text().splitlines():
        if m := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I):
            stage = m.group(1) or ""
            last = stage
        elif line.startswith("ENTRYPOINT"):
            entrypoints[stage] = json.loads(line.split(None, 1)[1])
    if last in entrypoints:
        entrypoints[""] = entrypoints[last]
    return entrypoints


def command_for_image(image: str, entrypoints: dict[str, list[str]]) -> list[str]:
    """`warmstart` is the Dockerfile's final stage, `warmstart-<target>` its target;
    `python` is this interpreter."""
    target = image.split(":")[0].removeprefix("warmstart").removeprefix("-")
    if target not in entrypoints:
        raise SystemExit(f"image {image}: no Dockerfile stage {target or '(final)'} with an ENTRYPOINT")
    cmd = list(entrypoints[target])
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


# --- Serving -----------------------------------------------------------------------


@dataclass
class Revision:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Revisions:
    """One server process per revision named by the Service's template, started when the
    template first names it and kept (Knative keeps old revisions) until `stop`."""

    def __init__(self, service_file: Path, folder: Path, env: dict[str, str], on_start: Callable[[Revision], None]):
        self.service_file, self.folder, self.env, self.on_start = service_file, folder, env, on_start
        self.running: dict[str, Revision] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen_mtime = 0.0
        self.entrypoints = dockerfile_entrypoints()

    def service(self) -> dict[str, Any]:
        for _ in range(20):  # the rollout job replaces the file atomically; a read never sees half
            try:
                return yaml.safe_load(self.service_file.read_text())
            except (OSError, yaml.YAMLError):
                time.sleep(0.05)
        raise RuntimeError(f"cannot read {self.service_file}")

    def sync(self) -> None:
        mtime = self.service_file.stat().st_mtime
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        service = self.service()
        template = service["spec"]["template"]
        name = template["metadata"]["name"]
        with self._lock:
            if name not in self.running:
                self.running[name] = self._start(name, template, service["metadata"]["name"])
                self.on_start(self.running[name])

    def _start(self, name: str, template: dict[str, Any], service: str) -> Revision:
        container = template["spec"]["containers"][0]
        env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
        port = free_port()
        log_path = self.folder / f"{name}.log"
        proc = subprocess.Popen(
            command_for_image(container.get("image", "warmstart"), self.entrypoints),
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                **self.env,
                "PORT": str(port),
                "HOST": "127.0.0.1",
                "K_REVISION": name,
                "K_SERVICE": service,
            },
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return Revision(name, port, proc, log_path)

    def watch(self) -> None:
        def loop() -> None:
            while not self._stop.wait(0.2):
                self.sync()

        self.sync()
        threading.Thread(target=loop, daemon=True, name="revisions").start()

    def get(self, name: str) -> Revision | None:
        with self._lock:
            return self.running.get(name)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for rev in self.running.values():
                if rev.proc.poll() is None:
                    rev.proc.terminate()
            for rev in self.running.values():
                try:
                    rev.proc.wait(30)
                except subprocess.TimeoutExpired:
                    rev.proc.kill()


def traffic_split(service: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    """(revision, percent, tag) of the Service; no traffic block = all to the template's."""
    entries = service["spec"].get("traffic") or []
    split = [(t["revisionName"], int(t.get("percent", 0)), t.get("tag")) for t in entries if t.get("revisionName")]
    return split or [(service["spec"]["template"]["metadata"]["name"], 100, None)]


class Router:
    """The Service's URL: each request goes to a revision drawn by the traffic split; the
    canary port is the `canary` tag's URL. Records (time, revision) per request."""

    def __init__(self, revisions: Revisions, seed: int = 0) -> None:
        self.revisions = revisions
        self.random = random.Random(seed)
        self.port, self.canary_port = free_port(), free_port()
        self._servers = [self._server(self.port, tag=None), self._server(self.canary_port, tag="canary")]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def canary_url(self) -> str:
        return f"http://127.0.0.1:{self.canary_port}"

    def pick(self, tag: str | None) -> Revision | None:
        split = traffic_split(self.revisions.service())
        if tag is not None:
            names = [name for name, _, t in split if t == tag]
        else:
            weights = [p for _, p, _ in split]
            names = self.random.choices([n for n, _, _ in split], weights) if sum(weights) else []
        return self.revisions.get(names[0]) if names else None

    def _server(self, port: int, tag: str | None) -> ThreadingHTTPServer:
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                revision = router.pick(tag)
                if revision is None:
                    self._answer(503, {"Content-Type": "text/plain"}, b"no revision for this route\n")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                request = urllib.request.Request(revision.url + self.path, body or None, headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=60) as resp:
                        self._answer(resp.status, dict(resp.headers), resp.read())
                except urllib.error.HTTPError as exc:
                    self._answer(exc.code, dict(exc.headers), exc.read())
                except OSError as exc:  # the revision is still starting, or gone
                    self._answer(503, {"Content-Type": "text/plain"}, f"{revision.name}: {exc}\n".encode())

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _proxy  # noqa: N815 (http.server's names)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name=f"router-{port}").start()
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()


# --- Eventing ----------------------------------------------------------------------


@dataclass
class Delivery:
    """An event the broker took, and what became of it at one subscriber."""

    time: float
    type: str
    id: str
    data: Any
    subscriber: str = ""
    outcome: str = ""


@dataclass
class JobSink:
    name: str
    command: list[str]
    env: dict[str, str]
    backoff_limit: int
    fail_codes: set[int]
    overrides: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)


def jobsinks(entrypoints: dict[str, list[str]]) -> dict[str, JobSink]:
    sinks = {}
    for doc in manifests("JobSink"):
        job = doc["spec"]["job"]["spec"]
        container = job["template"]["spec"]["containers"][0]
        fail_codes: set[int] = set()
        for rule in job.get("podFailurePolicy", {}).get("rules", []):
            if rule.get("action") == "FailJob" and "onExitCodes" in rule:
                fail_codes.update(rule["onExitCodes"]["values"])
        sinks[doc["metadata"]["name"]] = JobSink(
            name=doc["metadata"]["name"],
            command=command_for_image(container["image"], entrypoints) + list(container.get("args", [])),
            env={e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e},
            backoff_limit=int(job.get("backoffLimit", 6)),
            fail_codes=fail_codes,
        )
    return sinks


def trigger_routes() -> dict[str, list[dict[str, Any]]]:
    """Event type -> the subscriber refs of every Trigger filtering on it."""
    routes: dict[str, list[dict[str, Any]]] = {}
    for doc in manifests("Trigger"):
        kind = doc["spec"].get("filter", {}).get("attributes", {}).get("type")
        if kind:
            routes.setdefault(kind, []).append(doc["spec"]["subscriber"]["ref"])
    return routes


class Broker:
    """Takes CloudEvents over HTTP and delivers each to the subscribers of its Triggers."""

    def __init__(self, folder: Path, service_url: str, sinks: dict[str, JobSink], say: Callable[[str], None]):
        self.folder, self.service_url, self.sinks, self.say = folder, service_url, sinks, say
        self.routes = trigger_routes()
        self.deliveries: list[Delivery] = []
        self.jobs: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = self._serve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> ThreadingHTTPServer:
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                from cloudevents.http import from_http

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    event = from_http(dict(self.headers), body)
                except Exception as exc:  # noqa: BLE001 (a bad event is the sender's; say why)
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(str(exc).encode())
                    return
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                broker.take(event.get_attributes(), event.data)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name="broker").start()
        return server

    def take(self, attributes: dict[str, Any], data: Any) -> None:
        kind, event_id = attributes["type"], attributes["id"]
        subscribers = self.routes.get(kind, [])
        with self._lock:
            self.deliveries.append(Delivery(time.time(), kind, event_id, data, "", "taken"))
        structured = {**{k: v for k, v in attributes.items() if isinstance(v, str)}, "data": data}
        for ref in subscribers:
            if ref["kind"] == "JobSink":
                self._run_job(self.sinks[ref["name"]], kind, event_id, structured)
            elif ref["kind"] == "Service":
                threading.Thread(target=self._post, args=(ref["name"], structured), daemon=True).start()

    def _post(self, name: str, event: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.service_url, json.dumps(event).encode(), {"Content-Type": "application/cloudevents+json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                outcome = str(resp.status)
        except urllib.error.HTTPError as exc:
            outcome = str(exc.code)
        except OSError as exc:
            outcome = f"unreachable: {exc}"
        with self._lock:
            self.deliveries.append(Delivery(time.time(), event["type"], event["id"], None, f"Service/{name}", outcome))

    def _run_job(self, sink: JobSink, kind: str, event_id: str, event: dict[str, Any]) -> None:
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", event_id)[:80]
        event_file = self.folder / f"{sink.name}-{safe_id}.json"
        event_file.write_text(json.dumps(event))

        def local(value: str) -> str:
            return value.replace(JOBSINK_EVENT_PATH, str(event_file))

        command = [local(a) for a in sink.command] + sink.extra_args
        env = {**os.environ, **{k: local(v) for k, v in sink.env.items()}, **sink.overrides, "K_SINK": self.url}

        def run() -> None:
            outcome = ""
            for attempt in range(sink.backoff_limit + 1):
                if attempt:  # a Job's backoff before it starts another pod: 10 s, doubling
                    time.sleep(JOB_BACKOFF_S * 2 ** (attempt - 1))
                log_path = self.folder / f"{sink.name}-{safe_id}-{attempt}.log"
                with log_path.open("wb") as log:
                    code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
                outcome = f"exit {code}"
                if code == 0 or code in sink.fail_codes:
                    break
            with self._lock:
                self.deliveries.append(Delivery(time.time(), kind, event_id, None, f"JobSink/{sink.name}", outcome))
            self.say(f"job {sink.name} for {kind} {event_id}: {outcome} (log: {log_path})")

        thread = threading.Thread(target=run, daemon=True, name=f"job-{sink.name}")
        with self._lock:
            self.jobs.append(thread)
        thread.start()

    def history(self) -> list[Delivery]:
        """Every event taken and every delivery's outcome, oldest first."""
        with self._lock:
            return list(self.deliveries)

    def seen(self, kind: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.type == kind and d.outcome == "taken"]

    def stop(self) -> None:
        self._server.shutdown()
