"""The repository's scripts, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import ROOT


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
