"""What a serving process reports: metrics, the inference log (bad rows, stop, crash) and MLflow\ntraces of the served request."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from agentops_pipelines.serving.handlers import handle_invocations
from agentops_pipelines.serving.inference_log import (
    InferenceLogWriter,
    LogEntry,
    read_inference_log,
)
from agentops_pipelines.serving.state import ServingState
from tests.serving.support import JSON, MODEL_NAME, Server, fake, records, request, scrape


def test_inference_log_through_the_endpoint(tmp_path):
    def with_features(df):
        if (df["text"] == "boom").any():
            raise ValueError("boom")
        features = pd.DataFrame({"orders_30d": [7] * len(df), "plan_tier": ["pro"] * len(df)})
        tools = pd.DataFrame({"tool": ["track_order"] * len(df), "confidence": [0.9] * len(df),
                              "escalated": [False] * len(df)})  # fmt: skip
        return tools, features

    model = fake("4", agent="support_agent", predict_with_features=with_features)
    writer = InferenceLogWriter(tmp_path, "staging", flush_seconds=3600).start()
    state = ServingState("staging", inference_log=writer)
    state.swap(model)
    assert handle_invocations(state, records({"text": "order?", "customer_id": "C7"}, {"text": "again"}), JSON, "r-1").status == 200  # fmt: skip
    assert handle_invocations(state, records({"text": "boom", "customer_id": "C8"}), JSON, "r-2").status == 500  # fmt: skip
    assert handle_invocations(state, b"{bad", JSON, "r-3").status == 400  # no rows to log
    writer.close()
    today = pd.Timestamp.now(tz="UTC").date()
    df = read_inference_log(tmp_path, today, today)
    assert df["request_id"].tolist() == ["r-1", "r-1", "r-2"]
    assert df["row"].tolist() == [0, 1, 0]
    assert df["customer_id"].tolist()[:2] == ["C7", None]
    assert df["status"].tolist() == [200, 200, 500]
    assert df["tool"].tolist()[:2] == ["track_order"] * 2 and pd.isna(df["tool"].iloc[2])
    assert df["orders_30d"].tolist()[:2] == [7, 7] and df["plan_tier"].tolist()[:2] == ["pro"] * 2
    assert set(df["environment"]) == {"staging"} and set(df["model_version"]) == {"4"}
    assert set(df["role"]) == {"stable"} and (df["latency_ms"] > 0).all()


class KeywordRouter:
    """A router for AgentModel: 'order' -> track_order, 'human' -> escalate; raises on 'boom'."""

    def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
        texts = [str(t) for t in requests["text"]]
        if "boom" in texts:
            raise ValueError("the router cannot route 'boom'")
        tools = ["escalate_to_human" if "human" in t else "track_order" for t in texts]
        return pd.DataFrame({"tool": tools, "confidence": [0.8] * len(texts)})


def test_tracing_errors_and_samples_with_the_full_path(registry):
    import mlflow

    from agentops_pipelines.agent.model import AgentModel
    from agentops_pipelines.serving.tracing import Tracer

    agent = AgentModel("tracing_agent", KeywordRouter(), ("orders_30d",), {}, "escalate_to_human",
                       "Started {{tool}}.", "prompts:/answer/1")  # fmt: skip
    model = fake(
        "7",
        lambda df: agent.predict(None, df),
        agent="tracing_agent",
        predict_with_features=agent.predict_with_features,
        predict_with_steps=agent.predict_with_steps,
    )
    predictions, features = agent.predict_with_features(pd.DataFrame({"text": ["human please"]}))
    assert predictions["escalated"].tolist() == [True] and features.to_dict("list") == {
        "orders_30d": [0]
    }

    results: list[tuple[str, str]] = []
    tracer = Tracer("staging", sample_rate=0.0, experiment="serving-test",
                    on_result=lambda reason, result: results.append((reason, result)))  # fmt: skip
    state = ServingState("staging", tracer=tracer.start())
    state.swap(model)
    ok = handle_invocations(state, records({"text": "where is my order", "customer_id": "C1"}), JSON, "t-ok")  # fmt: skip
    tracer.sample_rate, tracer.max_per_second, tracer._budget = 1.0, 0, None
    sampled = handle_invocations(state, records({"text": "a human please", "customer_id": "C2"}), JSON, "t-sampled")  # fmt: skip
    failed = handle_invocations(state, records({"text": "boom", "customer_id": "C3"}), JSON, "t-error")  # fmt: skip
    assert (ok.status, sampled.status, failed.status) == (200, 200, 500)
    tracer.close(timeout=60)
    assert sorted(results) == [("error", "logged"), ("sampled", "logged")]

    experiment = mlflow.get_experiment_by_name("serving-test").experiment_id
    traces = mlflow.search_traces(
        locations=[experiment],
        filter_string="tags.`agentops.environment` = 'staging'",
        return_type="list",
        flush=True,
    )
    by_request = {t.info.tags["agentops.request_id"]: t for t in traces}
    assert set(by_request) == {"t-sampled", "t-error"}  # un-sampled successes are not traced
    good, bad = by_request["t-sampled"], by_request["t-error"]
    assert {
        k: good.info.tags[k]
        for k in ("agentops.model_version", "agentops.role", "agentops.trace_reason")
    } == {  # fmt: skip
        "agentops.model_version": "7",
        "agentops.role": "stable",
        "agentops.trace_reason": "sampled",
    }
    assert good.info.client_request_id == "t-sampled"
    spans = {s.name: s for s in good.data.spans}
    assert [s.name for s in good.data.spans][0] == "invocations"
    assert {"parse", "routing", "tracing_agent", "feature_lookup", "route",
            "tool:escalate_to_human", "answer"} <= set(spans)  # fmt: skip
    root = spans["invocations"]
    for name in ("parse", "routing", "tracing_agent", "answer"):  # the request's own times
        assert root.start_time_ns <= spans[name].start_time_ns <= spans[name].end_time_ns <= root.end_time_ns
    assert spans["route"].outputs["tool"] == ["escalate_to_human"]
    assert spans["routing"].outputs == {"role": "stable", "version": "7"}
    assert bad.info.tags["agentops.trace_reason"] == "error"
    assert str(bad.info.state).endswith("ERROR")
    assert "cannot route 'boom'" in {s.name: s for s in bad.data.spans}["invocations"].status.description
    found = mlflow.search_traces(locations=[experiment], return_type="list",
                                 filter_string="tags.`agentops.request_id` = 't-sampled'")  # fmt: skip
    assert [t.info.client_request_id for t in found] == ["t-sampled"]


@pytest.mark.slow
def test_metrics_endpoint_counts_requests(deployment):
    labels = {"agent": "test_agent", "environment": "test", "version": "1"}
    before = scrape(deployment.url)
    good = json.dumps({"inputs": [{"text": "where is my order"}]}).encode()
    for _ in range(3):
        assert request(deployment.url, "POST", "/invocations", good, JSON)[0] == 200
    request(deployment.url, "POST", "/invocations", b'{"inputs": [{"text": "boom"}]}', JSON)
    request(deployment.url, "POST", "/invocations", b"{bad", JSON)
    after = scrape(deployment.url)

    def delta(name, **extra):
        key = (name, tuple(sorted((labels | extra).items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("agentops_requests_total", outcome="ok") == 3
    assert delta("agentops_requests_total", outcome="server_error") == 1
    assert delta("agentops_requests_total", outcome="client_error") == 1
    assert delta("agentops_tool_calls_total", tool="track_order") == 3
    assert delta("agentops_errors_total", error_code="INTERNAL_ERROR") == 1
    assert delta("agentops_errors_total", error_code="MALFORMED_REQUEST") == 1
    assert delta("agentops_request_latency_seconds_count") == 5
    assert after[("agentops_model_info", tuple(sorted((labels | {"role": "stable", "model_uri": deployment.model_uri}).items())))] == 1  # fmt: skip
    assert any(name == "process_cpu_seconds_total" for name, _ in after)
    assert not any(name.endswith("_created") for name, _ in after)


@pytest.mark.slow
def test_inference_log_is_flushed_on_stop_and_errors_are_traced(deployer, registry):
    import mlflow

    second = deployer.deploy("second", registry["2"], "2")
    for i in range(5):
        body = json.dumps({"inputs": [{"text": f"order {i}", "customer_id": f"C{i}"}]}).encode()
        assert request(second.url, "POST", "/invocations", body, JSON, {"X-Request-Id": f"log-{i}"})[0] == 200  # fmt: skip
    body = b'{"inputs": [{"text": "boom", "customer_id": "C9"}]}'
    assert request(second.url, "POST", "/invocations", body, JSON, {"X-Request-Id": "log-boom"})[0] == 500  # fmt: skip

    # the failed request is traced (sampling is off: errors always are), tagged and findable
    experiment = mlflow.get_experiment_by_name("serving-test").experiment_id
    deadline, traces = time.monotonic() + 30, []
    while not traces and time.monotonic() < deadline:
        traces = mlflow.search_traces(
            locations=[experiment],
            filter_string="tags.`agentops.request_id` = 'log-boom'",
            return_type="list",
        )
        time.sleep(0.2)
    assert traces, "the failed request was not traced"
    tags = traces[0].info.tags
    assert (tags["agentops.environment"], tags["agentops.model_version"], tags["agentops.role"]) == (
        "second", "2", "stable",
    )  # fmt: skip
    assert str(traces[0].info.state).endswith("ERROR")
    assert {s.name for s in traces[0].data.spans} == {"invocations", "parse", "routing", "test_agent",
                                                     "answer"}  # fmt: skip
    assert traces[0].info.client_request_id == "log-boom"

    folder = deployer.inference_log_path("second", registry["2"])
    deployer.stop("second")  # SIGTERM: the server drains and writes what it holds
    today = pd.Timestamp.now(tz="UTC").date()
    df = read_inference_log(folder, today, today)
    assert sorted(df["request_id"]) == ["log-0", "log-1", "log-2", "log-3", "log-4", "log-boom"]
    row = df.set_index("request_id").loc["log-3"]
    assert (row["customer_id"], row["text"], row["tool"], row["model_version"], row["role"]) == (
        "C3", "order 3", "track_order", "2", "stable",
    )  # fmt: skip
    assert row["confidence"] == 0.9 and row["status"] == 200 and row["environment"] == "second"
    assert df.set_index("request_id").loc["log-boom", "status"] == 500
    log = deployer.files("second", MODEL_NAME).log.read_text()
    assert "inference log:" in log and "stopped (exit code 0)" in log

def test_a_bad_row_is_cleaned_alone_and_never_costs_its_batch(tmp_path):
    counts: dict[str, int] = {}
    writer = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600,
                                on_rows=lambda r, n: counts.update({r: counts.get(r, 0) + n}))  # fmt: skip
    now = time.time()
    for i, text in enumerate(["fine", "bad \ud800 surrogate", "also fine"]):
        frame = pd.DataFrame({"text": [text], "customer_id": [f"C{i}"]})
        writer.append(LogEntry(now, f"r{i}", "stable", "1", 200, None, 1.0, frame,
                               pd.DataFrame({"tool": ["x"]}), None))  # fmt: skip
    writer.flush()
    today = pd.Timestamp.now(tz="UTC").date()
    df = read_inference_log(tmp_path, today, today)
    assert df["request_id"].tolist() == ["r0", "r1", "r2"]
    assert df["text"].tolist() == ["fine", "bad ? surrogate", "also fine"]
    assert counts == {"cleaned": 1, "written": 3}


@pytest.mark.slow
def test_a_poisoned_request_does_not_erase_other_rows_and_a_crash_loses_about_a_second(
    deployer, registry
):
    deployed = deployer.deploy("logged", registry["1"], "1")
    folder = deployer.inference_log_path("logged", registry["1"])
    bodies = [json.dumps({"inputs": [{"text": f"order {i}", "customer_id": f"C{i}"}]}).encode()
              for i in range(20)]  # fmt: skip
    bodies[7] = b'{"inputs": [{"text": "order \\ud800", "customer_id": "C7"}]}'  # a lone surrogate
    for i, body in enumerate(bodies):
        status, _, _ = request(deployed.url, "POST", "/invocations", body, JSON, {"X-Request-Id": f"p-{i}"})
        assert status == 200
    time.sleep(2.0)  # the flush interval is about a second
    os.kill(deployed.pid, signal.SIGKILL)  # a crash: no chance to flush anything more
    deadline = time.monotonic() + 10
    while deployer.status("logged") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    today = pd.Timestamp.now(tz="UTC").date()
    df = read_inference_log(folder, today, today)
    assert sorted(df["request_id"]) == sorted(f"p-{i}" for i in range(20))
    assert df.set_index("request_id").loc["p-7", "text"] == "order ?"
    deployer.stop("logged")

@pytest.mark.slow
def test_traces_of_the_served_request_and_failed_exports_are_counted_as_failed(registry, tmp_path):
    import mlflow

    server = Server(tmp_path / "traced", registry["1"], "1", "--trace-sample-rate", "1",
                    "--trace-max-per-second", "1000", tracing=True)  # fmt: skip
    try:
        for i in range(3):
            body = json.dumps({"inputs": [{"text": f"my order {i}", "customer_id": f"C{i}"}]}).encode()
            assert request(server.url, "POST", "/invocations", body, JSON, {"X-Request-Id": f"tr-{i}"})[0] == 200
        key = ("agentops_traces_total", (("environment", "test"), ("reason", "sampled"), ("result", "logged")))
        deadline = time.monotonic() + 30
        while scrape(server.url).get(key, 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scrape(server.url).get(key, 0) == 3
    finally:
        server.stop()
    experiment = mlflow.get_experiment_by_name("serving-test").experiment_id
    found = mlflow.search_traces(locations=[experiment], return_type="list",
                                 filter_string="tags.`agentops.request_id` = 'tr-1'")  # fmt: skip
    assert len(found) == 1 and found[0].info.client_request_id == "tr-1"
    assert [s.name for s in found[0].data.spans][0] == "invocations"
    assert found[0].info.tags["agentops.model_version"] == "1"

    # the tracking store is unreachable: the exports fail and are counted as such
    broken = Server(tmp_path / "broken", registry["1"], "1", "--trace-sample-rate", "1",
                    "--trace-max-per-second", "1000", tracing=True,
                    env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens there
                         "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})  # fmt: skip
    try:
        for i in range(2):
            body = json.dumps({"inputs": [{"text": f"order {i}"}]}).encode()
            assert request(broken.url, "POST", "/invocations", body, JSON)[0] == 200
        failed = ("agentops_traces_total", (("environment", "test"), ("reason", "sampled"), ("result", "failed")))
        logged = ("agentops_traces_total", (("environment", "test"), ("reason", "sampled"), ("result", "logged")))
        deadline = time.monotonic() + 60  # each failed export waits on MLflow's client (19 s in all under load)
        while scrape(broken.url).get(failed, 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = scrape(broken.url)
        assert (after.get(failed, 0), after.get(logged, 0)) == (2, 0)
    finally:
        broken.stop()


def test_the_trace_rate_cap_lets_a_burst_through_then_refills():
    """``max_per_second`` is a rate, with as many at once: two requests served less than
    1/max_per_second apart both keep their traces. Until 2026-12-05 the cap was one trace per
    1/max_per_second seconds, so when the served path got faster than 1 ms a request, the second
    of two sequential requests lost its trace at 1000 a second."""
    from agentops_pipelines.serving.tracing import Tracer

    results: list[tuple[str, str]] = []
    tracer = Tracer("dev", mode="thread", max_per_second=5,
                    on_result=lambda reason, result: results.append((reason, result))).start()
    try:
        assert [tracer.admit("sampled") for _ in range(6)] == [True] * 5 + [False]
        assert results == [("sampled", "dropped")]
        time.sleep(0.25)  # a fifth of a second: one more
        assert tracer.admit("sampled") is True
        assert tracer.admit("sampled") is False
    finally:
        tracer.close()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _started(pid: int) -> int:
    from pathlib import Path

    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # starttime


@pytest.mark.slow
def test_a_killed_trace_exporter_shows_in_metrics_and_stats_and_requests_go_on(deployer, registry):
    """The exporter (the serving process's one writer to MLflow) cannot be restarted from a
    confined process: its death must be visible (gauge, /admin/stats, alert), never silent."""
    from pathlib import Path

    deployment = deployer.deploy("exporter", registry["1"], "1")
    labels = (("agent", MODEL_NAME), ("environment", "exporter"))
    assert scrape(deployment.url)[("agentops_trace_exporter_up", labels)] == 1.0
    # the serving process (under its supervisor, if any), then its first spawned child: the
    # exporter, started before the process confined itself and before its other helpers
    server = next(p for p in [deployment.pid, *_children(deployment.pid)]
                  if b"agentops_pipelines.serving" in Path(f"/proc/{p}/cmdline").read_bytes())
    helpers = [c for c in _children(server) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    exporter = min(helpers, key=_started)  # not multiprocessing's resource tracker
    os.kill(exporter, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while scrape(deployment.url)[("agentops_trace_exporter_up", labels)] != 0.0:
        assert time.monotonic() < deadline, "the exporter's death never showed"
        time.sleep(0.2)
    assert deployer.stats("exporter")["trace_exporter"] == "down"
    log = Path(deployer.state_dir) / MODEL_NAME / "exporter" / "serving.log"
    while f"the trace exporter (pid {exporter}) is gone" not in log.read_text():
        assert time.monotonic() < deadline + 5, "the serving log does not say the exporter died"
        time.sleep(0.2)
    good = json.dumps({"inputs": [{"text": "where is my order"}]}).encode()
    assert request(deployment.url, "POST", "/invocations", good, JSON)[0] == 200
    deployer.stop("exporter")
