"""The server makes jemalloc pyarrow's allocator (func/__main__.py, default_arrow_allocator):
with mimalloc, a batch job's pages were handed back to the kernel after each chunk and
faulted in and zeroed again for the next ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

POOLS = """
from func.__main__ import default_arrow_allocator

default_arrow_allocator()

import pyarrow as pa
import pyarrow.parquet as pq

pq.write_table(pa.table({"x": list(range(100_000))}), pa.BufferOutputStream())
print(pa.default_memory_pool().backend_name, pa.mimalloc_memory_pool().max_memory())
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "jemalloc"), ("mimalloc", "mimalloc"), ("system", "system")])
def test_pyarrow_allocates_with_jemalloc_unless_the_operator_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if given:
        env["ARROW_DEFAULT_MEMORY_POOL"] = given
    done = subprocess.run([sys.executable, "-c", POOLS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    backend, mimalloc_peak = done.stdout.split()
    assert backend == expected
    # Parquet's own buffers too, which pyarrow.set_memory_pool would not reach.
    assert (int(mimalloc_peak) == 0) == (expected != "mimalloc")
