"""Settings read from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import pytest

from func.config import ConfigError, Settings


def test_defaults_match_the_spec():
    s = Settings.from_env({"HOSTNAME": "x"})
    assert (s.port, s.model_path, s.max_request_bytes, s.max_rows) == (8080, "models/model.onnx", 10485760, 10000)
    assert (s.allow_pickle, s.model_sha256, s.k_sink) == (False, None, None)
    assert (s.drift_threshold, s.drift_window, s.batch_allow) == (0.2, 1000, ("./data/",))
    assert s.ce_source.startswith("/warmstart/")


def test_knative_variables_label_the_service():
    s = Settings.from_env({"K_SERVICE": "cancer", "K_REVISION": "cancer-00002", "K_CONFIGURATION": "cancer"})
    assert s.ce_source == "/warmstart/cancer"
    assert s.k_revision == "cancer-00002"


def test_lists_and_flags_are_parsed():
    env = {"BATCH_ALLOW": "./data/, s3://bucket/jobs/ ,", "ALLOW_PICKLE": "true", "SKOPS_TRUSTED": "a.B,c.D"}
    s = Settings.from_env(env)
    assert s.batch_allow == ("./data/", "s3://bucket/jobs/")
    assert s.allow_pickle is True
    assert s.skops_trusted == ("a.B", "c.D")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PORT": "http"}, "PORT='http': expected a whole number"),
        ({"MAX_ROWS": "0"}, "MAX_ROWS='0': must be at least 1"),
        ({"ALLOW_PICKLE": "maybe"}, "ALLOW_PICKLE='maybe': expected 0 or 1"),
        ({"DRIFT_THRESHOLD": "high"}, "DRIFT_THRESHOLD='high': expected a number"),
        ({"DRIFT_COOLDOWN": "-1"}, "DRIFT_COOLDOWN='-1': must be at least 0"),
        ({"DRIFT_COOLDOWN": "inf"}, "DRIFT_COOLDOWN='inf': expected a finite number"),
        ({"MODEL_FETCH_TIMEOUT_S": "nan"}, "MODEL_FETCH_TIMEOUT_S='nan': expected a finite number"),
        ({"MODEL_FETCH_TIMEOUT_S": "0"}, "MODEL_FETCH_TIMEOUT_S='0': must be at least 0.1"),
        ({"MODEL_FETCH_ATTEMPTS": "0"}, "MODEL_FETCH_ATTEMPTS='0': must be at least 1"),
        ({"BATCH_PROGRESS_S": "soon"}, "BATCH_PROGRESS_S='soon': expected a number"),
        ({"MODEL_SHA256": "abc"}, "MODEL_SHA256='abc': expected 64 hexadecimal digits"),
        ({"READ_TIMEOUT": "0"}, "READ_TIMEOUT='0': must be at least 0.1"),
        ({"CONNECTION_MAX_AGE": "-1"}, "CONNECTION_MAX_AGE='-1': must be at least 0"),
        ({"BULK_SESSION_MAX_MB": "-1"}, "BULK_SESSION_MAX_MB='-1': must be at least 0"),
        ({"BULK_SESSION_MAX_MB": "big"}, "BULK_SESSION_MAX_MB='big': expected a number"),
        ({"DRAIN_S": "5", "GRACEFUL_TIMEOUT": "5"}, "DRAIN_S=5: must be less than GRACEFUL_TIMEOUT=5"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PREDICTION_LOG_SAMPLE": "1.5"}, "PREDICTION_LOG_SAMPLE='1.5': a rate, at most 1"),
        ({"PREDICTION_LOG_SAMPLE": "-0.1"}, "PREDICTION_LOG_SAMPLE='-0.1': must be at least 0"),
        ({"PREDICTION_LOG_BUFFER": "0"}, "PREDICTION_LOG_BUFFER='0': must be at least 1"),
        ({"PREDICTION_LOG": "nosuchscheme://bucket/log"}, "PREDICTION_LOG='nosuchscheme://bucket/log': no filesystem"),
        ({"FEEDBACK": "maybe"}, "FEEDBACK='maybe': expected 0 or 1"),
        ({"FEEDBACK_RECENT": "x"}, "FEEDBACK_RECENT='x': expected a whole number"),
    ],
)
def test_ground_truth_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(message)
