"""A second-by-second model of Knative's autoscaler (KPA) in front of warmstart pods.

It follows knative/serving's pkg/autoscaler/scaling/autoscaler.go and the defaults of
config/core/configmaps/autoscaler.yaml: the autoscaler ticks every 2 s; desired pods are
the observed concurrency over the stable window (60 s) divided by the per-pod target
(target x target-utilization); when the panic window (6 s) asks for at least twice the
ready pods it panics and scales on the short window, never down; scale-down is limited
to halving per tick and held for scale-down-delay; with min-scale 0 the last pod goes
once the stable window saw no traffic (plus the retention period). While no pod is
ready the activator holds requests until one is: those requests wait for a cold start.

Pods are described by what loadtests/bench.py measured: throughput and p99 at each
concurrency, and the cold start. Between measured points values are interpolated.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

TICK_S = 2
STABLE_WINDOW_S = 60
PANIC_WINDOW_S = 6
PANIC_THRESHOLD = 2.0
MAX_SCALE_DOWN_RATE = 2.0
SCALE_TO_ZERO_GRACE_S = 30


@dataclass(frozen=True)
class PodProfile:
    """One pod, as measured: requests/s and p99 (s) at each concurrency, and how long a
    new pod takes from scheduling to its first answer."""

    concurrency: tuple[float, ...]
    rps: tuple[float, ...]
    p99_s: tuple[float, ...]
    cold_start_s: float

    @property
    def capacity_rps(self) -> float:
        return max(self.rps)

    def p99_at_load(self, rps_per_pod: float) -> float:
        """p99 latency when a pod is offered `rps_per_pod`: the p99 measured at the
        lowest concurrency whose throughput covers that load."""
        return float(np.interp(rps_per_pod, self.rps, self.p99_s))


@dataclass(frozen=True)
class Setting:
    min_scale: int
    target: float  # requests in flight per pod the autoscaler aims for
    container_concurrency: int = 0
    max_scale: int = 100
    scale_down_delay_s: int = 0
    retention_s: int = 0


@dataclass(frozen=True)
class Outcome:
    setting: Setting
    p99_s: float
    cold_start_waits: int
    requests: int
    pod_hours: float
    max_pods: int
    pods: tuple[int, ...]


def simulate(traffic_rps: np.ndarray, pod: PodProfile, setting: Setting) -> Outcome:
    """Run the traffic (requests/s for each second) through the modelled autoscaler."""
    ready = setting.min_scale
    starting: deque[float] = deque([0.0] * 0)  # ready-at times of pods still starting
    history: deque[float] = deque(maxlen=STABLE_WINDOW_S)
    recent_desired: deque[tuple[int, int]] = deque()
    last_traffic_s = -math.inf
    latencies, weights, pods_over_time = [], [], []
    waits = 0
    backlog = 0.0
    capacity_p99 = pod.p99_s[-1]

    for t, offered in enumerate(traffic_rps):
        while starting and starting[0] <= t:
            starting.popleft()
            ready += 1
        demand = offered + backlog
        if offered > 0:
            last_traffic_s = t
        if ready == 0:
            if demand > 0:
                # The activator holds every request until the first pod is ready.
                if not starting:
                    starting.append(t + pod.cold_start_s)
                wait = max(starting[0] - t, 0.0)
                latencies.append(wait + pod.p99_s[0])
                weights.append(offered)
                waits += int(round(offered))
                backlog = demand
            served_concurrency = demand * pod.p99_s[0]
        else:
            capacity = ready * pod.capacity_rps
            served = min(demand, capacity)
            backlog = demand - served
            per_pod = served / ready
            latency = pod.p99_at_load(per_pod) + (backlog / capacity if capacity else 0.0)
            if offered > 0:
                latencies.append(latency if backlog == 0 else max(latency, capacity_p99))
                weights.append(offered)
            served_concurrency = served * pod.p99_at_load(per_pod) + backlog
        history.append(served_concurrency)
        pods_over_time.append(ready + len(starting))

        if t % TICK_S == 0:
            ready, starting = _tick(t, ready, starting, history, recent_desired, last_traffic_s, pod, setting)

    order = np.argsort(latencies)
    lat = np.asarray(latencies)[order]
    w = np.cumsum(np.asarray(weights)[order])
    p99 = float(lat[np.searchsorted(w, 0.99 * w[-1])]) if len(w) and w[-1] > 0 else 0.0
    return Outcome(
        setting=setting,
        p99_s=p99,
        cold_start_waits=waits,
        requests=int(round(float(np.sum(traffic_rps)))),
        pod_hours=sum(pods_over_time) / 3600,
        max_pods=max(pods_over_time) if pods_over_time else 0,
        pods=tuple(pods_over_time),
    )


def _tick(t, ready, starting, history, recent_desired, last_traffic_s, pod, setting):
    per_pod_target = setting.target
    if setting.container_concurrency:
        per_pod_target = min(per_pod_target, setting.container_concurrency)
    stable = float(np.mean(history)) if history else 0.0
    panic_samples = list(history)[-PANIC_WINDOW_S:]
    panic = float(np.mean(panic_samples)) if panic_samples else 0.0
    current = ready + len(starting)
    desired = math.ceil(stable / per_pod_target) if stable > 0 else 0
    desired_panic = math.ceil(panic / per_pod_target) if panic > 0 else 0
    if current and desired_panic / current >= PANIC_THRESHOLD:
        desired = max(desired, desired_panic, current)
    elif current and desired < current:
        desired = max(desired, math.floor(current / MAX_SCALE_DOWN_RATE))
    if desired == 0 and t - last_traffic_s < STABLE_WINDOW_S + SCALE_TO_ZERO_GRACE_S + setting.retention_s:
        desired = max(desired, 1) if current else 0
    recent_desired.append((t, desired))
    while recent_desired and recent_desired[0][0] < t - setting.scale_down_delay_s:
        recent_desired.popleft()
    desired = max(d for _, d in recent_desired)
    desired = min(max(desired, setting.min_scale), setting.max_scale)
    if desired > current:
        starting.extend([t + pod.cold_start_s] * (desired - current))
    elif desired < current:
        drop = current - desired
        while drop and starting:
            starting.pop()
            drop -= 1
        ready -= drop
    return ready, starting


def pattern(name: str, seconds: int, peak_rps: float, seed: int = 0) -> np.ndarray:
    """Named traffic shapes, requests/s for each second."""
    t = np.arange(seconds)
    rng = np.random.default_rng(seed)
    if name == "steady":
        return np.full(seconds, peak_rps)
    if name == "diurnal":
        return peak_rps * (0.55 - 0.45 * np.cos(2 * np.pi * t / seconds))
    if name == "bursty":
        base = np.full(seconds, peak_rps * 0.1)
        for start in rng.integers(0, max(seconds - 60, 1), size=max(seconds // 600, 1)):
            base[start : start + rng.integers(10, 60)] = peak_rps
        return base
    if name == "spike-from-zero":
        rps = np.zeros(seconds)
        period = max(seconds // 4, 300)
        for start in range(period // 2, seconds, period):
            rps[start : start + 30] = peak_rps
        return rps
    raise ValueError(f"unknown pattern {name!r}; use steady, diurnal, bursty or spike-from-zero")
