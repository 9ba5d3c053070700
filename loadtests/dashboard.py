#!/usr/bin/env python3
"""The Grafana dashboard's panels from a real run, plotted with matplotlib (no Grafana or
Grafana renderer here): two warmstart revisions scraped by a real Prometheus (Debian's
package) with the recording rules loaded, every panel's queries of
knative/observability/dashboard.json run over the run's time range, each panel drawn
as Grafana would draw its type (time series lines or bars, the bar gauge as bars).

    .venv/bin/python loadtests/dashboard.py [--seconds 90] [--out docs/dashboard.png]

The run, loopback only: stable (warmstart-v1, 2 workers) gets training rows, one at a
time and in batches of 8, and a bad row now and then; canary (warmstart-v2) gets the
same until half-way, then malignant-looking rows scaled by 1.6 (its predictions turn
all one class and its inputs drift); a second canary pod starts a third of the way in
(another cold start); each revision runs a batch job now and then.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.prometheus import Prometheus  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

DASHBOARD = ROOT / "knative" / "observability" / "dashboard.json"
# Prometheus scrapes every second here, so a shorter rate window than Grafana's default
# for a 15 s scrape still spans several scrapes.
VARIABLES = {"$revision": ".*", "$__rate_interval": "10s"}
COLOURS = {"warmstart-v1": "tab:blue", "warmstart-v2": "tab:orange"}


def pod(folder: Path, revision: str, workers: int) -> ServerProcess:
    """A server of `revision`, not started yet; batch jobs may read and write in `folder`."""
    env = {"K_REVISION": revision, "WORKERS": str(workers), "DRIFT_WINDOW": "200", "BATCH_ALLOW": f"{folder}/"}
    return ServerProcess(env, log_dir=folder)


def batch_job(url: str, folder: Path, rows: np.ndarray, names: list[str], job: str) -> None:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    src = folder / f"{job}.csv"
    src.write_text(",".join(names) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    data = {"input": str(src), "output": str(folder / f"{job}-out.csv")}
    headers, body = to_binary(CloudEvent({"type": "warmstart.batch.v1", "source": "/dashboard", "id": job}, data))
    requests.post(url + "/", data=body, headers=headers, timeout=60).raise_for_status()


def run(seconds: float, folder: Path) -> tuple[Prometheus, float, float]:
    """Serve the traffic of the module docstring; returns Prometheus (still running) and
    the run's start and end (seconds since the epoch)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y, names = data.data, data.target, [str(n) for n in data.feature_names]
    rows = np.random.default_rng(0).permutation(x)
    drifted = x[y == 0] * 1.6
    stable = pod(folder, "warmstart-v1", 2).start()
    canary = pod(folder, "warmstart-v2", 1).start()
    second = pod(folder, "warmstart-v2", 1)
    targets = {"stable": stable, "canary": canary, "canary-2": second}
    prometheus = Prometheus(folder, {job: f"127.0.0.1:{s.port}" for job, s in targets.items()})
    for server in (stable, canary):
        server.wait_ready()
    deadline = time.monotonic() + 30
    while not requests.get(prometheus.url + "/-/ready", timeout=2).ok and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(6)  # Prometheus hands its scrapers their targets seconds after it is ready
    began = time.time()
    i, batch_every, second_started = 0, seconds / 4, False
    next_batch = time.monotonic() + 5
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if not second_started and elapsed > seconds / 3:
            second.start()
            second_started = True
        requests.post(stable.url + "/predict", json={"features": rows[i % len(rows)].tolist()})
        batch = (i * 8) % (len(rows) - 8)  # every row once per pass, as a drift window expects
        requests.post(stable.url + "/predict", json={"instances": rows[batch : batch + 8].tolist()})
        canary_rows = drifted[i % len(drifted)] if elapsed > seconds / 2 else rows[(i * 7) % len(rows)]
        for url in (canary.url, second.url) if second_started and i % 2 else (canary.url,):
            try:
                requests.post(url + "/predict", json={"features": canary_rows.tolist()}, timeout=5)
            except requests.ConnectionError:  # the second pod is still starting
                pass
        if i % 40 == 0:
            requests.post((stable.url, canary.url)[i % 80 // 40] + "/predict", json={"features": [1.0]})
        if time.monotonic() > next_batch:
            for server, name in ((stable, "v1"), (canary, "v2")):
                batch_job(server.url, folder, rows[: 300 + i % 200], names, f"{name}-{i}")
            next_batch += batch_every
        i += 1
        time.sleep(0.005)
    time.sleep(3)  # the last scrapes and rule evaluations
    for server in targets.values():
        server.kill()
    return prometheus, began, time.time()


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or str(labels)


def query_range(prometheus: Prometheus, expr: str, began: float, ended: float) -> list[dict]:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    params = {"query": expr, "start": began, "end": ended, "step": 1}
    body = requests.get(prometheus.url + "/api/v1/query_range", params=params, timeout=30).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def colour(labels: dict[str, str]) -> str | None:
    return COLOURS.get(labels.get("revision", ""))


def draw(ax, panel: dict, prometheus: Prometheus, began: float, ended: float) -> None:
    ax.set_title(panel["title"], fontsize=10, loc="left")
    defaults = panel["fieldConfig"]["defaults"]
    if panel["type"] == "bargauge":  # the last value of each series, as the bar gauge shows it
        values = []
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], began, ended):
                values.append((legend(target["legendFormat"], series["metric"]), float(series["values"][-1][1])))
                values[-1] += (colour(series["metric"]),)
        values.sort()
        ax.barh([v[0] for v in values], [v[1] for v in values], color=[v[2] for v in values])
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        return
    bars = defaults.get("custom", {}).get("drawStyle") == "bars"
    many = panel["title"].startswith("Drift PSI")
    # the targets an override puts on a right-hand axis, drawn as lines there
    right = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byFrameRefID"}
    main = ax
    for n, target in enumerate(panel["targets"]):
        if target["refId"] in right:
            ax, bars = main.twinx(), False
            ax.tick_params(labelsize=7)
        for series in query_range(prometheus, target["expr"], began, ended):
            t = np.array([float(v[0]) - began for v in series["values"]])
            v = np.array([float(v[1]) for v in series["values"]])
            label = legend(target["legendFormat"], series["metric"])
            style = {"linestyle": "--"} if n and not many else {}
            if many and label != "predictions":
                ax.plot(t, v, linewidth=0.8, alpha=0.6)
            elif bars:
                ax.bar(t, v, width=1.0, label=label, alpha=0.7)
            elif defaults.get("custom", {}).get("showPoints") == "always":
                ax.plot(t, v, marker="o", markersize=3, label=label, color=colour(series["metric"]), **style)
            else:
                ax.plot(t, v, label=label, color=colour(series["metric"]), linewidth=1.2, **style)
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step["value"] is not None and defaults["custom"].get("thresholdsStyle", {}).get("mode") == "line":
            main.axhline(step["value"], color=step["color"], linestyle="--", linewidth=1.2)
    if many:
        main.set_yscale("symlog", linthresh=0.5)
        main.text(
            0.01,
            0.97,
            "one line per feature; dashed: 0.1 warning, 0.2 drift",
            transform=main.transAxes,
            fontsize=7,
            va="top",
        )
    else:
        handles = [h for a in {main, ax} for h in a.get_legend_handles_labels()[0]]
        main.legend(handles=handles, fontsize=6, loc="upper left")
    main.set_xlabel("seconds into the run", fontsize=7)
    main.tick_params(labelsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.loads(DASHBOARD.read_text())
    shown = [p for p in dash["panels"] if p["type"] in ("timeseries", "bargauge")]
    with tempfile.TemporaryDirectory() as folder:
        prometheus, began, ended = run(args.seconds, Path(folder))
        try:
            columns = 3
            fig, axes = plt.subplots(-(-len(shown) // columns), columns, figsize=(16, 3.4 * -(-len(shown) // columns)))
            for ax, panel in zip(axes.flat, shown):
                draw(ax, panel, prometheus, began, ended)
            for ax in list(axes.flat)[len(shown) :]:
                ax.axis("off")
            fig.suptitle(
                f"{dash['title']} dashboard: its queries over a {args.seconds:.0f} s run against a real Prometheus "
                "(plotted with matplotlib, not Grafana)",
                fontsize=11,
            )
            fig.tight_layout()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.out, dpi=80)
        finally:
            prometheus.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
