"""Large `instances` bodies take the simdjson path (func/fast_rows.py): the same numbers
and the same answers as the general path, and every body it does not take falls back to
the general path's exact message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from func import fast_rows

JSON = {"Content-Type": "application/json"}
N_FEATURES = 30


def big_rows(x: np.ndarray, n: int = 2000) -> list[list[float]]:
    return x[np.arange(n) % len(x)].tolist()


def body(rows: list, **extra: object) -> bytes:
    return json.dumps({"instances": rows, **extra}).encode()


def test_a_large_body_parses_to_the_same_numbers_as_json(dataset):
    x, _ = dataset
    rows = big_rows(x)
    raw = body(rows)
    assert len(raw) >= fast_rows.MIN_BYTES
    array = fast_rows.rows_array(raw, "instances", N_FEATURES, 10_000)
    assert array is not None
    np.testing.assert_array_equal(array, np.asarray(rows))


def test_small_bodies_stay_on_the_general_path(dataset):
    x, _ = dataset
    assert fast_rows.rows_array(body(x[:2].tolist()), "instances", N_FEATURES, 10) is None


@pytest.mark.parametrize(
    "last_row",
    [
        pytest.param([1.0] * 29 + [True], id="boolean"),
        pytest.param([1.0] * 29 + [None], id="null"),
        pytest.param([1.0] * 29 + ["2"], id="string"),
        pytest.param([1.0] * 28 + [[2.0]], id="nested list"),
        pytest.param([1.0] * 31, id="longer row"),
        pytest.param({"mean radius": 1.0}, id="named row"),
        pytest.param(5.0, id="scalar row"),
        pytest.param([1.0] * 29 + [10**30], id="integer past 64 bits"),
    ],
)
def test_bodies_the_general_path_reads_differently_fall_back(dataset, last_row):
    x, _ = dataset
    rows = big_rows(x)
    rows[-1] = last_row
    assert fast_rows.rows_array(body(rows), "instances", N_FEATURES, 10_000) is None


def test_ragged_rows_with_the_right_total_fall_back(dataset):
    x, _ = dataset
    rows = big_rows(x)
    rows[-2], rows[-1] = rows[-2] + [1.0], rows[-1][:-1]
    assert fast_rows.rows_array(body(rows), "instances", N_FEATURES, 10_000) is None


def test_a_repeated_key_or_a_list_elsewhere_falls_back(dataset):
    x, _ = dataset
    raw = body(big_rows(x))
    assert fast_rows.rows_array(raw[:-1] + b', "instances": 5}', "instances", N_FEATURES, 10_000) is None
    assert fast_rows.rows_array(body(big_rows(x), tags=["a"]), "instances", N_FEATURES, 10_000) is None
    assert fast_rows.rows_array(raw.replace(b"17.99", b"NaN", 1), "instances", N_FEATURES, 10_000) is None
    assert fast_rows.rows_array(raw, "instances", N_FEATURES, 100) is None


def test_large_requests_answer_like_small_ones(server, dataset):
    x, _ = dataset
    rows = big_rows(x)
    large = requests.post(server.url + "/predict", data=body(rows), headers=JSON)
    assert large.status_code == 200, large.text
    # a list elsewhere in the body sends the same rows down the general path
    general = requests.post(server.url + "/predict", data=body(rows, tags=["general"]), headers=JSON)
    assert general.status_code == 200, general.text
    assert large.json() == general.json()
    v1 = requests.post(server.url + "/v1/models/breast-cancer-rf:predict", data=body(rows), headers=JSON)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == large.json()["predictions"]


def test_errors_in_large_requests_name_the_value_as_sent(server, dataset):
    x, names = dataset
    rows = big_rows(x)
    rows[1999][5] = None
    resp = requests.post(server.url + "/predict", data=body(rows), headers=JSON)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == f"instances[1999][5] ({names[5]}): null is not a number"

    rows[1999][5] = 1e39
    resp = requests.post(server.url + "/v1/models/breast-cancer-rf:predict", data=body(rows), headers=JSON)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == f"instances[1999][5] ({names[5]}): 1e+39 is out of float32 range"
