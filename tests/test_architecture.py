"""The wings of func/ keep their arrows: import-linter's contracts hold, a broken one
fails, and docs/architecture.md shows the graph the code has today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.server import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def lint_with_added_import(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """lint-imports over a copy of func/ whose `module` (a path under func/) gained `line`."""
    shutil.copytree(ROOT / "func", tmp_path / "func", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    source = tmp_path / "func" / module
    source.write_text(source.read_text() + f"\n{line}  # noqa: E402,F401\n")
    return lint_imports(tmp_path)


def test_a_wing_that_imports_upward_breaks_the_contract(tmp_path):
    result = lint_with_added_import(tmp_path, "model/card.py", "from ..api import serving")
    assert result.returncode == 1, result.stdout
    assert "func.model.card -> func.api.serving" in result.stdout


def test_rollout_importing_numpy_breaks_the_contract(tmp_path):
    result = lint_with_added_import(tmp_path, "rollout/policy.py", "import numpy")
    assert result.returncode == 1, result.stdout
    assert "func.rollout.policy -> numpy" in result.stdout


def test_the_architecture_page_shows_todays_import_graph():
    result = subprocess.run(
        [sys.executable, "scripts/architecture.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
