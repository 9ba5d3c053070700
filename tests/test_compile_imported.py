"""scripts/compile_imported.py's --sourceless step, which the image's venv stage runs:
the listed modules import from their bytecode alone, and tracebacks still name them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compile_imported.py"


def test_listed_modules_import_from_bytecode_alone(tmp_path):
    package = tmp_path / "site" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .mod import answer\n")
    (package / "mod.py").write_text("def answer():\n    return 42\n\n\ndef fail():\n    raise ValueError('bad row')\n")
    (package / "unlisted.py").write_text("VALUE = 'kept as source'\n")
    listed = tmp_path / "imported.txt"
    listed.write_text(f"{package / '__init__.py'}\n{package / 'mod.py'}\n")

    done = subprocess.run([sys.executable, str(SCRIPT), "--sourceless", str(listed)], capture_output=True, text=True)
    assert done.returncode == 0 and "2 modules now bytecode alone" in done.stdout, done.stderr
    assert sorted(p.name for p in package.iterdir()) == ["__init__.pyc", "mod.pyc", "unlisted.py"]

    probe = (
        "import pkg, pkg.mod, pkg.unlisted; "
        "print(pkg.answer(), pkg.mod.__file__.endswith('.pyc'), pkg.unlisted.VALUE); pkg.mod.fail()"
    )
    used = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "site")}
    )
    assert used.stdout.strip() == "42 True kept as source"
    # the traceback names the file, line and function, without the line's text
    assert used.stderr.endswith(f'File "{package / "mod.py"}", line 6, in fail\nValueError: bad row\n'), used.stderr
