#!/usr/bin/env python3
"""An OTLP trace receiver that is not kspan's code: the official OpenTelemetry proto
definitions decoded by Google's protobuf runtime, served over gRPC (grpcio) and HTTP
(`POST /v1/traces`, protobuf, gzip when `Content-Encoding: gzip`).

Every received span is written to stdout as one JSON line with its resource and scope, ids
in hex and attribute values with their protobuf types kept (int stays int, string string).
A line {"ready": true, "grpc_port": N, "http_port": M} comes first.

usage: otlp_receiver.py [--grpc-port N] [--http-port M] [--count-only]   (0 = any free port)
                        [--tls-cert F --tls-key F [--tls-client-ca F]] [--stall-file F]
With --tls-cert/--tls-key both servers speak TLS only (gRPC with grpcio's TLS, HTTP with
Python's ssl); with --tls-client-ca they also require a client certificate signed by it.
With --stall-file, while file F exists every export request is accepted and held unanswered
(a collector that stalls); once F is gone the held requests are processed and answered.
With --count-only spans are only counted (for benchmarks); the total is printed as
{"spans": N, "requests": R} on SIGTERM.
"""
import argparse
import gzip
import json
import os
import signal
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()
COUNT_ONLY = False
STALL_FILE = None


def stall():
    while STALL_FILE and os.path.exists(STALL_FILE):
        time.sleep(0.05)
TOTALS = {"spans": 0, "requests": 0}


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def emit(request, transport, encoding, headers):
    if COUNT_ONLY:
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with LOCK:
            TOTALS["spans"] += n
            TOTALS["requests"] += 1
        return
    lines = []
    for rs in request.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(json.dumps({
                    "transport": transport,
                    "encoding": encoding,
                    "headers": headers,
                    "resource": resource,
                    "scope": ss.scope.name,
                    "scope_version": ss.scope.version,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "flags": s.flags,
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": attrs(s.attributes),
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                }))
    with LOCK:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        meta = {k: v for k, v in context.invocation_metadata() if k.startswith("x-")}
        enc = dict(context.invocation_metadata()).get("grpc-encoding", "identity")
        stall()
        emit(request, "grpc", enc, meta)
        return trace_service_pb2.ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        enc = self.headers.get("Content-Encoding", "identity")
        if enc == "gzip":
            body = gzip.decompress(body)
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        stall()
        meta = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")}
        emit(req, "http", enc, meta)
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc-port", type=int, default=0)
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--count-only", action="store_true")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    ap.add_argument("--stall-file")
    a = ap.parse_args()
    global COUNT_ONLY, STALL_FILE
    COUNT_ONLY = a.count_only
    STALL_FILE = a.stall_file

    def on_term(*_):
        with LOCK:
            print(json.dumps(TOTALS), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    http = ThreadingHTTPServer(("127.0.0.1", a.http_port), Http)
    if a.tls_cert:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        client_ca = read(a.tls_client_ca) if a.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(read(a.tls_key), read(a.tls_cert))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None)
        grpc_port = server.add_secure_port(f"127.0.0.1:{a.grpc_port}", creds)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.tls_client_ca:
            ctx.load_verify_locations(a.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        http.socket = ctx.wrap_socket(http.socket, server_side=True)
    else:
        grpc_port = server.add_insecure_port(f"127.0.0.1:{a.grpc_port}")
    server.start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with LOCK:
        print(json.dumps({"ready": True, "grpc_port": grpc_port,
                          "http_port": http.server_address[1]}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
