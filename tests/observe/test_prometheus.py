"""The per-revision queries of knative/observability/rules.yaml, run by a real Prometheus
scraping two warmstart servers that play two revisions of a traffic split."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.prometheus import Prometheus, needs_prometheus


@pytest.fixture(scope="module")
def rows(dataset) -> tuple[list, list]:
    """(benign-looking rows, malignant-looking rows) of the training data."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.tolist(), data.target.tolist()
    return [r for r, t in zip(x, y) if t == 1], [r for r, t in zip(x, y) if t == 0]


def all_positive(n: int):
    return lambda result: len(result) == n and all(float(r["value"][1]) > 0 for r in result)


def by_revision(result: list[dict], *keys: str) -> dict:
    return {tuple(r["metric"].get(k) for k in ("revision", *keys)): float(r["value"][1]) for r in result}


@needs_prometheus
def test_two_revisions_compare_by_traffic_errors_latency_prediction_mix_and_drift(start_server, tmp_path, rows):
    benign, malignant = rows
    stable = start_server({"K_REVISION": "warmstart-v1", "WORKERS": "2"})
    canary = start_server({"K_REVISION": "warmstart-v2", "WORKERS": "2"})
    prometheus = Prometheus(tmp_path, {"stable": f"127.0.0.1:{stable.port}", "canary": f"127.0.0.1:{canary.port}"})
    try:
        prometheus.wait_ready()
        # the stable revision sees the usual mix; the canary sees only malignant-looking
        # rows, scaled up: another prediction mix, and drifted inputs. Traffic goes on
        # for a few scrapes, so rates are not zero.
        mixed = benign + malignant
        started, i = time.monotonic(), 0
        while time.monotonic() - started < 4:
            requests.post(stable.url + "/predict", json={"features": mixed[i * 7 % len(mixed)]})
            requests.post(stable.url + "/predict", json={"features": mixed[(i * 7 + 3) % len(mixed)]})
            requests.post(canary.url + "/predict", json={"features": [v * 1.6 for v in malignant[i % len(malignant)]]})
            i += 1
            time.sleep(0.01)

        traffic = by_revision(prometheus.wait_for("revision:warmstart_requests:rate1m", all_positive(2)))
        assert set(traffic) == {("warmstart-v1",), ("warmstart-v2",)} and all(v > 0 for v in traffic.values()), traffic
        errors = by_revision(prometheus.wait_for("revision:warmstart_error_ratio:rate1m", lambda r: len(r) == 2))
        assert errors == {("warmstart-v1",): 0.0, ("warmstart-v2",): 0.0}
        p99 = by_revision(prometheus.wait_for("revision:warmstart_request_duration_seconds:p99_1m", all_positive(2)))
        assert all(0 < v < 1 for v in p99.values()), p99

        mix = by_revision(
            prometheus.wait_for("revision_class:warmstart_predictions:share1m", lambda r: len(r) == 4), "class"
        )
        assert mix[("warmstart-v2", "0")] == pytest.approx(1.0)
        assert 0.2 < mix[("warmstart-v1", "0")] < 0.8
        assert mix[("warmstart-v1", "0")] + mix[("warmstart-v1", "1")] == pytest.approx(1.0)

        def settled(result: list[dict]) -> bool:
            # rules evaluate every second; early on a bin's increase can still be 0/0
            values = by_revision(result, "feature")
            return len(values) == 60 and all(v == v for v in values.values())

        psi = by_revision(prometheus.wait_for("revision_feature:warmstart_drift_psi:1h", settled), "feature")
        worst_stable = max(v for (rev, _), v in psi.items() if rev == "warmstart-v1")
        worst_canary = max(v for (rev, _), v in psi.items() if rev == "warmstart-v2")
        assert worst_canary > 0.2 > worst_stable / 2, (worst_stable, worst_canary)
    finally:
        prometheus.stop()
