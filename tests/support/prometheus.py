"""A real Prometheus (Debian's `prometheus` package) on a loopback port, scraping given
targets every second, with warmstart's recording rules loaded."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.server import ROOT, free_port

BINARY = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    BINARY is None, reason="prometheus is not installed (apt-get install prometheus; .ci/run does)"
)


def rule_groups() -> list[dict[str, Any]]:
    """The groups of knative/observability/rules.yaml's PrometheusRule."""
    rule = yaml.safe_load((ROOT / "knative" / "observability" / "rules.yaml").read_text())
    return rule["spec"]["groups"]


class Prometheus:
    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        """`targets`: job name -> host:port."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "rules.yml").write_text(yaml.safe_dump({"groups": rule_groups()}))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(folder / "rules.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = (folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log_path = folder / "prometheus.log"

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until Prometheus answers and has scraped every target once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/-/ready", timeout=1).ok:
                    return self.wait_scraping(deadline - time.monotonic())
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready:\n{self.log_path.read_text()[-3000:]}")

    def wait_scraping(self, timeout: float = 30) -> None:
        """Wait until every target has been scraped once: Prometheus hands its scrapers their
        targets some seconds after it says it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = requests.get(self.url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets not scraped: {targets}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, check: Any = bool, timeout: float = 30) -> list[dict[str, Any]]:
        """Query until `check(result)` holds (scrapes and rule evaluations take seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
