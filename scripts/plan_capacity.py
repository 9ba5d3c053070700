#!/usr/bin/env python3
"""Plan Knative autoscaling for warmstart from what one pod was measured to do.

    .venv/bin/python scripts/plan_capacity.py [--bench loadtests/results/bench.json] \
        [--pattern diurnal | --csv traffic.csv] [--peak-rps 2000] [--p99-ms 50] [--out DIR]

Simulates Knative's autoscaler (scripts/autoscaler_sim.py) over the traffic for each
min-scale and per-pod target, and reports the p99 latency users would see, the requests
that waited on a cold start, and pod-hours; then recommends the cheapest setting that
meets the latency goal. A CSV has one requests/s value per second (a `rps` column, or
the last column). With --out DIR, also writes DIR/capacity.json and DIR/capacity.png
(the README's plot is `--out loadtests/results`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autoscaler_sim import Outcome, PodProfile, Setting, pattern, simulate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pod_from_bench(path: Path, system: str, pod_start_s: float) -> PodProfile:
    """Throughput and p99 per concurrency of `system` from bench.json; points whose
    throughput does not grow are dropped (past saturation only latency grows)."""
    bench = json.loads(path.read_text())
    by_c = bench["single_row"][system]
    points = sorted((int(c), v["rps"], v["p99_ms"] / 1000) for c, v in by_c.items())
    kept = [points[0]]
    for point in points[1:]:
        if point[1] > kept[-1][1]:
            kept.append(point)
    cold = bench["cold_start"]["warmstart, ONNX"]["median_s"] + pod_start_s
    return PodProfile(
        concurrency=tuple(p[0] for p in kept),
        rps=tuple(p[1] for p in kept),
        p99_s=tuple(p[2] for p in kept),
        cold_start_s=cold,
    )


def read_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    column = header.index("rps") if "rps" in header else len(header) - 1
    try:
        return np.asarray([float(r[column]) for r in body if r])
    except ValueError as exc:
        raise SystemExit(f"{path}: column {header[column]!r} must hold requests/s numbers ({exc})") from None


def plan(
    traffic: np.ndarray,
    pod: PodProfile,
    min_scales: list[int],
    targets: list[float],
    container_concurrency: int,
    scale_down_delay_s: int,
) -> list[Outcome]:
    return [
        simulate(traffic, pod, Setting(m, t, container_concurrency, scale_down_delay_s=scale_down_delay_s))
        for t in targets
        for m in min_scales
    ]


def recommend(outcomes: list[Outcome], p99_goal_s: float) -> Outcome | None:
    meeting = [o for o in outcomes if o.p99_s <= p99_goal_s]
    return min(meeting, key=lambda o: (o.pod_hours, o.setting.min_scale)) if meeting else None


def plot(outcomes: list[Outcome], best: Outcome | None, goal_s: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for target in sorted({o.setting.target for o in outcomes}):
        rows = sorted((o for o in outcomes if o.setting.target == target), key=lambda o: o.setting.min_scale)
        xs = [o.setting.min_scale for o in rows]
        ax1.plot(xs, [o.p99_s * 1000 for o in rows], marker="o", label=f"target {target:g}")
        ax2.plot(xs, [o.pod_hours for o in rows], marker="o", label=f"target {target:g}")
    ax1.axhline(goal_s * 1000, color="grey", linestyle="--", label="p99 goal")
    ax1.set(xlabel="min-scale", ylabel="p99 latency (ms)", yscale="log", title="latency users see")
    ax2.set(xlabel="min-scale", ylabel="pod-hours", title="cost")
    if best:
        ax2.plot([best.setting.min_scale], [best.pod_hours], "k*", markersize=14, label="recommended")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=ROOT / "loadtests" / "results" / "bench.json")
    parser.add_argument("--system", default="warmstart", help="which system of the bench to plan for")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pattern", default="diurnal", choices=["steady", "diurnal", "bursty", "spike-from-zero"])
    source.add_argument("--csv", type=Path, help="requests/s per second")
    parser.add_argument("--seconds", type=int, default=4 * 3600, help="length of a named pattern")
    parser.add_argument("--peak-rps", type=float, default=2000)
    parser.add_argument("--p99-ms", type=float, default=50, help="latency goal")
    parser.add_argument(
        "--pod-start-s",
        type=float,
        default=2.0,
        help="scheduling and image start before the process starts (added to the measured cold start)",
    )
    parser.add_argument("--min-scale", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--targets", type=float, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--container-concurrency", type=int, default=8)
    parser.add_argument("--scale-down-delay", type=int, default=0, help="seconds")
    parser.add_argument(
        "--out", type=Path, help="a folder to write capacity.json and capacity.png into (default: print only)"
    )
    args = parser.parse_args(argv)

    pod = pod_from_bench(args.bench, args.system, args.pod_start_s)
    traffic = read_csv(args.csv) if args.csv else pattern(args.pattern, args.seconds, args.peak_rps)
    outcomes = plan(traffic, pod, args.min_scale, args.targets, args.container_concurrency, args.scale_down_delay)
    goal = args.p99_ms / 1000
    best = recommend(outcomes, goal)

    name = args.csv.name if args.csv else f"{args.pattern}, peak {args.peak_rps:g} req/s"
    print(
        f"traffic: {name}, {len(traffic)} s, {int(traffic.sum()):,} requests; pod: "
        f"{pod.capacity_rps:,.0f} req/s at most, cold start {pod.cold_start_s:.2f} s"
    )
    print(f"{'min-scale':>9} {'target':>6} {'p99 ms':>9} {'cold waits':>10} {'pod-hours':>9} {'max pods':>8}")
    for o in outcomes:
        mark = "  <- recommended" if o is best else ""
        print(
            f"{o.setting.min_scale:>9} {o.setting.target:>6g} {o.p99_s * 1000:>9.1f} {o.cold_start_waits:>10,} "
            f"{o.pod_hours:>9.2f} {o.max_pods:>8}{mark}"
        )
    if best is None:
        print(f"no setting meets p99 <= {args.p99_ms:g} ms; raise min-scale or lower the target")
    else:
        print(
            f"recommended: min-scale {best.setting.min_scale}, target {best.setting.target:g} "
            f"(p99 {best.p99_s * 1000:.1f} ms, {best.pod_hours:.2f} pod-hours)"
        )

    if args.out is not None:
        write_report(args.out, name, pod, args.p99_ms, outcomes, best)
    return 0 if best else 1


def write_report(
    out: Path, name: str, pod: PodProfile, p99_ms: float, outcomes: list[Outcome], best: Outcome | None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "traffic": name,
        "pod": {"capacity_rps": pod.capacity_rps, "cold_start_s": pod.cold_start_s},
        "p99_goal_ms": p99_ms,
        "outcomes": [
            {
                "min_scale": o.setting.min_scale,
                "target": o.setting.target,
                "p99_ms": o.p99_s * 1000,
                "cold_start_waits": o.cold_start_waits,
                "pod_hours": o.pod_hours,
                "max_pods": o.max_pods,
            }
            for o in outcomes
        ],
        "recommended": None if best is None else {"min_scale": best.setting.min_scale, "target": best.setting.target},
    }
    (out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(outcomes, best, p99_ms / 1000, out / "capacity.png", f"Knative autoscaling for warmstart: {name}")
    print(f"wrote {out / 'capacity.json'} and {out / 'capacity.png'}")


if __name__ == "__main__":
    sys.exit(main())
