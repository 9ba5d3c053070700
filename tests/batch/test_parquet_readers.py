"""A Parquet input decoded by several readers, each a share of its columns: the same
batches, row for row, as one reader gives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from func.batch.parquet_readers import THREADS_PER_READER, batches, column_groups, readers_for


def test_a_reader_for_every_eight_inference_threads():
    assert [readers_for(n) for n in (1, 2, 4, 8, 9, 16, 17, 64)] == [1, 1, 1, 1, 2, 2, 3, 8]
    assert THREADS_PER_READER == 8


@pytest.fixture
def parquet_file(tmp_path):
    """Row groups that batches of 1,000 rows straddle, and columns of several kinds: text,
    nulls, a struct, numbers."""
    n = 10_007
    rng = np.random.default_rng(0)
    tab = pa.table(
        {
            "id": pa.array([f"p{i}" for i in range(n)]),
            "note": pa.array([None if i % 3 else f"n{i}" for i in range(n)]),
            "point": pa.array([{"x": i, "y": -i} for i in range(n)]),
            **{f"f{j}": rng.random(n) for j in range(7)},
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(tab, path, row_group_size=2_500)
    return path, tab


class Reopen:
    """Opens the file again for each reader past the first, and keeps the handles."""

    def __init__(self, path):
        self.path, self.opened = path, []

    def __call__(self):
        self.opened.append(self.path.open("rb"))
        return self.opened[-1]


@pytest.mark.parametrize("readers", [1, 2, 3, 20])
def test_several_readers_give_the_batches_of_one(parquet_file, readers):
    path, tab = parquet_file
    reopen = Reopen(path)
    with path.open("rb") as first:
        got = list(batches(pq.ParquetFile(first), reopen, readers, 1_000, 1 << 20))
    assert all(batch.schema == tab.schema for batch in got)
    assert all(0 < batch.num_rows <= 1_000 for batch in got)
    assert pa.Table.from_batches(got).equals(tab)
    # one file per reader past the first, at most one per column, all closed at the end
    assert len(reopen.opened) == min(readers, tab.num_columns) - 1
    assert all(handle.closed for handle in reopen.opened)


def test_readers_left_half_way_close_their_files(parquet_file):
    """A job that fails part of the way closes the batches' generator: its readers' files
    close with it."""
    path, _ = parquet_file
    reopen = Reopen(path)
    with path.open("rb") as first:
        decoded = batches(pq.ParquetFile(first), reopen, 3, 1_000, 1 << 20)
        next(decoded)
        assert reopen.opened and not any(handle.closed for handle in reopen.opened)
        decoded.close()
    assert all(handle.closed for handle in reopen.opened)


def test_columns_are_shared_out_by_their_bytes_not_their_count(tmp_path):
    """Round-robin gave the reader of the wide text columns most of the work."""
    n = 20_000
    rng = np.random.default_rng(1)
    tab = pa.table(
        {
            "id": pa.array([f"patient-{i:012d}-{'x' * 40}" for i in range(n)]),
            **{f"f{j}": rng.random(n) for j in range(5)},
            "note": pa.array([f"{'n' * 60}{i}" for i in range(n)]),
            "point": pa.array([{"x": float(i), "y": float(-i), "z": float(i)} for i in range(n)]),
        }
    )
    path = tmp_path / "skewed.parquet"
    pq.write_table(tab, path, row_group_size=5_000, compression="none")
    parquet = pq.ParquetFile(path)
    groups = column_groups(parquet.metadata, parquet.schema_arrow, 2)
    assert sorted(sum(groups, [])) == sorted(tab.column_names)  # each column in one group
    assert all(group == [n for n in tab.column_names if n in group] for group in groups)  # in file order
    assert {"id", "note"} not in [set(group) & {"id", "note"} for group in groups]  # the two wide ones apart
    sizes = {name: tab.column(name).nbytes for name in tab.column_names}
    loads = sorted(sum(sizes[name] for name in group) for group in groups)
    assert loads[1] < 1.3 * loads[0], (groups, loads)
    # round-robin, as before: every other column, the two text columns together
    assert {"id", "note"} <= set(tab.column_names[0::2])
    assert sorted(map(len, column_groups(parquet.metadata, parquet.schema_arrow, 20))) == [1] * tab.num_columns
