"""Resource limits on a real server process: connections, slow and idle clients, head size, huge
texts, the compute budget, and overload answered 503 with Retry-After, each counted.

The old ``ThreadingHTTPServer`` started a thread per connection without a cap (3,000 connections
that withheld their body: 3,009 threads), kept slowloris connections forever, and predicted a
1 MB text for ~4 s while everyone else waited.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.serving.support import JSON, Server, raw, request, scrape, status_of

pytestmark = pytest.mark.slow

GOOD = json.dumps({"inputs": [{"text": "where is my order", "customer_id": "C1"}]}).encode()


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    # Started from a parent that imported Feast, which names a multiprocess metrics folder in its
    # environment: the server still counts in its own memory (its /metrics shows every rejection).
    inherited = str(tmp_path_factory.mktemp("feast_metrics"))
    s = Server(
        tmp_path_factory.mktemp("limits"), registry["1"], "1",
        "--max-connections", "64", "--header-timeout", "1", "--body-timeout", "1",
        "--keep-alive-timeout", "2", "--max-concurrent-requests", "3", "--max-text-chars", "1000",
        "--max-request-chars", "5000", "--max-header-bytes", "4096",
        "--max-body-bytes", str(2 * 1024 * 1024),
        env={"PROMETHEUS_MULTIPROC_DIR": inherited, "PROMETHEUS_MULTIPROCESS_DIR": inherited},
    )  # fmt: skip
    yield s
    s.stop()


def _rejections(url: str, reason: str) -> float:
    return scrape(url).get(("agentops_rejections_total", (("environment", "test"), ("reason", reason))), 0)


def _errors(url: str, code: str) -> float:
    key = ("agentops_errors_total", (("agent", "test_agent"), ("environment", "test"),
                                     ("error_code", code), ("version", "1")))  # fmt: skip
    return scrape(url).get(key, 0)


def _served(url: str) -> float:
    start = time.perf_counter()
    assert request(url, "POST", "/invocations", GOOD, JSON)[0] == 200
    return time.perf_counter() - start


def _open(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open."""
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_slowloris_and_idle_connections_neither_grow_threads_nor_stay(server):
    threads_before = server.threads()
    before = _rejections(server.url, "header_timeout")
    sockets = [_open(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(25)]
    sockets += [_open(server.port) for _ in range(25)]  # idle: connected, nothing sent
    time.sleep(0.3)
    assert server.threads() <= threads_before + 2  # no thread per connection
    assert _served(server.url) < 1.0  # the others are served meanwhile
    for sock in sockets[:3]:
        sock.sendall(b"a")  # a byte now and then does not reset the head's deadline
    answers = [_closed_within(s, 5.0) for s in sockets]
    for s in sockets:
        s.close()
    assert all(a is not None for a in answers)  # every one was closed by the server
    assert {status_of(a) for a in answers} == {408}
    assert _rejections(server.url, "header_timeout") - before == 50


def test_a_body_that_never_comes_is_timed_out(server):
    before = _rejections(server.url, "body_timeout")
    sock = _open(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 1000\r\n\r\n{\"inputs\": ")  # fmt: skip
    answer = _closed_within(sock, 5.0)
    sock.close()
    assert answer is not None and status_of(answer) == 408
    assert _rejections(server.url, "body_timeout") - before == 1


def test_connections_over_the_cap_get_503_with_retry_after(server):
    before = _rejections(server.url, "connections")
    held = [_open(server.port) for _ in range(64)]
    try:
        time.sleep(0.2)
        extra = _open(server.port)
        answer = _closed_within(extra, 5.0)
        extra.close()
        assert answer is not None and status_of(answer) == 503
        assert b"retry-after: 1" in answer.lower()
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert _served(server.url) < 1.0
    assert _rejections(server.url, "connections") - before >= 1


def test_an_oversized_head_is_refused(server):
    answer = raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    assert status_of(answer) == 431
    assert request(server.url, "GET", "/livez")[0] == 200


def test_a_1mb_text_is_refused_before_the_model_and_costs_others_nothing(server):
    huge = json.dumps({"inputs": [{"text": "order " * 170_000}]}).encode()  # ~1 MB of text
    before = _errors(server.url, "TEXT_TOO_LONG")
    start = time.perf_counter()
    status, _, answer = request(server.url, "POST", "/invocations", huge, JSON)
    assert (status, answer["error_code"]) == (413, "TEXT_TOO_LONG")
    assert time.perf_counter() - start < 1.0  # refused, not predicted (the old server: ~4 s)
    assert _errors(server.url, "TEXT_TOO_LONG") - before == 1
    many = json.dumps({"inputs": [{"text": "x" * 900}] * 10}).encode()  # 9,000 chars > 5,000
    status, _, answer = request(server.url, "POST", "/invocations", many, JSON)
    assert (status, answer["error_code"]) == (413, "REQUEST_TOO_EXPENSIVE")

    stop = threading.Event()

    def hostile() -> None:
        while not stop.is_set():
            request(server.url, "POST", "/invocations", huge, JSON)

    attackers = [threading.Thread(target=hostile) for _ in range(2)]
    for t in attackers:
        t.start()
    try:
        latencies = [_served(server.url) for _ in range(30)]
    finally:
        stop.set()
        for t in attackers:
            t.join(10)
    assert sorted(latencies)[-2] < 0.5  # the old server: one request/s while two clients did this


def test_overload_is_a_fast_503_with_retry_after(server):
    """Three requests in flight (their bodies still coming) fill --max-concurrent-requests 3."""
    before = _errors(server.url, "OVERLOADED")
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{")  # fmt: skip
    held = [_open(server.port, head) for _ in range(3)]
    try:
        time.sleep(0.2)
        results = []
        for _ in range(3):
            start = time.perf_counter()
            status, headers, answer = request(server.url, "POST", "/invocations", GOOD, JSON)
            results.append((status, time.perf_counter() - start, headers.get("Retry-After"),
                            answer["error_code"]))  # fmt: skip
    finally:
        for s in held:
            s.close()
    assert all(r[0] == 503 and r[1] < 0.5 and r[2] == "1" and r[3] == "OVERLOADED" for r in results), results
    assert _errors(server.url, "OVERLOADED") - before == 3
    time.sleep(0.2)
    assert _served(server.url) < 1.0  # and served again once they are gone
