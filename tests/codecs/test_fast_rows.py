"""Large `instances` bodies take the simdjson path (func/codecs/fast_rows.py): the same numbers
and the same answers as the general path, and every body it does not take falls back to
the general path's exact message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from func.codecs import fast_rows

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
    """orjson reads the last of repeated keys, simdjson the first: such bodies go the general way."""
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


def v2_body(data: list, datatype: str = "FP32", shape: list[int] | None = None, **extra: object) -> bytes:
    tensor = {"name": "input", "shape": shape or [len(data) // N_FEATURES, N_FEATURES], "datatype": datatype}
    return json.dumps({"id": "r-1", "inputs": [{**tensor, "data": data}], **extra}).encode()


def test_a_large_v2_request_keeps_its_header_and_reads_the_data_as_numbers(dataset):
    x, _ = dataset
    data = np.ravel(big_rows(x)).tolist()
    request = fast_rows.v2_request(v2_body(data, outputs=[{"name": "label"}]))
    assert request is not None
    tensor = request["inputs"][0]
    assert {k: v for k, v in tensor.items() if k != "data"} == {
        "name": "input",
        "shape": [2000, N_FEATURES],
        "datatype": "FP32",
    }
    np.testing.assert_array_equal(tensor["data"], np.asarray(data))
    assert request["id"] == "r-1"
    assert request["outputs"] == [{"name": "label"}]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: v2_body([d[:30]] + [d[30:60]] * 1999), id="nested data"),
        pytest.param(lambda d: v2_body([*d[:-1], True]), id="boolean"),
        pytest.param(lambda d: v2_body(d, datatype="INT64"), id="integer datatype"),
        pytest.param(lambda d: v2_body(d)[:-1] + b', "id": "again"}', id="repeated key"),
        pytest.param(lambda d: v2_body(d).replace(b'"datatype"', b'"name": "x", "datatype"'), id="repeated tensor key"),
    ],
)
def test_v2_requests_the_general_path_reads_differently_fall_back(dataset, change):
    x, _ = dataset
    data = np.ravel(big_rows(x)).tolist()
    assert fast_rows.v2_request(change(data)) is None


def test_large_v2_requests_answer_like_the_general_path(server, dataset):
    x, _ = dataset
    data = np.ravel(big_rows(x)).tolist()
    url = server.url + "/v2/models/breast-cancer-rf/infer"
    fast = requests.post(url, data=v2_body(data), headers=JSON)
    assert fast.status_code == 200, fast.text
    # the same rows as a nested list take the general path
    general = requests.post(url, data=v2_body(big_rows(x), shape=[2000, N_FEATURES]), headers=JSON)
    assert general.status_code == 200, general.text
    assert fast.json() == general.json()
    assert fast.json()["id"] == "r-1"

    short = requests.post(url, data=v2_body(data[:-1], shape=[2000, N_FEATURES]), headers=JSON)
    assert short.status_code == 400
    assert short.json()["error"] == f"inputs[0] (input): shape [2000, {N_FEATURES}] needs 60000 values, data has 59999"


TOKENS = [b"true", b"null", b'"x"', b"[", b"]", b"{", b"}", b",", b"NaN", b"1e999", b"-", b"18446744073709551616", b" "]


def mutations(raw: bytes, count: int, seed: int = 7):
    """Bodies near a valid one: a token inserted, a byte replaced, or the end cut off."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        at = int(rng.integers(0, len(raw)))
        kind = rng.integers(0, 3)
        if kind == 0:
            yield raw[:at] + TOKENS[int(rng.integers(0, len(TOKENS)))] + raw[at:]
        elif kind == 1:
            yield raw[:at] + TOKENS[int(rng.integers(0, len(TOKENS)))] + raw[at + 1 :]
        else:
            yield raw[:at]


def general_rows(raw: bytes) -> np.ndarray | None:
    """What the general path reads: the rows if they form a numeric matrix, else None."""
    try:
        rows = json.loads(raw)["instances"]
        array = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError, KeyError):
        return None
    return array if array.ndim == 2 and array.shape[1] == N_FEATURES else None


def test_whatever_the_fast_path_accepts_the_general_path_reads_the_same(dataset):
    x, _ = dataset
    raw = body(x[:100].tolist())
    assert len(raw) >= fast_rows.MIN_BYTES
    accepted = 0
    for mutated in mutations(raw, 3000):
        fast = fast_rows.rows_array(mutated, "instances", N_FEATURES, 10_000)
        if fast is None:
            continue
        accepted += 1
        general = general_rows(mutated)
        assert general is not None, mutated
        np.testing.assert_array_equal(fast, general)
    assert accepted > 100  # insertions of a space or a digit-preserving "-" still parse


def test_whatever_the_v2_fast_path_accepts_json_reads_the_same(dataset):
    x, _ = dataset
    raw = v2_body(np.ravel(x[:100]).tolist(), outputs=[{"name": "label"}])
    accepted = 0
    for mutated in mutations(raw, 3000, seed=11):
        fast = fast_rows.v2_request(mutated)
        if fast is None:
            continue
        accepted += 1
        general = json.loads(mutated)
        data = general["inputs"][0].pop("data")
        fast_data = fast["inputs"][0].pop("data")
        assert fast == general
        np.testing.assert_array_equal(fast_data, np.asarray(data, dtype=np.float64))
    assert accepted > 100


def test_mutated_large_bodies_never_get_a_5xx(server, dataset):
    x, _ = dataset
    raw = body(x[:100].tolist())
    v2 = v2_body(np.ravel(x[:100]).tolist())
    session = requests.Session()
    cases = {"/predict": raw, "/v1/models/breast-cancer-rf:predict": raw, "/v2/models/breast-cancer-rf/infer": v2}
    for path, good in cases.items():
        for mutated in mutations(good, 60):
            resp = session.post(server.url + path, data=mutated, headers=JSON)
            assert resp.status_code < 500, (path, resp.status_code, resp.text[:300])
            assert "error" in resp.json() or resp.status_code == 200


def test_results_stay_usable_while_the_next_body_is_parsed(dataset):
    """One parser serves every request of a process: what a parse returned must not hold
    it, or the next large body would quietly fall back to the slow path."""
    x, _ = dataset
    raw = body(big_rows(x))
    v2 = v2_body(np.ravel(big_rows(x)).tolist())
    kept = [fast_rows.rows_array(raw, "instances", N_FEATURES, 10_000), fast_rows.v2_request(v2)]
    again = [fast_rows.rows_array(raw, "instances", N_FEATURES, 10_000), fast_rows.v2_request(v2)]
    assert all(result is not None for result in kept + again)
    np.testing.assert_array_equal(kept[0], again[0])
    np.testing.assert_array_equal(kept[1]["inputs"][0]["data"], again[1]["inputs"][0]["data"])


# Literals where a parser could round differently: exponents, signed zeros, long
# mantissas, integers around 2^24 and 2^53 and past 2^63's float64 precision,
# float32 and float64 subnormals, halfway cases of float32.
TRICKY = [
    "0",
    "-0",
    "0.0",
    "-0.0",
    "0e0",
    "-0E-0",
    "1",
    "-1",
    "16777216",
    "16777217",
    "16777219",
    "9007199254740993",
    "1152921573326323713",
    "-1152921573326323713",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1e5",
    "1E+5",
    "1.5e-3",
    "2.5E-03",
    "0.1",
    "0.30000000000000004",
    "17.989999771118164",
    "3.4028234663852886e38",
    "3.4028235e38",
    "1e-45",
    "1.4e-45",
    "7.006492321624086e-46",
    "7.0064923216240862e-46",
    "1e-46",
    "1.1754943508222875e-38",
    "2.2250738585072014e-308",
    "4.9e-324",
    "1e-400",
    "3.14159265358979323846264338327950288419716939937510582097494459",
    "0.000000000000000000000000000000000000000000001401298464324817070923729583289916131280",
    "1000000000000000000000000000000e-30",
    "1e38",
    "3.40282356e38",
    "1.00000005960464477539062500000000001",
    "1.000000059604644775390625",
    "33554431",
    "33554433",
]
WHITESPACE = ["", " ", "\n", "\t", "\r\n", "  \n\t "]


def tricky_body(n_rows: int, seed: int = 3) -> bytes:
    """A body of rows drawn from TRICKY, with whitespace of every kind between tokens."""
    rng = np.random.default_rng(seed)

    def ws() -> str:
        return WHITESPACE[int(rng.integers(0, len(WHITESPACE)))]

    rows = []
    for r in range(n_rows):
        values = [TRICKY[(r * N_FEATURES + c) % len(TRICKY)] for c in range(N_FEATURES)]
        rows.append(ws() + "[" + ws() + (ws() + "," + ws()).join(values) + ws() + "]" + ws())
    return ("{" + ws() + '"instances"' + ws() + ":" + ws() + "[" + ",".join(rows) + "]" + ws() + "}").encode()


def decoded_both_ways(raw: bytes, card: dict) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a V1 body as the fast path and as the general path decode them."""
    from func.codecs import rows as codecs
    from func.model.card import ModelCard

    model_card = ModelCard.from_dict(card)
    assert fast_rows.rows_array(raw, "instances", N_FEATURES, 10_000) is not None  # the fast path takes it
    fast, _ = codecs.decode_v1_body(raw, model_card, 10_000)
    general, _ = codecs.decode_v1(codecs.parse_json(raw), model_card, 10_000)
    assert fast.dtype == general.dtype == np.float32
    return fast, general


@pytest.mark.parametrize("seed", [3, 4])
def test_tricky_numbers_give_the_general_paths_float32_rows_bit_for_bit(card, seed):
    raw = tricky_body(700, seed)
    assert len(raw) >= fast_rows.MIN_BYTES
    fast, general = decoded_both_ways(raw, card)
    np.testing.assert_array_equal(fast.view(np.uint32), general.view(np.uint32))


def test_rows_of_integers_only_give_the_general_paths_float32_rows_bit_for_bit(card):
    """NumPy reads a list of integers only as int64, not float64: past 2^53 a direct
    conversion to float32 can round otherwise than one through float64."""
    integers = [t for t in TRICKY if t.lstrip("-").isdigit() and abs(int(t)) < 2**63]
    assert "1152921573326323713" in integers
    row = ", ".join(integers[c % len(integers)] for c in range(N_FEATURES))
    raw = ('{"instances": [' + ", ".join(f"[{row}]" for _ in range(200)) + "]}").encode()
    fast, general = decoded_both_ways(raw, card)
    np.testing.assert_array_equal(fast.view(np.uint32), general.view(np.uint32))


def test_a_row_reads_the_same_with_or_without_a_fraction_beside_its_integers(card):
    from func.codecs import rows as codecs
    from func.model.card import ModelCard

    model_card = ModelCard.from_dict(card)
    integers = [1152921573326323713] * (N_FEATURES - 1)
    plain = codecs.row_from_json([*integers, 1], model_card)
    with_fraction = codecs.row_from_json([*integers, 1.0], model_card)
    np.testing.assert_array_equal(plain.view(np.uint32), with_fraction.view(np.uint32))
    rows = codecs.rows_from_json([[*integers, 1]], model_card, 10)
    np.testing.assert_array_equal(rows.view(np.uint32), with_fraction.view(np.uint32))
