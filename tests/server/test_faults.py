"""Faults a pod meets: a worker killed under load, an output folder that is read-only or
full during a batch job. (A job killed half-way: tests/batch/test_batch.py; SIGTERM: branch
robust's tests; missing, corrupt or mismatched models: tests/model/test_model_loading.py.)"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from tests.support.mounts import in_mount_namespace, needs_mounts
from tests.support.server import ServerProcess, children, wait_for


def batch(url: str, src: Path, out: Path, event_id: str) -> requests.Response:
    event = CloudEvent(
        {"type": "warmstart.batch.v1", "source": "/tests", "id": event_id}, {"input": str(src), "output": str(out)}
    )
    headers, body = to_binary(event)
    return requests.post(url + "/", data=body, headers=headers, timeout=60)


def rows_csv(path: Path, card: dict, n: int) -> Path:
    names = card["feature_names"]
    row = ",".join(str(card["reference"][name]["mean"]) for name in names)
    path.write_text(",".join(f'"{name}"' for name in names) + "\n" + (row + "\n") * n)
    return path


def serves(url: str, body: dict, times: int = 20, timeout: float = 60) -> bool:
    """Whether `times` predictions in a row succeed within `timeout` seconds: readiness
    answers for whichever worker takes the probe, so a worker still loading its model
    shows only as a 503 to the requests it takes."""
    deadline = time.monotonic() + timeout
    in_a_row = 0
    while in_a_row < times and time.monotonic() < deadline:
        ok = requests.post(url + "/predict", json=body, timeout=10).status_code == 200
        in_a_row = in_a_row + 1 if ok else 0
        if not ok:
            time.sleep(0.1)
    return in_a_row == times


def test_a_killed_worker_costs_only_its_requests_in_flight_and_is_replaced(start_server, card):
    srv = start_server({"WORKERS": "2", "ACCESS_LOG": "off"})
    body = {"features": [card["reference"][name]["mean"] for name in card["feature_names"]]}
    outcomes: list[Counter[str]] = [Counter() for _ in range(8)]
    resets: list[float] = []
    stop = threading.Event()

    def client(mine: Counter[str]) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    resp = session.post(srv.url + "/predict", json=body, timeout=10)
                    retry = "" if resp.status_code != 503 or "Retry-After" in resp.headers else " without Retry-After"
                    mine[f"{resp.status_code}{retry}"] += 1
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                    mine["connection error"] += 1
                    resets.append(time.monotonic())

    clients = [threading.Thread(target=client, args=(mine,)) for mine in outcomes]
    for thread in clients:
        thread.start()
    time.sleep(1)
    victim = children(srv.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    deadline = time.monotonic() + 20
    while len(set(children(srv.proc.pid)) - {victim}) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    stop.set()
    for thread in clients:
        thread.join(15)
    replaced = set(children(srv.proc.pid)) - {victim}
    assert len(replaced) == 2, "gunicorn should replace the killed worker"
    # What clients get: the requests the killed worker held fail with a reset connection
    # (as may a retry in the instant its socket closes), and only then; while the
    # replacement loads the model, the requests its socket takes get 503 with Retry-After.
    total = sum(outcomes, Counter())
    assert set(total) <= {"200", "connection error", "503"}, outcomes
    assert all(at - killed < 1 for at in resets), (outcomes, [round(at - killed, 3) for at in resets])
    assert total["200"] > 100, outcomes
    assert serves(srv.url, body), "the replacement worker should serve"


@needs_mounts
def test_a_read_only_output_folder_fails_the_job_with_422_and_writes_nothing(start_server, tmp_path, card):
    src = rows_csv(tmp_path / "in.csv", card, 1000)
    folder = tmp_path / "ro"
    folder.mkdir()
    q = shlex.quote(str(folder))
    cmd = in_mount_namespace(f"mount --bind {q} {q} && mount -o remount,bind,ro {q}")
    srv = start_server({"BATCH_ALLOW": f"{tmp_path}/", "WORKERS": "1"}, cmd=cmd)
    resp = batch(srv.url, src, folder / "out.csv", "ro-1")
    assert resp.status_code == 422, resp.text  # Knative does not retry it; it goes to the dead-letter sink
    assert "not writable (Read-only file system)" in resp.json()["error"]["message"]
    assert list(folder.iterdir()) == []


@needs_mounts
def test_a_full_disk_fails_the_job_with_507_and_leaves_nothing_half_written(start_server, tmp_path, card):
    src = rows_csv(tmp_path / "in.csv", card, 20_000)
    folder = tmp_path / "small"
    folder.mkdir()
    cmd = in_mount_namespace(f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(folder))}")
    srv = start_server({"BATCH_ALLOW": f"{tmp_path}/", "WORKERS": "1"}, cmd=cmd)
    resp = batch(srv.url, src, folder / "out.csv", "full-1")
    # 5xx: Knative retries it (the next pod may have room), then dead-letters it
    assert resp.status_code == 507, resp.text
    assert "no space" in resp.json()["error"]["message"]
    listing = subprocess.run(
        ["nsenter", "-t", str(srv.proc.pid), "-m", "ls", "-A", str(folder)], capture_output=True, text=True
    )
    assert listing.returncode == 0 and listing.stdout == "", listing


@needs_mounts
def test_a_read_only_root_filesystem_with_a_writable_tmp_serves_with_metrics(start_server, card, tmp_path):
    # As knative/base runs it: readOnlyRootFilesystem and one writable emptyDir for the
    # temporary folder. The emptyDir is a tmpfs of its own here rather than over /tmp,
    # which may hold the checkout and its virtualenv; /tmp goes read-only with the rest.
    writable = tmp_path / "emptydir"
    writable.mkdir()
    cmd = in_mount_namespace(
        f"mount -t tmpfs tmpfs {shlex.quote(str(writable))} && mount -o remount,bind,ro / "
        "&& { ! mountpoint -q /tmp || mount -o remount,bind,ro /tmp; }"
    )
    srv = start_server({"WORKERS": "2", "TMPDIR": str(writable)}, cmd=cmd)
    body = {"features": [card["reference"][name]["mean"] for name in card["feature_names"]]}
    assert serves(srv.url, body, times=4)
    metrics = requests.get(srv.url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "warmstart_requests_total" in metrics.text
    assert requests.get(srv.url + "/drift", timeout=10).json()["enabled"] is True


@needs_mounts
def test_a_read_only_root_without_a_writable_tmp_exits_with_one_clear_line(tmp_path):
    server = ServerProcess(cmd=in_mount_namespace("mount -o remount,bind,ro /"), log_dir=tmp_path).start()
    assert server.proc.wait(30) == 1
    errors = [line for line in server.log().splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "cannot make the workers' shared folder" in errors[0], server.log()
    assert "Traceback" not in server.log()


@needs_mounts
def test_a_full_shared_folder_keeps_liveness_up_and_says_so_once_per_worker(start_server, tmp_path):
    """The workers' counts are memory-mapped files in the shared folder; on a full one the
    first write to a page that has no storage yet was a SIGBUS, worker after worker. Now
    each file is allocated when it is made: each worker logs one line and stays up, not
    ready, answering liveness."""
    shared = tmp_path / "shared"
    shared.mkdir()
    folder = shlex.quote(str(shared))
    fill = f"{{ cat /dev/zero > {folder}/fill 2>/dev/null; true; }}"  # until the folder is full
    cmd = in_mount_namespace(f"mount -t tmpfs -o size=256k tmpfs {folder} && {fill}")
    srv = start_server({"WORKERS": "2", "SHARED_DIR": str(shared)}, ready=False, cmd=cmd)
    assert wait_for(lambda: len(children(srv.proc.pid)) == 2), srv.log()  # the second may fork later
    workers = sorted(children(srv.proc.pid))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # on new connections, so both workers answer
        assert requests.get(srv.url + "/health/liveness", timeout=5).status_code == 200, srv.log()
        readiness = requests.get(srv.url + "/health/readiness", timeout=5)
        assert readiness.status_code == 503
    assert sorted(children(srv.proc.pid)) == workers and len(workers) == 2
    assert "SIGBUS" not in srv.log()
    errors = [line for line in srv.log().splitlines() if '"level": "error"' in line]
    assert len(errors) == 2 and all("no room for" in line and str(shared) in line for line in errors), errors


def test_a_busy_worker_tells_the_master_it_is_alive_twice_a_second_not_per_request(start_server, card):
    """The heartbeat (gunicorn's file whose mtime the master watches) is a system call:
    gunicorn makes it on every turn of the event loop, about every other request."""
    srv = start_server({"WORKERS": "1", "ACCESS_LOG": "off"})
    (worker,) = children(srv.proc.pid)
    heartbeat = next(fd for fd in Path(f"/proc/{worker}/fd").iterdir() if "wgunicorn-" in os.readlink(fd))
    body = {"features": [card["reference"][name]["mean"] for name in card["feature_names"]]}
    beats, answered = set(), 0
    with requests.Session() as session:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            assert session.post(srv.url + "/predict", json=body, timeout=10).status_code == 200
            answered += 1
            beats.add(os.stat(heartbeat).st_mtime)
    assert answered > 50
    assert len(beats) <= 5, f"{len(beats)} heartbeats for {answered} requests in 1.5 s"
    os.kill(worker, 0)  # and the master kept it
