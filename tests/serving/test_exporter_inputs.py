"""The trace exporter takes its input from a confined serving process, which runs a model nobody
may have reviewed: every datagram is hostile. Malformed, oversized or wrong-typed ones are refused
and counted, never a crash; a flood is bounded; and the exporter writes only for its own agent
(its own arguments), whatever run, experiment or model a datagram names."""

import json
import socket
import threading
import time
from dataclasses import asdict

import mlflow
import pytest

from agentops_pipelines.serving import mlflow_writes
from agentops_pipelines.serving.mlflow_writes import Budget, DirectWrites, Tally, handle
from agentops_pipelines.serving.tracing import MAX_JOB_BYTES, Scope, TraceJob, Tracer, _Inbox

MINE, VICTIM = "mine_agent", "victim_agent"


def _row(**tags) -> dict:
    return {"inputs": {"request_id": "r1", "customer_id": "C1", "text": "hi"},
            "expectations": {"failed_scorers": ["grounded"]},
            "tags": {"agentops.request_id": "r1", "agentops.model_version": "3", "agentops.environment": "dev", **tags}}


def _summary(**changes) -> dict:
    summary = {"primary_version": "1", "challenger_version": "2", "requests": 10, "both_pass": 5, "primary_only": 1,
               "challenger_only": 2, "both_fail": 2, "same_tool": 8, "challenger_errors": 0,
               "primary_pass_rate": 0.6, "challenger_pass_rate": 0.7, "tool_agreement": 0.8, "mcnemar_p": 0.5,
               "verdict": "no_difference"}
    return {**summary, **changes}


def _write(kind: str, **fields) -> bytes:
    return json.dumps({"id": 7, "kind": kind, **fields}).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000  # json's parser recurses: RecursionError, not ValueError

REFUSED_WRITES = {
    "not json": b"\xff\xfe not json",
    "deeply nested": DEEP,
    "not an object": b"[1, 2]",
    "no id": json.dumps({"kind": "flagged", "rows": [_row()]}).encode(),
    "a boolean id": json.dumps({"id": True, "kind": "flagged", "rows": [_row()]}).encode(),
    "unknown kind": _write("delete_experiment", experiment="0"),
    "rows not a list": _write("flagged", rows={"0": _row()}),
    "no rows": _write("flagged", rows=[]),
    "too many rows": _write("flagged", rows=[_row()] * (mlflow_writes.MAX_ROWS + 1)),
    "a row not an object": _write("flagged", rows=["row"]),
    "text too long": _write("flagged", rows=[{**_row(), "inputs": {"text": "x" * (mlflow_writes.MAX_TEXT + 1)}}]),
    "text not a string": _write("flagged", rows=[{**_row(), "inputs": {"text": ["a"]}}]),
    "scorers not names": _write("flagged", rows=[{**_row(), "expectations": {"failed_scorers": [1]}}]),
    "another environment": _write("flagged", rows=[_row(**{"agentops.environment": "prod"})]),
    "a version that is a path": _write("flagged", rows=[_row(**{"agentops.model_version": "../../x"})]),
    "summary not an object": _write("evidence", summary=[1]),
    "a version not a number": _write("evidence", summary=_summary(challenger_version="2; drop")),
    "a count that is a boolean": _write("evidence", summary=_summary(requests=True)),
    "a negative count": _write("evidence", summary=_summary(both_pass=-1)),
    "a share above 1": _write("evidence", summary=_summary(tool_agreement=1.5)),
    "an unhashable verdict": _write("evidence", summary=_summary(verdict=["better"])),
    "an unknown verdict": _write("evidence", summary=_summary(verdict="promote")),
}


class _Unreachable(DirectWrites):
    """Writes that must never be made: every input here is refused before."""

    def add_flagged(self, rows):
        raise AssertionError("a refused write was made")

    def record_evidence(self, summary):
        raise AssertionError("a refused write was made")


@pytest.mark.parametrize("data", REFUSED_WRITES.values(), ids=REFUSED_WRITES.keys())
def test_a_bad_write_is_refused_and_counted_never_raised(data):
    tally = Tally("test")
    answer = handle(data, _Unreachable(MINE, environment="dev"), tally)
    assert answer["ok"] is False and answer["error"]
    assert tally.counts == {"refused": 1}
    json.dumps(answer)  # it goes back as a datagram


def test_the_written_rows_are_rebuilt_with_the_exporters_agent():
    rows = mlflow_writes.flagged_rows([_row(**{"agentops.agent": VICTIM, "evil": "x"})], MINE, "dev")
    assert rows[0]["tags"]["agentops.agent"] == MINE and "evil" not in rows[0]["tags"]


def _serve(writes, budget, tally):
    """The exporter's write loop on a socket pair: (the serving side's end, the thread)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    thread = threading.Thread(target=mlflow_writes.serve, args=(theirs, writes, lambda: True, budget, tally),
                              daemon=True)
    thread.start()
    return ours, thread


def _wait_for(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_flood_of_writes_is_refused_beyond_the_budget_and_never_waits_on_the_sender():
    tally = Tally("test")
    budget = Budget(rate=0.0, burst=5)  # five writes, and no more however long the flood lasts
    ours, thread = _serve(_Unreachable(MINE, environment="dev"), budget, tally)
    for _ in range(2000):  # nobody reads the answers: the exporter must not block on them
        ours.send(_write("flagged", rows="not rows"))
    _wait_for(lambda: sum(tally.counts.values()) - tally.counts["answers dropped"] >= 2000, str(tally.counts))
    assert tally.counts["refused"] == 2000 and tally.counts["answers dropped"] > 0
    assert thread.is_alive()
    answers = []
    ours.setblocking(False)
    while True:
        try:
            answers.append(json.loads(ours.recv(1 << 16)))
        except BlockingIOError:
            break
    assert sum("budget" in a["error"] for a in answers) >= len(answers) - 5
    ours.close()


def test_the_budget_refills_at_its_rate():
    now = [0.0]
    budget = Budget(rate=2.0, burst=3, clock=lambda: now[0])
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0
    assert [budget.take() for _ in range(3)] == [True, True, False]


# -- trace jobs


def _job(**changes) -> TraceJob:
    job = TraceJob(model_uri=f"models:/{MINE}/1", version="1", agent="support", request_id="r1", role="stable",
                   status=500, error="boom", latency_ms=3.5, reason="error", inputs=[{"text": "hi"}],
                   marks={"start": 1, "end": 2}, steps=[("route", "LLM", 1, 2)])
    return TraceJob(**{**asdict(job), **changes})


def _plain(job: TraceJob) -> dict:
    return json.loads(json.dumps(asdict(job)))


def test_a_job_round_trips_as_plain_values():
    assert TraceJob.from_plain(_plain(_job())) == _job()


BAD_JOBS = {
    "not an object": [1],
    "a missing field": {k: v for k, v in _plain(_job()).items() if k != "status"},
    "an extra field": {**_plain(_job()), "experiment_id": "0"},
    "a boolean status": {**_plain(_job()), "status": True},
    "rows as text": {**_plain(_job()), "rows": "3"},
    "a long request id": {**_plain(_job()), "request_id": "x" * 10_001},
    "marks not numbers": {**_plain(_job()), "marks": {"start": "now"}},
    "a step too short": {**_plain(_job()), "steps": [["route", "LLM", 1]]},
    "a step with text times": {**_plain(_job()), "steps": [["route", "LLM", "1", "2"]]},
    "inputs not a list": {**_plain(_job()), "inputs": {"text": "hi"}},
}


@pytest.mark.parametrize("value", BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_a_bad_trace_job_is_refused(value):
    with pytest.raises(ValueError):
        TraceJob.from_plain(value)


def _inbox(scope=None, budget=None):
    tally = Tally("test")
    return _Inbox(None, scope or Scope(None), budget or Budget(100.0, 100), tally), tally


@pytest.mark.parametrize("data", [b"\xff", DEEP, b"{}", b'"job"', json.dumps({**_plain(_job()), "rows": None}).encode()],
                         ids=["not json", "deeply nested", "empty", "a string", "a null count"])
def test_the_exporter_refuses_and_counts_a_datagram_that_is_not_a_job(data):
    inbox, tally = _inbox()
    assert inbox.job(data) is False
    assert tally.counts == {"refused": 1}


def test_the_exporter_drops_jobs_over_its_budget_and_still_stops():
    inbox, tally = _inbox(budget=Budget(0.0, 2))
    data = json.dumps(_plain(_job())).encode()
    assert [inbox.job(data) is not False for _ in range(5)] == [True, True, False, False, False]
    assert tally.counts == {"dropped": 3}
    assert inbox.job(b"null") is None  # the stop message costs nothing


def test_a_real_exporter_survives_garbage_and_oversized_datagrams(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    results: list = []
    tracer = Tracer("dev", mode="process", agent=MINE, on_result=lambda *r: results.append(r)).start().listen()
    try:
        sock = tracer._queue.sock
        sock.setblocking(True)
        for data in (b"\x00garbage", DEEP[: MAX_JOB_BYTES // 4], b"[" * 1000, json.dumps(["x"] * 50_000).encode()):
            sock.send(data)
        tracer._queue.put(_job(model_uri="not-mine"), timeout=5)  # refused: not a version of its agent
        assert tracer.alive
    finally:
        tracer.close(timeout=60)
    assert not tracer.alive and results == []  # it stopped when asked, having traced nothing


def test_a_killed_exporter_is_reported_not_silently_lost(tmp_path, monkeypatch, caplog):
    """A datagram socket never sees its peer close: before, a SIGKILLed exporter left the results
    thread waiting for ever and nothing said that traces and the evaluation worker's writes had
    stopped. Now the gauge reads 0, /admin/stats says so and the serving log says why."""
    import os
    import signal

    from agentops_pipelines.serving.metrics import ServingMetrics
    from agentops_pipelines.serving.state import ServingState, stats_payload

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    metrics = ServingMetrics("dev", process_metrics=False)
    tracer = Tracer("dev", mode="process", agent=MINE, on_result=metrics.trace).start().listen()
    metrics.watch_exporter(MINE, lambda: tracer.alive)
    state = ServingState("dev", agent=MINE, tracer=tracer)
    up = {"agent": MINE, "environment": "dev"}
    try:
        assert metrics.registry.get_sample_value("agentops_trace_exporter_up", up) == 1.0
        assert stats_payload(state, 60)["trace_exporter"] == "up"
        os.kill(tracer._process.pid, signal.SIGKILL)
        _wait_for(lambda: not tracer._results_thread.is_alive(), "the results thread never noticed", 10)
        assert metrics.registry.get_sample_value("agentops_trace_exporter_up", up) == 0.0
        assert stats_payload(state, 60)["trace_exporter"] == "down"
        gone = [r for r in caplog.records if "trace exporter" in r.getMessage() and r.levelname == "ERROR"]
        assert gone and f"exit code {-signal.SIGKILL}" in gone[0].getMessage()
        assert not tracer.submit(_job())  # dropped and counted, never an exception on the request path
    finally:
        started = time.monotonic()
        tracer.close(timeout=5)
    assert time.monotonic() - started < 10


def test_an_exporter_that_stops_when_asked_is_not_reported_as_gone(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracer = Tracer("dev", mode="process", agent=MINE).start().listen()
    tracer.close(timeout=60)
    tracer._results_thread.join(5)
    assert not tracer._results_thread.is_alive()
    assert not [r for r in caplog.records if "is gone" in r.getMessage()]


# -- where the exporter writes


@pytest.fixture(scope="module")
def two_agents(tmp_path_factory):
    """Two registered agents in their own experiments, on a SQLite MLflow store."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(name, uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = mlflow.MlflowClient()
        yield client, {agent: _register(client, tmp, agent) for agent in (MINE, VICTIM)}
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri("")


MODEL = """
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class Echo(PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


set_model(Echo())
"""


def _register(client, folder, agent: str):
    """Version 1 of ``agent``, logged in an experiment of its own."""
    experiment = client.create_experiment(f"{agent}-experiment", artifact_location=str(folder / agent))
    code = folder / f"{agent}.py"
    code.write_text(MODEL)
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=["pandas"],
                                       registered_model_name=agent)
    return client.get_model_version(agent, str(info.registered_model_version))


def test_the_scope_takes_the_run_and_model_from_the_registry_not_the_job(two_agents):
    client, versions = two_agents
    mine, victim = versions[MINE], versions[VICTIM]
    scope = Scope(MINE, client)
    job = scope.check(_job(version=str(mine.version), model_uri=f"models:/{MINE}/{mine.version}",
                           run_id=victim.run_id, model_id=getattr(victim, "model_id", None)))
    assert (job.run_id, job.model_id) == (mine.run_id, getattr(mine, "model_id", None))
    for bad in (_job(model_uri=f"models:/{VICTIM}/{victim.version}", version=str(victim.version)),
                _job(model_uri=f"models:/{MINE}/99", version="99"),
                _job(model_uri=f"models:/{MINE}/{mine.version}", version="1 OR 1=1")):
        with pytest.raises(ValueError):
            scope.check(bad)
    assert Scope(None).check(_job(run_id=victim.run_id)).run_id is None  # a path's server names no run


def test_a_served_process_cannot_make_the_exporter_trace_into_another_agents_experiment(two_agents):
    client, versions = two_agents
    mine, victim = versions[MINE], versions[VICTIM]
    results: list = []
    tracer = Tracer("dev", mode="process", agent=MINE, max_per_second=0,
                    on_result=lambda *r: results.append(r)).start().listen()
    try:
        tracer._queue.put(_job(model_uri=f"models:/{MINE}/{mine.version}", version=str(mine.version), request_id="aimed",
                               run_id=victim.run_id), timeout=5)  # its own version, another agent's run
        tracer._queue.put(_job(model_uri=f"models:/{VICTIM}/{victim.version}", version=str(victim.version),
                               request_id="posing", run_id=victim.run_id), timeout=5)  # another agent's version
        _wait_for(lambda: results, "the exporter traced nothing", 120)
    finally:
        tracer.close(timeout=60)
    experiment = {agent: client.get_run(v.run_id).info.experiment_id for agent, v in versions.items()}
    assert mlflow.search_traces(locations=[experiment[VICTIM]], return_type="list") == []
    traced = mlflow.search_traces(locations=[experiment[MINE]], return_type="list")
    assert [t.info.tags["agentops.request_id"] for t in traced] == ["aimed"]
    assert results == [("error", "logged")]


def test_evidence_goes_to_the_exporters_agent_only(two_agents):
    client, versions = two_agents
    victim = versions[VICTIM]
    summary = _summary(challenger_version=str(victim.version), primary_version="1", verdict="better")
    answer = handle(_write("evidence", summary=summary, agent=VICTIM), DirectWrites(MINE, environment="dev"))
    assert answer["ok"] is True  # the version number of the exporter's own agent, whatever the datagram says
    assert client.get_model_version(MINE, str(victim.version)).tags["agentops.shadow.verdict"] == "better"
    assert not any(k.startswith("agentops.shadow.") for k in client.get_model_version(VICTIM, str(victim.version)).tags)
    missing = handle(_write("evidence", summary=_summary(challenger_version="99")), DirectWrites(MINE, environment="dev"))
    assert missing["ok"] is False and "99" in missing["error"]  # MLflow's refusal, answered
