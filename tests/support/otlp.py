"""An OTLP/HTTP trace receiver on a loopback port, decoding what it gets with the
official protobuf classes (opentelemetry-proto, a dev requirement)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.server import free_port


class OtlpReceiver:
    """Collects every span it receives, and each span's resource attributes by span id."""

    def __init__(self) -> None:
        self.spans: list = []
        self.resources: dict = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

                export = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in export.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                        receiver.resources.update({span.span_id: attributes for span in scope.spans})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def named(self, *names: str) -> list | None:
        """The spans received so far, once there is one of each name."""
        received = list(self.spans)
        return received if set(names) <= {s.name for s in received} else None

    def close(self) -> None:
        self._server.shutdown()
