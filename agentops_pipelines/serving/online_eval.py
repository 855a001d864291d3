"""Online evaluation and shadow traffic, off the request path: one worker process per server.

The serving process never wakes the worker for a request. ``EvalWorker.submit`` pickles the
finished request's job (its trajectory, whose steps hold the features and the customer it read;
about 11 us) and appends it to a list in memory; a sender thread hands the list to the worker as
one datagram on a Unix socket every ``SEND_EVERY_S`` (commands go at once, after what was queued
before them). Until 2026-12-05 each request was its own datagram and woke the worker: with a
challenger in shadow (every request handed over) that was 200 wake-ups a second, and even a
challenger doing nothing added ~1.5 ms to the primary's p99 (BENCHMARKS.md, "Agents that act:
multi-step serving and shadow"). When the list or the socket's buffer is full, jobs are dropped and
counted, never waited for.

The worker (a child process importing mlflow but no served model) is background work: it runs
under Linux's ``SCHED_IDLE`` policy in a session of its own (:func:`background_priority`), so it
gets a CPU only when no request's thread wants it. It works in slices: after ``SLICE_S`` of work
it sleeps for ``PAUSE_S`` (:class:`Pacer`), and a challenger runs a datagram's requests in small
batches (``SHADOW_BATCH``, one router call each). Measured in the same rounds, a worker running
each datagram's ~50 requests as one batch still added +0.47 ms to the primary's p99, in slices
−0.08 ms, for the same CPU per request. On a machine with no idle
CPU for seconds on end the socket's buffer fills up and jobs are dropped (counted, see below)
rather than slowing requests. The worker:

- scores a sample of requests (``sample_rate``) with the live code scorers
  (``agent.scorers.LIVE_SCORERS``: they need no expectations) and counts failures per scorer;
- collects the flagged requests (any scorer failed) into an MLflow evaluation dataset
  (``mlflow.genai.datasets``, named ``<agent>-flagged``), in batches, for the next evaluation
  (written by the trace exporter on its behalf, ``mlflow_writes.py``: a confined serving process
  and its worker cannot write to MLflow);
- runs the shadow challenger, when one is loaded (``shadow.py``), on every request, scores both
  trajectories with the same scorers and keeps the paired comparison.

The worker sends back cumulative snapshots (a datagram each, at most every 0.2 s); the serving
process reads the latest when ``/metrics`` is scraped or the admin asks (``poll``), and turns the
growth of the counts into Prometheus counters: ``agentops_online_scored_total`` and
``agentops_online_scorer_failures_total{agent, environment, version, scorer}`` (alert rule ``AgentOnlineScorerFailures``
in deploy/prometheus/rules.yml). No thread of the serving process waits on the worker.

When the worker dies (killed for memory, a challenger's native code crashing), the sender thread
starts a new one at once (if it keeps dying: 1 s later, then 2, 4 ... at most 60 s); it runs without
the challenger, which may be what crashed, and counts from zero while the counters go on from where
they were (``agentops_online_eval_worker_restarts_total``, alert ``AgentEvalWorkerRestarted``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from agentops_pipelines.serving.mlflow_writes import DirectWrites, ExporterWrites, dataset_name
from agentops_pipelines.serving.shadow import OUTCOMES

logger = logging.getLogger("agentops_pipelines.serving.online_eval")

SNAPSHOT_EVERY_S = 0.2
FLUSH_EVERY_S = 5.0
FLUSH_ROWS = 50
MAX_DATAGRAM = 1 << 20
SEND_EVERY_S = 0.25  # the serving process hands its queued jobs to the worker this often
DATAGRAM_BYTES = 256 << 10  # queued jobs go in datagrams of at most this many bytes (one job may exceed it)
MAX_QUEUED = 4096  # jobs queued in the serving process; beyond it they are dropped (and counted)
MAX_QUEUED_BYTES = 16 << 20  # and bytes: texts of the longest length the server takes cannot pile up
BATCH_JOBS = 64  # jobs the worker reads at once (more datagrams are read while it has fewer)
SHADOW_BATCH = 4  # the challenger's batch: one router call, about a slice of work
SLICE_S = 0.001  # how long the worker works before it pauses
PAUSE_S = 0.0005  # its pause: it sleeps, so a request's thread that wants its CPU gets it
AUTOGROUP_NICE = 10  # the weight of the worker's own session where the kernel groups by session
RESTART_BACKOFF_S = (1.0, 60.0)  # a worker that keeps dying waits 1 s, then 2, 4 ... at most 60


class EvalWorker:
    """The serving process's side: submit jobs, send commands, read the worker's snapshots."""

    def __init__(self, agent: str, environment: str, sor_url: str, refund_limit: float,
                 sample_rate: float = 0.1, experiment: str | None = None):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"the online evaluation sample rate must be in [0, 1], got {sample_rate}")
        self.agent, self.environment = agent, environment
        self.sor_url, self.refund_limit = sor_url, refund_limit
        self.sample_rate = sample_rate
        self.experiment = experiment
        # The trace exporter's write socket (tracing.py): the worker's MLflow writes go there,
        # made by a process that is not confined. None: the worker writes itself (unconfined).
        self.writer: socket.socket | None = None
        self.dropped = 0
        self.snapshot: dict[str, Any] = {}
        self._process = None
        self._jobs: socket.socket | None = None
        self._results: socket.socket | None = None
        self._lock = threading.Lock()
        self._queued: list[bytes] = []  # pickled jobs waiting for the sender thread
        self._queued_bytes = 0
        self._queue_lock = threading.Lock()
        self._send_lock = threading.Lock()  # one sender at a time: jobs and commands stay in order
        self._stopping = threading.Event()
        self._sender: threading.Thread | None = None
        self._counted: dict[str, float] = {}
        self._counters = None
        self.restarts = 0  # the worker died and was started again
        self._restart_at = 0.0
        self._backoff = RESTART_BACKOFF_S[0]
        # Called (with what happened) when a dead worker is replaced: a challenger it ran is gone.
        self.on_restart: Callable[[str], None] | None = None
        import random

        self._random = random.random

    # -- lifecycle

    def start(self) -> EvalWorker:
        self._spawn()
        self._stopping.clear()
        self._sender = threading.Thread(target=self._send_every, name="agentops-eval-sender", daemon=True)
        self._sender.start()
        return self

    def _spawn(self) -> None:
        import multiprocessing

        jobs_parent, jobs_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        results_parent, results_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (jobs_parent, results_child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        jobs_parent.setblocking(False)
        results_parent.setblocking(False)
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._process = ctx.Process(
            target=_worker_main, name="agentops-eval-worker", daemon=True,
            args=(jobs_child, results_child, self.agent, self.environment, self.sor_url,
                  self.refund_limit, self.experiment, os.getpid(), logging.getLogger().getEffectiveLevel(),
                  self.writer),
        )  # fmt: skip
        self._process.start()
        jobs_child.close()
        results_child.close()
        self._jobs, self._results = jobs_parent, results_parent

    def _replace_if_dead(self) -> None:
        """Start the worker again if it died (killed, out of memory, a challenger's native code
        crashed), after a backoff so that a worker that dies at once is not restarted in a loop.
        Without the challenger: it may be what crashed. Its counts start again from zero."""
        process = self._process
        if process is None or process.is_alive() or self._stopping.is_set() or time.monotonic() < self._restart_at:
            return
        reason = f"the evaluation worker died (exit code {process.exitcode})"
        logger.error("%s: starting a new one; online evaluation and shadow resume without a challenger", reason)
        with self._send_lock, self._lock:
            for end in (self._jobs, self._results):
                if end is not None:
                    end.close()
            self._spawn()
            self.restarts += 1
            if time.monotonic() - self._restart_at > 10 * RESTART_BACKOFF_S[1]:  # it had lived a while
                self._backoff = RESTART_BACKOFF_S[0]
            self._restart_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, RESTART_BACKOFF_S[1])
            # What the dead worker counted is in the counters already; the new one counts from 0.
            self.snapshot = {}
            self._counted = {k: v for k, v in self._counted.items() if k in (("dropped",), ("restarts",))}
        if self.on_restart is not None:
            self.on_restart(reason)

    def close(self, timeout: float = 10.0) -> None:
        """Flush the flagged requests, stop the worker."""
        if self._process is None:
            return
        import signal

        self._stopping.set()
        if self._sender is not None:
            self._sender.join(timeout)
            self._sender = None
        # SIGTERM makes the worker skip the requests still queued (a shadow backlog can be
        # seconds long); it still flushes the flagged requests and records nothing new.
        with contextlib.suppress(OSError):
            os.kill(self._process.pid, signal.SIGTERM)
        try:
            self.command({"kind": "stop"}, timeout=timeout)
        except (TimeoutError, RuntimeError) as e:
            logger.warning("the evaluation worker did not stop cleanly: %s", e)
        except OSError as e:  # its end of the socket is closed: it died (killed, or a SIGTERM to the
            # process group reached it before it left the group) and the stop must go on
            logger.warning("the evaluation worker was already gone at stop (%s: %s): the flagged "
                           "requests it had not written yet are lost", type(e).__name__, e)
        self._process.join(timeout)
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # a confined process may not signal it (Landlock scope)
                self._process.kill()
            self._process.join(2)
        self._process = None
        for s in (self._jobs, self._results):
            if s is not None:
                s.close()

    @property
    def started(self) -> bool:
        return self._jobs is not None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    # -- the request path

    def sample(self) -> bool:
        return self.sample_rate > 0.0 and self._random() < self.sample_rate

    def submit(self, job: dict) -> bool:
        """Queue ``job`` for the sender thread: no system call, no wake-up of the worker. False
        (counted in ``dropped``) when the queue is full (``MAX_QUEUED`` jobs or
        ``MAX_QUEUED_BYTES``) or the worker is not running."""
        if self._jobs is None:
            return False
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        with self._queue_lock:
            if len(self._queued) >= MAX_QUEUED or self._queued_bytes + len(data) > MAX_QUEUED_BYTES:
                self.dropped += 1
                return False
            self._queued.append(data)
            self._queued_bytes += len(data)
        return True

    def _send_every(self) -> None:
        """The sender thread: every ``SEND_EVERY_S``, what was queued goes to the worker."""
        while not self._stopping.wait(SEND_EVERY_S):
            try:
                self._replace_if_dead()
                self.send_queued()
            except Exception:  # a bug here must not stop online evaluation for good
                logger.exception("the evaluation worker's sender failed; it goes on")

    def send_queued(self) -> int:
        """Hand the queued jobs to the worker now, in datagrams of at most ``DATAGRAM_BYTES``;
        jobs the socket cannot take are dropped and counted. The number sent."""
        with self._send_lock:
            return self._send_queued()

    def _send_queued(self) -> int:
        sent = 0
        with self._queue_lock:
            queued, self._queued, self._queued_bytes = self._queued, [], 0
        start = 0
        while start < len(queued):
            end, size = start + 1, len(queued[start])  # a job alone may exceed DATAGRAM_BYTES
            while end < len(queued) and size + len(queued[end]) <= DATAGRAM_BYTES:
                size += len(queued[end])
                end += 1
            try:
                self._jobs.send(pickle.dumps(queued[start:end], protocol=pickle.HIGHEST_PROTOCOL))
                sent += end - start
            except OSError:  # BlockingIOError: the worker is behind; otherwise it is gone
                with self._queue_lock:
                    self.dropped += end - start
            start = end
        return sent

    # -- commands and snapshots

    def command(self, message: dict, timeout: float = 120.0) -> dict:
        """Send a command (load or unload the shadow, record its evidence, stop) and wait for the
        snapshot that answers it (``message["id"]``)."""
        if self._jobs is None:
            raise RuntimeError("the evaluation worker is not running (no served version acts)")
        message = {**message, "id": f"{time.monotonic_ns()}"}
        data = pickle.dumps([pickle.dumps(message)])
        deadline = time.monotonic() + timeout
        with self._send_lock:  # after the jobs queued before it
            self._send_queued()
            while True:  # a command is never dropped: retry while the buffer is full
                try:
                    self._jobs.send(data)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the evaluation worker does not take commands") from None
                    time.sleep(0.01)
        while time.monotonic() < deadline:
            snap = self.poll()
            if snap.get("answered") == message["id"]:
                return snap
            if not self.alive:
                raise RuntimeError("the evaluation worker stopped")
            time.sleep(0.02)
        raise TimeoutError(f"the evaluation worker did not answer {message['kind']} in {timeout:.0f}s")

    def poll(self) -> dict:
        """Read the snapshots that arrived; keep (and return) the latest. Never blocks."""
        with self._lock:
            while self._results is not None:
                try:
                    data = self._results.recv(MAX_DATAGRAM)
                except (BlockingIOError, OSError):
                    break
                self.snapshot = pickle.loads(data)
            self._count(self.snapshot)
            return self.snapshot

    def bind_metrics(self, registry) -> None:
        """Prometheus counters in the serving process's registry, fed by :meth:`poll`."""
        from prometheus_client import Counter

        labels = ["agent", "environment", "version"]
        self._counters = (
            Counter("agentops_online_scored", "Live requests scored by the code scorers (online "
                    "evaluation)", labels, registry=registry),
            Counter("agentops_online_scorer_failures", "Live requests a code scorer failed",
                    [*labels, "scorer"], registry=registry),
            Counter("agentops_online_eval_dropped", "Requests not handed to the evaluation worker "
                    "(its buffer was full)", ["agent", "environment"], registry=registry),
            Counter("agentops_shadow_requests", "Live requests the shadow challenger was compared "
                    "on, by outcome (both_pass, primary_only, challenger_only, both_fail)",
                    ["agent", "environment", "primary_version", "challenger_version", "outcome"],
                    registry=registry),
            Counter("agentops_shadow_challenger_errors", "Live requests on which the shadow "
                    "challenger raised (its LLM endpoint down, a bug): each also counts as its failure",
                    ["agent", "environment", "primary_version", "challenger_version"], registry=registry),
            Counter("agentops_online_eval_worker_restarts", "Times the evaluation worker died and "
                    "was started again (without its shadow challenger)", ["agent", "environment"],
                    registry=registry),
        )
        self._counters[2].labels(self.agent, self.environment)
        self._counters[5].labels(self.agent, self.environment)

    def _count(self, snap: dict) -> None:
        """Add what the worker counted since the last snapshot to the counters."""
        if self._counters is None:
            return
        from agentops_pipelines.agent.scorers import LIVE_SCORERS

        scored, failures, dropped, shadowed, challenger_errors, restarts = self._counters
        if self.restarts > self._counted.get(("restarts",), 0):
            restarts.labels(self.agent, self.environment).inc(self.restarts - self._counted.get(("restarts",), 0))
            self._counted[("restarts",)] = self.restarts
        for version, value in (snap.get("scored") or {}).items():
            key = ("scored", version)
            if key not in self._counted:  # a new version: every series exported at 0 first
                for name in LIVE_SCORERS:
                    failures.labels(self.agent, self.environment, version, name)
            if value > self._counted.get(key, 0):
                scored.labels(self.agent, self.environment, version).inc(value - self._counted.get(key, 0))
            self._counted[key] = max(value, self._counted.get(key, 0))
        for (version, name), value in (snap.get("failures") or {}).items():
            key = ("failed", version, name)
            if value > self._counted.get(key, 0):
                failures.labels(self.agent, self.environment, version, name).inc(value - self._counted.get(key, 0))
                self._counted[key] = value
        if self.dropped > self._counted.get(("dropped",), 0):
            dropped.labels(self.agent, self.environment).inc(self.dropped - self._counted.get(("dropped",), 0))
            self._counted[("dropped",)] = self.dropped
        shadow = snap.get("shadow")
        if shadow and shadow.get("comparison_id"):
            labels = (self.agent, self.environment, str(shadow["primary_version"]), str(shadow["challenger_version"]))
            series = {o: shadowed.labels(*labels, o) for o in OUTCOMES}
            series["challenger_errors"] = challenger_errors.labels(*labels)
            for name, counter in series.items():  # every series exported (at 0) once a challenger runs
                key = ("shadow", shadow["comparison_id"], name)
                if shadow[name] > self._counted.get(key, 0):
                    counter.inc(shadow[name] - self._counted.get(key, 0))
                    self._counted[key] = shadow[name]


# -- the worker process --------------------------------------------------------------------------


class _Worker:
    def __init__(self, results: socket.socket, agent: str, environment: str, sor_url: str,
                 refund_limit: float, experiment: str | None, writer: socket.socket | None = None):
        self.results, self.agent, self.environment = results, agent, environment
        self.sor_url, self.refund_limit, self.experiment = sor_url, refund_limit, experiment
        self.state: dict[str, Any] = {"scored": {}, "failures": {}, "flagged": 0, "dataset_rows": 0,
                                      "dataset_errors": 0, "dataset": dataset_name(agent),
                                      "shadow": None, "shadow_error": None, "evidence": None,
                                      "answered": None}
        self.pending: list[dict] = []
        self.flushed_at = time.monotonic()
        self.sent_at = 0.0
        self.challenger = None
        self.comparison = None
        self.pacer = Pacer()
        self.writes = ExporterWrites(writer) if writer is not None else DirectWrites(agent, experiment)

    draining = False  # set by SIGTERM: queued requests are skipped, commands still run

    def handle(self, job: dict) -> bool:
        kind = job.get("kind", "request")
        if kind == "request":
            if not self.draining:
                self.request(job)
        elif kind == "shadow_load":
            self.shadow_load(job)
        elif kind == "shadow_unload":
            self.shadow_unload(record=job.get("record", True))
        elif kind == "shadow_record":
            self.record()
        elif kind == "flush":
            self.flush()
        elif kind == "stop":
            self.shadow_unload(record=False)
            self.flush()
        if "id" in job:
            self.state["answered"] = job["id"]
            self.send(force=True)
        return kind != "stop"

    def handle_many(self, jobs: list[dict]) -> bool:
        """Jobs that arrived together, in order; the shadow requests among consecutive request
        jobs run in batches of ``SHADOW_BATCH`` (one router call each). False after "stop"."""
        running, batch = True, []
        for job in jobs:
            if job.get("kind", "request") == "request" and not self.draining:
                batch.append(job)
                continue
            self.requests(batch)
            batch = []
            try:
                running = self.handle(job) and running
            except Exception:
                logger.exception("the evaluation worker failed on a %s job", job.get("kind"))
        self.requests(batch)
        return running

    def requests(self, jobs: list[dict]) -> None:
        """Score the sampled requests, then run the challenger on the shadowed ones in batches of
        ``SHADOW_BATCH``, resting between pieces (:class:`Pacer`)."""
        if not jobs:
            return
        scores = []
        try:
            for job in jobs:
                scores.append(self.request(job, shadow=False))
                if scores[-1] is not None:  # it was scored: work done
                    self.pacer.rest()
        except Exception:
            logger.exception("the evaluation worker failed on %d requests", len(jobs))
            return
        shadowed = [(job, s) for job, s in zip(jobs, scores, strict=True)
                    if self.challenger is not None and job.get("shadow")]
        for k in range(0, len(shadowed), SHADOW_BATCH):
            self.shadow_many(shadowed[k:k + SHADOW_BATCH])
            self.pacer.rest()

    def request(self, job: dict, shadow: bool = True) -> dict | None:
        from agentops_pipelines.agent.scorers import live_scores

        primary = job["trajectory"]
        scores = None
        if job.get("score"):
            scores = live_scores(primary)
            version = str(job.get("version", ""))
            self.state["scored"][version] = self.state["scored"].get(version, 0) + 1
            failed = [k for k, ok in scores.items() if not ok]
            for name in failed:
                key = (version, name)
                self.state["failures"][key] = self.state["failures"].get(key, 0) + 1
            if failed:
                self.state["flagged"] += 1
                self.pending.append({
                    "inputs": {"request_id": job["request_id"], "customer_id": primary.get("customer_id"),
                               "text": primary.get("text")},
                    "expectations": {"failed_scorers": failed},
                    "tags": {"agentops.request_id": job["request_id"], "agentops.model_version": job.get("version", ""),
                             "agentops.environment": self.environment, "source": "online_evaluation"},
                })
        if shadow and self.challenger is not None and job.get("shadow"):
            self.shadow_many([(job, scores)])
        return scores

    def shadow_many(self, pairs: list[tuple[dict, dict | None]]) -> None:
        """The challenger on these requests (one batch), each compared with the primary."""
        from agentops_pipelines.agent.scorers import live_scores

        primaries = [job["trajectory"] for job, _ in pairs]
        try:
            theirs_all = self.challenger.replay(primaries)
        except Exception as e:  # noqa: BLE001 - the whole batch failed: each request's failure
            theirs_all = [e] * len(pairs)
        for (job, scores), primary, theirs in zip(pairs, primaries, theirs_all, strict=True):
            scores = scores or live_scores(primary)
            if isinstance(theirs, Exception):  # a failing challenger is evidence, not a crash
                logger.warning("shadow challenger failed on %s: %s: %s", job["request_id"],
                               type(theirs).__name__, theirs)  # fmt: skip
                self.comparison.challenger_errors += 1
                challenger_pass, same_tool = False, False
            else:
                challenger_pass = all(live_scores(theirs).values())
                same_tool = theirs.get("tool") == primary.get("tool")
            self.comparison.add(all(scores.values()), challenger_pass, same_tool)
        self.state["shadow"] = self.comparison.summary()

    def shadow_load(self, job: dict) -> None:
        from agentops_pipelines.serving.shadow import Challenger, Comparison

        self.shadow_unload(record=False)
        try:
            self.challenger = Challenger(job["model_uri"], job["version"], self.sor_url, self.refund_limit)
        except Exception as e:  # noqa: BLE001 - reported to the admin who asked
            self.state["shadow_error"] = f"{type(e).__name__}: {e}"
            return
        self.comparison = Comparison(str(job.get("primary_version", "")), str(job["version"]))
        self.state.update(shadow=self.comparison.summary(), shadow_error=None, evidence=None,
                          shadow_model_uri=job["model_uri"])

    def shadow_unload(self, record: bool) -> None:
        if self.challenger is None:
            return
        if record:
            self.record()
        self.challenger.close()
        self.challenger = None
        self.state["shadow_model_uri"] = None

    def record(self) -> None:
        if self.comparison is None:
            self.state["shadow_error"] = "no shadow comparison to record"
            return
        try:
            self.state["evidence"] = self.writes.record_evidence(self.comparison.summary())
            self.state["shadow_error"] = None
        except Exception as e:  # noqa: BLE001
            self.state["shadow_error"] = f"recording the evidence failed: {type(e).__name__}: {e}"

    def flush(self) -> None:
        self.flushed_at = time.monotonic()
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        try:
            self.writes.add_flagged(rows)
            self.state["dataset_rows"] += len(rows)
        except Exception as e:  # noqa: BLE001 - counted; the scores were counted already
            logger.warning("adding %d flagged requests to %s failed: %s: %s", len(rows),
                           self.state["dataset"], type(e).__name__, e)
            self.state["dataset_errors"] += len(rows)

    def tick(self) -> None:
        now = time.monotonic()
        if self.pending and (len(self.pending) >= FLUSH_ROWS or now - self.flushed_at >= FLUSH_EVERY_S):
            self.flush()
        if now - self.sent_at >= SNAPSHOT_EVERY_S:
            self.send()

    def send(self, force: bool = False) -> None:
        self.sent_at = time.monotonic()
        try:
            self.results.send(pickle.dumps(self.state))
        except BlockingIOError:
            if force:
                time.sleep(0.05)
                self.send(force=False)
        except OSError:
            pass


def background_priority() -> str:
    """Make the calling process (and the threads it starts later) background work; say what was
    set. Needs no privilege, and cannot be undone without one.

    - A session of its own (``setsid``) at autogroup ``nice`` 10: where Linux shares CPU time
      between sessions first ("autogroups": processes in the root cgroup, as on a plain host or
      VM), the worker's CPU would otherwise count against the serving process's session, and a
      waking request thread would wait behind other sessions whatever the worker's own priority
      (bench/background_wakeup.py: a busy loop at ``nice`` 10 or ``SCHED_IDLE`` in the waking
      thread's session made it 1.9 ms late at the median; in a session of its own, 0). At the
      default weight its session would compete with the serving process's as an equal on a
      saturated machine; at ``nice`` 19 it starved for minutes beside a load average of 9;
      ``nice`` 10 gives it about what it had inside the serving process's session before.
      Inside a container's cgroup there are no autogroups and this changes nothing. The worker
      so leaves the serving process's process group: it stops by itself within a second of the
      serving process's end (``_worker_main``), not by a signal to the group.
    - ``SCHED_IDLE`` (Linux): beside the serving process's threads (in a container) it runs only
      on a CPU they do not want and gives it up the moment one wakes; ``nice`` 19 elsewhere.
    """
    done = []
    try:
        os.setsid()
        done.append("its own session")
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(AUTOGROUP_NICE))
        done.append(f"autogroup nice {AUTOGROUP_NICE}")
    except OSError:  # already a session leader, or a kernel without autogroups
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        done.append("SCHED_IDLE")
    except (AttributeError, OSError):  # not Linux, or a seccomp profile that refuses it
        try:
            done.append(f"nice {os.nice(19 - os.nice(0))}")
        except OSError:
            pass
    return ", ".join(done) or "unchanged"


def gather(jobs: socket.socket, first: bytes) -> list[dict]:
    """The jobs in the datagram ``first`` (a list of pickled jobs, as ``EvalWorker`` sends them)
    and in the datagrams already waiting, until ``BATCH_JOBS`` or a command. Never waits."""
    loaded: list[dict] = []
    data: bytes | None = first
    try:
        while True:
            try:
                items = pickle.loads(data)
            except Exception:
                logger.exception("the evaluation worker could not read a datagram")
                items = []
            for item in items:
                try:
                    loaded.append(pickle.loads(item))
                except Exception:
                    logger.exception("the evaluation worker could not read a job")
            if len(loaded) >= BATCH_JOBS or (loaded and loaded[-1].get("kind", "request") != "request"):
                return loaded
            jobs.setblocking(False)
            try:
                data = jobs.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return loaded
    finally:
        jobs.settimeout(1.0)


class Pacer:
    """The worker's CPU in slices: :meth:`rest` between two pieces of work pauses for
    ``pause_s`` once ``slice_s`` has passed since the last pause (or since the worker woke up)."""

    def __init__(self, slice_s: float = SLICE_S, pause_s: float = PAUSE_S):
        self.slice_s, self.pause_s = slice_s, pause_s
        self.since = time.monotonic()
        self.pauses = 0

    def woke(self) -> None:
        self.since = time.monotonic()

    def rest(self) -> None:
        if time.monotonic() - self.since >= self.slice_s:
            time.sleep(self.pause_s)
            self.pauses += 1
            self.since = time.monotonic()


def _worker_main(jobs, results, agent, environment, sor_url, refund_limit, experiment, parent, log_level,
                 writer=None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # What every job needs, imported at the serving process's priority (seconds of CPU a starved
    # background process would take minutes to get); mlflow's datasets load at the first flush.
    from agentops_pipelines.agent.scorers import live_scores  # noqa: F401

    priority = background_priority()  # scores can wait: requests cannot
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s [eval worker]: %(message)s")
    logger.debug("the evaluation worker runs at %s", priority)
    worker = _Worker(results, agent, environment, sor_url, refund_limit, experiment, writer)

    def drain(*_):
        worker.draining = True

    # SIGTERM (the serving process stopping, or the whole process group on Kubernetes): skip what
    # is queued, then stop at the serving process's "stop" or after a second without jobs.
    signal.signal(signal.SIGTERM, drain)
    jobs.settimeout(1.0)
    running = True
    while running:
        try:
            data = jobs.recv(MAX_DATAGRAM)
        except TimeoutError:
            if os.getppid() != parent or worker.draining:  # the serving process is gone or stopping
                if worker.draining:
                    worker.flush()
                break
            worker.tick()
            continue
        except OSError:
            break
        worker.pacer.woke()
        running = worker.handle_many(gather(jobs, data))  # and what else is waiting
        worker.tick()
    worker.send(force=True)
