#!/usr/bin/env python3
r"""Fan a dataset out as one warmstart.batch.v1 event per part file.

    python scripts/submit_batch.py 'data/parts/*.parquet' data/predictions http://broker-ingress/ns/default \
        [--parallel 4] [--format parquet]

INPUT is a glob or a folder of part files; each part `name.ext` gets the output
`OUTPUT/name.ext` (or with --output-format's extension); a local OUTPUT folder is
created if missing. Event ids are derived from the input and output URIs, so running
the command again re-delivers the same events, and warmstart's atomic writes leave one
complete output per part. Sent to a Broker, the
events spread across as many pods as Knative scales to; sent straight to the service,
the replies are summarised (rows, failures).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

PART_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")


def part_files(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        return sorted(str(p) for p in Path(pattern).iterdir() if p.suffix.lower() in PART_SUFFIXES)
    return sorted(glob.glob(pattern))


def event_id(input_uri: str, output_uri: str) -> str:
    return "batch-" + hashlib.sha256(f"{input_uri}\n{output_uri}".encode()).hexdigest()[:32]


def batch_event(input_uri: str, output_uri: str, fmt: str | None, source: str) -> CloudEvent:
    data = {"input": input_uri, "output": output_uri}
    if fmt:
        data["format"] = fmt
    attributes = {
        "type": "warmstart.batch.v1",
        "source": source,
        "id": event_id(input_uri, output_uri),
        "subject": Path(input_uri).name,
    }
    return CloudEvent(attributes, data)


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.lock = threading.Lock()

    def step(self, note: str) -> None:
        with self.lock:
            self.done += 1
            width = 30
            filled = width * self.done // max(self.total, 1)
            elapsed = time.monotonic() - self.started
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.1f}s {note[:40]:<40}"
            )
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


# Like Knative's delivery: retry what the server says to retry (503, honouring a capped
# Retry-After), never what it rejected (4xx).
MAX_RETRY_WAIT_S = 10.0


def send(url: str, event: CloudEvent, timeout: float, retries: int = 5) -> dict:
    headers, body = to_binary(event)
    for attempt in range(retries + 1):
        try:
            resp = requests.post(url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            return {"part": event["subject"], "status": None, "error": str(exc)}
        if resp.status_code != 503 or attempt == retries:
            break
        try:
            wait = float(resp.headers.get("Retry-After", 1))
        except ValueError:
            wait = 1.0
        time.sleep(min(wait, MAX_RETRY_WAIT_S))
    result: dict = {"part": event["subject"], "status": resp.status_code}
    if resp.status_code == 200 and "ce-specversion" in resp.headers:
        result["rows"] = from_http(resp.headers, resp.content).data["rows"]
    elif resp.status_code >= 300:
        try:
            result["error"] = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            result["error"] = resp.text[:200]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="glob of part files, or a folder of them")
    parser.add_argument("output", help="folder (or URI prefix) for the outputs; must be in the server's BATCH_ALLOW")
    parser.add_argument("url", help="where to POST the events: a Broker's ingress or the service itself")
    parser.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="input format (default: from extension)")
    parser.add_argument("--output-format", choices=["csv", "jsonl", "parquet"], help="output format (default: input's)")
    parser.add_argument("--parallel", type=int, default=4, help="events in flight at once (default 4)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for each reply (default 600)")
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503 reply (default 5)")
    parser.add_argument("--source", default="/warmstart/submit-batch", help="the events' source attribute")
    args = parser.parse_args(argv)

    parts = part_files(args.input)
    if not parts:
        print(f"error: no part files match {args.input!r}", file=sys.stderr)
        return 2
    output = urlsplit(args.output)
    if output.scheme in ("", "file"):
        # The parts were listed on this filesystem, so the outputs go to it too; a job
        # refuses an output folder that does not exist.
        Path(output.path if output.scheme else args.output).mkdir(parents=True, exist_ok=True)
    extension = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
    events = []
    for part in parts:
        name = Path(part).name
        if args.output_format:
            name = Path(name).stem + extension[args.output_format]
        events.append(batch_event(part, f"{args.output.rstrip('/')}/{name}", args.format, args.source))

    progress = Progress(len(events))
    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = [pool.submit(send, args.url, event, args.timeout, args.retries) for event in events]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            progress.step(f"{result['part']} {result['status']}")

    done = [r for r in results if r["status"] == 200]
    accepted = [r for r in results if r["status"] == 202]
    failed = [r for r in results if r["status"] is None or r["status"] >= 300]
    rows = sum(r.get("rows", 0) for r in done)
    print(
        f"{len(parts)} parts: {len(done)} completed ({rows} rows), {len(accepted)} accepted for async delivery, "
        f"{len(failed)} failed"
    )
    for r in sorted(failed, key=lambda r: r["part"]):
        print(f"  {r['part']}: {r['status'] or 'no response'} {r.get('error', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
