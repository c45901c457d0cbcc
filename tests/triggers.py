#!/usr/bin/env python3
"""Deterministic kernel-event triggers for kspan's integration tests.

Usage: triggers.py ACTION [ARG]. The process prints "ready" and waits for a line on stdin
before acting (so the tracer can attach first, filtered on this pid), then prints one JSON
object describing what it did (tids, fds, ports) and exits.
"""
import json
import os
import socket
import struct
import sys
import threading
import time


def sleep_thread():
    out = {}

    def body():
        out["tid"] = threading.get_native_id()
        time.sleep(0.020)  # clock_nanosleep(CLOCK_MONOTONIC, 0, 20ms)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out


def openat_missing():
    """A genuinely failed open: a path through a regular file (ENOTDIR). (ENOENT would be an
    expected outcome, path probing, which kspan run does not report as an error.)"""
    path = "%s/kspan-test-%d" % (os.path.abspath(__file__), os.getpid())
    try:
        os.open(path, os.O_RDONLY)
    except NotADirectoryError:
        pass
    return {"path": path}


def pipe_read(n):
    r, w = os.pipe()
    os.write(w, b"x" * n)
    data = os.read(r, n)
    assert len(data) == n
    return {"read_fd": r, "n": n}


def tcp(family, host):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    cli = socket.socket(family, socket.SOCK_STREAM)
    cli.connect((host, port))
    client_port = cli.getsockname()[1]
    conn, _ = srv.accept()
    cli.sendall(b"ping")
    conn.recv(4)
    time.sleep(0.05)
    cli.close()
    conn.close()
    srv.close()
    time.sleep(0.05)
    return {"listen_port": port, "client_port": client_port, "pid": os.getpid()}


def handshake(port, delay_ms):
    """A loopback connect to PORT whose handshake the server sees complete only when the
    client's first data arrives, DELAY_MS later: the test drops pure ACKs to PORT, so the
    handshake's final ACK never arrives and the data segment's ACK completes it."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t0 = time.monotonic()
    cli.connect(("127.0.0.1", port))
    connect_s = time.monotonic() - t0
    client_port = cli.getsockname()[1]
    time.sleep(delay_ms / 1000)
    cli.sendall(b"x")
    conn, _ = srv.accept()
    assert conn.recv(1) == b"x"
    # Close with RST: no FIN exchange, whose pure ACKs the test would drop too.
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()
    conn.close()
    srv.close()
    time.sleep(0.05)
    return {"listen_port": port, "client_port": client_port, "pid": os.getpid(),
            "connect_s": connect_s}


def refused(family, host):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()  # bound, never listened: nothing accepts on it
    c = socket.socket(family, socket.SOCK_STREAM)
    try:
        c.connect((host, port))
    except ConnectionRefusedError:
        pass
    client_port = c.getsockname()[1] if c.fileno() >= 0 else 0
    c.close()
    return {"port": port}


def story():
    """A 20 ms sleep in a thread, a failed open, then a loopback connection whose two ends
    each wait ~30 ms in recv on the connection's socket (client thread and server thread)."""
    out = sleep_thread()
    out.update(openat_missing())
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    client = {}

    def client_body():
        client["tid"] = threading.get_native_id()
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(("127.0.0.1", port))
        client["port"] = c.getsockname()[1]
        client["fd"] = c.fileno()
        assert c.recv(4) == b"pong"  # waits for the server's 30 ms pause
        time.sleep(0.030)
        c.sendall(b"ping")
        time.sleep(0.030)
        c.close()

    t = threading.Thread(target=client_body)
    t.start()
    conn, _ = srv.accept()
    time.sleep(0.030)
    conn.sendall(b"pong")
    assert conn.recv(4) == b"ping"  # waits for the client's 30 ms pause
    server_fd = conn.fileno()
    t.join()
    conn.close()
    srv.close()
    time.sleep(0.05)
    out.update({"listen_port": port, "client_port": client["port"],
                "client_tid": client["tid"], "client_fd": client["fd"],
                "server_tid": threading.get_native_id(), "server_fd": server_fd,
                "pid": os.getpid()})
    return out


def ticker(seconds):
    """A failed openat (ENOTDIR) every 5 ms for `seconds`: a steady stream of error spans."""
    n = 0
    end = time.monotonic() + seconds
    path = os.path.abspath(__file__) + "/kspan-tick"
    while time.monotonic() < end:
        try:
            os.open(path, os.O_RDONLY)
        except NotADirectoryError:
            pass
        n += 1
        time.sleep(0.005)
    return {"n": n}


def sleeps(n):
    """n sleeps of 10 ms (clock_nanosleep each)."""
    for _ in range(n):
        time.sleep(0.010)
    return {"n": n}


def sleep_mix(n):
    """n sleeps each of 0.35, 3, 10 and 40 ms: lengths far from any power-of-two bucket edge
    (2^18-2^19, 2^21-2^22, 2^23-2^24, 2^25-2^26 ns), so two tools timing them agree."""
    for _ in range(n):
        for s in (0.00035, 0.003, 0.010, 0.040):
            time.sleep(s)
    return {"n": 4 * n}


def expected(n):
    """n each of normal failing calls (readlink of a regular file: EINVAL; stat of a missing
    file: ENOENT), 3 genuine failures (open through a regular file: ENOTDIR), and one 30 ms
    lock wait that times out (futex ETIMEDOUT)."""
    me = os.path.abspath(__file__)
    for i in range(n):
        try:
            os.readlink(me)
        except OSError:
            pass
        try:
            os.stat("/nonexistent-kspan/%d" % i)
        except FileNotFoundError:
            pass
    for _ in range(3):
        try:
            os.open(me + "/x", os.O_RDONLY)
        except NotADirectoryError:
            pass
    lock = threading.Lock()
    lock.acquire()
    out = {"tid": threading.get_native_id()}
    t0 = time.monotonic()
    assert not lock.acquire(timeout=0.030)
    out["wait_ms"] = (time.monotonic() - t0) * 1000
    return out


def flood(seconds):
    """For `seconds`: normal failing calls as fast as one thread goes (stat of a missing file:
    ENOENT; readlink of a regular file: EINVAL), with one refused connect early on and ten
    30 ms sleeps spread over the run."""
    me = os.path.abspath(__file__)
    calls = 0
    sleeps = 0
    refused_port = None
    t0 = time.monotonic()
    end = t0 + seconds
    next_sleep = t0 + 0.1
    while True:
        now = time.monotonic()
        if now >= end and sleeps == 10:
            break
        if refused_port is None and now - t0 > 0.2:
            refused_port = refused(socket.AF_INET, "127.0.0.1")["port"]
        if sleeps < 10 and now >= next_sleep:
            time.sleep(0.030)
            sleeps += 1
            next_sleep = now + seconds / 10
        for _ in range(500):
            try:
                os.stat("/nonexistent-kspan-flood")
            except FileNotFoundError:
                pass
            try:
                os.readlink(me)
            except OSError:
                pass
        calls += 1000
    elapsed = time.monotonic() - t0
    return {"calls": calls, "per_second": calls / elapsed, "sleeps": sleeps,
            "refused_port": refused_port, "tid": threading.get_native_id()}


def shed(n):
    """A getppid flood (successes) with a genuine failure (open through a regular file:
    ENOTDIR) every 20 ms, n failures in all."""
    me = os.path.abspath(__file__)
    calls = 0
    for _ in range(n):
        until = time.monotonic() + 0.020
        while time.monotonic() < until:
            for _ in range(200):
                os.getppid()
            calls += 200
        try:
            os.open(me + "/x", os.O_RDONLY)
        except NotADirectoryError:
            pass
    return {"getppid": calls, "failures": n}


def getppid(n):
    for _ in range(n):
        os.getppid()
    return {"n": n}


def getaddrinfo(n):
    """n name lookups through libc's getaddrinfo (one call each)."""
    for _ in range(n):
        socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    return {"n": n}


def tls_echo(n):
    """n messages over TLS (Python's ssl, OpenSSL 3) between a client and a server thread of
    this process, each echoed: 2n SSL_write_ex calls. The certificate is made with openssl."""
    import ssl
    import subprocess
    import tempfile
    import threading

    d = tempfile.mkdtemp()
    key, cert = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert, "-days", "1"],
                   check=True, capture_output=True)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)

    def serve():
        conn, _ = lst.accept()
        with sctx.wrap_socket(conn, server_side=True) as s:
            for _ in range(n):
                s.sendall(s.recv(64))

    t = threading.Thread(target=serve)
    t.start()
    with cctx.wrap_socket(socket.create_connection(lst.getsockname()),
                          server_hostname="localhost") as c:
        for i in range(n):
            c.sendall(b"ping %d" % i)
            c.recv(64)
    t.join()
    return {"writes": 2 * n}


# Each action: the function that runs it, given the number after the action (0 if none).
ACTIONS = {
    "sleep": lambda _: sleep_thread(),
    "openat": lambda _: openat_missing(),
    "pipe": pipe_read,
    "tcp4": lambda _: tcp(socket.AF_INET, "127.0.0.1"),
    "tcp6": lambda _: tcp(socket.AF_INET6, "::1"),
    "handshake": lambda arg: handshake(arg, int(sys.argv[3])),
    "refused4": lambda _: refused(socket.AF_INET, "127.0.0.1"),
    "refused6": lambda _: refused(socket.AF_INET6, "::1"),
    "story": lambda _: story(),
    "ticker": ticker,
    "sleeps": sleeps,
    "sleep_mix": sleep_mix,
    "expected": expected,
    "shed": shed,
    "flood": flood,
    "getppid": getppid,
    "getaddrinfo": getaddrinfo,
    "tls_echo": tls_echo,
}


def main():
    action = sys.argv[1]
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if action not in ACTIONS:
        raise SystemExit("unknown action " + action)
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(ACTIONS[action](arg)), flush=True)


if __name__ == "__main__":
    main()
