"""A table's feature columns as float32 rows (func/codecs/rows.py, rows_from_columns): the
one-pass path for numeric, finite columns gives the values the general path gives, and
whatever it does not take gets the general path's message."""

from __future__ import annotations

import numpy as np
import pytest

from func.codecs.rows import check_rows, rows_from_columns
from func.errors import InvalidInput
from func.model.card import ModelCard

CARD = ModelCard(name="m", version="1", task="regression", feature_names=("a", "b", "c", "d"))
NAMES = ["id", "a", "b", "c", "d"]


def columns(n: int = 1000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.normal(0, 1e6, n),  # float64, rounded to float32
        "b": rng.integers(-(2**62), 2**62, n),  # int64 beyond 2**53: rounded through float64, as before
        "c": rng.random(n) < 0.5,
        "d": rng.normal(0, 1, n).astype(np.float32),
    }


def general(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The general path: a float64 array, then float32."""
    array = np.column_stack([np.asarray(cols[name], dtype=np.float64) for name in CARD.feature_names])
    return check_rows(array, CARD, "where row")


def test_numeric_columns_give_the_general_paths_float32_rows():
    cols = columns()
    rows = rows_from_columns(cols, NAMES, CARD, "where")
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, general(cols))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1e300, "where row[7][1] (a): 1e+300 is out of float32 range"),
        (np.nan, "where row[7][1] (a): nan is not a finite number"),
        (np.inf, "where row[7][1] (a): inf is not a finite number"),
    ],
)
def test_a_value_not_finite_in_float32_gets_the_general_paths_message(value, message):
    cols = columns(10)
    cols["a"][7] = value
    with pytest.raises(InvalidInput) as err:
        rows_from_columns(cols, NAMES, CARD, "where")
    assert err.value.message == message


def test_a_text_column_of_numbers_still_converts():
    cols = columns(10)
    cols["d"] = np.asarray([str(v) for v in cols["a"]], dtype=object)
    np.testing.assert_array_equal(rows_from_columns(cols, NAMES, CARD, "where")[:, 3], cols["a"].astype(np.float32))
