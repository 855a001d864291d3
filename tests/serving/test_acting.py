"""Agents that act, over HTTP on a real serving process (issue 12): the served request runs its
tools against a real SQLite system of record, a retried request never refunds twice, invalid tool
arguments fail a traced step, online evaluation counts scorer failures in /metrics and collects
the flagged requests into an MLflow evaluation dataset, and a shadow challenger never answers a
client nor writes, while its comparison becomes tags on its version."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import AGENT, register_versions
from tests.serving.support import AUTH, JSON, Server, request, scrape

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def acting(tmp_path_factory):
    import mlflow

    from agentops_pipelines.agent.scorers import golden_cases
    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    tmp = tmp_path_factory.mktemp("acting")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(name, uri)
        versions = register_versions(uri, 2)
        sor = SystemOfRecord(f"sqlite:///{tmp}/system_of_record.db").ensure()
        cases = golden_cases(sor, 120)
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "AGENTOPS_SOR_URL": sor.url,
               "AGENTOPS_REFUND_LIMIT": "100", "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE": "1.0"}
        server = Server(tmp / "server", f"models:/{AGENT}/{versions[0]}", versions[0], "--trace-sample-rate",
                        "0", "--trace-experiment", "fixtures", tracing=True, env=env)
        try:
            yield SimpleNamespace(url=server.url, sor=sor, cases=cases, versions=versions, server=server,
                                  tracking_uri=uri)
        finally:
            server.stop()
            sor.dispose()
            mlflow.set_tracking_uri(None)


def ask(url: str, text: str, customer_id: str, request_id: str | None = None) -> tuple[int, Any, dict]:
    headers = {"X-Request-Id": request_id} if request_id else {}
    status, head, body = request(url, "POST", "/invocations",
                                 json.dumps({"dataframe_records": [{"text": text, "customer_id": customer_id}]}).encode(),
                                 JSON, headers)
    return status, head, body["predictions"][0] if status == 200 else body


def count(sor, sql: str, **params) -> int:
    with sor.read() as conn:
        return int(conn.execute(sa.text(sql), params).scalar())


def case(acting, category: str, k: int = 0):
    return [c for c in acting.cases if c.category == category][k]


def test_a_retried_request_never_refunds_twice(acting):
    c = case(acting, "refund")
    order = c.expected["arguments"]["order_id"]
    text = f"refund order #{order} please"
    assert count(acting.sor, "select count(*) from refunds where order_id = :o", o=order) == 0
    status, head, first = ask(acting.url, text, c.customer_id, "refund-retry-1")
    assert status == 200 and head["X-Request-Id"] == "refund-retry-1"
    assert (first["tool"], first["outcome"]) == ("request_refund", "resolved"), first
    assert "RF-refund-retry-1" in first["answer"] and order in first["answer"]
    # the client retries (a timeout on its side): the same request id replays, nothing is written
    status, _, again = ask(acting.url, text, c.customer_id, "refund-retry-1")
    assert status == 200 and again["answer"] == first["answer"]
    assert count(acting.sor, "select count(*) from refunds where order_id = :o", o=order) == 1
    # a new request for the same order is a new decision: the order is fully refunded by now
    _, _, other = ask(acting.url, text, c.customer_id, "refund-retry-2")
    assert other["outcome"] == "rejected" and "already fully refunded" in other["answer"]
    assert count(acting.sor, "select count(*) from refunds where order_id = :o", o=order) == 1
    assert "_trajectory" not in first  # the trajectory is for the trace, never the client


def test_retries_that_arrive_together_refund_once(acting):
    """A client that retries before its first attempt answered (a short timeout) sends the same
    X-Request-Id while the first is in flight: the server micro-batches them, and each must still
    be the same request, replayed, never a second refund."""
    from concurrent.futures import ThreadPoolExecutor

    c = case(acting, "refund", 1)
    order = c.expected["arguments"]["order_id"]
    text = f"please refund $5 on order #{order}"
    import http.client
    import threading
    from urllib.parse import urlsplit

    body = json.dumps({"dataframe_records": [{"text": text, "customer_id": c.customer_id}]}).encode()
    parts = urlsplit(acting.url)
    conns = [http.client.HTTPConnection(parts.hostname, parts.port, timeout=30) for _ in range(16)]
    for conn in conns:
        conn.connect()
    barrier = threading.Barrier(len(conns))

    def send(conn):  # connected in advance, released together: the server reads them in one go
        barrier.wait()
        conn.request("POST", "/invocations", body, {"Content-Type": JSON, "X-Request-Id": "impatient-1"})
        response = conn.getresponse()
        return response.status, None, json.loads(response.read())["predictions"][0]

    with ThreadPoolExecutor(len(conns)) as pool:
        answers = list(pool.map(send, conns))
    assert {status for status, _, _ in answers} == {200}
    assert {a["answer"] for _, _, a in answers} == {answers[0][2]["answer"]}, [a["answer"] for _, _, a in answers]
    assert count(acting.sor, "select count(*) from refunds where order_id = :o", o=order) == 1


def test_a_refund_above_the_limit_is_handed_over(acting):
    c = case(acting, "refund_above_limit")
    order = c.expected["arguments"]["order_id"]
    _, _, answer = ask(acting.url, f"refund order #{order} please", c.customer_id, "refund-big-1")
    assert answer["outcome"] == "handed_over" and answer["escalated"] is True
    calls = json.loads(answer["tool_call"])
    assert [(x["tool"], x["outcome"]) for x in calls] == [("request_refund", "needs_handover"),
                                                           ("escalate_to_human", "executed")]
    assert count(acting.sor, "select count(*) from refunds where order_id = :o", o=order) == 0
    assert count(acting.sor, "select count(*) from tickets where request_id = 'refund-big-1'") == 1


def test_another_customers_request_id_reveals_nothing_of_their_request(acting):
    """A client that sends a request id another customer used (guessed, or a front end's
    predictable ids) is refused, and its answer holds nothing of the first request."""
    a, b = case(acting, "password", 0), case(acting, "password", 1)
    assert a.customer_id != b.customer_id
    private = "I need a person: my card visa ending 4242 was stolen, call me on 07700 900123"
    status, _, first = ask(acting.url, private, a.customer_id, "shared-id-1")
    assert status == 200 and first["outcome"] in ("handed_over", "resolved"), first
    status, _, other = ask(acting.url, private.replace("4242", "1111"), b.customer_id, "shared-id-1")
    assert status == 200 and other["outcome"] == "rejected" and "X-Request-Id" in other["answer"], other
    shown = json.dumps(other)
    assert a.customer_id not in shown and "4242" not in shown, shown


def test_request_ids_are_bounded_and_plain(acting):
    c = case(acting, "password")
    for bad in ("x" * 101, "a b", "semi;colon"):
        status, head, _ = ask(acting.url, "reset my password please", c.customer_id, bad)
        assert status == 200 and head["X-Request-Id"] != bad and len(head["X-Request-Id"]) == 32


def test_invalid_arguments_fail_the_step_with_a_traced_error(acting, monkeypatch, capsys):
    import mlflow

    from agentops_pipelines import cli

    c = case(acting, "address_missing")
    status, _, answer = ask(acting.url, "I moved, please update my address", c.customer_id, "bad-args-1")
    assert status == 200 and answer["outcome"] == "invalid_arguments"
    assert "address: Field required" in answer["answer"]
    mlflow.set_tracking_uri(acting.tracking_uri)
    experiment = mlflow.get_experiment_by_name("fixtures").experiment_id
    found: list = []
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:  # flagged traces export in the background
        found = mlflow.search_traces(locations=[experiment], return_type="list",
                                     filter_string="tags.`agentops.request_id` = 'bad-args-1'")
        time.sleep(0.5)
    assert found, acting.server.log()[-3000:]
    trace = found[0]
    assert trace.info.tags["agentops.trace_reason"] == "flagged"
    spans = {s.name: s for s in trace.data.spans}
    assert {"fetch_context", "decide", "extract_arguments", "call_tool:update_shipping_address",
            "observe", "answer"} <= set(spans)
    tool = spans["call_tool:update_shipping_address"]
    assert str(tool.status.status_code).endswith("ERROR") and "address: Field required" in tool.status.description
    assert tool.inputs == {"tool": "update_shipping_address", "arguments": {"customer_id": c.customer_id}}
    assert tool.outputs["outcome"] == "invalid_arguments"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", acting.tracking_uri)
    assert cli.main(["trace", "bad-args-1"]) == 0
    printed = capsys.readouterr().out
    assert "call_tool:update_shipping_address [TOOL]" in printed and "ERROR: address: Field required" in printed
    assert cli.main(["trace", "no-such-request"]) == 1
    assert cli.main(["trace", "bad id'; drop"]) == 2


def test_online_evaluation_counts_failures_and_collects_flagged_requests(acting):
    c = case(acting, "address_missing", 1)
    ask(acting.url, "I need to change my delivery address", c.customer_id, "online-eval-1")
    labels = {"agent": AGENT, "environment": "test", "version": acting.versions[0]}

    def failures() -> float:
        return sum(v for (name, items), v in scrape(acting.url).items()
                   if name == "agentops_online_scorer_failures_total"
                   and dict(items) == {**labels, "scorer": "tool_success"})

    deadline = time.monotonic() + 30
    while failures() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert failures() >= 1
    scored = scrape(acting.url)[("agentops_online_scored_total", tuple(sorted(labels.items())))]
    assert scored >= 1

    def status() -> dict:
        return request(acting.url, "POST", "/admin/shadow", b'{"action": "status"}', JSON, AUTH)[2]

    from mlflow.genai.datasets import get_dataset

    def flagged_ids() -> list[str]:  # earlier tests in this module may have flagged requests too
        if status()["dataset_rows"] < 1:
            return []
        return [r["request_id"] for r in get_dataset(name=f"{AGENT}-flagged").to_df()["inputs"]]

    deadline = time.monotonic() + 30
    while "online-eval-1" not in flagged_ids() and time.monotonic() < deadline:  # flushed every 5 s
        time.sleep(0.5)
    assert "online-eval-1" in flagged_ids()


def test_shadow_never_answers_never_writes_and_leaves_evidence(acting):
    import mlflow

    challenger = acting.versions[1]
    body = json.dumps({"action": "load", "model_uri": f"models:/{AGENT}/{challenger}", "version": challenger})
    assert request(acting.url, "POST", "/admin/shadow", body.encode(), JSON)[0] == 401
    other = json.dumps({"action": "load", "model_uri": "models:/other_agent/1", "version": "1"})
    assert request(acting.url, "POST", "/admin/shadow", other.encode(), JSON, AUTH)[0] == 403
    status, _, loaded = request(acting.url, "POST", "/admin/shadow", body.encode(), JSON, AUTH)
    assert status == 200 and loaded["shadow_version"] == challenger, loaded

    writes = ("select count(*) from tool_calls where request_id like 'shadow-%'",
              "select count(*) from refunds where request_id like 'shadow-%'",
              "select count(*) from tickets where request_id like 'shadow-%'")
    sent = []
    for k, c in enumerate([case(acting, "refund", 2), case(acting, "refund_above_limit", 1),
                           case(acting, "escalate"), case(acting, "password", 1), case(acting, "cancel")]):
        order = c.expected["arguments"].get("order_id", "")
        text = {"refund": f"refund order #{order} please", "refund_above_limit": f"refund order #{order} please",
                "cancel": f"please cancel my order #{order}"}.get(c.category, c.text)
        status, head, answer = ask(acting.url, text, c.customer_id, f"shadowed-{k}")
        assert status == 200 and head["X-Model-Version"] == acting.versions[0]
        sent.append(answer)
    primary_refunds = count(acting.sor, "select count(*) from refunds where request_id like 'shadowed-%'")
    assert primary_refunds == sum(1 for a in sent if a["tool"] == "request_refund" and a["outcome"] == "resolved")

    def shadow() -> dict:
        return request(acting.url, "POST", "/admin/shadow", b'{"action": "status"}', JSON, AUTH)[2]["shadow"]

    deadline = time.monotonic() + 60
    while shadow()["requests"] < len(sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    summary = shadow()
    assert summary["requests"] == len(sent) and summary["challenger_errors"] == 0
    assert summary["tool_agreement"] == 1.0  # the same router: the same tools, dry-run
    outcomes = {dict(items)["outcome"]: v for (name, items), v in scrape(acting.url).items()
                if name == "agentops_shadow_requests_total" and dict(items)["challenger_version"] == challenger}
    assert sum(outcomes.values()) == len(sent), outcomes  # /metrics counts the comparison too
    assert [count(acting.sor, sql) for sql in writes] == [0, 0, 0]  # the challenger wrote nothing

    status, _, done = request(acting.url, "POST", "/admin/shadow", b'{"action": "unload", "record": true}', JSON, AUTH)
    assert status == 200 and done["shadow_version"] is None
    tags = mlflow.MlflowClient(acting.tracking_uri).get_model_version(AGENT, challenger).tags
    assert tags["agentops.shadow.requests"] == str(len(sent))
    assert tags["agentops.shadow.primary_version"] == acting.versions[0]
    assert tags["agentops.shadow.verdict"] == "too_few"  # under 30 paired requests
    assert float(tags["agentops.shadow.mcnemar_p"]) == 1.0


def test_a_dev_serving_process_acts_on_devs_system_of_record_only(acting, tmp_path, monkeypatch):
    """Every registered version reaches dev without approval: its refunds must land in dev's own
    system of record, never prod's, and the dev process must not even hold prod's URL (it may
    carry a password). The deployer and the server are the real ones."""
    from agentops_pipelines.agent.system_of_record import SystemOfRecord
    from agentops_pipelines.resources.deployers import LocalProcessDeployer

    home = tmp_path / "agentops"
    prod = SystemOfRecord(f"sqlite:///{tmp_path}/prod-only-sor.db").ensure()
    monkeypatch.setenv("AGENTOPS_HOME", str(home))
    monkeypatch.setenv("AGENTOPS_SOR_URL", prod.url)  # prod's, set in the deployer's environment
    monkeypatch.delenv("AGENTOPS_SOR_URL_DEV", raising=False)  # dev: its own file under the state folder
    deployer = LocalProcessDeployer(state_dir=str(tmp_path / "serving"), mlflow_tracking_uri=acting.tracking_uri,
                                    trace_sample_rate=0.0, health_timeout_s=120)
    deployed = deployer.deploy("dev", f"models:/{AGENT}/{acting.versions[1]}", acting.versions[1])
    dev = SystemOfRecord(f"sqlite:///{home}/system_of_record/dev/system_of_record.db")
    try:
        environ = dict(item.split("=", 1) for item in
                       open(f"/proc/{deployed.pid}/environ", "rb").read().decode().split("\0") if "=" in item)
        assert environ["AGENTOPS_SOR_URL"] == dev.url
        assert prod.url not in environ.values() and not any("prod-only-sor" in v for v in environ.values())
        c = case(acting, "refund", 2)
        order = c.expected["arguments"]["order_id"]
        status, _, answer = ask(deployed.url, f"refund order #{order} please", c.customer_id, "dev-refund-1")
        assert status == 200 and (answer["tool"], answer["outcome"]) == ("request_refund", "resolved"), answer
        assert count(dev, "select count(*) from refunds where order_id = :o", o=order) == 1  # seeded like prod's
        assert count(prod, "select count(*) from refunds") == 0  # prod's customers untouched
    finally:
        deployer.stop("dev", agent=AGENT)
        prod.dispose()
        dev.dispose()


def _evaluation_worker(server_pid: int, timeout: float = 60.0) -> int:
    """The serving process's evaluation worker, once it runs in a session of its own
    (``online_eval.background_priority``): the child whose session id is its own pid."""
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = set()
        for task in Path(f"/proc/{server_pid}/task").iterdir():
            children |= {int(c) for c in (task / "children").read_text().split()}
        for pid in children:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[3]) == pid:  # its session
                return pid
        time.sleep(0.1)
    raise AssertionError("no evaluation worker in a session of its own")


def test_a_server_whose_evaluation_worker_died_still_stops_cleanly(acting, tmp_path):
    """A stop that finds the evaluation worker gone (killed, or hit by a SIGTERM to the process
    group before it left it) raised ConnectionRefusedError out of the server's shutdown: a
    traceback, exit code 1, and the supervisor's "stopped" never logged."""
    import os
    import signal

    env = {"MLFLOW_TRACKING_URI": acting.tracking_uri, "MLFLOW_REGISTRY_URI": acting.tracking_uri,
           "AGENTOPS_SOR_URL": acting.sor.url, "AGENTOPS_REFUND_LIMIT": "100"}
    server = Server(tmp_path / "server", f"models:/{AGENT}/{acting.versions[0]}", acting.versions[0],
                    "--trace-sample-rate", "0", env=env)
    try:
        os.kill(_evaluation_worker(server.process.pid), signal.SIGKILL)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log()[-3000:]
    finally:
        server.process.kill()
    log = server.log()
    assert "Traceback" not in log and "stopped (exit code 0)" in log
