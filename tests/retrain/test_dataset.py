"""The fresh training set: `python -m func.dataset` joins the prediction log with its
feedback exactly. (The retraining job reading a log itself: tests/retrain/test_retrain.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow.parquet as pq
import pytest

from func.model.card import ModelCard
from func.model.runtime import Prediction
from func.observe.prediction_log import PREDICTIONS, PredictionLog
from tests.support.server import ROOT

ROWS = 100_000
DAY = 86_400.0


def dataset_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "func.dataset", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_help_documents_the_join():
    result = dataset_cli("--help")
    assert result.returncode == 0
    for words in ("--log", "--output", "--since", "--until", "latest label", "TRAIN_DATA_URI"):
        assert words in result.stdout


def test_the_join_is_exact_on_100k_rows_with_late_repeated_out_of_order_labels(tmp_path, card):
    """100,000 predictions over ten days in 25 parts (requests of 1 to 7 rows, a batch
    job's part among them); labels for 60% of them in 8 parts, shuffled, some twice
    (a later part, or later in the same part, wins), some as `<id>/0` for a one-row
    request, some for ids never logged. The window keeps days 2 to 8."""
    rng = np.random.default_rng(23)
    model = ModelCard.from_dict(card)
    log = PredictionLog(str(tmp_path / "log"), model, "f" * 64, "rev-a", 1.0, ROWS, 600, lambda *_: None)
    n_features = model.n_features
    x = rng.normal(size=(ROWS, n_features)).astype(np.float32)
    answers = rng.integers(0, 2, ROWS)
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    times = start + np.sort(rng.uniform(0, 10 * DAY, ROWS))

    # requests of 1..7 rows; the row ids the server would give them
    ids, keys, r = [], [], 0
    while r < ROWS:
        n = min(int(rng.integers(1, 8)), ROWS - r)
        request = f"req-{r}"
        for k in range(n):
            ids.append(request if n == 1 else f"{request}/{k}")
            keys.append((request, k))
        r += n
    bounds = np.linspace(0, ROWS, 26).astype(int)
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        requests_, numbers = zip(*keys[a:b])
        single = np.array([ids[i] == keys[i][0] for i in range(a, b)])
        table = log.predictions_table(requests_, numbers, single, times[a:b], x[a:b], Prediction(answers[a:b], None))
        log.write_part(f"{PREDICTIONS}/date=part{p:02d}", f"part-{p:02d}", table)

    labelled = rng.choice(ROWS, int(ROWS * 0.6), replace=False)  # shuffled: out of order
    truth: dict[tuple[str, int], int] = {}
    feedback: list[tuple[str, int]] = []
    for i in labelled:
        label = int(rng.integers(0, 2))
        request, row = keys[i]
        quoted = f"{request}/0" if ids[i] == request and rng.random() < 0.5 else ids[i]
        feedback.append((quoted, label))
        truth[keys[i]] = label
    for i in rng.choice(labelled, 5_000, replace=False):  # a second label, later
        label = 1 - truth[keys[i]]
        feedback.append((ids[i], label))
        truth[keys[i]] = label
    feedback += [(f"never-logged-{k}", 1) for k in range(500)]
    for chunk in np.array_split(np.arange(len(feedback)), 8):
        part = [feedback[k] for k in chunk]
        log.feedback([i for i, _ in part], [y for _, y in part], np.zeros(len(part), dtype=bool))
        log.flush()
        time.sleep(0.002)  # parts arrive one after another
    # twice in one part, at one instant: the later position wins
    twice = ids[int(labelled[0])]
    log.feedback([twice, twice], [0, 1], np.zeros(2, dtype=bool))
    log.flush()
    truth[keys[int(labelled[0])]] = 1

    since, until = datetime.fromtimestamp(start + 2 * DAY, UTC), datetime.fromtimestamp(start + 8 * DAY, UTC)
    out = tmp_path / "fresh.parquet"
    result = dataset_cli(
        "--log", str(tmp_path / "log"), "--output", str(out), "--since", since.isoformat(), "--until", until.isoformat()
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)

    in_window = (times >= since.timestamp()) & (times < until.timestamp())
    expected = {ids[i]: (truth[keys[i]], i) for i in np.flatnonzero(in_window) if keys[i] in truth}
    got = table.column("id").to_pylist()
    assert len(got) == len(set(got)) == len(expected)
    assert f"{len(expected)} labelled rows" in result.stdout
    assert dict(zip(got, table.column("label").to_pylist())) == {i: y for i, (y, _) in expected.items()}
    order = [expected[i][1] for i in got]
    features = np.column_stack([table.column(name).to_numpy() for name in model.feature_names])
    np.testing.assert_array_equal(features, x[order])
    assert table.column("prediction").to_pylist() == answers[order].tolist()
    assert set(table.column("revision").to_pylist()) == {"rev-a"}
    logged_times = table.column("time").cast("int64").to_numpy() / 1e6
    np.testing.assert_allclose(logged_times, times[order], atol=1e-6)
    assert np.all(np.diff(logged_times) >= 0), "rows come in prediction order"


def test_no_feedback_yet_says_so(tmp_path, card):
    log = PredictionLog(str(tmp_path / "log"), ModelCard.from_dict(card), "f" * 64, None, 1.0, 10, 600, lambda *_: None)
    row = np.zeros((1, len(card["feature_names"])), dtype=np.float32)
    log.write_part(
        f"{PREDICTIONS}/x",
        "one",
        log.predictions_table(
            ["a"], [0], np.array([True]), np.array([time.time()]), row, Prediction(np.array([1]), None)
        ),
    )
    result = dataset_cli("--log", str(tmp_path / "log"), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 2 and "no feedback logged yet" in result.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "args, message", [(["--since", "yesterday"], "--since='yesterday': expected an ISO 8601 time")]
)
def test_a_bad_window_names_the_option(tmp_path, args, message):
    (tmp_path / "log" / PREDICTIONS).mkdir(parents=True)
    result = dataset_cli("--log", str(tmp_path / "log"), "--output", str(tmp_path / "o.parquet"), *args)
    assert result.returncode == 2 and message in result.stderr
