"""The production server: gunicorn with threaded workers, one app per worker process.

The master imports Flask and NumPy once, so forked workers share those pages. Each
worker imports onnxruntime itself, builds its own app and loads the model on a thread:
onnxruntime imported before a fork makes the forked workers abort at exit ("terminate
called after throwing an instance of 'std::system_error'") or hang creating a session.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger

from ..config import Settings
from ..model import readiness
from ..model.runtime import BULK_ROWS
from ..observe import logs
from ..process import process_started
from . import shared_dir

log = logging.getLogger("warmstart.server")

# Knative's queue-proxy keeps connections to the container open between requests.
KEEPALIVE_S = 30
# Connections one worker holds (gunicorn's default). Past it the worker closes the one
# idle longest rather than stop accepting (worker.py), so idle connections cannot
# lock new clients out.
MAX_CONNECTIONS = 1000


class _JsonGunicornLogger(GunicornLogger):
    """gunicorn's own messages (boot, worker exits) as JSON lines like ours."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        root = logging.getLogger()
        self.error_log.handlers = list(root.handlers)
        self.error_log.propagate = False

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg.startswith("Listening at:") and args and not args[0]:
            # With reuse_port the master binds nothing (each worker binds its own
            # socket), so gunicorn has no listener to name: name the address they bind.
            args = (",".join(f"http://{address}" for address in self.cfg.bind), *args[1:])
        super().info(msg, *args, **kwargs)


def _post_fork(arbiter: Any, worker: Any) -> None:
    """In the new worker: which worker it is (gunicorn counts them from 1; a number past
    WORKERS means it replaced one that died)."""
    arbiter.app.worker_age = worker.age


class BackToBackArbiter(Arbiter):
    """gunicorn's master, forking the workers it needs one straight after another.

    gunicorn sleeps up to 0.1 s (at random) after each fork. The pod is ready only once
    every first-generation worker has loaded its model (func/model/readiness.py), so those
    sleeps were on the cold start's path: 50 ms a worker on average, 150 ms for 4."""

    def spawn_workers(self) -> None:
        for _ in range(self.num_workers - len(self.WORKERS)):
            self.spawn_worker()


class Server(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = process_started()
        self.worker_age = 0
        super().__init__()

    def load_config(self) -> None:
        # Imported here, after run() made the shared folder (prometheus-client picks its
        # multiprocess mode when first imported), and in the master, so the forked workers
        # share these pages and do not import them again.
        from ..api import app  # noqa: F401
        from .worker import Worker

        s = self.settings
        options = {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": Worker,
            "threads": s.threads,
            "keepalive": KEEPALIVE_S,
            "worker_connections": MAX_CONNECTIONS,
            "graceful_timeout": s.graceful_timeout,
            "accesslog": None,
            "logger_class": _JsonGunicornLogger,
            "post_fork": _post_fork,
            "child_exit": self._child_exit,
            "proc_name": f"warmstart-{s.k_service or 'local'}",
            # gunicorn's runtime control socket is a second way in; nothing here uses it.
            "control_socket_disable": True,
            # Each worker binds its own SO_REUSEPORT socket, so the kernel spreads new
            # connections across workers. On one shared socket, whichever worker wakes
            # first accepts: wrk's 32 keep-alive connections split 29/3 or even 32/0.
            "reuse_port": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        try:
            BackToBackArbiter(self).run()
        except RuntimeError as exc:  # gunicorn's own configuration errors, as BaseApplication.run says them
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    def load(self) -> Any:
        # Imported here, after run() made the shared folder: prometheus-client picks its
        # multiprocess mode when first imported.
        from ..api.app import create_app

        first_generation = self.worker_age <= self.settings.workers
        return create_app(self.settings, started=self.started if first_generation else None)

    def _child_exit(self, arbiter: Any, worker: Any) -> None:
        # In the master: a dead worker no longer holds readiness back, and its counts join
        # those of the workers that died before it.
        if self.settings.shared_dir:
            from ..observe.metrics import merge_dead  # imported by load_config, after the folder was made

            readiness.loaded(self.settings.shared_dir, worker.age)
            merge_dead(self.settings.shared_dir, worker.pid)


def port_problem(host: str, port: int) -> str | None:
    """Why the workers could not bind host:port, or None.

    With reuse_port the master binds nothing, and a worker that cannot bind exits 1,
    which gunicorn answers by starting another: a crash loop instead of one clear error.
    A probe bind without SO_REUSEPORT fails if anything at all holds the port, including
    another server that would otherwise silently share it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"HOST={host!r} does not resolve: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror} (set PORT to a free port)"
    return None


def run(settings: Settings) -> None:
    logs.configure(settings, settings.log_level)
    problem = port_problem(settings.host, settings.port)
    if problem:
        log.error(problem)
        sys.exit(1)
    log.info(
        "serving %s on %s:%d with %d worker(s) x %d thread(s); inputs of %d rows or more on %d thread(s)",
        settings.model_path,
        settings.host,
        settings.port,
        settings.workers,
        settings.threads,
        BULK_ROWS,
        settings.inference_threads,
    )
    try:
        shared = shared_dir.create(settings.shared_dir_base)
    except OSError as exc:
        # A read-only root filesystem without a writable /tmp (or SHARED_DIR) volume.
        where = f"SHARED_DIR={settings.shared_dir_base}" if settings.shared_dir_base else "the temporary folder"
        log.error("cannot make the workers' shared folder in %s: %s (mount a writable volume there)", where, exc)
        sys.exit(1)
    # Every first-generation worker is expected before the first fork: marked one fork at
    # a time, the first could report the pod ready before the second existed.
    readiness.expect(str(shared), range(1, settings.workers + 1))
    master = os.getpid()
    try:
        Server(dataclasses.replace(settings, shared_dir=str(shared))).run()
    finally:
        # A worker leaves through here too (gunicorn forks inside run()): only the master,
        # which made the folder, removes it.
        if os.getpid() == master:
            shared_dir.remove(shared)
