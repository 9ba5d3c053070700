"""ADAPTIVE_BATCH_ROWS: concurrent requests share model calls and still get their own answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests


def test_concurrent_requests_coalesced_get_the_same_answers(start_server, dataset):
    x, _ = dataset
    plain = start_server({"WORKERS": "1"})
    batched = start_server(
        {"WORKERS": "1", "THREADS": "8", "ADAPTIVE_BATCH_ROWS": "16", "ADAPTIVE_BATCH_DELAY_MS": "5"}
    )
    bodies = [{"features": x[i].tolist()} if i % 3 else {"instances": x[i : i + 3].tolist()} for i in range(120)]
    expected = [requests.post(plain.url + "/predict", json=b).json() for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda b: requests.post(batched.url + "/predict", json=b).json(), bodies))
    assert got == expected
    v2 = {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64", "data": x[:2].tolist()}]}
    assert requests.post(batched.url + "/v2/models/breast-cancer-rf/infer", json=v2).status_code == 200


def test_bad_rows_are_rejected_before_they_reach_a_shared_batch(start_server, dataset):
    x, _ = dataset
    batched = start_server({"WORKERS": "1", "ADAPTIVE_BATCH_ROWS": "16"})
    assert requests.post(batched.url + "/predict", json={"features": [None] * 30}).status_code == 422
    assert requests.post(batched.url + "/predict", json={"features": x[0].tolist()}).status_code == 200
