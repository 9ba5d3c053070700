"""Supply chain: no known vulnerability in the runtime dependencies, unless accepted
with a reason in .ci/vulnerabilities-accepted.txt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ROOT

ACCEPTED = ROOT / ".ci" / "vulnerabilities-accepted.txt"


def accepted() -> dict[str, str]:
    """Vulnerability id -> the reason it is accepted; a line without a reason is an error."""
    entries = {}
    for line in ACCEPTED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            vuln_id, _, reason = line.strip().partition(" ")
            assert reason.strip(), f"{ACCEPTED.name}: {vuln_id} has no reason"
            entries[vuln_id] = reason.strip()
    return entries


def test_runtime_requirements_have_no_known_vulnerability(tmp_path: Path):
    ignore = [arg for vuln_id in accepted() for arg in ("--ignore-vuln", vuln_id)]
    run = subprocess.run(
        [str(Path(sys.executable).parent / "pip-audit"), "-r", str(ROOT / "requirements.txt")]
        + ["--format", "json", "--progress-spinner", "off", *ignore],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(run.stdout or "{}")
    dependencies = report.get("dependencies", [])
    assert dependencies, f"pip-audit gave no report (exit {run.returncode}):\n{run.stderr[-3000:]}"
    found = [
        f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {', '.join(vuln['fix_versions']) or 'no release'})"
        for dep in dependencies
        for vuln in dep.get("vulns", [])
    ]
    assert not found, (
        "known vulnerabilities; upgrade, or accept each in .ci/vulnerabilities-accepted.txt with a reason:\n"
        + "\n".join(found)
    )
    if all("skip_reason" in dep for dep in dependencies):
        # pip-audit reads PyPI's per-release JSON (/pypi/<name>/<version>/json), whose
        # `vulnerabilities` come from the OSV database; a mirror without it audits nothing.
        pytest.skip(f"pip-audit could audit no dependency here: {dependencies[0]['skip_reason']}")
