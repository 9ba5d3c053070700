"""Large inputs (BULK_ROWS rows or more) on INFERENCE_THREADS threads: a second onnxruntime
session for a model up to BULK_SESSION_MAX_MB, a split over one-thread calls of the one
session for a larger one (func/model/runtime.py, _OnnxSessions)."""

from __future__ import annotations

import time

import numpy as np

from func.config import Settings
from func.model.runtime import BULK_ROWS, load_model


def _onnxruntime_model(path, threads: int, bulk_session_max_mb: float):
    settings = Settings(model_path=str(path), inference_threads=threads, bulk_session_max_mb=bulk_session_max_mb)
    model = load_model(settings)
    deadline = time.monotonic() + 30
    while model.evaluator != "onnxruntime":  # the mapped forest answers until the session is built
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return model


def _sessions(model):
    return model._run.__self__


def test_a_model_over_the_limit_gets_one_session_and_one_under_it_two(default_model):
    assert default_model.stat().st_size < 1e6
    small = _sessions(_onnxruntime_model(default_model, threads=2, bulk_session_max_mb=1))
    large = _sessions(_onnxruntime_model(default_model, threads=2, bulk_session_max_mb=0.1))
    deadline = time.monotonic() + 30
    while small._bulk is None:
        assert time.monotonic() < deadline, "the bulk session was never built"
        time.sleep(0.01)
    time.sleep(0.2)
    assert large._bulk is None


def test_split_a_rows_answer_does_not_depend_on_the_size_of_its_request(default_model, dataset):
    """Bit for bit, label and probabilities, as the one-thread session answers the row
    alone (a second session sums a forest's trees in another order)."""
    x, _ = dataset
    rng = np.random.default_rng(3)
    rows = (x[rng.integers(0, len(x), 2100)] * rng.uniform(0.9, 1.1, (2100, x.shape[1]))).astype(np.float32)
    model = _onnxruntime_model(default_model, threads=3, bulk_session_max_mb=0)
    alone = [model.predict(rows[i : i + 1]) for i in range(len(rows))]
    labels = np.concatenate([p.labels for p in alone])
    probabilities = np.concatenate([p.probabilities for p in alone])
    for n in (BULK_ROWS - 1, BULK_ROWS, BULK_ROWS + 1, 1537, 2100):
        together = model.predict(rows[:n])
        np.testing.assert_array_equal(together.labels, labels[:n])
        assert together.probabilities.dtype == probabilities.dtype
        assert together.probabilities.tobytes() == probabilities[:n].tobytes(), n


def test_split_a_large_input_runs_on_every_inference_thread(default_model, dataset):
    """While one part of a 3,000-row input runs on the caller's thread, the others run on
    the split pool, all of whose threads are started; a small input never starts it, and
    one inference thread needs none."""
    x, _ = dataset
    rows = x[np.arange(3000) % len(x)].astype(np.float32)
    model = _onnxruntime_model(default_model, threads=4, bulk_session_max_mb=0)
    sessions = _sessions(model)
    model.predict(rows[:100])
    assert sessions._split_pool is None
    for _ in range(3):
        model.predict(rows)
        assert sessions._split_pool is not None and len(sessions._split_pool._threads) == 3
    single = _onnxruntime_model(default_model, threads=1, bulk_session_max_mb=0)
    single.predict(rows)
    assert _sessions(single)._split_pool is None


def test_split_a_regressor_answers_each_row_in_order(tmp_path):
    """One value a row, the parts joined in input order."""
    from sklearn.datasets import load_diabetes

    from func.model.export import build_card, to_onnx_bytes
    from tests.support.trainers import forest_regressor

    data = load_diabetes()
    names = [str(n) for n in data.feature_names]
    regressor = forest_regressor(data.data, data.target)
    path = tmp_path / "diabetes.onnx"
    path.write_bytes(to_onnx_bytes(regressor, build_card(regressor, data.data, names, "diabetes", "1")))
    model = _onnxruntime_model(path, threads=3, bulk_session_max_mb=0)
    rows = data.data[np.arange(1500) % len(data.data)].astype(np.float32)
    together = model.predict(rows)
    assert together.probabilities is None and together.labels.shape == (1500,)
    alone = np.concatenate([model.predict(rows[i : i + 1]).labels for i in range(len(rows))])
    assert together.labels.tobytes() == alone.tobytes()
