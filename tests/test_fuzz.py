"""Fuzzing a live server: schemathesis over /openapi.json, and CloudEvents of our own.

The budget is FUZZ_EXAMPLES (test cases per operation, and CloudEvents per test) and
FUZZ_PHASES (schemathesis phases): small in `make test`, large in `make fuzz`, which adds
the coverage phase (some 4,000 deterministic edge cases, ~40 s). Runs are seeded: FUZZ_SEED, or a random seed that
every failure message names, so `FUZZ_SEED=<seed> make fuzz` replays it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.server import ROOT, ServerProcess

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
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[ServerProcess]:
    """Two workers, as served; batch jobs may only touch a folder of their own."""
    work = tmp_path_factory.mktemp("fuzz")
    (work / "data").mkdir()
    (work / "data" / "rows.csv").write_text("a,b\n1,2\n")
    proc = ServerProcess(
        {"WORKERS": "2", "BATCH_ALLOW": f"{work / 'data'}/", "BATCH_WAIT_S": "1", "ACCESS_LOG": "off"},
        log_dir=work,
    ).start()
    proc.wait_ready()
    yield proc
    proc.kill()


def test_openapi_fuzz_finds_no_server_error_and_no_undocumented_answer(fuzz_server: ServerProcess, tmp_path: Path):
    # Every check, every operation. `unsupported_method` (an Allow header on 405) is
    # excluded until the server sends one, which is branch `robust`'s (#11).
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        f"{fuzz_server.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "unsupported_method",
        "--phases",
        PHASES,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--request-timeout",
        str(TIMEOUT_S),
        "--workers",
        "2",
        "--no-color",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"schemathesis found failures {REPLAY}:\n{run.stdout[-20000:]}\n{run.stderr[-2000:]}"


# --- CloudEvents -----------------------------------------------------------------------

ROW = [0.0] * 30  # the default model's width; any finite row predicts
PREDICT, BATCH = "warmstart.predict.v1", "warmstart.batch.v1"
STRUCTURED = "application/cloudevents+json"
REPLY_TYPES = {"warmstart.prediction.v1", "warmstart.batch.completed.v1"}
DOCUMENTED = {200, 400, 403, 413, 415, 422, 503, 507}
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    STRUCTURED,
    "application/cloudevents-batch+json",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=x",
]

# Header text: printable, no CR/LF (which no client can send); percent signs included.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f"), max_size=40)
json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
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


def attribute(valid: str) -> st.SearchStrategy:
    """An attribute's value: valid, absent (None), or anything JSON."""
    return st.just(valid) | st.none() | json_value | huge_string


@st.composite
def binary_event(draw: st.DrawFn, base: str) -> tuple[dict[str, bytes], bytes]:
    kind = draw(st.sampled_from([PREDICT, BATCH, "other.type", ""]))
    valid = {"ce-specversion": "1.0", "ce-id": "fuzz-1", "ce-source": "/fuzz", "ce-type": kind}
    headers: dict[str, bytes] = {}
    for name in [*valid, "ce-subject", "ce-time", "ce-traceparent", "ce-x-extension", "traceparent"]:
        choice = draw(st.sampled_from(["valid", "valid", "absent", "random", "percent", "latin1"]))
        value = valid.get(name, "v")
        if choice == "absent" and name != "ce-specversion":  # without it, it is no event
            continue
        if choice == "random":
            value = draw(header_text)
        elif choice == "percent":
            value = draw(st.sampled_from(["%", "%zz", "%C3%A9", "%ff%fe", "%00", "a%20b"]))
        text = value.encode("latin-1", "replace") if choice != "latin1" else value.encode() + b"\xe9\xff"
        headers[name] = text
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers["Content-Type"] = content_type.encode()
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
    kind = draw(st.sampled_from([PREDICT, BATCH, "other.type"]))
    envelope = {
        name: draw(attribute(valid))
        for name, valid in {
            "specversion": "1.0",
            "id": "fuzz-1",
            "source": "/fuzz",
            "type": kind,
            "subject": "s",
            "datacontenttype": "application/json",
        }.items()
    }
    envelope = {k: v for k, v in envelope.items() if v is not None or draw(st.booleans())}
    if draw(st.booleans()):
        envelope["data"] = draw(event_data(base))
    if draw(st.integers(0, 9)) == 0:
        envelope["data_base64"] = draw(st.sampled_from(["eyJ9", "not base64", 5]))
    if draw(st.integers(0, 9)) == 0:
        envelope[draw(st.text(max_size=10))] = draw(json_value)
    body = json.dumps(envelope).encode()
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.one_of(json_value.map(lambda v: json.dumps(v).encode()), deep.map(str.encode)))
    content_type = draw(st.sampled_from([STRUCTURED, f"{STRUCTURED}; charset=utf-8"]))
    return {"Content-Type": content_type.encode()}, body


def check_answer(resp: requests.Response, structured: bool) -> None:
    """The answer is one the documentation describes: a reply event, or a JSON error."""
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


def test_binary_cloudevents_fuzz(fuzz_server: ServerProcess):
    base = fuzz_server.env["BATCH_ALLOW"].rstrip("/")

    @FUZZ_SETTINGS
    @seed(SEED)
    @given(binary_event(base))
    def fuzz(event: tuple[dict[str, bytes], bytes]) -> None:
        headers, body = event
        check_answer(post(fuzz_server, headers, body), structured=False)

    fuzz()


def test_structured_cloudevents_fuzz(fuzz_server: ServerProcess):
    base = fuzz_server.env["BATCH_ALLOW"].rstrip("/")

    @FUZZ_SETTINGS
    @seed(SEED)
    @given(structured_event(base))
    def fuzz(event: tuple[dict[str, bytes], bytes]) -> None:
        headers, body = event
        check_answer(post(fuzz_server, headers, body), structured=True)

    fuzz()
