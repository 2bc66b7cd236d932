"""Stand-in for the OpenTelemetry collector in the compose tier (deploy/ci/README.md): an OTLP/gRPC
trace receiver on :4317 that appends one JSON line per span it receives to /spans/spans.jsonl
(service, hex trace and span ids, parent, name, kind), for the tier's test to read with `podman
exec`. Arguments (the collector's --config) are ignored."""

from __future__ import annotations

import json
import os
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

SPANS = os.environ.get("SPANS_FILE", "/spans/spans.jsonl")


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = []
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    record = {
                        "service": service,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": int(span.kind),
                    }
                    lines.append(json.dumps(record) + "\n")
        with self.lock, open(SPANS, "a") as out:
            out.writelines(lines)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    os.makedirs(os.path.dirname(SPANS), exist_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    print(f"receiving OTLP traces on :4317 into {SPANS}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
