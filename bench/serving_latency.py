"""Serving latency: our serving process vs ``mlflow models serve``, same model, same machine.

Usage (from the project root)::

    .venv/bin/python bench/serving_latency.py                      # trains a model first (~40 s)
    .venv/bin/python bench/serving_latency.py --model-uri models:/support_agent/1 \\
        --tracking-uri sqlite:///.agentops/mlflow/mlflow.db          # reuse a registered model
    .venv/bin/python bench/serving_latency.py --write               # also update BENCHMARKS.md

Without ``--model-uri`` the real support-desk lifecycle (``--agent banking77``: BANKING77 by its
shipped configuration, the default recipe with its MiniLM embeddings) runs into a temporary ``AGENTOPS_HOME``
(ingest three days, train, evaluate, register) and the registered version is served.

Each server gets an open-loop load: requests are sent on a fixed schedule (``rate`` per second for
``duration`` seconds) over ``connections`` keep-alive connections, whatever the server's speed,
and each latency is measured from the request's *scheduled* send time, so a server that falls
behind shows its queueing delay instead of hiding it (no coordinated omission). One row per request,
a support-desk message with a customer id from a pool of 500. Our server runs as deployed
(``LocalProcessDeployer``: inference log on, 1% trace sampling, micro-batching), ``mlflow models
serve`` with its defaults (one uvicorn worker, ``--env-manager local``). The servers are measured in
turns (ours, mlflow, ours, mlflow ...) so that other load on the machine hits all alike.

``--variant NAME=FLAGS`` adds configurations of our server to the turns (``h11=--http h11`` to
compare HTTP parsers, ``traced=--trace-sample-rate 1`` for the cost of tracing every request);
``--throughput SECONDS`` measures each of our servers' closed-loop maximum throughput;
``--hostile`` measures 100 req/s alone and beside a client sending 1 MB texts.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Serving latency"
ADMIN_TOKEN = "bench-token"  # what ``ours`` writes into its admin token file
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
TEXTS = (
    "Where is my order? It was supposed to arrive yesterday.",
    "I want a refund for the damaged blender I received.",
    "I forgot my password and can't log in",
    "Please cancel my subscription before the next billing date",
    "My card was charged twice for the same order",
    "I need to talk to a human, this is the third time I write",
    "How do I change the delivery address of my order?",
    "The app crashes every time I open my account page",
    "Can I upgrade my plan to premium?",
    "I'd like to return the shoes, they are too small",
    "Why was my payment declined?",
    "Update the email address on my account please",
)


# --------------------------------------------------------------------------------------------
# The model


def train_model(home: Path, agent: str = "support_agent", params: str = "{}") -> tuple[str, str, str]:
    """Run ``agent``'s lifecycle into ``home``; returns (model_uri, version, tracking_uri).

    ``banking77``: the shipped ``agents/banking77.yaml`` enabled (the default recipe, no
    parameters: TF-IDF and MiniLM embeddings; ``params``, YAML, replaces them), its file ingested
    as one day and trained on."""
    os.environ["AGENTOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("FEAST_USAGE", "False")
    import dagster as dg

    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    days, training_config, agents = DAYS, {}, None
    if agent == "banking77":
        folder = home / "agents"
        folder.mkdir(parents=True, exist_ok=True)
        import yaml

        config = yaml.safe_load((ROOT / "agents" / "banking77.yaml").read_text())
        config["enabled"] = True
        config["recipe"]["params"] = yaml.safe_load(params)
        (folder / "banking77.yaml").write_text(yaml.safe_dump(config))
        shutil.copy(ROOT / "agents" / "support_agent.yaml", folder)
        from agentops_pipelines.agents import load_agents

        agents = load_agents(folder)
        days = DAYS[:1]
        training_config = {"ops": {"banking77__training_set": {"config": {"days": 1, "end_date": DAYS[0]}},
                                   "banking77__evaluation_report": {"config": {"evidently_report": False}}}}
    settings = load_settings()
    defs = build_definitions(settings, agents)
    with dg.instance_for_test() as instance:
        for day in days:
            job = defs.resolve_job_def(f"{agent}_ingest_job")
            if not job.execute_in_process(instance=instance, partition_key=day).success:
                raise SystemExit(f"ingest {day} failed")
        training = defs.resolve_job_def(f"{agent}_training_job").execute_in_process(
            instance=instance, run_config=training_config)
        if not training.success:
            raise SystemExit("training failed")
        registration = defs.resources["lake"].read_record(f"{agent}/registered_version", run_id=training.run_id)
        if registration is None:
            raise SystemExit("training registered no version (a gate refused it)")
        version = registration["version"]
    return f"models:/{agent}/{version}", version, settings.mlflow_tracking_uri


# --------------------------------------------------------------------------------------------
# The load generator


@dataclass
class Result:
    server: str
    rate: float
    sent: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    achieved_rps: float
    server_cpu: float | None


def bodies(n: int, texts: tuple[str, ...] = TEXTS) -> list[bytes]:
    """``n`` one-row request bodies: the texts in turn, customers from a pool of 500."""
    return [
        json.dumps(
            {
                "dataframe_records": [
                    {"text": texts[i % len(texts)], "customer_id": f"C{i * 7919 % 500 + 1:05d}"}
                ]
            }  # fmt: skip
        ).encode()
        for i in range(n)
    ]


def send_on_schedule(url: str, payloads: list[bytes], rate: float, connections: int,
                     timeout: float = 30.0, headers: list[dict[str, str]] | None = None,
                     answer=None, reconnects: int = 1):
    """POST ``payloads`` to ``/invocations`` on a fixed schedule (``rate`` per second) over
    ``connections`` keep-alive connections, whatever the server's speed.

    Returns (latencies in ms from each request's *scheduled* send time, statuses, answers, wall
    seconds). ``headers``: extra headers per request; ``answer``: what to keep of a 200 answer's
    body (None: nothing); ``reconnects``: retries on a fresh connection when the server closed a
    keep-alive connection.

    One thread, non-blocking sockets and raw HTTP/1.1 (the requests are built before the clock
    starts): the load generator shares the machine with the server it measures, so it must cost
    far less than it (0.28–0.30 ms of CPU per request here, against 0.45–0.56 ms for the
    thread-per-connection client, :func:`_send_threaded`, that ``AGENTOPS_BENCH_CLIENT=threads``
    selects; BENCHMARKS.md, "Serving latency"). A request
    due while every connection is busy waits for one, and that wait is counted.
    """
    if os.environ.get("AGENTOPS_BENCH_CLIENT", "events") == "threads":
        return _send_threaded(url, payloads, rate, connections, timeout, headers, answer, reconnects)
    import selectors

    parts = urlsplit(url)
    n = len(payloads)
    latency: list[float | None] = [None] * n
    status: list[int | str | None] = [None] * n
    answers: list = [None] * n
    head = f"POST /invocations HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nContent-Type: application/json\r\n"
    wire = [(head + "".join(f"{k}: {v}\r\n" for k, v in (headers[i] if headers else {}).items())
             + f"Content-Length: {len(payloads[i])}\r\n\r\n").encode() + payloads[i] for i in range(n)]
    # select(2) takes a timeout in µs; epoll's is rounded up to the ms, which would send late.
    sel = selectors.SelectSelector()

    class Conn:
        def __init__(self) -> None:
            self.sock: socket.socket | None = None
            self.item: tuple[int, float, int] | None = None  # (request, scheduled, attempts left)
            self.out, self.buf, self.sent_at = b"", bytearray(), 0.0

        def open(self) -> None:
            self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            sel.register(self.sock, selectors.EVENT_READ, self)

        def close(self) -> None:
            if self.sock is not None:
                sel.unregister(self.sock)
                self.sock.close()
            self.sock, self.buf = None, bytearray()

        def send(self, item: tuple[int, float, int]) -> None:
            self.item, self.sent_at = item, time.perf_counter()
            try:
                if self.sock is None:
                    self.open()
                self.out = wire[item[0]]
                self.flush()
            except OSError as e:
                self.fail(e)

        def flush(self) -> None:
            sent = self.sock.send(self.out)
            self.out = self.out[sent:]
            sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0), self)

        def fail(self, error: Exception, retry: bool = True) -> None:
            """The connection broke under a request: retry it on a fresh one, or record the error."""
            i, scheduled, left = self.item
            self.close()
            self.item = None
            if retry and left > 0:
                self.send((i, scheduled, left - 1))
            else:
                done(i, scheduled, type(error).__name__)
                idle.append(self)

        def read(self) -> None:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                return self.fail(e) if self.item else self.close()
            if not chunk:  # closed by the server
                return self.fail(ConnectionResetError("closed")) if self.item else self.close()
            self.buf += chunk
            end = self.buf.find(b"\r\n\r\n")
            if end < 0 or self.item is None:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            fields = dict(line.split(b":", 1) for line in lines[1:])
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            if b"content-length" not in fields:  # our server always sends one; chunked is not read here
                raise RuntimeError(f"an answer without Content-Length: {bytes(self.buf[:end])!r}")
            length = int(fields[b"content-length"])
            if len(self.buf) < end + 4 + length:
                return
            raw = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            code = int(lines[0].split()[1])
            i, scheduled, _ = self.item
            self.item = None
            if answer is not None and code == 200:
                answers[i] = answer(raw)
            done(i, scheduled, code)
            if fields.get(b"connection", b"").lower() == b"close":
                self.close()
            idle.append(self)

    def done(i: int, scheduled: float, outcome: int | str) -> None:
        status[i] = outcome
        latency[i] = (time.perf_counter() - scheduled) * 1000.0

    pool = [Conn() for _ in range(connections)]
    for c in pool:
        c.open()
    idle: list[Conn] = list(reversed(pool))
    waiting: list[tuple[int, float, int]] = []  # due, no free connection yet (oldest first)
    start = time.perf_counter() + 0.05
    nxt, finished = 0, lambda: nxt >= n and not waiting and len(idle) == len(pool)
    end_by, checked = None, 0.0
    while not finished():
        now = time.perf_counter()
        while nxt < n and start + nxt / rate <= now:
            waiting.append((nxt, start + nxt / rate, reconnects))
            nxt += 1
        while waiting and idle:
            idle.pop().send(waiting.pop(0))
        if nxt >= n and end_by is None:
            end_by = now + timeout + 5
        if end_by is not None and now > end_by:
            break
        due = start + nxt / rate - now if nxt < n else 0.05
        for key, events in sel.select(max(0.0, min(due, 0.05))):
            conn = key.data
            if events & selectors.EVENT_WRITE and conn.out:
                try:
                    conn.flush()
                except OSError as e:
                    conn.fail(e)
                    continue
            if events & selectors.EVENT_READ:
                conn.read()
        if (now := time.perf_counter()) > checked + 0.1:  # a request that outlives ``timeout`` fails
            checked = now
            for conn in pool:
                if conn.item is not None and now - conn.sent_at > timeout:
                    conn.fail(TimeoutError("timed out"), retry=False)
    for c in pool:
        c.close()
    sel.close()
    return latency, status, answers, time.perf_counter() - start


def _send_threaded(url: str, payloads: list[bytes], rate: float, connections: int,
                     timeout: float = 30.0, headers: list[dict[str, str]] | None = None,
                     answer=None, reconnects: int = 1):
    """:func:`send_on_schedule` as it was measured until 2026-12-03: a thread per connection
    (``http.client``), fed from a queue. It costs ~0.6 ms of CPU per request, and its 32 threads
    take turns at the GIL, so on 2 cores it both loads the machine and adds its own waits to the
    latencies it reports. ``AGENTOPS_BENCH_CLIENT=threads`` selects it, to reproduce old figures.

    Returns (latencies in ms from each request's *scheduled* send time, statuses, answers, wall
    seconds). ``headers``: extra headers per request; ``answer``: what to keep of a 200 answer's
    body (None: nothing); ``reconnects``: retries on a fresh connection when the server closed a
    keep-alive connection.
    """
    parts = urlsplit(url)
    n = len(payloads)
    latency: list[float | None] = [None] * n
    status: list[int | str | None] = [None] * n
    answers: list = [None] * n
    work: queue.Queue = queue.Queue()

    def worker() -> None:
        conn = None
        while (item := work.get()) is not None:
            i, scheduled = item
            for _ in range(1 + reconnects):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(
                            parts.hostname, parts.port, timeout=timeout
                        )
                    conn.request("POST", "/invocations", payloads[i],
                                 {"Content-Type": "application/json", **(headers[i] if headers else {})})  # fmt: skip
                    response = conn.getresponse()
                    raw = response.read()
                    status[i] = response.status
                    if answer is not None and response.status == 200:
                        answers[i] = answer(raw)
                    break
                except (OSError, http.client.HTTPException) as e:
                    if conn is not None:
                        conn.close()
                    conn = None
                    status[i] = type(e).__name__
            latency[i] = (time.perf_counter() - scheduled) * 1000.0
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    start = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = start + i / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            time.sleep(delay)
        work.put((i, scheduled))
    for _ in threads:
        work.put(None)
    deadline = time.monotonic() + timeout + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return latency, status, answers, time.perf_counter() - start


def open_loop(url: str, rate: float, duration: float, connections: int, timeout: float = 30.0):
    """(latencies in ms from the scheduled send time, statuses, wall seconds) of ``rate`` one-row
    requests per second for ``duration`` seconds."""
    latency, status, _, wall = send_on_schedule(url, bodies(int(rate * duration)), rate, connections, timeout)
    return latency, status, wall


def _closed_loop_worker(url: str, seconds: float, connections: int, out) -> None:
    """One client process: ``connections`` keep-alive connections on an event loop, each sending
    its next request as soon as the answer to the last one arrived (raw HTTP/1.1: the load
    generator must cost far less than the server it measures)."""
    import asyncio

    parts = urlsplit(url)
    requests = [
        b"POST /invocations HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in bodies(500)
    ]  # fmt: skip
    counts, errors = [0], [0]

    async def one(k: int, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        i = k
        while time.perf_counter() < stop_at:
            writer.write(requests[i % 500])
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                counts[0] += 1
            else:
                errors[0] += 1
            i += connections
        writer.close()

    async def run() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(one(k, stop_at) for k in range(connections)))

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    out.put((counts[0], errors[0]))


def max_throughput(
    url: str, seconds: float, pgid: int, processes: int = 2, connections: int = 32
) -> tuple[float, int, float | None]:
    """(answered requests per second, errors, server CPU ms per answered request) under
    closed-loop load from ``processes`` client processes of ``connections`` connections each: the
    server's saturation throughput. The CPU per request holds on a shared machine where the
    requests per second do not (other work takes the cores, not the server's CPU time)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_closed_loop_worker, args=(url, seconds, connections, out))
               for _ in range(processes)]  # fmt: skip
    for w in workers:
        w.start()
    cpu0 = process_cpu_seconds(pgid)
    results = [out.get(timeout=seconds + 120) for _ in workers]
    cpu1 = process_cpu_seconds(pgid)
    for w in workers:
        w.join(30)
    answered = sum(r[0] for r in results)
    cpu_ms = (cpu1 - cpu0) * 1000.0 / answered if cpu0 is not None and cpu1 is not None and answered else None
    return answered / seconds, sum(r[1] for r in results), cpu_ms


def _hostile_worker(url: str, stop, sent) -> None:
    """One client sending 1 MB texts back to back (one connection)."""
    parts = urlsplit(url)
    body = json.dumps({"inputs": [{"text": "where is my order " * 58_000}]}).encode()  # ~1 MB
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    while not stop.is_set():
        try:
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
            with sent.get_lock():
                sent.value += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


@contextlib.contextmanager
def hostile_client(url: str):
    """A hostile client process for the duration of the block; yields a counter of its requests."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    stop, sent = ctx.Event(), ctx.Value("i", 0)
    process = ctx.Process(target=_hostile_worker, args=(url, stop, sent))
    process.start()
    try:
        time.sleep(1.0)
        yield sent
    finally:
        stop.set()
        process.join(30)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def process_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds of every process in the process group ``pgid`` (Linux)."""
    total, tick, found = 0.0, os.sysconf("SC_CLK_TCK"), False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ...
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def settle(pgid: int, timeout: float = 60.0) -> None:
    """Wait until the server's processes are idle (a tracing process still loading the model
    would otherwise take CPU from the measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = process_cpu_seconds(pgid)
        time.sleep(1.0)
        after = process_cpu_seconds(pgid)
        if before is None or after is None or after - before < 0.05:
            return


def measure(
    name: str, url: str, pgid: int, rate: float, duration: float, connections: int
) -> Result:
    cpu0, t0 = process_cpu_seconds(pgid), time.perf_counter()
    latency, status, wall = open_loop(url, rate, duration, connections)
    cpu1, t1 = process_cpu_seconds(pgid), time.perf_counter()
    done = [v for v in latency if v is not None]
    errors = sum(1 for s in status if s != 200)
    return Result(
        server=name,
        rate=rate,
        sent=len(latency),
        p50_ms=quantile(done, 0.50),
        p99_ms=quantile(done, 0.99),
        max_ms=max(done) if done else float("nan"),
        errors=errors,
        achieved_rps=sum(1 for s in status if s == 200) / wall,
        server_cpu=(cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None,
    )


# --------------------------------------------------------------------------------------------
# The servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, path: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with code {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.25)
    raise SystemExit(f"{url}{path} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def ours(model_uri: str, version: str, workdir: Path, *flags: str, name: str = "bench",
         code: str | None = None, env: dict[str, str] | None = None):
    """Our server as ``LocalProcessDeployer`` runs it (inference log on, 1% traced, a token
    file holding ``ADMIN_TOKEN``), plus ``flags`` (e.g. ``--http h11``, ``--trace-sample-rate 1``).
    ``code``: a folder holding another copy of the ``agentops_pipelines`` package (e.g. ``git
    archive`` of an older commit) that the server runs instead of the one in the working
    directory, for a before/after in one run. ``env``: variables added to this process's
    environment for the server. Yields (URL, pid: the server's process group)."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "admin-token"
    token.write_text(ADMIN_TOKEN)
    token.chmod(0o600)
    state = folder / "state.json"
    command = [sys.executable, "-m", "agentops_pipelines.serving", "--model-uri", model_uri,
               "--version", version, "--environment", "bench", "--state-file", str(state),
               "--admin-token-file", str(token), "--trace-sample-rate", "0.01",
               "--inference-log-dir", str(folder / "inference_log"), *flags]  # fmt: skip
    log = (folder / "server.log").open("wb")
    # ``python -m`` puts the working directory first on sys.path, ahead of the editable install:
    # the server runs from the folder whose package it should import.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=code or None,
                               stdin=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, **env} if env else None)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"our server did not start: see {folder / 'server.log'}")
            with contextlib.suppress(OSError, ValueError):
                payload = json.loads(state.read_text())
                if payload.get("status") == "serving":
                    url = payload["url"]
            time.sleep(0.1)
        yield url, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


@contextlib.contextmanager
def mlflow_serve(model_uri: str, workdir: Path):
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]  # fmt: skip
    log = (workdir / "mlflow-serve.log").open("wb")
    env = dict(os.environ)  # mlflow runs `uvicorn` by name: the venv's bin must be on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, "/ping", 180, process)
        yield url, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


def model_alone(model_uri: str, n: int = 300) -> tuple[float, float]:
    """p50, p99 (ms) of the model's own predict on one row, in this process, no server."""
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    frames = [
        pd.DataFrame([{"text": TEXTS[i % len(TEXTS)], "customer_id": f"C{i % 500 + 1:05d}"}])
        for i in range(n)
    ]
    for frame in frames[:30]:
        model.predict(None, frame)
    times = []
    for frame in frames:
        started = time.perf_counter()
        model.predict(None, frame)
        times.append((time.perf_counter() - started) * 1000.0)
    return quantile(times, 0.5), quantile(times, 0.99)


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class Summary:
    """One server at one rate over the rounds: medians, the p99's range, totals."""

    server: str
    rate: float
    rounds: int
    sent: int
    p50_ms: float
    p99_ms: float
    p99_low: float
    p99_high: float
    max_ms: float
    errors: int
    achieved_rps: float
    server_cpu: float | None


def summarize(results: list[Result]) -> list[Summary]:
    groups: dict[tuple[float, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.rate, r.server), []).append(r)
    out = []
    for (rate, server), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "agentops serving")):  # fmt: skip
        cpus = [r.server_cpu for r in rs if r.server_cpu is not None]
        out.append(Summary(
            server=server, rate=rate, rounds=len(rs), sent=sum(r.sent for r in rs),
            p50_ms=statistics.median(r.p50_ms for r in rs),
            p99_ms=statistics.median(r.p99_ms for r in rs),
            p99_low=min(r.p99_ms for r in rs), p99_high=max(r.p99_ms for r in rs),
            max_ms=max(r.max_ms for r in rs), errors=sum(r.errors for r in rs),
            achieved_rps=statistics.median(r.achieved_rps for r in rs),
            server_cpu=statistics.median(cpus) if cpus else None,
        ))  # fmt: skip
    return out


def table(rows: list[Summary]) -> str:
    lines = [
        "| server | rate (req/s) | rounds × requests | p50 (ms) | p99 (ms) | p99 range (ms) | max (ms) | errors | achieved (req/s) | server CPU (cores) | CPU per request (ms) |",  # fmt: skip
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = f"{r.server_cpu:.2f}" if r.server_cpu is not None else "n/a"
        per = f"{r.server_cpu * 1000.0 / r.achieved_rps:.2f}" if r.server_cpu and r.achieved_rps else "n/a"
        lines.append(
            f"| {r.server} | {r.rate:g} | {r.rounds} × {r.sent // r.rounds} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.p99_low:.1f}–{r.p99_high:.1f} | {r.max_ms:.1f} | {r.errors} | "
            f"{r.achieved_rps:.1f} | {cpu} | {per} |"
        )
    return "\n".join(lines)


def _median_or_na(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{statistics.median(present):.3f}" if present else "n/a"


def write_section(body: str, title: str = SECTION) -> None:
    """Replace (or append) the section ``title`` of BENCHMARKS.md with ``body``."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    section = f"{title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-uri", help="serve this model instead of training one")
    p.add_argument("--version", default="", help="its version (default: from a models:/ URI)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for --model-uri")
    p.add_argument("--agent", default="support_agent", choices=("support_agent", "banking77"),
                   help="whose lifecycle trains the model (without --model-uri); banking77 needs "
                   "../shared/datasets/banking77 and serves the default recipe's embeddings")
    p.add_argument("--recipe-params", default="{}", metavar="YAML",
                   help="with --agent banking77: its recipe's params, e.g. '{embeddings: 0}'")
    p.add_argument("--rates", default="50,200")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per rate and server")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="turns per rate and server (medians reported)")
    p.add_argument("--skip-mlflow", action="store_true", help="measure only our server")
    p.add_argument(
        "--variant", action="append", default=[], metavar="NAME=FLAGS",
        help="another configuration of our server measured in the same turns, e.g. "
        "'h11=--http h11' or 'traced 100%%=--trace-sample-rate 1'",
    )  # fmt: skip
    p.add_argument(
        "--baseline", action="append", default=[], metavar="NAME=FOLDER",
        help="our server run from another copy of the package (e.g. `git archive` of an older "
        "commit into FOLDER/agentops_pipelines), measured in the same turns",
    )  # fmt: skip
    p.add_argument("--throughput", type=float, default=0.0, metavar="SECONDS",
                   help="also measure each of our servers' closed-loop maximum throughput")  # fmt: skip
    p.add_argument("--hostile", action="store_true",
                   help="also measure 100 req/s alone and beside a client sending 1 MB texts")  # fmt: skip
    p.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS.name}")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    throughput: dict[str, list[tuple[float, int, float | None]]] = {}
    hostile: list[tuple[Result, Result, int]] = []
    try:
        if args.model_uri:
            model_uri, tracking = (
                args.model_uri,
                args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
            )
            version = args.version or model_uri.rstrip("/").rsplit("/", 1)[-1]
        else:
            started = time.perf_counter()
            model_uri, version, tracking = train_model(workdir / "agentops", args.agent, args.recipe_params)
            print(f"trained {model_uri} in {time.perf_counter() - started:.0f}s", flush=True)
        if tracking:
            os.environ["MLFLOW_TRACKING_URI"] = tracking
        servers = [("agentops serving", ours(model_uri, version, workdir))]
        for variant in args.variant:
            name, _, flags = variant.partition("=")
            servers.append((f"agentops serving ({name})",
                            ours(model_uri, version, workdir, *flags.split(), name=f"v{len(servers)}")))  # fmt: skip
        for baseline in args.baseline:
            name, _, folder = baseline.partition("=")
            servers.append((f"agentops serving ({name})",
                            ours(model_uri, version, workdir, name=f"b{len(servers)}",
                                 code=str(Path(folder).resolve()))))  # fmt: skip
        if not args.skip_mlflow:
            servers.append(("mlflow models serve", mlflow_serve(model_uri, workdir)))
        alone = model_alone(model_uri)
        print(f"model predict alone, one row: p50 {alone[0]:.1f} ms, p99 {alone[1]:.1f} ms")
        results: list[Result] = []
        load_before = os.getloadavg()
        with contextlib.ExitStack() as stack:
            running = []
            for name, server in servers:
                url, pid = stack.enter_context(server)
                pgid = os.getpgid(pid)
                open_loop(url, 20, 3, 4)  # warm-up: imports, first predictions
                running.append((name, url, pgid))
            for _, _, pgid in running:
                settle(pgid)
            for turn in range(args.rounds):
                for rate in rates:
                    # Servers take turns in a rotating order, each first warmed up for 2 s at the
                    # rate (not measured): whichever ran first after another server's turn or
                    # after the throughput runs otherwise paid for it (p99 ~5x in every round).
                    shift = turn % len(running)
                    for name, url, pgid in running[shift:] + running[:shift]:
                        open_loop(url, rate, 2, args.connections)
                        r = measure(name, url, pgid, rate, args.duration, args.connections)
                        print(f"round {turn + 1}: {name} @ {rate:g}/s: p50 {r.p50_ms:.1f} ms, "
                              f"p99 {r.p99_ms:.1f} ms, errors {r.errors}", flush=True)  # fmt: skip
                        results.append(r)
                if args.hostile:
                    name, url, pgid = running[0]
                    calm = measure(name, url, pgid, 100, args.duration, args.connections)
                    with hostile_client(url) as sent:
                        attacked = measure(name, url, pgid, 100, args.duration, args.connections)
                        refused = sent.value
                    hostile.append((calm, attacked, refused))
                    print(f"round {turn + 1}: 100/s alone p99 {calm.p99_ms:.1f} ms, beside 1 MB texts "
                          f"p99 {attacked.p99_ms:.1f} ms ({refused} hostile requests)", flush=True)  # fmt: skip
                if args.throughput:
                    for name, url, pgid in running:
                        if name.startswith("agentops"):
                            rps, errors, cpu_ms = max_throughput(url, args.throughput, pgid)
                            throughput.setdefault(name, []).append((rps, errors, cpu_ms))
                            print(f"round {turn + 1}: {name} max throughput {rps:.0f}/s "
                                  f"({errors} errors, {cpu_ms or 0:.3f} ms CPU per request)",
                                  flush=True)  # fmt: skip
                            settle(pgid, 10)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    extra = ""
    if throughput:
        extra += (
            "\n\n| server | max throughput, closed loop (req/s, median) | rounds | errors | "
            "server CPU per request (ms, median) |\n|---|---:|---:|---:|---:|\n"
        )
        extra += "\n".join(
            f"| {name} | {statistics.median(r for r, _, _ in runs):.0f} "
            f"({min(r for r, _, _ in runs):.0f}–{max(r for r, _, _ in runs):.0f}) | {len(runs)} | "
            f"{sum(e for _, e, _ in runs)} | {_median_or_na([c for _, _, c in runs])} |"
            for name, runs in throughput.items()
        )
    if hostile:
        calm_p99 = statistics.median(c.p99_ms for c, _, _ in hostile)
        attacked_p99 = statistics.median(a.p99_ms for _, a, _ in hostile)
        extra += (
            "\n\n| legitimate 100 req/s | p50 (ms) | p99 (ms, median) | p99 range (ms) | errors |\n"
            "|---|---:|---:|---:|---:|\n"
            f"| alone | {statistics.median(c.p50_ms for c, _, _ in hostile):.1f} | {calm_p99:.1f} | "
            f"{min(c.p99_ms for c, _, _ in hostile):.1f}–{max(c.p99_ms for c, _, _ in hostile):.1f} | "
            f"{sum(c.errors for c, _, _ in hostile)} |\n"
            f"| beside a client sending 1 MB texts ({statistics.median(n for _, _, n in hostile):.0f} "
            f"refused per round) | {statistics.median(a.p50_ms for _, a, _ in hostile):.1f} | "
            f"{attacked_p99:.1f} | {min(a.p99_ms for _, a, _ in hostile):.1f}–"
            f"{max(a.p99_ms for _, a, _ in hostile):.1f} | {sum(a.errors for _, a, _ in hostile)} |\n\n"
            f"p99 beside the hostile client / alone: {attacked_p99 / calm_p99:.2f}×"
        )
    report = table(summarize(results)) + extra
    print()
    print(report)
    if args.write:
        python = Path(sys.executable)
        python = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python
        command = f"{python} bench/serving_latency.py " + shlex.join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write"
        )
        write_section(
            f"""Open-loop load on loopback (fixed send schedule, latency from the scheduled send time, so
queueing is not hidden), {args.duration:g} s per rate and server in each of {args.rounds} rounds (the
servers take turns, so other load on the machine hits all alike), one row per request, over
{args.connections} keep-alive connections; the real support-desk model (TF-IDF + customer
features → linear SVM, wrapped in `AgentModel`), served by all as the same pyfunc. Our server is
started as `LocalProcessDeployer` starts it: uvicorn + httptools, inference log on (flushed every
second), 1% of requests traced in MLflow (by the trace exporter process, which counts in its CPU),
micro-batching on the event loop, features looked up in Feast's online store. Variants add flags
to it. `mlflow models serve --env-manager local` with its defaults (one uvicorn worker). p50, p99,
achieved rate and CPU are medians over the rounds; the p99 range is the lowest and highest round.
Errors: non-200 answers and requests unanswered after 30 s. Server CPU: every process of the
server's process group. Maximum throughput: closed loop, 2 client processes × 32 keep-alive
connections (raw HTTP/1.1 on an event loop), one row per request. Hostile client: one process
sending ~1 MB texts back to back on one connection while 100 req/s of legitimate traffic is
measured. Measured on a {os.cpu_count()}-core machine ({platform.processor() or platform.machine()},
Python {platform.python_version()}); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after
(other work shared the machine when this is above ~1).

{report}

The model's own `predict` on one row, in the benchmark process with no server around it: p50
{alone[0]:.2f} ms, p99 {alone[1]:.2f} ms.

Command: `{command.strip()}`
"""
        )
        print(f"\nwrote the '{SECTION}' section of {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
