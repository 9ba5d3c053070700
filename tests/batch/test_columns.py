"""Arrow columns to NumPy and back, and prediction ids, as a batch job makes them
(func/batch/columns.py): the same values pyarrow's own conversions give, without pandas."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from func.batch.columns import arrow_array, column_values, numbered_ids

ROOT = Path(__file__).resolve().parents[2]

NUMBER_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
NUMBER_TYPES += [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", NUMBER_TYPES)
def test_number_columns_read_as_pyarrow_reads_them_also_sliced(dtype):
    array = pa.array(np.arange(40).astype(dtype))
    for column in (array, array.slice(3, 11), array.slice(37), array.slice(40)):
        values = column_values(column)
        expected = column.to_numpy(zero_copy_only=False)
        assert values.dtype == expected.dtype
        np.testing.assert_array_equal(values, expected)


def test_columns_of_a_sliced_record_batch_read_from_their_offset():
    batch = pa.RecordBatch.from_pydict({"x": np.arange(10.0), "flag": [i % 3 == 0 for i in range(10)]})
    part = batch.slice(4, 5)
    np.testing.assert_array_equal(column_values(part.column(0)), [4.0, 5.0, 6.0, 7.0, 8.0])
    np.testing.assert_array_equal(column_values(part.column(1)), [False, False, True, False, False])


def test_booleans_unpack_at_any_bit_offset():
    flags = [bool(v) for v in np.random.default_rng(1).integers(0, 2, 77)]
    array = pa.array(flags)
    for start in range(9):
        values = column_values(array.slice(start))
        assert values.dtype == bool
        assert values.tolist() == flags[start:]


def test_nulls_text_and_nan_keep_their_meaning():
    with_null = column_values(pa.array([1.5, None]))
    assert with_null.dtype == object and with_null.tolist() == [1.5, None]
    nan = column_values(pa.array([1.5, float("nan")]))
    assert nan.dtype == np.float64 and np.isnan(nan[1])
    assert column_values(pa.array(["a", "1"])).tolist() == ["a", "1"]
    assert column_values(pa.array([None, None])).tolist() == [None, None]
    assert column_values(pa.array([], pa.null())).tolist() == []


@pytest.mark.parametrize(
    "values",
    [
        np.array([0.25, np.nan, -1.0], np.float32),
        np.array([3, -2, 7], np.int64),
        np.array([1, 0, 2], np.int32),
        np.array([True, False, True, True, False, False, True, False, True]),
        np.array(["benign", "malignant"], dtype=object),
        np.arange(12, dtype=np.float32).reshape(4, 3)[:, 1],  # a strided column
    ],
)
def test_arrow_arrays_equal_what_pa_array_makes(values):
    made, expected = arrow_array(values), pa.array(values)
    made.validate(full=True)
    assert made.type == expected.type and made.null_count == expected.null_count == 0
    assert repr(made.to_pylist()) == repr(expected.to_pylist())  # NaN equal to NaN


@pytest.mark.parametrize(
    ("first", "count"),
    [(0, 0), (0, 1), (0, 25), (7, 5), (95, 10), (9_999, 3), (123_456, 16_384), (999_990, 20), (2**32 - 5, 10)],
)
def test_ids_are_the_prefix_and_the_row_number(first, count):
    ids = numbered_ids("0123abcd/", first, count)
    ids.validate(full=True)
    assert ids.type == pa.string()
    assert ids.to_pylist() == [f"0123abcd/{r}" for r in range(first, first + count)]


def test_ids_take_a_prefix_of_any_text():
    assert numbered_ids("é€/", 8, 3).to_pylist() == ["é€/8", "é€/9", "é€/10"]
    assert numbered_ids("", 9, 2).to_pylist() == ["9", "10"]
    with pytest.raises(ValueError, match="must not be negative"):
        numbered_ids("x/", -1, 2)


JOBS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np, pyarrow as pa, pyarrow.csv as pacsv, pyarrow.parquet as pq
    from func.batch.job import BatchJob, run_job
    from func.config import Settings
    from func.model.runtime import load_model

    work = Path(sys.argv[1])
    model = load_model(Settings.from_env())
    names = list(model.card.feature_names)
    rows = np.random.default_rng(0).uniform(1, 2, (3000, len(names)))
    table = pa.Table.from_arrays([pa.Array.from_buffers(pa.float64(), len(rows), [None, pa.py_buffer(
        np.ascontiguousarray(rows[:, j]))]) for j in range(len(names))], names=names)
    pacsv.write_csv(table, work / "in.csv")
    pq.write_table(table, work / "in.parquet")
    before = {name for name in ("pandas", "pyarrow.compute") if name in sys.modules}
    for fmt in ("csv", "parquet"):
        job = BatchJob(str(work / f"in.{fmt}"), str(work / f"out.{fmt}"))
        result = run_job(job, model, (str(work) + "/",), f"job-{fmt}", prediction_id="abc", threads=2)
        assert result["rows"] == 3000, result
    print(sorted(name for name in ("pandas", "pyarrow.compute") if name in sys.modules and name not in before))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed, so nothing imports it")
def test_a_job_imports_neither_pandas_nor_pyarrow_compute(tmp_path, default_model):
    """pandas is installed here (shap needs it): a CSV and a Parquet job in a fresh
    process must not import it, nor pyarrow.compute."""
    done = subprocess.run(
        [sys.executable, "-c", JOBS, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
