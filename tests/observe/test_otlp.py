"""Our OTLP span exporter (func/observe/otlp_*.py): the bytes the SDK's own encoder would
write, sent to a real HTTP receiver with the standard OTEL_EXPORTER_OTLP_* settings, and
retried the way the specification says."""

from __future__ import annotations

import gzip
import logging
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from func.observe.otlp_encoding import any_value, export_request
from func.observe.otlp_export import OtlpHttpSpanExporter, OtlpSettings, parse_headers
from tests.support.server import free_port


class _Kept(SpanExporter):
    def __init__(self) -> None:
        self.spans: list = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _spans() -> list:
    """Finished SDK spans that use every field the encoder writes: two resources and two
    scopes, every attribute type, events, links, a remote and a local parent, a trace
    state, every status, and dropped attributes, events and links."""
    kept = _Kept()
    limits = SpanLimits(max_span_attributes=12, max_events=2, max_links=1)
    attributes = {
        "text": "héllo",
        "empty": "",
        "yes": True,
        "no": False,
        "zero": 0,
        "negative": -42,
        "big": 2**62,
        "ratio": 0.25,
        "texts": ("a", "b"),
        "numbers": (1, -2, 3),
        "flags": (True, False),
        "floats": (1.5, -0.0),
    }
    resources = (
        Resource.create({"service.name": "scorer", "service.version": "rev-a", "pod.index": 3}),
        Resource({"service.name": "other"}, schema_url="https://opentelemetry.io/schemas/1.21.0"),
    )
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("other", "x")]),
    )
    for resource in resources:
        provider = TracerProvider(resource=resource, span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(kept))
        for scope in (("warmstart", None, None), ("batch", "1.2", "https://opentelemetry.io/schemas/1.21.0")):
            tracer = provider.get_tracer(scope[0], scope[1], schema_url=scope[2])
            parent = tracer.start_span(
                "POST /predict",
                context=set_span_in_context(NonRecordingSpan(remote)),
                kind=SpanKind.SERVER,
                attributes={**attributes, "over": "the limit"},
                links=[Link(remote, {"why": "batch"}), Link(remote)],
            )
            for name in ("first", "second", "third"):
                parent.add_event(name, {"rows": 3, "ok": True})
            parent.set_status(Status(StatusCode.ERROR, "model failed"))
            child = tracer.start_span("infer", context=set_span_in_context(parent), kind=SpanKind.INTERNAL)
            child.set_status(Status(StatusCode.OK))
            child.end()
            for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER):
                tracer.start_span(f"{kind.name} span", kind=kind).end()
            tracer.start_span("").end()
            parent.end()
    return kept.spans


def test_the_request_is_byte_for_byte_what_the_sdks_encoder_writes():
    spans = _spans()
    assert len(spans) == 24
    assert export_request(spans) == encode_spans(spans).SerializeToString()
    # and the fields we read back are the ones we wrote
    decoded = ExportTraceServiceRequest.FromString(export_request(spans))
    server = decoded.resource_spans[0].scope_spans[0].spans[-1]
    assert server.name == "POST /predict" and server.trace_state == "vendor=value,other=x"
    assert server.dropped_attributes_count == 1 and server.dropped_events_count == 1
    assert server.dropped_links_count == 1 and server.status.message == "model failed"
    assert {a.key: a.value.int_value for a in server.attributes}["negative"] == -42


@pytest.mark.parametrize(
    "value", [None, True, False, "", "x", 0, -1, -(2**63), 2**63 - 1, 0.0, -1e300, b"", b"\x00\xff"]
)
def test_every_attribute_value_encodes_as_protobuf_does(value):
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_value

    assert any_value(value) == _encode_value(value).SerializeToString()


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: answers the statuses it is told, in turn, then 200."""

    answers: list = []
    received: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers.items()), body, time.monotonic()))
        status, headers = _Receiver.answers.pop(0) if _Receiver.answers else (200, {})
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.answers, _Receiver.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _decode(headers: dict, body: bytes) -> ExportTraceServiceRequest:
    encoding = {k.lower(): v for k, v in headers.items()}.get("content-encoding")
    body = gzip.decompress(body) if encoding == "gzip" else zlib.decompress(body) if encoding == "deflate" else body
    return ExportTraceServiceRequest.FromString(body)


@pytest.mark.parametrize("compression", ["gzip", "deflate", "none"])
def test_spans_reach_the_receiver_with_the_headers_and_compression_asked_for(receiver, compression):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver + "/",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc, x-tenant = team-a",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": compression,
    }
    spans = _spans()
    assert OtlpHttpSpanExporter(OtlpSettings.from_env(env)).export(spans) is SpanExportResult.SUCCESS
    ((headers, body, _),) = _Receiver.received
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["content-type"] == "application/x-protobuf"
    assert lowered["authorization"] == "Bearer abc" and lowered["x-tenant"] == "team-a"
    assert lowered.get("content-encoding") == (None if compression == "none" else compression)
    assert _decode(headers, body) == encode_spans(spans)


def test_the_endpoint_variables_resolve_as_the_specification_says():
    assert OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).endpoint == "http://c:4318/v1/traces"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}
    assert OtlpSettings.from_env(both).endpoint == "http://t:1/x"
    assert OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}).timeout_s == 2.5
    assert (
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "500", "OTEL_EXPORTER_OTLP_TIMEOUT": "9"}).timeout_s
        == 0.5
    )


def test_settings_that_cannot_be_used_say_so_and_fall_back(caplog):
    with caplog.at_level(logging.WARNING, "warmstart.tracing"):
        settings = OtlpSettings.from_env(
            {
                "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            }
        )
        headers = parse_headers("good=1,broken,=nokey,sp ace=2")
    assert settings.compression == "none" and settings.timeout_s == 10.0 and headers == {"good": "1"}
    text = caplog.text
    assert "zstd is not gzip, deflate or none" in text and "soon is not a positive number" in text
    assert "PROTOCOL=grpc" in text and "http/protobuf only" in text
    assert "'broken' is not key=value" in text and "'=nokey'" in text and "'sp ace=2'" in text


def test_transient_answers_are_retried_after_the_receivers_retry_after(receiver):
    _Receiver.answers = [(503, {"Retry-After": "1"}), (429, {})]
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver + "/v1/traces", "OTEL_EXPORTER_OTLP_TIMEOUT": "20000"}
    spans = _spans()[:2]
    assert OtlpHttpSpanExporter(OtlpSettings.from_env(env)).export(spans) is SpanExportResult.SUCCESS
    times = [t for _, _, t in _Receiver.received]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.95  # the receiver's Retry-After: 1
    assert times[2] - times[1] >= 1.55  # no Retry-After: the second backoff, 2 s jittered by 20 %
    assert all(_decode(h, b) == encode_spans(spans) for h, b, _ in _Receiver.received)


def test_a_refused_batch_is_not_retried_and_says_why(receiver, caplog):
    _Receiver.answers = [(400, {})]
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver + "/v1/traces"}
    with caplog.at_level(logging.ERROR, "warmstart.tracing"):
        result = OtlpHttpSpanExporter(OtlpSettings.from_env(env)).export(_spans()[:3])
    assert result is SpanExportResult.FAILURE and len(_Receiver.received) == 1
    assert f"3 spans not exported: {receiver}/v1/traces answered 400" in caplog.text


def test_a_receiver_that_is_down_costs_at_most_the_timeout_and_says_so(caplog):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_EXPORTER_OTLP_TIMEOUT": "1500"}
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, "warmstart.tracing"):
        result = OtlpHttpSpanExporter(OtlpSettings.from_env(env)).export(_spans()[:1])
    assert result is SpanExportResult.FAILURE and time.monotonic() - started < 1.6
    assert "1 spans not exported" in caplog.text and "Connection refused" in caplog.text


def test_shutdown_ends_the_wait_between_retries(receiver):
    _Receiver.answers = [(503, {"Retry-After": "30"})]
    exporter = OtlpHttpSpanExporter(
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver, "OTEL_EXPORTER_OTLP_TIMEOUT": "60000"})
    )
    threading.Timer(0.3, exporter.shutdown).start()
    started = time.monotonic()
    assert exporter.export(_spans()[:1]) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 5
    assert exporter.export(_spans()[:1]) is SpanExportResult.FAILURE and len(_Receiver.received) == 1


def _self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otlp receiver")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "receiver.crt", folder / "receiver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_receiver(tmp_path):
    import ssl

    _Receiver.answers, _Receiver.received = [], []
    cert_file, key_file = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert_file
    server.shutdown()


def test_https_receivers_are_verified_with_the_certificate_named(tls_receiver, caplog):
    url, cert_file = tls_receiver
    trusted = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_CERTIFICATE": cert_file}
    assert OtlpHttpSpanExporter(OtlpSettings.from_env(trusted)).export(_spans()[:1]) is SpanExportResult.SUCCESS
    assert len(_Receiver.received) == 1
    # without it the receiver's self-signed certificate is refused, and the log says why
    with caplog.at_level(logging.ERROR, "warmstart.tracing"):
        unknown = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_TIMEOUT": "500"}
        assert OtlpHttpSpanExporter(OtlpSettings.from_env(unknown)).export(_spans()[:1]) is SpanExportResult.FAILURE
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text and len(_Receiver.received) == 1


def test_a_certificate_that_cannot_be_read_is_named_and_does_not_stop_tracing(tmp_path, caplog):
    missing = str(tmp_path / "nowhere.crt")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": missing,
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": missing,
    }
    with caplog.at_level(logging.ERROR, "warmstart.tracing"):
        settings = OtlpSettings.from_env(env)
    assert settings.ssl_context is not None and settings.endpoint == "https://collector:4318/v1/traces"
    assert f"OTEL_EXPORTER_OTLP_CERTIFICATE={missing} cannot be used" in caplog.text
    assert f"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE={missing} (key in the same file) cannot be used" in caplog.text
