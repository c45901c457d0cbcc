"""Uninstrumented HTTP/1.1 services and clients for kspan's request-span tests.

serve PORT [--call URL]... [--slow-ms N]
    A ThreadingHTTPServer (one thread per connection). GET and POST: call each URL in
    order (urllib, a new connection each), then answer. /fail... answers 500, /missing...
    404; every other path 200. /big... answers a body of 1 MiB (one write). --slow-ms
    sleeps that long before answering. POST bodies are read whole (Content-Length) and
    their length is echoed.

get URL N [--traceparent TP] [--numbered]
    N GETs, one connection each (urllib); prints {"ms": [...], "status": [...]}.
    --numbered adds ?n=<i> to the i-th (each request its own id).

pipelined HOST PORT PATH1 PATH2
    Two GETs written in one send on one connection; reads both responses.

split_post HOST PORT PATH BODY_PARTS...
    A POST whose head and body parts go out in separate sends (a small pause between).

keepalive HOST PORT PATH N
    N GETs on one keep-alive connection (http.client).

idle HOST PORT PATH SECONDS
    One GET on a keep-alive connection, then the connection stays open, idle, for SECONDS.
    Prints {"status": ..., "bytes": ...} as soon as the response is read.
"""
import http.client
import http.server
import json
import socket
import sys
import time
import urllib.request


def serve(argv):
    port = int(argv[0])
    calls, slow_ms = [], 0
    i = 1
    while i < len(argv):
        if argv[i] == "--call":
            calls.append(argv[i + 1])
        elif argv[i] == "--slow-ms":
            slow_ms = int(argv[i + 1])
        i += 2

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, extra=b""):
            for url in calls:
                try:
                    urllib.request.urlopen(url, timeout=10).read()
                except Exception:
                    pass  # a failing downstream still gets answered
            if slow_ms:
                time.sleep(slow_ms / 1000)
            if self.path.startswith("/fail"):
                code = 500
            elif self.path.startswith("/missing"):
                code = 404
            else:
                code = 200
            body = b"ok " + extra + b"\n"
            if self.path.startswith("/big"):
                body = b"x" * (1 << 20)
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer()

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            data = self.rfile.read(n)
            self.answer(str(len(data)).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(json.dumps({"ready": True, "port": port}), flush=True)
    server.serve_forever()


def get(argv):
    url, n = argv[0], int(argv[1])
    headers = {}
    if "--traceparent" in argv:
        headers["traceparent"] = argv[argv.index("--traceparent") + 1]
    numbered = "--numbered" in argv
    ms, status = [], []
    for i in range(n):
        target = f"{url}?n={i}" if numbered else url
        req = urllib.request.Request(target, headers=headers)
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                status.append(r.status)
        except urllib.error.HTTPError as e:
            e.read()
            status.append(e.code)
        ms.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"ms": ms, "status": status}), flush=True)


def read_responses(sock, n):
    f = sock.makefile("rb")
    codes = []
    for _ in range(n):
        status = f.readline().decode()
        codes.append(int(status.split()[1]))
        length = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        f.read(length)
    return codes


def pipelined(argv):
    host, port, p1, p2 = argv[0], int(argv[1]), argv[2], argv[3]
    s = socket.create_connection((host, port))
    s.sendall(
        f"GET {p1} HTTP/1.1\r\nHost: {host}\r\n\r\nGET {p2} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )
    print(json.dumps({"status": read_responses(s, 2)}), flush=True)
    s.close()


def split_post(argv):
    host, port, path, parts = argv[0], int(argv[1]), argv[2], argv[3:]
    body = "".join(parts).encode()
    s = socket.create_connection((host, port))
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    for p in parts:
        time.sleep(0.02)
        s.sendall(p.encode())
    print(json.dumps({"status": read_responses(s, 1)}), flush=True)
    s.close()


def keepalive(argv):
    host, port, path, n = argv[0], int(argv[1]), argv[2], int(argv[3])
    c = http.client.HTTPConnection(host, port, timeout=10)
    status = []
    for _ in range(n):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        status.append(r.status)
    c.close()
    print(json.dumps({"status": status}), flush=True)


def idle(argv):
    host, port, path, seconds = argv[0], int(argv[1]), argv[2], float(argv[3])
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    print(json.dumps({"status": r.status, "bytes": len(body)}), flush=True)
    time.sleep(seconds)
    c.close()


if __name__ == "__main__":
    {"serve": serve, "get": get, "pipelined": pipelined, "split_post": split_post,
     "keepalive": keepalive, "idle": idle}[sys.argv[1]](sys.argv[2:])
