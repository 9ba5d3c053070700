"""warmstart.batch.v1 jobs: CSV, JSON lines and Parquet in, predictions out, atomically."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import requests
from cloudevents.http import from_http

from func.batch.csv_pieces import MAX_LINE_BYTES, PIECE_BYTES
from tests.support.batch import batch_event, send, table, write
from tests.support.server import ServerProcess, wait_for


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def batch_server(jobs, tmp_path_factory, default_model):
    proc = ServerProcess({"BATCH_ALLOW": f"{jobs}/"}, log_dir=tmp_path_factory.mktemp("log")).start()
    proc.wait_ready()
    yield proc
    proc.kill()


def with_column(tab: pa.Table, name: str, values: list) -> pa.Table:
    """`tab` with column `name` replaced by `values`."""
    return tab.set_column(tab.column_names.index(name), name, pa.array(values))


def with_value(tab: pa.Table, name: str, row: int, value: object) -> pa.Table:
    """`tab` with one cell of column `name` replaced."""
    values = tab.column(name).to_pylist()
    values[row] = value
    return with_column(tab, name, values)


def read(path: Path) -> pa.Table:
    if path.suffix == ".csv":
        return pacsv.read_csv(path)
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])


def error_of(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_batch_job_predicts_every_row_and_keeps_extra_columns(batch_server, jobs, dataset, suffix):
    x, names = dataset
    src = write(jobs / f"in{suffix}", table(x, names, 300))
    out = jobs / f"out{suffix}"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}, f"job{suffix}"))
    assert resp.status_code == 200, resp.text
    reply = from_http(resp.headers, resp.content)
    assert reply["type"] == "warmstart.batch.completed.v1"
    assert reply["causationid"] == f"job{suffix}"
    assert reply["subject"] == "nightly"
    assert reply.data["rows"] == 300
    assert reply.data["input"] == str(src) and reply.data["output"] == str(out)
    assert reply.data["model"] == {"name": "breast-cancer-rf", "version": "1"}
    assert reply.data["duration_s"] >= 0

    result = read(out)
    assert result.column_names == ["patient_id", "prediction_id", "prediction", "probability_0", "probability_1"]
    assert result.column("patient_id").to_pylist() == [f"p{i}" for i in range(300)]
    # row r of the job is `<job's prediction id>/<r>`: the event's id, when it can be one
    assert reply.data["prediction_id"] == resp.headers["X-Prediction-Id"] == f"job{suffix}"
    assert result.column("prediction_id").to_pylist() == [f"job{suffix}/{i}" for i in range(300)]
    expected = requests.post(
        batch_server.url + "/predict", json={"instances": x[np.arange(300) % len(x)].tolist()}
    ).json()
    assert result.column("prediction").to_pylist() == expected["predictions"]
    np.testing.assert_allclose(
        result.column("probability_1").to_numpy(), [p[1] for p in expected["probabilities"]], atol=1e-6
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_input_of_no_rows_gives_a_readable_output_of_no_rows(batch_server, jobs, dataset, suffix):
    """A header-only CSV or an empty Parquet file: the output still has its columns
    (a zero-byte file would not be a Parquet file at all)."""
    x, names = dataset
    src = write(jobs / f"empty{suffix}", table(x, names, 0))
    out = jobs / f"empty-out{suffix}"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}, f"empty{suffix}"))
    assert resp.status_code == 200, resp.text
    assert from_http(resp.headers, resp.content).data["rows"] == 0
    result = read(out)
    assert result.num_rows == 0
    assert result.column_names == ["patient_id", "prediction_id", "prediction", "probability_0", "probability_1"]


def test_an_empty_json_lines_input_gives_an_empty_output(batch_server, jobs):
    src = jobs / "empty.jsonl"
    src.write_text("")
    out = jobs / "empty-out.jsonl"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}, "empty.jsonl"))
    assert resp.status_code == 200, resp.text
    assert from_http(resp.headers, resp.content).data["rows"] == 0
    assert out.read_text() == ""


def test_format_field_overrides_the_extension_and_output_format_follows_its_own(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "rows.csv", table(x, names, 20))
    odd = jobs / "rows.data"
    odd.write_bytes(src.read_bytes())
    out = jobs / "rows-out.parquet"
    resp = send(batch_server.url, batch_event({"input": f"file://{odd}", "output": str(out), "format": "csv"}))
    assert resp.status_code == 200, resp.text
    assert pq.read_table(out).num_rows == 20


def test_redelivered_event_leaves_one_complete_output(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "again.csv", table(x, names, 500))
    out = jobs / "again-out.csv"
    event = batch_event({"input": str(src), "output": str(out)}, "same-id")
    first = send(batch_server.url, event)
    second = send(batch_server.url, event, structured=True)
    assert first.status_code == second.status_code == 200
    assert read(out).num_rows == 500
    assert sorted(p.name for p in jobs.iterdir() if p.name.startswith(".again-out")) == []


def test_structured_batch_event_gets_structured_reply(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "s.jsonl", table(x, names, 10))
    resp = send(
        batch_server.url, batch_event({"input": str(src), "output": str(jobs / "s-out.jsonl")}), structured=True
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/cloudevents+json")
    assert json.loads(resp.content)["data"]["rows"] == 10


@pytest.mark.parametrize(
    "make_input, output, status, message",
    [
        (lambda d: d / "nope.csv", "o.csv", 422, "no such file"),
        (lambda d: d / "in.csv", "missing-folder/o.csv", 422, "does not exist"),
        (lambda d: d / ".." / "elsewhere.csv", "o.csv", 403, "outside BATCH_ALLOW"),
        (lambda d: Path("/etc/passwd"), "o.csv", 403, "outside BATCH_ALLOW"),
        (lambda d: d / "in.csv", "/tmp/escape.csv", 403, "outside BATCH_ALLOW"),
        (lambda d: d / "in.unknown", "o.csv", 422, "cannot tell the format"),
    ],
    ids=["missing", "no-output-folder", "dotdot", "absolute", "output-outside", "unknown-format"],
)
def test_bad_job_locations_are_refused(batch_server, jobs, dataset, make_input, output, status, message):
    x, names = dataset
    write(jobs / "in.csv", table(x, names, 5))
    data = {"input": str(make_input(jobs)), "output": output if output.startswith("/") else str(jobs / output)}
    resp = send(batch_server.url, batch_event(data))
    assert resp.status_code == status, resp.text
    assert message in error_of(resp)["message"]


def test_symlink_out_of_the_allowed_folder_is_403(batch_server, jobs, tmp_path, dataset):
    x, names = dataset
    secret = write(tmp_path / "secret.csv", table(x, names, 5))
    link = jobs / "link.csv"
    link.symlink_to(secret)
    resp = send(batch_server.url, batch_event({"input": str(link), "output": str(jobs / "o.csv")}))
    assert resp.status_code == 403
    assert "outside BATCH_ALLOW" in error_of(resp)["message"]


@pytest.mark.parametrize(
    "data, message",
    [
        ("in.csv", "expected an object"),
        ({"input": "x.csv"}, "'output' must be a non-empty URI string"),
        ({"input": "x.csv", "output": "y.csv", "format": "xlsx"}, 'format "xlsx" is not one of csv, jsonl, parquet'),
    ],
)
def test_invalid_job_data_is_422(batch_server, data, message):
    resp = send(batch_server.url, batch_event(data))
    assert resp.status_code == 422
    assert message in error_of(resp)["message"]


def test_bad_rows_are_422_naming_row_and_column_and_leave_no_output(batch_server, jobs, dataset):
    x, names = dataset
    tab = with_value(table(x, names, 50, shuffle_columns=False), "mean texture", 37, None)
    src = write(jobs / "holes.parquet", tab)
    out = jobs / "holes-out.parquet"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}))
    assert resp.status_code == 422
    # Positions count the file's columns: patient_id is column 0.
    assert (
        error_of(resp)["message"]
        == f"input {str(src)!r} row[37][2] (mean texture): the cell is empty; expected a number"
    )
    assert not out.exists()
    assert not [p for p in jobs.iterdir() if p.name.startswith(".holes-out")]

    words = table(x, names, 10, shuffle_columns=False)
    area = [str(v) for v in words.column("mean area").to_pylist()]
    area[3] = "lots"
    words = with_column(words, "mean area", area)
    src = write(jobs / "words.csv", words)
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "w.csv")}))
    assert resp.status_code == 422
    assert 'row[3][4] (mean area): expected a number, got string "lots"' in error_of(resp)["message"]


def test_missing_feature_columns_are_422(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "narrow.csv", table(x, names, 5).drop_columns(["worst area"]))
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "n.csv")}))
    assert resp.status_code == 422
    assert error_of(resp)["message"] == f"input {str(src)!r}: missing feature column(s) 'worst area'"


def test_batch_events_that_find_a_job_running_get_503_at_once_and_hold_no_thread(start_server, tmp_path, dataset, card):
    """The job slot taken, the next events are answered 503 with Retry-After (Knative
    retries them) at once: none waits on one of the worker's threads, so predictions are
    still served meanwhile."""
    x, names = dataset
    srv = start_server({"BATCH_ALLOW": f"{tmp_path}/", "WORKERS": "1", "THREADS": "2"})
    big = write(tmp_path / "big.parquet", table(x, names, 400_000, shuffle_columns=False))
    first = threading.Thread(
        target=send, args=(srv.url, batch_event({"input": str(big), "output": str(tmp_path / "a.parquet")}, "a"))
    )
    first.start()
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob(".a.parquet.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = [
        send(srv.url, batch_event({"input": str(big), "output": str(tmp_path / f"{i}.parquet")}, str(i)), timeout=5)
        for i in range(3)
    ]
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    predicted = requests.post(srv.url + "/predict", json={"features": row}, timeout=5)
    first.join(60)
    assert [r.status_code for r in busy] == [503] * 3
    assert {r.headers["Retry-After"] for r in busy} == {"1"}
    assert error_of(busy[0])["message"] == "a batch job is already running in this instance; retry later"
    assert predicted.status_code == 200
    # counted as refusals (protocol "other"), not as 5xx answers of the event protocol,
    # which the canary's error ratio reads
    metrics = requests.get(srv.url + "/metrics", timeout=5).text
    series = re.compile(r'^warmstart_requests_total\{.*protocol="(\w+)".*status="(\w+)".*\} (\S+)$', re.M)
    answers = {(protocol, status): float(count) for protocol, status, count in series.findall(metrics)}
    assert answers.get(("cloudevent", "5xx"), 0) == 0, answers
    assert answers[("other", "5xx")] == 3, answers
    assert answers[("cloudevent", "2xx")] == 1, answers


def test_job_killed_half_way_leaves_no_output_and_redelivery_completes_it(start_server, tmp_path, dataset):
    x, names = dataset
    env = {"BATCH_ALLOW": f"{tmp_path}/", "WORKERS": "1"}
    src = write(tmp_path / "big.csv", table(x, names, 300_000, shuffle_columns=False))
    out = tmp_path / "big-out.csv"
    event = batch_event({"input": str(src), "output": str(out)}, "nightly-0001")

    srv = start_server(env)
    sender = threading.Thread(target=lambda: pytest.raises(requests.ConnectionError, send, srv.url, event))
    sender.start()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".big-out.csv.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)
    srv.kill()
    sender.join(30)
    assert not out.exists(), "a killed job must leave nothing under the output name"
    assert list(tmp_path.glob(".big-out.csv.*.partial")), "the job should have been killed mid-way"

    again = start_server(env)
    resp = send(again.url, event)
    assert resp.status_code == 200, resp.text
    assert from_http(resp.headers, resp.content).data["rows"] == 300_000
    assert pacsv.read_csv(out).num_rows == 300_000
    assert not list(tmp_path.glob(".big-out.csv.*.partial"))


def test_submit_batch_fans_out_one_event_per_part_and_is_idempotent(start_server, tmp_path, dataset):
    import subprocess
    import sys

    from tests.support.server import ROOT

    x, names = dataset
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(4):
        write(parts / f"part-{i:03d}.parquet", table(x, names, 100 + i))
    (parts / "notes.txt").write_text("not a part")
    (tmp_path / "predictions").mkdir()
    srv = start_server({"BATCH_ALLOW": f"{tmp_path}/"})
    cmd = [
        sys.executable,
        "scripts/submit_batch.py",
        str(parts),
        str(tmp_path / "predictions"),
        srv.url,
        "--parallel",
        "2",
    ]
    for _ in range(2):
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "4 parts: 4 completed (406 rows), 0 accepted for async delivery, 0 failed" in result.stdout
        assert "4/4" in result.stderr
    outputs = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert outputs == [f"part-{i:03d}.parquet" for i in range(4)]
    assert pq.read_table(tmp_path / "predictions" / "part-002.parquet").num_rows == 102

    bad = subprocess.run([*cmd[:3], "/etc", srv.url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "0 completed" in bad.stdout and "403 output" in bad.stdout


def test_csv_feature_columns_of_true_and_false_count_as_one_and_zero(batch_server, jobs, dataset):
    """Feature columns are read as float64 for speed; a column pyarrow cannot read that
    way in the first block (here booleans) makes the job read the file as before."""
    x, names = dataset
    numbers = table(x, names, 200, shuffle_columns=False)
    flags = [i % 3 == 0 for i in range(200)]
    as_numbers = with_column(numbers, "mean radius", [float(f) for f in flags])
    as_words = with_column(numbers, "mean radius", flags)
    results = []
    for name, tab in (("flags-numbers", as_numbers), ("flags-words", as_words)):
        src = write(jobs / f"{name}.csv", tab)
        resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / f"{name}-out.csv")}, name))
        assert resp.status_code == 200, resp.text
        results.append(read(jobs / f"{name}-out.csv").column("prediction").to_pylist())
    assert "true" in (jobs / "flags-words.csv").read_text()
    assert results[0] == results[1]


def test_csv_feature_column_of_integers_then_a_fraction_reads(batch_server, jobs, dataset):
    """pyarrow infers a column's type from the first 1 MB block; a feature column of whole
    numbers there and a fraction later used to fail with 'conversion error to int64'."""
    x, names = dataset
    n = 12_000
    tab = table(x, names, n, shuffle_columns=False)
    area = [float(round(v)) for v in tab.column("mean area").to_pylist()]
    area[-1] = 1000.5
    tab = with_column(tab, "mean area", area)
    src = jobs / "late-fraction.csv"
    text = pacsv.write_csv(tab, src) or src.read_text().replace(".0,", ",")
    src.write_text(text)
    assert src.stat().st_size > 2 * 1024 * 1024
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "late-out.csv")}, "late"))
    assert resp.status_code == 200, resp.text
    assert from_http(resp.headers, resp.content).data["rows"] == n


def test_the_first_problem_in_the_file_is_the_one_reported(batch_server, jobs, dataset):
    """Chunk k is predicted while piece k+1 is parsed: a bad value in the first chunk is
    still reported before a broken line in the second piece."""
    x, names = dataset
    tab = with_value(table(x, names, 40_000, shuffle_columns=False), "mean texture", 5, None)
    src = write(jobs / "two-problems.csv", tab)
    text = src.read_text()
    cut = text.index("\n", PIECE_BYTES * 3 // 2) + 1  # in the second piece
    src.write_text(text[:cut] + '"p-extra",1,2\n' + text[cut:])  # a line of too few columns
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "two-out.csv")}, "two"))
    assert resp.status_code == 422
    assert "row[5][2] (mean texture): the cell is empty; expected a number" in error_of(resp)["message"]


@pytest.mark.parametrize("suffix, threads", [(".csv", "4"), (".parquet", "4"), (".parquet", "16")])
def test_rows_come_out_in_input_order_when_chunks_are_read_and_predicted_in_parallel(
    start_server, tmp_path, dataset, suffix, threads
):
    """A CSV of many pieces, a Parquet file of many row groups: four threads parse and
    predict them at once (sixteen: two readers decode the Parquet file's columns), and
    output row r is still input row r, with its prediction."""
    x, names = dataset
    # Many more chunks (Parquet: 16,384 rows, CSV: a piece) than the job keeps in flight, 4 + 1
    n = 200_000
    src = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        write(src, table(x, names, n))
        assert src.stat().st_size > 8 * PIECE_BYTES
    else:
        pq.write_table(table(x, names, n), src, row_group_size=7_000)
        assert pq.ParquetFile(src).metadata.num_row_groups > 8
    srv = start_server({"BATCH_ALLOW": f"{tmp_path}/", "INFERENCE_THREADS": threads})
    out = tmp_path / f"out{suffix}"
    resp = send(srv.url, batch_event({"input": str(src), "output": str(out)}, "in-order"))
    assert resp.status_code == 200, resp.text

    result = read(out)
    assert result.column("patient_id").to_pylist() == [f"p{i}" for i in range(n)]
    assert result.column("prediction_id").to_pylist() == [f"in-order/{i}" for i in range(n)]
    # The input repeats the dataset's rows: row r's prediction is that of row r % len(x).
    expected = requests.post(srv.url + "/predict", json={"instances": x.tolist()}).json()
    repeated = np.arange(n) % len(x)
    assert result.column("prediction").to_pylist() == np.asarray(expected["predictions"])[repeated].tolist()
    np.testing.assert_allclose(
        result.column("probability_1").to_numpy(), np.asarray(expected["probabilities"])[repeated, 1], atol=1e-6
    )


def test_a_broken_line_deep_in_a_large_csv_is_422_naming_its_row_in_the_file(batch_server, jobs, dataset):
    """pyarrow counts rows within the piece it parses; the message counts them in the
    file (the header is row 1)."""
    x, names = dataset
    src = write(jobs / "deep.csv", table(x, names, 100_000, shuffle_columns=False))
    lines = src.read_bytes().split(b"\n")
    lines[1 + 90_000] = b"p90000,1,2"  # data row 90,000 (from 0), after the header
    src.write_bytes(b"\n".join(lines))
    assert src.stat().st_size > 3 * PIECE_BYTES
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "deep-out.csv")}))
    assert resp.status_code == 422
    assert "Row #90002: Expected 31 columns, got 3: p90000,1,2" in error_of(resp)["message"]


def test_a_csv_line_past_the_limit_is_422_and_the_rest_is_never_read(batch_server, jobs, dataset):
    """A file with no line end (a binary file named .csv) was read whole into memory
    before pyarrow said it could not parse it; now the job stops at the limit."""
    x, names = dataset
    src = jobs / "one-line.csv"
    src.write_bytes(",".join(names).encode() + b"\n" + b"1," * (16 * PIECE_BYTES))
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "one-line-out.csv")}))
    assert resp.status_code == 422, resp.text
    message = error_of(resp)["message"]
    assert f"input {str(src)!r}: no line end in the" in message
    assert f"a CSV line (a row) may be at most {MAX_LINE_BYTES >> 20} MB" in message, message
    assert not (jobs / "one-line-out.csv").exists()


def test_a_json_lines_line_past_a_block_is_422_naming_the_input(batch_server, jobs, dataset):
    x, names = dataset
    src = jobs / "long-line.jsonl"
    src.write_text(json.dumps({**dict(zip(names, x[0].tolist())), "note": "n" * (2 << 20)}) + "\n")
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "long-line-out.jsonl")}))
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["message"].startswith(f"input {str(src)!r}: cannot read it as jsonl"), resp.text


def test_a_uri_with_a_nul_character_is_422(batch_server, jobs):
    for data in ({"input": f"{jobs}/in\x00.csv", "output": f"{jobs}/o.csv"}, {"input": "a.csv", "output": "o\x00.csv"}):
        resp = send(batch_server.url, batch_event(data))
        assert resp.status_code == 422, resp.text
        assert "holds a NUL character" in error_of(resp)["message"]


@pytest.mark.parametrize(
    "output", ["{jobs}", "{jobs}/", "{jobs}/sub", "{jobs}/in-place.csv", "{jobs}/scored/", "{jobs}/scored/."]
)
def test_an_output_that_is_a_folder_or_the_input_is_422_and_nothing_is_written(batch_server, jobs, dataset, output):
    x, names = dataset
    (jobs / "sub").mkdir(exist_ok=True)
    src = write(jobs / "in-place.csv", table(x, names, 5))
    before = src.read_bytes()
    around = sorted(jobs.parent.iterdir())
    resp = send(batch_server.url, batch_event({"input": str(src), "output": output.format(jobs=jobs)}))
    assert resp.status_code == 422, resp.text
    assert "is a folder" in resp.text or "is the input" in resp.text
    assert src.read_bytes() == before
    assert sorted(jobs.parent.iterdir()) == around
    assert not list(jobs.glob(".*.partial"))
    assert not (jobs / "scored").exists()  # a folder that does not exist yet is still a folder


def test_refusals_name_the_input_but_not_the_server_paths(batch_server, jobs):
    from tests.support.server import ROOT

    resp = send(batch_server.url, batch_event({"input": "/etc/passwd", "output": f"{jobs}/o.csv"}))
    assert resp.status_code == 403
    assert error_of(resp)["message"].startswith("input '/etc/passwd' is outside BATCH_ALLOW")
    assert str(jobs) not in resp.text
    relative = os.path.relpath(jobs / "missing" / "o.csv", ROOT)  # the server runs in ROOT
    write(jobs / "in.csv", pa.table({"a": [1]}))
    resp = send(batch_server.url, batch_event({"input": str(jobs / "in.csv"), "output": relative}))
    assert resp.status_code == 422
    assert error_of(resp)["message"] == f"output {relative!r}: its folder does not exist"
    assert str(ROOT) not in resp.text
    assert "outside BATCH_ALLOW" in batch_server.log()  # the operator still finds the details


def test_one_event_delivered_twice_at_once_leaves_one_complete_output(start_server, tmp_path, dataset):
    """Knative redelivers while the first attempt runs, maybe to another pod: neither
    attempt may remove the other's temporary file."""
    x, names = dataset
    env = {"BATCH_ALLOW": f"{tmp_path}/"}
    pods = [start_server(env), start_server(env)]
    src = write(tmp_path / "twice.csv", table(x, names, 200_000, shuffle_columns=False))
    out = tmp_path / "twice-out.parquet"
    event = batch_event({"input": str(src), "output": str(out)}, "twice-1")
    replies: list[requests.Response] = []
    first = threading.Thread(target=lambda: replies.append(send(pods[0].url, event)))
    first.start()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".twice-out.parquet.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.005)
    replies.append(send(pods[1].url, event))
    first.join(120)
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    assert pq.read_table(out).num_rows == 200_000
    assert not list(tmp_path.glob(".twice-out.parquet.*"))


def test_any_job_removes_partial_files_of_dead_attempts_but_not_of_running_ones(batch_server, jobs, dataset):
    import fcntl

    x, names = dataset
    dead = jobs / ".other-out.csv.0123456789abcdef.01234567.partial"
    dead.write_text("half a file")
    running = jobs / ".other-out.csv.0123456789abcdef.89abcdef.partial"
    with running.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running attempt holds its own
        src = write(jobs / "cleaner.csv", table(x, names, 5))
        resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "cleaner-out.csv")}))
        assert resp.status_code == 200, resp.text
        assert not dead.exists()
        assert running.exists()
    running.unlink()


def test_an_empty_csv_cell_is_reported_as_empty_and_a_nan_as_not_finite(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "blank.csv", table(x, names, 3, shuffle_columns=False))
    lines = src.read_text().splitlines()
    cells = lines[2].split(",")
    cells[3] = ""  # mean perimeter, column 3 of the file, in row 1
    src.write_text("\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n")
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "blank-out.csv")}))
    assert resp.status_code == 422
    assert error_of(resp)["message"].endswith("row[1][3] (mean perimeter): the cell is empty; expected a number")
    cells[3] = "nan"
    src.write_text("\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n")
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "blank-out.csv")}))
    assert resp.status_code == 422
    assert error_of(resp)["message"].endswith("row[1][3] (mean perimeter): nan is not a finite number")


@pytest.mark.parametrize(
    "column, suffix",
    [
        (pa.array([[1, 2]] * 5), ".csv"),
        (pa.array([{"a": 1}] * 5), ".csv"),
        (pa.array([b"\xff\x00"] * 5), ".csv"),
        (pa.array([b"\xff\x00"] * 5), ".jsonl"),
        (pa.array([decimal.Decimal("1.5")] * 5), ".jsonl"),
        (pa.array([datetime.timedelta(seconds=1)] * 5), ".jsonl"),
    ],
    ids=["list-csv", "struct-csv", "binary-csv", "binary-jsonl", "decimal-jsonl", "duration-jsonl"],
)
def test_a_column_the_output_format_cannot_hold_is_422_naming_it(batch_server, jobs, dataset, column, suffix):
    x, names = dataset
    src = write(jobs / "typed.parquet", table(x, names, 5).append_column("extra", column))
    out = jobs / f"typed-out{suffix}"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}))
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["message"] == (
        f"input {str(src)!r}: column 'extra' is of type {pq.read_schema(src).field('extra').type}, "
        f"which a {suffix[1:]} output cannot hold; "
        "drop the column or write a Parquet output"
    )
    assert not out.exists()
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "typed-out.parquet")}))
    assert resp.status_code == 200, resp.text
    assert read(jobs / "typed-out.parquet").column("extra").to_pylist() == column.to_pylist()


def test_nanosecond_timestamps_with_a_time_zone_pass_through_to_json_lines(batch_server, jobs, dataset):
    x, names = dataset
    when = pa.array([1_600_000_000_000_000_001] * 5, type=pa.timestamp("ns", tz="Europe/Paris"))
    src = write(jobs / "when.parquet", table(x, names, 5).append_column("when", when))
    out = jobs / "when-out.jsonl"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}))
    assert resp.status_code == 200, resp.text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["when"] for row in rows} == {"2020-09-13T14:26:40.000000001+02:00"}


def test_a_csv_header_that_is_not_utf8_is_422_naming_the_column(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "latin1.csv", table(x, names, 5))
    src.write_bytes(src.read_bytes().replace(b'"patient_id"', b'"caf\xe9"', 1))
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "latin1-out.csv")}))
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["message"] == (
        f"input {str(src)!r}: the name of column 0 is not UTF-8 text (byte 0xe9 at position 3); save the file as UTF-8"
    )


@pytest.mark.parametrize("name", ["prediction", "probability_0", "probability_1"])
def test_an_input_column_named_like_an_output_column_is_422_naming_it(batch_server, jobs, dataset, name):
    x, names = dataset
    src = write(jobs / "clash.csv", table(x, names, 5).append_column(name, pa.array(["mine"] * 5)))
    out = jobs / "clash-out.csv"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}))
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["message"] == (
        f"input {str(src)!r}: column {name!r} has the name of a column the output adds, and would be overwritten; "
        "rename it"
    )
    assert not out.exists()


@pytest.mark.parametrize("duplicate", ["mean radius", "patient_id"])
def test_a_column_given_twice_is_422_naming_it(batch_server, jobs, dataset, duplicate):
    x, names = dataset
    tab = table(x, names, 5, shuffle_columns=False)
    src = jobs / "twice.csv"
    src.write_text(
        ",".join([*tab.column_names, duplicate])
        + "\n"
        + "".join(",".join(map(str, [*row.values(), row[duplicate]])) + "\n" for row in tab.to_pylist())
    )
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "twice-out.csv")}))
    assert resp.status_code == 422, resp.text
    first = tab.column_names.index(duplicate)
    assert error_of(resp)["message"] == (
        f"input {str(src)!r}: column {duplicate!r} appears twice (columns {first} and 31); name each column once"
    )


def test_the_access_log_counts_the_rows_a_batch_job_predicted(batch_server, jobs, dataset):
    x, names = dataset
    src = write(jobs / "counted.parquet", table(x, names, 1000))
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(jobs / "counted-out.parquet")}, "n"))
    assert resp.status_code == 200, resp.text

    def batch_lines() -> list[dict]:
        lines = [json.loads(line) for line in batch_server.log().splitlines() if line.startswith("{")]
        return [e for e in lines if e["logger"] == "warmstart.access" and e["route"] == "/" and e["rows"] == 1000]

    assert wait_for(batch_lines), batch_server.log()[-2000:]


def test_a_job_logs_its_start_its_progress_and_its_end_with_rows_and_seconds(start_server, tmp_path, dataset):
    x, names = dataset
    # BATCH_PROGRESS_S=0: a progress line after every chunk written, however fast
    srv = start_server({"BATCH_ALLOW": f"{tmp_path}/", "BATCH_PROGRESS_S": "0"})
    src = write(tmp_path / "in.csv", table(x, names, 200_000, shuffle_columns=False))
    out = tmp_path / "out.csv"
    assert send(srv.url, batch_event({"input": str(src), "output": str(out)}, "job-log")).status_code == 200
    bad = send(srv.url, batch_event({"input": str(tmp_path / "none.csv"), "output": str(out)}, "job-bad"))
    assert bad.status_code == 422

    messages = [json.loads(line)["message"] for line in srv.log().splitlines() if '"warmstart.batch"' in line]
    started, *progress, completed = [m for m in messages if m.startswith("batch job job-log")]
    assert started == f"batch job job-log started: {src} -> {out}"
    rows = [int(m.split(": ", 1)[1].split(" rows")[0]) for m in progress]
    assert len(rows) >= 2 and rows == sorted(rows) and rows[-1] == 200_000
    assert all(" s (" in m and "rows/s)" in m for m in progress)
    assert completed.startswith("batch job job-log completed: 200000 rows in ") and completed.endswith(f"-> {out}")
    failed = [m for m in messages if m.startswith("batch job job-bad failed after 0 rows in ")]
    assert len(failed) == 1 and "no such file" in failed[0]


def test_parquet_output_writes_ids_and_probabilities_without_a_dictionary(batch_server, jobs, dataset):
    """They are (nearly) all different, so pyarrow's try at a dictionary is wasted work; the
    input's columns keep pyarrow's default."""
    x, names = dataset
    src = write(jobs / "plain.parquet", table(x, names, 500))
    out = jobs / "plain-out.parquet"
    resp = send(batch_server.url, batch_event({"input": str(src), "output": str(out)}, "plain"))
    assert resp.status_code == 200, resp.text
    group = pq.ParquetFile(out).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    assert set(encodings) == {"patient_id", "prediction_id", "prediction", "probability_0", "probability_1"}
    for name, used in encodings.items():
        assert ("RLE_DICTIONARY" in used) == (name in ("patient_id", "prediction")), (name, used)
    assert pq.read_table(out).column("prediction_id").to_pylist()[:2] == ["plain/0", "plain/1"]


@pytest.mark.parametrize("threads", ["2", "16"])
def test_a_job_on_s3_reads_and_writes_through_fsspec(start_server, s3_endpoint, dataset, threads):
    """Local paths have their own file operations (func/batch/local_files.py); every other
    scheme still goes through fsspec, here s3fs against a local S3 server (at sixteen
    threads, two readers each open the input)."""
    import s3fs

    from tests.support.services import S3_ENV

    x, names = dataset
    requests.put(f"{s3_endpoint}/jobs", timeout=10).raise_for_status()
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    if fs.exists("jobs/scored.csv"):  # the other parameter's output: the store is shared
        fs.rm("jobs/scored.csv")
    with fs.open("jobs/rows.parquet", "wb") as sink:
        pq.write_table(table(x, names, 300), sink)
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint, "BATCH_ALLOW": "s3://jobs/", "INFERENCE_THREADS": threads}
    srv = start_server(env)
    data = {"input": "s3://jobs/rows.parquet", "output": "s3://jobs/scored.csv"}
    resp = send(srv.url, batch_event(data, "on-s3"))
    assert resp.status_code == 200, resp.text
    assert from_http(resp.headers, resp.content).data["rows"] == 300
    with fs.open("jobs/scored.csv", "rb") as source:
        out = pacsv.read_csv(source)
    assert out.column("patient_id").to_pylist() == [f"p{i}" for i in range(300)]
    assert out.column("prediction_id").to_pylist()[:2] == ["on-s3/0", "on-s3/1"]
    assert sorted(fs.ls("jobs", detail=False)) == ["jobs/rows.parquet", "jobs/scored.csv"]
    resp = send(srv.url, batch_event({**data, "input": "s3://jobs/missing.parquet"}, "missing"))
    assert resp.status_code == 422 and "no such file" in resp.text


def test_object_store_uris_resolve_to_the_key_they_name():
    from func.batch.job import resolve_allowed
    from func.errors import Forbidden

    allow = ("s3://jobs/",)
    assert resolve_allowed("s3://jobs/rows.parquet", allow, "input") == "s3://jobs/rows.parquet"
    assert resolve_allowed("s3://jobs/in/../rows.parquet", allow, "input") == "s3://jobs/rows.parquet"
    assert resolve_allowed("gs://jobs/a/b.csv", ("gs://jobs",), "input") == "gs://jobs/a/b.csv"
    with pytest.raises(Forbidden):
        resolve_allowed("s3://jobs-other/rows.parquet", allow, "input")
