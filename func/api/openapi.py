"""The OpenAPI 3 document of every route create_app() serves."""

from __future__ import annotations

from typing import Any

from ..codecs.feedback import REVISION_PATTERN, VERSION_MAX_CHARS
from ..model.card import ModelCard
from . import v2

# The model reads float32: a JSON number whose float32 rounding is infinite is refused
# (422). That is any magnitude from the largest float32 plus half its last step (2**103),
# where rounding to nearest-even goes to infinity.
FLOAT32_LIMIT = 3.4028234663852886e38 + 2.0**103
# JSON booleans count as 1 and 0 (codecs._NUMBER_KINDS).
_VALUE = {
    "anyOf": [
        {
            "type": "number",
            "minimum": -FLOAT32_LIMIT,
            "exclusiveMinimum": True,
            "maximum": FLOAT32_LIMIT,
            "exclusiveMaximum": True,
        },
        {"type": "boolean"},
    ],
    "description": "a number within float32 range, or a boolean (1 or 0)",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json({"$ref": "#/components/schemas/Error"})}


_ERRORS = {
    "400": _error("Malformed JSON"),
    "413": _error("Body larger than MAX_REQUEST_BYTES or more rows than MAX_ROWS"),
    "415": _error("Content type other than JSON"),
    "422": _error("Wrong shape or type, unknown feature name, or a null/NaN/Infinity value"),
    "503": _error("Model not loaded yet, failed to load, or the server is shutting down"),
}


_WINDOW = {
    "type": "object",
    "properties": {
        "window": {
            "type": "object",
            "properties": {"index": {"type": "integer"}, "rows": {"type": "integer"}, "size": {"type": "integer"}},
        },
        "status": {"type": "string", "enum": ["ok", "warning", "drift"]},
        "threshold": {"type": "number"},
        "out_of_range_rate": {"type": "number", "description": "share of values outside the training range"},
        "prediction_psi": {"type": "number", "nullable": True},
        "prediction": {"type": "object", "description": "reference and live shares of the prediction bins"},
        "top_features": {
            "type": "array",
            "items": {"type": "object", "properties": {"feature": {"type": "string"}, "psi": {"type": "number"}}},
        },
        "features": {
            "type": "object",
            "description": "per feature: psi, bin names, reference and live shares",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "psi": {"type": "number"},
                    "bins": {"type": "array", "items": {"type": "string"}},
                    "reference": {"type": "array", "items": {"type": "number"}},
                    "live": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
    },
}
_DRIFT = {
    "type": "object",
    "required": ["enabled"],
    "properties": {
        "enabled": {"type": "boolean"},
        "reason": {"type": "string", "description": "why drift detection is off"},
        "window_size": {"type": "integer"},
        "threshold": {"type": "number"},
        "rows_seen": {"type": "integer"},
        "current": _WINDOW,
        "last_complete": {**_WINDOW, "nullable": True},
        "windows": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "closed windows by status",
        },
    },
}


# Every answer of a request that predicted names its prediction id.
_PREDICTION_ID_HEADER = {
    "X-Prediction-Id": {
        "description": "the prediction's id: the request's `id` when it sent one, else a new one; row r of a "
        "request of several rows is `<id>/<r>`. Quote it in POST /feedback.",
        "schema": {"type": "string"},
    }
}
_REQUEST_ID = {
    "anyOf": [
        {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        {"type": "integer"},
    ],
    "nullable": True,
    "description": "the client's own id for this request (an order number), the prediction id; "
    "row r of several is then `<id>/<r>`. A new one is made when absent (or null).",
}


def _feedback_schemas(card: ModelCard | None) -> dict[str, Any]:
    """The body of POST /feedback (and of warmstart.feedback.v1) and its answer."""
    if card is None:
        label: dict[str, Any] = {"description": "the true class, or a regressor's true value"}
    elif card.is_classifier:
        label = {"enum": list(card.class_labels), "description": "the true class: one of the model's classes"}
    else:
        label = {
            "type": "number",
            "minimum": -1.7976931348623157e308,
            "maximum": 1.7976931348623157e308,
            "description": "the true value",
        }
    common = {
        "id": {
            "anyOf": [{"type": "string", "minLength": 1, "maxLength": 256}, {"type": "integer"}],
            "description": "a prediction id (X-Prediction-Id), or `<id>/<r>` for row r of a request of several",
        },
        "label": label,
    }
    nothing = {"not": {}}  # OpenAPI 3.0's false: the key may not be there
    plain = {
        "type": "object",
        "required": ["id", "label"],
        "properties": {**common, "prediction": nothing, "revision": nothing, "model_version": nothing},
    }
    reporting = {
        "type": "object",
        "required": ["id", "label", "prediction", "revision"],
        "properties": {
            **common,
            "prediction": {**label, "description": "the answer the response gave (its predictions[r])"},
            "revision": {
                "type": "string",
                "pattern": REVISION_PATTERN,
                "maxLength": 253,
                "description": "the response's X-Revision: the revision that gave the answer",
            },
            "model_version": {
                "type": "string",
                "maxLength": VERSION_MAX_CHARS,
                "pattern": "^[^\\x00-\\x1f\\x7f]*$",
                "description": "the response's X-Model-Version",
            },
        },
    }
    return {
        "FeedbackLabel": {
            "anyOf": [plain, reporting],
            "description": "a label; with the answer it labels reported (prediction, revision), any pod scores it",
        },
        "FeedbackRequest": {
            "anyOf": [
                {
                    "type": "object",
                    "required": ["feedback"],
                    "properties": {
                        "feedback": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"$ref": "#/components/schemas/FeedbackLabel"},
                        }
                    },
                },
                {"$ref": "#/components/schemas/FeedbackLabel"},
            ]
        },
        "FeedbackResponse": {
            "type": "object",
            "required": ["accepted", "matched", "reported", "unmatched"],
            "properties": {
                "accepted": {"type": "integer", "description": "labels taken (and logged, with PREDICTION_LOG)"},
                "matched": {"type": "integer", "description": "labels of predictions this pod made recently"},
                "reported": {
                    "type": "integer",
                    "description": "labels of predictions made elsewhere, scored against the answer they report",
                },
                "unmatched": {"type": "integer", "description": "labels of predictions this pod does not know"},
            },
        },
    }


_FEEDBACK_OP = {
    "post": {
        "summary": "The true outcome of earlier predictions: labels by prediction id, scored into live accuracy "
        "on /metrics and stored in the prediction log. Authentication belongs to the platform.",
        "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/FeedbackRequest"})},
        "responses": {
            "200": {"description": "Labels taken", **_json({"$ref": "#/components/schemas/FeedbackResponse"})},
            **_ERRORS,
            "404": _error("Feedback is off here (FEEDBACK=0)"),
            "413": _error("Body larger than MAX_REQUEST_BYTES or more labels than MAX_ROWS"),
            "422": _error("A label that is not a class of the model or of the wrong type, or an id that is not one"),
        },
    }
}


def _predict_op(
    summary: str,
    request_ref: str,
    response_ref: str,
    parameters: list[dict[str, Any]] | None = None,
    extra_responses: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, **_json({"$ref": f"#/components/schemas/{request_ref}"})},
        "responses": {
            "200": {
                "description": "Predictions",
                "headers": _PREDICTION_ID_HEADER,
                **_json({"$ref": f"#/components/schemas/{response_ref}"}),
            },
            **_ERRORS,
            **(extra_responses or {}),
        },
    }
    if parameters:
        op["parameters"] = parameters
    return op


# A request is a binary-mode event when ce-specversion is present; the other headers are
# read only then, so none of them has a schema beyond "a string" (an unknown type or
# version is a 400 naming it).
_CE_HEADERS = {
    "ce-specversion": "CloudEvents version, 1.0; binary mode when present",
    "ce-id": "event id (required in binary mode); a batch job's output is written once per id",
    "ce-source": "event source, a URI-reference (required in binary mode)",
    "ce-type": "warmstart.predict.v1, warmstart.batch.v1 or warmstart.feedback.v1 (required in binary mode)",
    "ce-subject": "echoed in the reply",
    "ce-time": "RFC 3339 timestamp",
    "traceparent": "W3C trace context, passed on to the reply",
}
# CloudEvents attribute values are JSON strings, integers or booleans; a null optional
# attribute reads as absent.
_ATTRIBUTE = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}], "nullable": True}
_BATCH_JOB = {
    "type": "object",
    "required": ["input", "output"],
    "properties": {
        "input": {"type": "string", "minLength": 1, "description": "URI under BATCH_ALLOW"},
        "output": {"type": "string", "minLength": 1, "description": "URI under BATCH_ALLOW, written atomically"},
        "format": {"type": "string", "enum": ["csv", "jsonl", "parquet"], "description": "else from the extension"},
    },
}
_BATCH_COMPLETED = {
    "type": "object",
    "required": ["input", "output", "rows", "duration_s", "model"],
    "properties": {
        "input": {"type": "string"},
        "output": {"type": "string"},
        "rows": {"type": "integer"},
        "duration_s": {"type": "number"},
        "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "prediction_id": {"type": "string", "description": "row r of the output is `<prediction_id>/<r>`"},
    },
}


def _envelope(data: dict[str, Any], types: list[str]) -> dict[str, Any]:
    """A structured-mode CloudEvent (application/cloudevents+json) carrying `data`."""
    return {
        "type": "object",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"type": "string", "enum": ["1.0"]},
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "minLength": 1},
            "type": {"type": "string", "enum": types},
            "subject": _ATTRIBUTE,
            "time": _ATTRIBUTE,
            "datacontenttype": _ATTRIBUTE,
            "causationid": {**_ATTRIBUTE, "description": "replies: the id of the event answered"},
            "data": data,
        },
        "additionalProperties": _ATTRIBUTE,
        # data_base64 (binary data) is refused with 415: the data here is JSON
        "not": {"required": ["data_base64"]},
    }


def _root_op() -> dict[str, Any]:
    """POST /: a prediction like /predict, or a CloudEvent in either mode."""
    # anyOf, not oneOf: an event's type, not its data, says which of the two it is
    data = {
        "anyOf": [
            {"$ref": "#/components/schemas/PredictRequest"},
            _BATCH_JOB,
            {"$ref": "#/components/schemas/FeedbackRequest"},
        ]
    }
    reply_data = {
        "anyOf": [
            {"$ref": "#/components/schemas/PredictResponse"},
            _BATCH_COMPLETED,
            {"$ref": "#/components/schemas/FeedbackResponse"},
        ]
    }
    reply_headers = {
        name: {"description": f"binary-mode replies: {text}", "schema": {"type": "string"}}
        for name, text in (
            ("ce-specversion", "1.0"),
            ("ce-id", "a new id"),
            ("ce-source", "CE_SOURCE"),
            ("ce-type", "warmstart.prediction.v1, warmstart.batch.completed.v1 or warmstart.feedback.accepted.v1"),
            ("ce-causationid", "the request's id"),
            ("ce-subject", "the request's subject"),
        )
    }
    return {
        "post": {
            "summary": "Same as POST /predict; or a CloudEvent: warmstart.predict.v1 (data: the bodies of "
            "/predict) -> warmstart.prediction.v1 (data: the answer of /predict), warmstart.batch.v1 (data: "
            "input and output URIs) -> warmstart.batch.completed.v1, warmstart.feedback.v1 (data: the body of "
            "/feedback) -> warmstart.feedback.accepted.v1. The reply uses the request's mode.",
            "description": "A CloudEvent comes in binary mode (ce-* headers, the data as a JSON body) or "
            "structured mode (application/cloudevents+json, the whole event as JSON). Binary-mode attributes "
            "come all together or not at all, which header parameters cannot say: a request with some of them "
            "is a 400 naming the missing one.",
            "parameters": [
                {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
                for name, text in _CE_HEADERS.items()
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": data},
                    "application/cloudevents+json": {
                        "schema": _envelope(
                            data, ["warmstart.predict.v1", "warmstart.batch.v1", "warmstart.feedback.v1"]
                        )
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "Predictions, or the reply event (binary: ce-* headers and the data as "
                    "the body; structured: the whole event)",
                    "headers": {**reply_headers, **_PREDICTION_ID_HEADER},
                    "content": {
                        "application/json": {"schema": reply_data},
                        "application/cloudevents+json": {
                            "schema": _envelope(
                                reply_data,
                                [
                                    "warmstart.prediction.v1",
                                    "warmstart.batch.completed.v1",
                                    "warmstart.feedback.accepted.v1",
                                ],
                            )
                        },
                    },
                },
                **_ERRORS,
                "400": _error("Malformed JSON or CloudEvent, or an unknown event type"),
                "403": _error("A batch job's input or output outside BATCH_ALLOW"),
                "415": _error(
                    "Content type other than JSON, a batched CloudEvent (application/cloudevents-batch+json), "
                    "or a structured event with data_base64"
                ),
                "422": _error(
                    "Prediction data as for /predict; a batch job whose data, input file or output folder is wrong"
                ),
                "503": _error("Not ready, shutting down, or another batch job running here (Knative retries)"),
                "507": _error("A batch job's output location is full; nothing was written (Knative retries)"),
            },
        }
    }


def _explain_op(summary: str, request_ref: str, response_ref: str, extra: dict[str, Any]) -> dict[str, Any]:
    too_many = _error("Body larger than MAX_REQUEST_BYTES, more rows than MAX_ROWS, or more than 100 rows to explain")
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, **_json({"$ref": f"#/components/schemas/{request_ref}"})},
            "responses": {
                "200": {
                    "description": "Explanations",
                    "headers": _PREDICTION_ID_HEADER,
                    **_json({"$ref": f"#/components/schemas/{response_ref}"}),
                },
                **_ERRORS,
                "413": too_many,
                "501": _error("The served model cannot be explained (a card without training means)"),
                **extra,
            },
        }
    }


_EXPLANATION = {
    "type": "object",
    "required": ["prediction", "output", "base_value", "attributions"],
    "properties": {
        "prediction": {"description": "the model's prediction for the row"},
        "class": {"description": "classifiers: the class explained, the predicted one"},
        "output": {"type": "number", "description": "the explained output: base_value + sum of attributions"},
        "base_value": {"type": "number", "description": "the output with no feature known"},
        "attributions": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "one attribution per feature, by feature name",
        },
    },
}
_EXPLAIN_RESPONSE = {
    "type": "object",
    "required": ["explanations", "method", "output_space"],
    "properties": {
        "explanations": {"type": "array", "items": {"$ref": "#/components/schemas/Explanation"}},
        "method": {
            "type": "string",
            "enum": ["tree_shap_path_dependent", "shapley_exact", "shapley_permutation"],
            "description": "exact TreeSHAP for ONNX tree ensembles; otherwise Shapley values against the "
            "training means, over every coalition (up to 10 features) or 64 seeded feature orders",
        },
        "output_space": {
            "type": "string",
            "enum": ["probability", "log_odds", "margin", "value"],
            "description": "what output and base_value measure: the explained class's probability, "
            "log-odds (binary gradient boosting), softmax margin (multi-class boosting), or the regression value",
        },
        "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
    },
}


def _get_op(summary: str, schema: dict[str, Any], extra_responses: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "OK", **_json(schema)}, **(extra_responses or {})},
        }
    }


def _page_or_json(summary: str, schema: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A GET that answers an HTML page when Accept prefers text/html (a browser), JSON otherwise."""
    op = _get_op(summary, schema, extra)
    op["get"]["responses"]["200"]["content"]["text/html"] = {"schema": {"type": "string"}}
    return op


def _path_param(name: str, served: str | None) -> dict[str, Any]:
    """A path parameter naming the model (or version) served: anything else is a 404."""
    schema: dict[str, Any] = {"type": "string"}
    if served is not None:
        schema["enum"] = [served]
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _v2_paths(name_param: dict[str, Any], version_param: dict[str, Any]) -> dict[str, Any]:
    """Open Inference Protocol V2 routes; errors are {"error": "..."} as the protocol has them."""
    v2_error = {"description": "Error", **_json({"$ref": "#/components/schemas/V2Error"})}
    ok = {"200": {"description": "OK", **_json({"type": "object"})}}
    paths: dict[str, Any] = {
        "/v2": {"get": {"summary": "V2 server metadata", "responses": ok}},
        "/v2/health/live": {"get": {"summary": "V2 liveness", "responses": ok}},
        "/v2/health/ready": {"get": {"summary": "V2 readiness", "responses": {**ok, "503": v2_error}}},
    }
    for prefix, params in (
        ("/v2/models/{name}", [name_param]),
        ("/v2/models/{name}/versions/{version}", [name_param, version_param]),
    ):
        paths[prefix] = {
            "get": {"summary": "V2 model metadata", "parameters": params, "responses": {**ok, "404": v2_error}}
        }
        paths[prefix + "/ready"] = {
            "get": {"summary": "V2 model readiness", "parameters": params, "responses": {**ok, "404": v2_error}}
        }
        paths[prefix + "/infer"] = {
            "post": {
                "summary": "V2 inference; JSON, or with the binary tensor data extension a JSON header of "
                "Inference-Header-Content-Length bytes followed by raw little-endian tensors",
                "parameters": params,
                "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/V2InferRequest"})},
                "responses": {
                    "200": {
                        "description": "Outputs",
                        "headers": _PREDICTION_ID_HEADER,
                        **_json({"$ref": "#/components/schemas/V2InferResponse"}),
                    },
                    **{code: v2_error for code in ("400", "404", "413", "415", "503")},
                },
            }
        }
    return paths


def document(card: ModelCard | None) -> dict[str, Any]:
    """Build the document; `card`, once loaded, fills in feature names and row width."""
    width = card.n_features if card else None
    row: dict[str, Any] = {"type": "array", "items": _VALUE}
    if width:
        row.update(minItems=width, maxItems=width)
    named_row: dict[str, Any] = {"type": "object", "additionalProperties": _VALUE}
    if card:
        named_row = {
            "type": "object",
            "properties": {name: _VALUE for name in card.feature_names},
            "required": list(card.feature_names),
            "additionalProperties": False,
        }
    # All rows of one request have the same form: all in feature order, or all by name.
    instances = {
        "oneOf": [
            {"type": "array", "minItems": 1, "items": row},
            {"type": "array", "minItems": 1, "items": named_row},
        ]
    }
    name_param = _path_param("name", card.name if card else None)
    not_found = {"404": _error("Unknown model name")}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "warmstart",
            "version": "1",
            "description": "Serverless inference for scikit-learn models on Knative."
            + (f" Serving {card.name} version {card.version}." if card else ""),
        },
        "paths": {
            "/predict": {
                "post": _predict_op(
                    "Predict rows in feature order or by feature name", "PredictRequest", "PredictResponse"
                )
            },
            "/": _root_op(),
            "/feedback": _FEEDBACK_OP,
            "/v1/models/{name}:predict": {
                "post": _predict_op("KServe V1 predict", "V1Request", "V1Response", [name_param], not_found)
            },
            "/explain": _explain_op(
                "Explain rows (the bodies of /predict): per row, one attribution per feature",
                "PredictRequest",
                "ExplainResponse",
                {},
            )
            | _page_or_json(
                "How to ask for an explanation, with a row of training means; a browser gets the explanation page",
                {"type": "object"},
                {"503": _ERRORS["503"]},
            ),
            "/v1/models/{name}:explain": _explain_op("KServe V1 explain", "V1Request", "V1ExplainResponse", not_found)
            | {"parameters": [name_param]},
            "/v1/models/{name}": _get_op(
                "KServe V1 model status", {"$ref": "#/components/schemas/V1ModelStatus"}, not_found
            )
            | {"parameters": [name_param]},
            "/v1/models": _get_op(
                "KServe V1 model list",
                {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "string"}}}},
            ),
            "/model": _get_op("The model card", {"type": "object"}, {"503": _ERRORS["503"]}),
            "/health/liveness": _get_op("Liveness: the process is up", {"type": "object"}),
            "/health/readiness": _get_op(
                "Readiness: the model is loaded and warmed up", {"type": "object"}, {"503": _ERRORS["503"]}
            ),
            "/openapi.json": _get_op("This document", {"type": "object"}),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every worker of this server (OpenMetrics when the Accept "
                    "header asks for application/openmetrics-text)",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        }
                    },
                }
            },
            "/drift": _page_or_json(
                "Feature and prediction drift: the window filling now and the last complete one; a browser gets "
                "a page drawing it",
                {"$ref": "#/components/schemas/Drift"},
                {"503": _ERRORS["503"]},
            ),
            **_v2_paths(name_param, _path_param("version", card.version if card else None)),
        },
        "components": {
            "schemas": {
                "Drift": _DRIFT,
                **_feedback_schemas(card),
                "PredictRequest": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["instances"],
                            "properties": {"instances": instances, "id": _REQUEST_ID},
                        },
                        {
                            "type": "object",
                            "required": ["features"],
                            # with both fields, `instances` is what is read
                            "not": {"required": ["instances"]},
                            "properties": {"features": {"oneOf": [row, named_row]}, "id": _REQUEST_ID},
                        },
                    ]
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["predictions", "model"],
                    "properties": {
                        "predictions": {"type": "array", "items": {}},
                        "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                        "probability": {
                            "type": "number",
                            "description": "positive-class probability, one-row requests to a binary classifier",
                        },
                        "model": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                        },
                    },
                },
                "V1Request": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {"instances": instances, "id": _REQUEST_ID},
                },
                "V1Response": {
                    "type": "object",
                    "required": ["predictions"],
                    "properties": {"predictions": {"type": "array", "items": {}}},
                },
                "Explanation": _EXPLANATION,
                "ExplainResponse": _EXPLAIN_RESPONSE,
                "V1ExplainResponse": {
                    **_EXPLAIN_RESPONSE,
                    "required": ["predictions", *_EXPLAIN_RESPONSE["required"]],
                    "properties": {"predictions": {"type": "array", "items": {}}, **_EXPLAIN_RESPONSE["properties"]},
                },
                "V1ModelStatus": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                },
                "V2InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {
                            "type": "string",
                            "description": "echoed; also the prediction id when it is one (1 to 128 letters, "
                            "digits, '.', '_', ':' or '-'), else the server makes one",
                        },
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "description": "one tensor, `input`, of shape [N, number of features]; `data` holds "
                            "its N × features values (or binary_data_size bytes follow the JSON header)",
                            "minItems": 1,
                            "maxItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string", "enum": [v2.INPUT_NAME]},
                                    "shape": {
                                        "type": "array",
                                        "minItems": 2,
                                        "maxItems": 2,
                                        "items": {"type": "integer", "minimum": 0},
                                    },
                                    "datatype": {"type": "string", "enum": list(v2.DATATYPES)},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array", "items": {}},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "V2InferResponse": {
                    "type": "object",
                    "properties": {"model_name": {"type": "string"}, "outputs": {"type": "array", "items": {}}},
                },
                "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            }
        },
    }
