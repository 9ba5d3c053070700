"""A batch job makes the C library's allocator pyarrow's (func/batch/job.py,
_use_system_allocator): mimalloc's pages, handed back to the kernel after each chunk,
were faulted in and zeroed again for the next ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.batch import table, write

ROOT = Path(__file__).resolve().parents[2]

JOB = """
import sys
import pyarrow as pa
from func.batch.job import BatchJob, run_job
from func.config import Settings
from func.model.runtime import load_model

model = load_model(Settings.from_env({"MODEL_PATH": sys.argv[1]}))
print(pa.default_memory_pool().backend_name)
result = run_job(BatchJob(sys.argv[2], sys.argv[3]), model, (sys.argv[4],), "pool", threads=2)
print(result["rows"], pa.default_memory_pool().backend_name)
"""


def test_a_job_runs_on_the_c_librarys_allocator(tmp_path, default_model, dataset):
    x, names = dataset
    src = write(tmp_path / "in.parquet", table(x, names, 100))
    done = subprocess.run(
        [sys.executable, "-c", JOB, str(default_model), str(src), str(tmp_path / "out.parquet"), f"{tmp_path}/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before != "system"  # pyarrow's default here, so the job is what changed it
    assert after == "100 system"
