"""The MLflow writes of a serving process's evaluation worker, and who makes them.

The evaluation worker adds flagged requests to the agent's evaluation dataset (``<agent>-flagged``)
and records a shadow comparison as tags of the challenger's version. A confined serving process
(``confine.py``) and its worker cannot write the MLflow store (if they could, a served model could
rewrite a registered version's source and have prod load its code), so :class:`ExporterWrites`
hands each write, as one JSON datagram, to the trace exporter (``tracing.py``), which was started
before the serving process confined itself. The exporter treats it as hostile input:
:func:`handle` checks every field (:func:`flagged_rows`, :func:`evidence_summary`), writes only
this agent's dataset (rows of its own environment) and only the ``agentops.shadow.*`` tags of
its own registered model's versions, computes the tags itself, and answers ``{"ok": ...}``. The
agent and environment are the exporter's own arguments, never the datagram's. A flood is bounded
(:class:`Budget`: writes over it are refused and counted), and the exporter never waits on the
serving process (an answer it will not read is dropped). :class:`DirectWrites` is what the
exporter (and an unconfined worker, in tests and benchmarks) runs.
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import time
from collections import Counter
from typing import Any

from agentops_pipelines.serving.shadow import OUTCOMES

logger = logging.getLogger("agentops_pipelines.serving.mlflow_writes")

MAX_DATAGRAM = 1 << 20
MAX_ROWS = 200  # flagged requests per write (the worker flushes every 50)
MAX_TEXT = 20_000
WRITES_PER_SECOND, WRITES_BURST = 2.0, 20  # the worker writes every 50 flagged requests at most
_VERSION = re.compile(r"^[0-9]{1,18}$")
_LABEL = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")  # a served version's label (a path's --version)
_VERDICTS = frozenset({"better", "worse", "no_difference", "too_few"})
_COUNTS = ("requests", *OUTCOMES, "same_tool", "challenger_errors")
_SHARES = ("primary_pass_rate", "challenger_pass_rate", "tool_agreement", "mcnemar_p")


class WriteError(ValueError):
    """A write the exporter refused (bad input) or could not make."""


def dataset_name(agent: str) -> str:
    return f"{agent}-flagged"


class Budget:
    """At most ``rate`` items a second on average, ``burst`` at once (a token bucket): what an
    exporter does for an untrusted process however fast that process sends."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Tally:
    """Counts of what the exporter refused or dropped, logged at most every ``every_s`` seconds
    (a flood of bad input must not become a flood of log lines)."""

    def __init__(self, what: str, every_s: float = 10.0, clock=time.monotonic):
        self.what, self.every_s, self._clock = what, every_s, clock
        self.counts: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at = -every_s
        self._last = ""

    def add(self, outcome: str, detail: str = "") -> None:
        self.counts[outcome] += 1
        self._unlogged[outcome] += 1
        self._last = detail or self._last
        if self._clock() - self._logged_at >= self.every_s:
            logger.warning("%s: %s (last: %s)", self.what,
                           ", ".join(f"{n} {k}" for k, n in sorted(self._unlogged.items())), self._last[:300])
            self._unlogged.clear()
            self._logged_at = self._clock()


class DirectWrites:
    """The writes made here, with this process's MLflow client; ``environment``: the only one
    whose flagged requests it takes (None: any, for an unconfined worker)."""

    def __init__(self, agent: str, experiment: str | None = None, environment: str | None = None):
        self.agent, self.experiment, self.environment = agent, experiment, environment
        self._dataset = None

    def add_flagged(self, rows: list[dict]) -> None:
        self.dataset().merge_records(rows)

    def record_evidence(self, summary: dict) -> dict[str, str]:
        from agentops_pipelines.serving.shadow import record_evidence

        return record_evidence(self.agent, summary)

    def dataset(self):
        """The agent's flagged-requests dataset, created on first use."""
        if self._dataset is None:
            from mlflow.genai.datasets import create_dataset, get_dataset

            name = dataset_name(self.agent)
            try:
                self._dataset = get_dataset(name=name)
            except Exception:  # noqa: BLE001 - MLflow raises when there is none yet
                experiment = None
                if self.experiment:
                    import mlflow

                    found = mlflow.get_experiment_by_name(self.experiment)
                    experiment = [found.experiment_id] if found else None
                self._dataset = create_dataset(name=name, experiment_id=experiment,
                                               tags={"agentops.agent": self.agent, "source": "online_evaluation"})
        return self._dataset


class ExporterWrites:
    """The worker's side: each write one datagram to the exporter, and its answer awaited."""

    def __init__(self, sock: socket.socket, timeout_s: float = 60.0):
        self.sock, self.timeout_s = sock, timeout_s

    def add_flagged(self, rows: list[dict]) -> None:
        self._call({"kind": "flagged", "rows": rows})

    def record_evidence(self, summary: dict) -> dict[str, str]:
        return self._call({"kind": "evidence", "summary": summary})["tags"]

    def _call(self, message: dict) -> dict:
        message = {**message, "id": time.monotonic_ns()}
        self.sock.settimeout(self.timeout_s)
        self.sock.send(json.dumps(message, default=str).encode())
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            answer = json.loads(self.sock.recv(MAX_DATAGRAM))
            if answer.get("id") == message["id"]:  # an older call's late answer is skipped
                if not answer.get("ok"):
                    raise WriteError(answer.get("error") or "the exporter refused the write")
                return answer
        raise TimeoutError(f"the trace exporter did not answer within {self.timeout_s:.0f} s")


def serve(sock: socket.socket, writes: DirectWrites, alive, budget: Budget | None = None,
          tally: Tally | None = None) -> None:
    """The exporter's side: answer each write until the socket closes or ``alive()`` is False.
    Writes over ``budget`` are refused unread; an answer the other side does not take (its
    buffer full) is dropped: the exporter never waits on the serving process."""
    budget = budget or Budget(WRITES_PER_SECOND, WRITES_BURST)
    tally = tally or Tally("the evaluation worker's writes")
    sock.setblocking(False)  # a send that would wait fails at once (a timeout would wait it out)
    while alive():
        try:
            if not select.select([sock], [], [], 1.0)[0]:
                continue
            data = sock.recv(MAX_DATAGRAM)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return
        answer = handle(data, writes, tally) if budget.take() else _refusal(data, "over the exporter's write budget", tally)
        try:
            sock.send(json.dumps(answer).encode())
        except BlockingIOError:
            tally.add("answers dropped", "the serving side does not read its answers")
        except OSError:
            return


def handle(data: bytes, writes: DirectWrites, tally: Tally | None = None) -> dict:
    """One write from an untrusted process: checked, made, answered; never raises. A refused
    or failed write is counted in ``tally`` (``refused``, ``failed``)."""
    tally = tally or Tally("the evaluation worker's writes")
    message = None
    try:
        message = json.loads(data)
        if not isinstance(message, dict) or not isinstance(message.get("id"), int) or isinstance(message["id"], bool):
            raise WriteError("not a write (an object with an integer id)")
        answer: dict[str, Any] = {"id": message["id"], "ok": True}
        if message.get("kind") == "flagged":
            rows = flagged_rows(message.get("rows"), writes.agent, writes.environment)
        elif message.get("kind") == "evidence":
            summary = evidence_summary(message.get("summary"))
        else:
            raise WriteError(f"unknown write {str(message.get('kind'))[:40]!r}")
    except Exception as e:  # noqa: BLE001 - any bad input is refused, never a crash of the exporter
        return _refusal(data, f"{type(e).__name__}: {e}", tally, message)
    try:
        if message["kind"] == "flagged":
            writes.add_flagged(rows)
        else:
            answer["tags"] = writes.record_evidence(summary)
        return answer
    except Exception as e:  # noqa: BLE001 - MLflow's error, for the worker that asked
        tally.add("failed", f"{type(e).__name__}: {e}")
        return {"id": message["id"], "ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}


def _refusal(data: bytes, error: str, tally: Tally, message: Any = None) -> dict:
    """The answer to a write that is not made (counted as refused)."""
    if message is None:
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            message = None
    tally.add("refused", error)
    ident = message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), int) else None
    return {"id": ident, "ok": False, "error": error[:500]}


def flagged_rows(value: Any, agent: str, environment: str | None = None) -> list[dict]:
    """Flagged requests as the worker collects them (``online_eval._Worker.request``), rebuilt
    from checked strings only: of ``environment`` (when given) and a version label each."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_ROWS:
        raise WriteError(f"rows: not a list of 1 to {MAX_ROWS} flagged requests")
    rows = []
    for row in value:
        inputs, expectations, tags = (_object(row, k) for k in ("inputs", "expectations", "tags"))
        failed = expectations.get("failed_scorers")
        if not isinstance(failed, list) or not all(isinstance(f, str) and len(f) <= 100 for f in failed[:20]):
            raise WriteError("expectations.failed_scorers: not a list of scorer names")
        version, served_in = tags.get("agentops.model_version"), tags.get("agentops.environment")
        if not isinstance(version, str) or not _LABEL.match(version):
            raise WriteError("tags.agentops.model_version: not a version label")
        if environment is not None and served_in != environment:
            raise WriteError(f"tags.agentops.environment: not this exporter's environment {environment!r}")
        rows.append({
            "inputs": {k: _text(inputs.get(k), k) for k in ("request_id", "customer_id", "text")},
            "expectations": {"failed_scorers": failed[:20]},
            "tags": {**{k: _text(tags.get(k), k) or "" for k in ("agentops.request_id", "agentops.model_version",
                                                               "agentops.environment")},
                     "source": "online_evaluation", "agentops.agent": agent},
        })
    return rows


def evidence_summary(value: Any) -> dict:
    """A shadow comparison (``shadow.Comparison.summary``) of counts, shares and versions."""
    if not isinstance(value, dict):
        raise WriteError("summary: not an object")
    summary: dict[str, Any] = {}
    for key in ("primary_version", "challenger_version"):
        if not isinstance(value.get(key), str) or not _VERSION.match(value[key]):
            raise WriteError(f"summary.{key}: not a version number")
        summary[key] = value[key]
    for key in _COUNTS:
        if isinstance(value.get(key), bool) or not isinstance(value.get(key), int) or not 0 <= value[key] < 1 << 40:
            raise WriteError(f"summary.{key}: not a count")
        summary[key] = value[key]
    for key in _SHARES:
        share = value.get(key)
        if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1):
            raise WriteError(f"summary.{key}: not a share in [0, 1]")
        summary[key] = share
    if not isinstance(value.get("verdict"), str) or value["verdict"] not in _VERDICTS:
        raise WriteError(f"summary.verdict: not one of {sorted(_VERDICTS)}")
    summary["verdict"] = value["verdict"]
    return summary


def _object(row: Any, key: str) -> dict:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, dict):
        raise WriteError(f"{key}: not an object")
    return value


def _text(value: Any, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
        raise WriteError(f"{what}: not a string of at most {MAX_TEXT} characters")
    return value
