"""Fuzzing a live server: schemathesis over /openapi.json, and fuzzers of our own for
what no schema describes: CloudEvents (binary, structured and batched mode) and V2's
binary tensor extension.

The budget is FUZZ_EXAMPLES (cases per operation, and per fuzz test of our own) and
FUZZ_PHASES (schemathesis phases): small in `make test`, large in `make fuzz`, which adds
the coverage phase (some 4,000 deterministic edge cases). Runs are seeded: FUZZ_SEED, or
a random seed that every failure message names, so `FUZZ_SEED=<seed> make fuzz` replays it.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from tests.support.server import ROOT, ServerProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 20)
PHASES = os.environ.get("FUZZ_PHASES") or "examples,fuzzing,stateful"
SEED = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
REPLAY = f"(fuzz seed {SEED}: FUZZ_SEED={SEED} FUZZ_EXAMPLES={EXAMPLES} make fuzz replays it)"
# A request that takes longer than this has hung: the largest body here predicts in well
# under a second even on a busy machine.
TIMEOUT_S = 20
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, card: dict) -> Iterator[ServerProcess]:
    """Two workers, as served; batch jobs may only touch a folder of their own, which
    holds a small valid input, rows.csv."""
    work = tmp_path_factory.mktemp("fuzz")
    (work / "data").mkdir()
    header = ",".join(f'"{name}"' for name in card["feature_names"])
    (work / "data" / "rows.csv").write_text(header + "\n" + ",".join("0" for _ in ROW) + "\n")
    proc = ServerProcess(
        {"WORKERS": "2", "BATCH_ALLOW": f"{work / 'data'}/", "ACCESS_LOG": "off"},
        log_dir=work,
    ).start()
    proc.wait_ready()
    yield proc
    proc.kill()


def test_openapi_fuzz_finds_no_server_error_and_no_undocumented_answer(fuzz_server: ServerProcess, tmp_path: Path):
    # Every check, every operation.
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        f"{fuzz_server.url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        PHASES,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--request-timeout",
        str(TIMEOUT_S),
        "--workers",
        # CPython 3.11's AST validator keeps its recursion depth per interpreter, not per
        # thread: the coverage phase compiling on two threads raised "SystemError: AST
        # constructor recursion depth mismatch" inside schemathesis (every seed tried).
        "1" if "coverage" in PHASES else "2",
        "--no-color",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"schemathesis found failures {REPLAY}:\n{run.stdout[-20000:]}\n{run.stderr[-2000:]}"


# --- CloudEvents ------------------------------------------------------------------------

ROW = [0.0] * 30  # the default model's width; any finite row predicts
PREDICT, BATCH = "warmstart.predict.v1", "warmstart.batch.v1"
STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"
REPLY_TYPES = {"warmstart.prediction.v1", "warmstart.batch.completed.v1"}
DOCUMENTED = {200, 400, 403, 413, 415, 422, 503, 507}
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    STRUCTURED,
    BATCHED,
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=x",
]

# Header text: printable, no CR/LF (which no client can send); percent signs included.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f"), max_size=40)
json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)


def json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_value = st.recursive(json_leaf, json_containers)
huge_string = st.integers(10_000, 1_000_000).map(lambda n: "x" * n)
deep = st.integers(1, 5_000).map(lambda n: "[" * n + "]" * n)
uri = st.sampled_from(
    ["rows.csv", "out.csv", "../out.csv", "/etc/passwd", "file:///etc/hosts", "s3://bucket/x.csv", "", "\x00", "a.txt"]
)
predict_data = st.sampled_from(
    [
        {"features": ROW},
        {"instances": [ROW, ROW]},
        {"instances": []},
        {"features": [True] * 30},
        {"features": ROW[:3]},
        {"instances": [[1e39] * 30]},
    ]
)


@st.composite
def batch_data(draw: st.DrawFn, base: str) -> dict:
    def place(name: str) -> str:
        return name if name.startswith(("/", "file:", "s3:")) or not name else f"{base}/{name}"

    data = {"input": place(draw(uri)), "output": place(draw(uri))}
    if draw(st.booleans()):
        data["format"] = draw(st.sampled_from(["csv", "jsonl", "parquet", "xml", 3]))
    return data


def event_data(base: str) -> st.SearchStrategy:
    return predict_data | batch_data(base) | json_value | huge_string


def good_data(kind: str, base: str) -> dict:
    if kind == BATCH:
        return {"input": f"{base}/rows.csv", "output": f"{base}/out.csv"}
    return {"features": ROW}


# Each event is valid but for a few parts, drawn from these: most reach the code behind
# the checks (predictions, batch jobs), and each check is hit on its own.
BINARY_PARTS = ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-subject", "traceparent", "content-type", "data"]
STRUCTURED_PARTS = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "extension",
    "data",
    "data_base64",
    "body",
    "mode",
]


def broken_parts(parts: list[str]) -> st.SearchStrategy[set[str]]:
    return st.sets(st.sampled_from(parts), max_size=3)


@st.composite
def binary_event(draw: st.DrawFn, base: str) -> tuple[dict[str, bytes], bytes]:
    broken = draw(broken_parts(BINARY_PARTS))
    kind = draw(st.sampled_from([PREDICT, BATCH]))
    valid = {"ce-specversion": "1.0", "ce-id": "fuzz-1", "ce-source": "/fuzz", "ce-type": kind, "ce-subject": "s"}
    valid["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers: dict[str, bytes] = {}
    for name, value in valid.items():
        if name not in broken:
            headers[name] = value.encode()
            continue
        choice = draw(st.sampled_from(["absent", "random", "percent", "latin1", "other type"]))
        if choice == "absent" and name != "ce-specversion":  # without it, it is no event
            continue
        if choice == "random":
            value = draw(header_text)
        elif choice == "percent":
            value = draw(st.sampled_from(["%", "%zz", "%C3%A9", "%ff%fe", "%00", "a%20b"]))
        elif choice == "other type":
            value = draw(st.sampled_from(["other.type", "", "2.0", "1"]))
        text = value.encode("latin-1", "replace") if choice != "latin1" else value.encode() + b"\xe9\xff"
        headers[name] = text.lstrip(b" \t")  # no client sends leading whitespace; HTTP drops it
    content_type = draw(st.sampled_from(CONTENT_TYPES)) if "content-type" in broken else "application/json"
    if content_type is not None:
        headers["Content-Type"] = content_type.encode()
    body = json.dumps(good_data(kind, base)).encode()
    if "data" in broken:
        body = draw(
            st.one_of(
                event_data(base).map(lambda d: json.dumps(d).encode()),
                deep.map(str.encode),
                st.binary(max_size=64),
                st.just(b""),
            )
        )
    return headers, body


@st.composite
def structured_event(draw: st.DrawFn, base: str) -> tuple[dict[str, bytes], bytes]:
    broken = draw(broken_parts(STRUCTURED_PARTS))
    kind = draw(st.sampled_from([PREDICT, BATCH]))
    valid = {"specversion": "1.0", "id": "fuzz-1", "source": "/fuzz", "type": kind, "subject": "s"}
    envelope: dict = {}
    for name, value in valid.items():
        if name in broken:
            value = draw(st.none() | st.just("other.type") | json_value | huge_string)
            if value is None and draw(st.booleans()):
                continue  # absent, rather than null
        envelope[name] = value
    if "extension" in broken:
        envelope[draw(st.text(max_size=10))] = draw(json_value)
    envelope["data"] = draw(event_data(base)) if "data" in broken else good_data(kind, base)
    if "data_base64" in broken:
        envelope["data_base64"] = draw(st.sampled_from(["eyJ9", "not base64", 5]))
    body = json.dumps(envelope).encode()
    if "body" in broken:
        body = draw(st.one_of(json_value.map(lambda v: json.dumps(v).encode()), deep.map(str.encode)))
    content_type = STRUCTURED
    if "mode" in broken:
        content_type = draw(st.sampled_from([f"{STRUCTURED}; charset=utf-8", BATCHED]))
        if content_type == BATCHED and draw(st.booleans()):
            body = b"[" + body + b"]"  # batched mode: a JSON array of events
    return {"Content-Type": content_type.encode()}, body


def check_answer(resp: requests.Response, structured: bool) -> None:
    """The answer is one the documentation describes: a reply event, or a JSON error."""
    event(f"status {resp.status_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert resp.status_code in DOCUMENTED, f"undocumented status {resp.status_code}: {resp.text[:500]} {REPLAY}"
    if resp.status_code != 200:
        error = resp.json().get("error")
        assert isinstance(error, dict) and set(error) == {"code", "message"}, f"{resp.text[:500]} {REPLAY}"
        assert isinstance(error["message"], str) and error["message"], REPLAY
        if resp.status_code == 503:
            assert "Retry-After" in resp.headers, REPLAY
        return
    if resp.headers.get("Content-Type", "").startswith("application/cloudevents+json"):
        assert structured, f"a structured reply to a binary event {REPLAY}"
        assert resp.json()["type"] in REPLY_TYPES, f"{resp.text[:500]} {REPLAY}"
    elif "ce-type" in resp.headers:
        assert resp.headers["ce-type"] in REPLY_TYPES, REPLAY
        assert "ce-causationid" in resp.headers and "ce-id" in resp.headers, REPLAY
    else:
        assert not structured, f"a structured event answered as a plain prediction {REPLAY}"
        assert "predictions" in resp.json(), f"{resp.text[:500]} {REPLAY}"


def post(server: ServerProcess, headers: dict[str, bytes], body: bytes) -> requests.Response:
    return requests.post(server.url + "/", data=body, headers=headers, timeout=TIMEOUT_S)


@FUZZ_SETTINGS
@seed(SEED)
@given(data=st.data())
def test_binary_cloudevents_fuzz(fuzz_server: ServerProcess, data: st.DataObject):
    headers, body = data.draw(binary_event(fuzz_server.env["BATCH_ALLOW"].rstrip("/")))
    check_answer(post(fuzz_server, headers, body), structured=False)


@FUZZ_SETTINGS
@seed(SEED)
@given(data=st.data())
def test_structured_cloudevents_fuzz(fuzz_server: ServerProcess, data: st.DataObject):
    headers, body = data.draw(structured_event(fuzz_server.env["BATCH_ALLOW"].rstrip("/")))
    check_answer(post(fuzz_server, headers, body), structured=True)


# --- V2 binary tensor extension (a header schemathesis cannot document as a body) ------

FP32_ROW = struct.pack("<30f", *ROW)


V2_PARTS = ["name", "shape", "datatype", "size", "tail", "length", "content-type", "parameters"]


@st.composite
def binary_infer(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A binary-extension request, valid but for a few parts."""
    broken = draw(broken_parts(V2_PARTS))
    rows = draw(st.integers(0, 3))

    def part(name: str, valid: object, wrong: list) -> object:
        return draw(st.sampled_from(wrong)) if name in broken else valid

    tensor = {
        "name": part("name", "input", ["other", 5, None]),
        "shape": part("shape", [rows, 30], [[rows, 29], [-1, 30], [rows], "x", [2**40, 30]]),
        "datatype": part("datatype", "FP32", ["FP64", "BYTES", "fp32", None, "INT8"]),
        "parameters": {"binary_data_size": part("size", rows * len(FP32_ROW), [1, -1, "x", None, 2**70])},
    }
    header: dict = {"inputs": [tensor]}
    if "parameters" in broken:
        header["parameters"] = draw(st.sampled_from([{"binary_data_output": True}, {"binary_data_output": "x"}, []]))
    json_part = json.dumps(header).encode()
    tail = FP32_ROW * rows
    if "tail" in broken:
        tail = draw(st.sampled_from([tail + b"\x00", tail[:-1], b""]) | st.binary(max_size=300))
    length = part("length", str(len(json_part)), [str(len(json_part) + 1), "0", "-5", "x", "", "9" * 30])
    headers = {"Inference-Header-Content-Length": length}
    content_type = part("content-type", "application/octet-stream", [None, "application/json", "text/plain"])
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers, json_part + tail


@FUZZ_SETTINGS
@seed(SEED)
@given(request=binary_infer())
def test_v2_binary_tensor_fuzz(fuzz_server: ServerProcess, card: dict, request: tuple[dict[str, str], bytes]):
    headers, body = request
    resp = requests.post(
        f"{fuzz_server.url}/v2/models/{card['name']}/infer", data=body, headers=headers, timeout=TIMEOUT_S
    )
    event(f"status {resp.status_code}")
    assert resp.status_code in {200, 400, 413, 415, 503}, f"{resp.status_code}: {resp.text[:500]} {REPLAY}"
    if resp.status_code != 200:
        error = resp.json()
        assert set(error) == {"error"} and isinstance(error["error"], str), f"{resp.text[:500]} {REPLAY}"
    elif "Inference-Header-Content-Length" in resp.headers:
        split = int(resp.headers["Inference-Header-Content-Length"])
        assert json.loads(resp.content[:split])["outputs"], REPLAY
    else:
        assert resp.json()["outputs"], REPLAY
