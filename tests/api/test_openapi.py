"""/openapi.json says what the server does: a body the document calls valid is answered,
one it calls invalid is refused. Each case here is one the fuzzer (tests/api/test_fuzz.py)
found where the two disagreed."""

from __future__ import annotations

import pytest
import requests
from jsonschema import Draft4Validator

FLOAT32_MAX = 3.4028234663852886e38


@pytest.fixture(scope="module")
def document(server) -> dict:
    return requests.get(server.url + "/openapi.json").json()


def valid(document: dict, schema_name: str, body: object) -> bool:
    """Whether `body` fits a request schema of the document (OpenAPI 3.0 schemas are
    JSON Schema draft 4 with a few additions that these schemas do not use)."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    return Draft4Validator(schema).is_valid(body)


@pytest.fixture(scope="module")
def named(card) -> dict[str, float]:
    return {name: 0.0 for name in card["feature_names"]}


@pytest.mark.parametrize(
    "body, status",
    [
        ({"features": [True] + [0.0] * 29}, 200),  # booleans count as 1 and 0
        ({"features": [FLOAT32_MAX] * 30}, 200),
        ({"features": [-FLOAT32_MAX] * 30}, 200),
        ({"features": [3.5e38] + [0.0] * 29}, 422),  # finite, but infinite as float32
        ({"features": [-1e300] + [0.0] * 29}, 422),
        ({"instances": []}, 422),
        ({"instances": [[0.0] * 30], "features": "ignored when instances are there"}, 200),
    ],
)
def test_predict_schema_accepts_what_the_server_accepts(server, document, body, status):
    resp = requests.post(server.url + "/predict", json=body)
    assert resp.status_code == status, resp.text
    assert valid(document, "PredictRequest", body) == (status == 200)


def test_rows_of_both_forms_in_one_request_are_invalid_by_schema_and_refused(server, document, named):
    body = {"instances": [[0.0] * 30, named]}
    assert requests.post(server.url + "/predict", json=body).status_code == 422
    assert not valid(document, "PredictRequest", body)
    assert valid(document, "PredictRequest", {"instances": [named, named]})


def test_v2_request_with_no_input_is_invalid_by_schema_and_refused(server, document, card):
    body = {"inputs": []}
    resp = requests.post(server.url + f"/v2/models/{card['name']}/infer", json=body)
    assert resp.status_code == 400
    assert not valid(document, "V2InferRequest", body)


def test_model_name_and_version_parameters_name_the_served_model(document, card):
    name = document["paths"]["/v1/models/{name}:predict"]["post"]["parameters"][0]
    assert name["schema"]["enum"] == [card["name"]]
    version = document["paths"]["/v2/models/{name}/versions/{version}"]["get"]["parameters"][1]
    assert version["schema"]["enum"] == [card["version"]]


def test_cloudevents_are_documented_on_post_root(document):
    op = document["paths"]["/"]["post"]
    headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
    assert {"ce-specversion", "ce-id", "ce-source", "ce-type"} <= headers
    assert {"application/json", "application/cloudevents+json"} <= set(op["requestBody"]["content"])
    reply = op["responses"]["200"]
    assert "ce-type" in reply["headers"] and "application/cloudevents+json" in reply["content"]


def test_get_on_a_v1_verb_route_is_405_not_an_unknown_model(server, card):
    resp = requests.get(server.url + f"/v1/models/{card['name']}:predict")
    assert resp.status_code == 405, resp.text
    resp = requests.options(server.url + f"/v1/models/{card['name']}:explain")
    assert "GET" not in resp.headers["Allow"]


def test_the_readme_counts_the_operations_the_fuzzer_runs_and_cites_no_bare_issue_number(document):
    """README "How it is checked" tells a reader what the fuzzer covers, in words that
    stand on their own."""
    import re

    from tests.support.server import ROOT

    readme = (ROOT / "README.md").read_text()
    operations = sum(1 for path in document["paths"].values() for method in path if method in ("get", "post"))
    (claimed,) = re.findall(r"all (\d+) operations", readme)
    assert int(claimed) == operations
    assert re.findall(r"(?<![\w&/(])#\d+", readme) == []
