"""The few Prometheus HTTP API calls the analysis makes (instant queries)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class MetricsUnavailable(Exception):
    """Prometheus could not answer: the analysis holds, it never reads this as a pass."""


class Prometheus:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr`: a list of {"metric": labels, "value": [t, "v"]}."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise MetricsUnavailable(f"Prometheus at {self.url} answered HTTP {exc.code}: {detail}") from exc
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MetricsUnavailable(f"Prometheus at {self.url} unreachable: {reason}") from exc
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != "vector":
            raise MetricsUnavailable(f"Prometheus query failed: {body.get('error', body)!s:.300} (query: {expr})")
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The one value of a query that sums to a single series; None when it has none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None
