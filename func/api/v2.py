"""Open Inference Protocol V2 (KServe V2 / Triton / MLServer REST), with the binary tensor
data extension: a JSON header of `Inference-Header-Content-Length` bytes followed by raw
little-endian tensors, so large batches skip JSON.

Tensors decode into the same validated float32 rows as every other protocol
(codecs.check_rows) and go through the same model.predict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..codecs import fast_rows
from ..codecs import rows as codecs
from ..errors import InvalidInput, MalformedRequest, PayloadTooLarge, WarmstartError, body_too_large
from ..model.runtime import Model, Prediction
from .serving import Serving

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_DATATYPE_OF = {np.dtype(t).str.lstrip("<|="): name for name, t in DATATYPES.items()}
INPUT_NAME = "input"


def model_metadata(model: Model) -> dict[str, Any]:
    card = model.card
    outputs = [{"name": name, "datatype": dtype, "shape": shape} for name, dtype, shape in _output_specs(model)]
    return {
        "name": card.name,
        "versions": [card.version],
        "platform": "onnxruntime_onnx" if model.format == "onnx" else f"sklearn_{model.format}",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, card.n_features]}],
        "outputs": outputs,
        "parameters": {"feature_names": list(card.feature_names), "task": card.task},
    }


def _output_specs(model: Model) -> list[tuple[str, str, list[int]]]:
    card = model.card
    if not card.is_classifier:
        return [("prediction", "FP32", [-1])]
    labels = card.class_labels
    return [("label", _label_datatype(labels), [-1]), ("probabilities", "FP32", [-1, len(labels) or -1])]


def _label_datatype(labels: tuple[Any, ...]) -> str:
    if any(isinstance(c, str) for c in labels):
        return "BYTES"
    if labels and all(isinstance(c, bool) for c in labels):
        return "BOOL"
    return "INT64"


def decode_infer(body: bytes, header_length: str | None, model: Model, max_rows: int) -> tuple[dict, np.ndarray]:
    """(the request's JSON header, the validated float32 rows)."""
    binary = b""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise MalformedRequest(f"{HEADER_LENGTH}: expected a byte count, got {header_length!r}") from None
        if not 0 < split <= len(body):
            raise MalformedRequest(f"{HEADER_LENGTH}={split} does not fit a body of {len(body)} bytes")
        body, binary = body[:split], body[split:]
    header = fast_rows.v2_request(body) if not binary else None
    if header is None:
        header = codecs.parse_json(body)
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("inference request: expected a JSON object with an 'inputs' list")
    if not isinstance(header.get("id", ""), str):
        # The answer echoes it, so it must be what the protocol says: a string.
        raise InvalidInput(f"id: expected a string, got {codecs.short(header['id'])}")
    inputs = header["inputs"]
    if len(inputs) != 1:
        raise InvalidInput(f"inputs: this model takes one tensor {INPUT_NAME!r} of shape [N, {model.card.n_features}]")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput("inputs[0]: expected an object with name, shape, datatype and data")
    array = _tensor(tensor, binary, model.card.n_features)
    if len(array) > max_rows:
        raise PayloadTooLarge(f"inputs[0]: {len(array)} rows is more than MAX_ROWS={max_rows}")
    return header, codecs.check_rows(array, model.card, f"inputs[0] ({INPUT_NAME})")


def _tensor(tensor: dict[str, Any], binary: bytes, width: int) -> np.ndarray:
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise InvalidInput(f"inputs[0]: unknown input {codecs.short(name)}; this model's input is {INPUT_NAME!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"inputs[0] ({name}): datatype {codecs.short(datatype)} is not supported; use FP32 or FP64")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(
            f"inputs[0] ({name}): shape must be a list of non-negative integers, got {codecs.short(shape)}"
        )
    if len(shape) != 2 or shape[1] != width:
        raise InvalidInput(f"inputs[0] ({name}): shape must be [N, {width}], got {shape}")
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    count = shape[0] * shape[1]
    size = _parameters(tensor, f"inputs[0] ({name})").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InvalidInput(
                f"inputs[0] ({name}): binary_data_size {codecs.short(size)} does not match "
                f"the {len(binary)} bytes after the header"
            )
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"inputs[0] ({name}): shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}"
            )
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    if "data" not in tensor:
        raise InvalidInput(f"inputs[0] ({name}): no 'data' and no binary_data_size parameter")
    if dtype.kind in "biu":
        flat = _exact_values(tensor["data"], dtype, datatype, f"inputs[0] ({name})")
    else:
        flat = _float_values(tensor["data"], dtype, datatype, f"inputs[0] ({name})")
    if flat.size != count:
        raise InvalidInput(f"inputs[0] ({name}): shape {shape} needs {count} values, data has {flat.size}")
    return flat.reshape(shape)


def _float_values(data: Any, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """FP16/FP32/FP64 data, flattened: JSON numbers only. NumPy would read the string
    "1.5" as 1.5 and null as NaN, so anything but numbers (and true/false, which
    `instances` take as 1 and 0 too) is refused, naming the first such value."""
    try:
        values: np.ndarray | None = np.asarray(data)
    except ValueError:  # ragged nested lists: the values decide below, the count after
        values = None
    if values is not None and values.dtype.kind in "biuf":
        return _rounded(values.reshape(-1).astype(np.float64, copy=False), dtype, datatype, where)
    flat = _flatten(data)
    for i, value in enumerate(flat):
        if not isinstance(value, (int, float)):
            shown = "null" if value is None else f"{codecs.json_type(value)} {codecs.short(value)}"
            raise InvalidInput(f"{where}: data[{i}] is {shown}; {datatype} data must be numbers")
    return _rounded(np.array(flat, dtype=np.float64), dtype, datatype, where)


def _rounded(values: np.ndarray, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """FP32 and FP64 data as float64, which check_rows rounds to float32, naming a value
    past float32's range by its value (1e+300), as /predict does, not as the inf it
    becomes; FP16 data rounded to FP16, a value past that range refused the same way."""
    if dtype.itemsize >= 4:
        return values
    with np.errstate(over="ignore"):
        rounded = values.astype(dtype)
    overflow = np.isinf(rounded) & np.isfinite(values)
    if overflow.any():
        i = int(np.argmax(overflow))
        raise InvalidInput(f"{where}: data[{i}] is {values[i].item()!r}, out of {datatype} range")
    return rounded


def _exact_values(data: Any, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """BOOL or integer data exactly as sent, flattened: JSON true and false for BOOL, JSON
    integers within the datatype's range for the others. NumPy would take 2 for true, and
    truncate 1.5 or a float that orjson made of an integer past 64 bits (-2^63-1 read as
    -2^63), so anything else is refused, naming the first value that does not fit."""
    try:
        values: np.ndarray | None = np.asarray(data)
    except ValueError:  # ragged nested lists: the values decide below, the count after
        values = None
    if values is not None and values.dtype.kind == dtype.kind == "b":
        return values.reshape(-1)
    if dtype.kind == "b":
        wanted = "true or false"

        def fits(value: Any) -> bool:
            return isinstance(value, bool)
    else:
        info = np.iinfo(dtype)
        if values is not None and values.dtype.kind in "iu" and values.size:
            if info.min <= values.min() and values.max() <= info.max:
                return values.reshape(-1).astype(dtype)
        wanted = f"integers from {info.min} to {info.max}"

        def fits(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and info.min <= value <= info.max

    # NumPy reads integers of mixed widths as floats ([2**63, 1] for UINT64): the values
    # themselves decide.
    flat = _flatten(data)
    for i, value in enumerate(flat):
        if not fits(value):
            raise InvalidInput(
                f"{where}: data[{i}] is {codecs.json_type(value)} {codecs.short(value)}; "
                f"{datatype} data must be {wanted}"
            )
    return np.array(flat, dtype=dtype)


def _flatten(data: Any) -> list[Any]:
    """Nested lists' values in row-major order (a value that is not a list: itself)."""
    flat: list[Any] = []
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _request_id(header: dict[str, Any]) -> str | None:
    """The request's `id` as its prediction id, when it is one (letters, digits, . _ : -);
    else the server makes one, and the answer's header names it."""
    try:
        return codecs.request_id(header.get("id") or None)
    except WarmstartError:
        return None


def encode_infer(header: dict, prediction: Prediction, model: Model) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: JSON, or a JSON header plus raw tensors."""
    available = {name: (dtype, value) for (name, dtype, _), value in zip(_output_specs(model), _values(prediction))}
    all_binary = _flag(_parameters(header, "request"), "binary_data_output", False, "request")
    requested = header.get("outputs")
    if requested is None:
        selection = [(name, all_binary) for name in available]
    else:
        if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
            raise InvalidInput("outputs: expected a list of objects with a 'name'")
        selection = []
        for i, wanted in enumerate(requested):
            name = wanted.get("name")
            if not isinstance(name, str) or name not in available:
                raise InvalidInput(
                    f"outputs[{i}]: unknown output {codecs.short(name)}; this model outputs {', '.join(available)}"
                )
            where = f"outputs[{i}] ({name})"
            selection.append((name, _flag(_parameters(wanted, where), "binary_data", all_binary, where)))

    outputs, blobs = [], []
    for name, binary in selection:
        datatype, value = available[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            blob = _raw_bytes(value, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1)
        outputs.append(entry)
    card = model.card
    body: dict[str, Any] = {"model_name": card.name, "model_version": card.version, "outputs": outputs}
    if "id" in header:
        body["id"] = header["id"]
    json_part = codecs.dump_json(body)
    if not blobs:
        return json_part, {"Content-Type": "application/json"}
    return json_part + b"".join(blobs), {
        HEADER_LENGTH: str(len(json_part)),
        "Content-Type": "application/octet-stream",
    }


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The `parameters` object of a request, an input or an output ({} when absent)."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: parameters must be an object, got {codecs.short(parameters)}")
    return parameters


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    """A boolean parameter: JSON true or false, never a string or a number read as one."""
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameter {key} must be true or false, got {codecs.short(value)}")
    return value


def _values(prediction: Prediction) -> list[np.ndarray]:
    if prediction.probabilities is None:
        return [np.asarray(prediction.labels, dtype=np.float32)]
    return [prediction.labels, prediction.probabilities.astype(np.float32, copy=False)]


def _raw_bytes(value: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = [str(v).encode() for v in value.reshape(-1)]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.ascontiguousarray(value, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<")).tobytes()


def register(app: Flask, serving: Serving) -> None:
    """Add the /v2 routes; their errors take the protocol's shape, {"error": "..."}."""
    v2 = Blueprint("v2", __name__, url_prefix="/v2")
    state = serving.state

    def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        # The protocol answers bad tensors with 400, where our own API says 422.
        return serving.respond({"error": message}, 400 if status == 422 else status, headers)

    @v2.errorhandler(WarmstartError)
    def warmstart_error(exc: WarmstartError) -> Response:
        return v2_error(exc.status, exc.message, exc.headers)

    @v2.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return v2_error(413, body_too_large(serving.settings.max_request_bytes).message)
        return v2_error(exc.code or 500, exc.description or exc.name)

    @v2.get("")
    def server_metadata() -> Response:
        return serving.respond({"name": "warmstart", "version": __version__, "extensions": EXTENSIONS})

    @v2.get("/health/live")
    def live() -> Response:
        return serving.respond({"live": True})

    @v2.get("/health/ready")
    def ready() -> Response:
        if not state.ready:
            return v2_error(503, state.not_ready_reason(), {"Retry-After": "1"})
        return serving.respond({"ready": True})

    @v2.get("/models/<name>")
    @v2.get("/models/<name>/versions/<version>")
    def metadata(name: str, version: str | None = None) -> Response:
        return serving.respond(model_metadata(serving.model_named(name, version)))

    @v2.get("/models/<name>/ready")
    @v2.get("/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        model = serving.model_named(name, version)
        return serving.respond({"name": model.card.name, "ready": state.ready})

    @v2.post("/models/<name>/infer")
    @v2.post("/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> Response:
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is None:
            serving.require_json()
        body = serving.body_bytes()
        model = serving.model_named(name, version)
        header, rows = decode_infer(body, header_length, model, serving.settings.max_rows)
        payload, headers = encode_infer(header, serving.predict(model, rows, _request_id(header)), model)
        return serving.respond_bytes(payload, headers)

    app.register_blueprint(v2)
