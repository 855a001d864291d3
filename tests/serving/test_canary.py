"""Traffic split and canary health: sticky split, per-role stats, promotion and abort, and a
health check no client can game (client errors count for nothing; no traffic is no verdict)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from agentops_pipelines.resources.deployers import Deployment, DeploymentError
from agentops_pipelines.rollout import (
    RolloutPolicy,
    enough_traffic,
    health_problem,
    rollout,
    served_requests,
)
from agentops_pipelines.serving.admin import (
    handle_admin_abort,
    handle_admin_load,
    handle_admin_promote,
    handle_admin_stats,
)
from agentops_pipelines.serving.handlers import handle_health, handle_invocations
from agentops_pipelines.serving.inference_log import InferenceLogWriter, read_inference_log
from agentops_pipelines.serving.server import parse_args
from agentops_pipelines.serving.state import ServingState, stats_payload
from agentops_pipelines.serving.traffic import OutcomeRing, bucket, goes_to_canary
from tests.serving.support import (
    JSON,
    MODEL_NAME,
    TOKEN,
    fake,
    header_of,
    loader,
    metric_samples,
    metric_value,
    records,
    request,
)

BEARER = f"Bearer {TOKEN}"


def test_traffic_split_is_sticky_uniform_and_monotonic():
    customers = [f"C{i:05d}" for i in range(20_000)]
    assert bucket("C00001") == bucket("C00001") and 0 <= bucket("C00001") < 1
    on_10 = {c for c in customers if goes_to_canary(0.10, c, "any")}
    on_30 = {c for c in customers if goes_to_canary(0.30, c, "other")}
    assert abs(len(on_10) / len(customers) - 0.10) < 0.01
    assert abs(len(on_30) / len(customers) - 0.30) < 0.015
    assert on_10 <= on_30  # raising the share only moves customers to the canary
    # the request id does not matter when there is a customer id
    assert all(
        goes_to_canary(0.1, c, "r1") == goes_to_canary(0.1, c, "r2") for c in customers[:500]
    )
    # without one, the request id decides
    requests = [f"req-{i}" for i in range(10_000)]
    share = sum(goes_to_canary(0.25, None, r) for r in requests) / len(requests)
    assert abs(share - 0.25) < 0.015
    assert {goes_to_canary(0.25, float("nan"), r) for r in requests[:50]} == {
        goes_to_canary(0.25, "", r) for r in requests[:50]
    }
    assert not any(goes_to_canary(0.0, c, "r") for c in customers[:100])
    assert all(goes_to_canary(1.0, c, "r") for c in customers[:100])


def test_outcome_ring_stats_per_role_and_window():
    now = [1000.0]
    ring = OutcomeRing(capacity=5, clock=lambda: now[0])
    for status, latency in [(200, 5.0), (500, 7.0), (400, 1.0)]:
        ring.add("stable", "1", status, latency)
    ring.add("stable", "0", 200, 99.0)  # a version no longer stable: not counted
    ring.add("canary", "2", 200, 3.0)
    stats = ring.stats(60, {"stable": "1", "canary": "2"})
    assert stats["stable"] == {  # the client error is in neither the error rate nor latencies
        "version": "1",
        "requests": 3,
        "served": 2,
        "errors": 1,
        "client_errors": 1,
        "error_rate": 0.5,
        "p50_ms": 6.0,
        "p99_ms": pytest.approx(6.98),
    }
    assert stats["canary"]["requests"] == 1 and stats["canary"]["p99_ms"] == 3.0
    assert ring.stats(60, {"stable": "1", "canary": None})["canary"] is None
    now[0] += 30
    ring.add("stable", "1", 200, 2.0)  # capacity 5: the oldest outcome falls out
    assert ring.stats(10, {"stable": "1", "canary": None})["stable"]["requests"] == 1
    assert ring.stats(60, {"stable": "1", "canary": None})["stable"]["requests"] == 3
    assert ring.stats(60, {"stable": "9", "canary": None})["stable"] == {
        "version": "9",
        "requests": 0,
        "served": 0,
        "errors": 0,
        "client_errors": 0,
        "error_rate": 0.0,
        "p50_ms": None,
        "p99_ms": None,
    }


def test_canary_split_promote_and_abort():
    models = {f"models:/fake/{v}": fake(v) for v in ("1", "2", "3")}
    state = ServingState("staging", loader=loader(models), admin_token=TOKEN, agent="fake")

    def load(payload: dict):
        return handle_admin_load(state, json.dumps(payload).encode(), JSON, BEARER)

    def serve(customer: str | None, request_id: str | None = None) -> tuple[str, str]:
        row = {"text": "hi"} | ({"customer_id": customer} if customer else {})
        r = handle_invocations(state, records(row), JSON, request_id=request_id)
        assert r.status == 200
        assert json.loads(r.body)["predictions"][0]["answer"] == header_of(r, "X-Model-Version")
        assert header_of(r, "X-Model-Role") is None  # clients are not told
        version = header_of(r, "X-Model-Version")
        return version, "canary" if state.canary and state.canary.version == version else "stable"

    r = load({"model_uri": "models:/fake/2", "version": "2", "role": "canary"})
    assert (r.status, json.loads(r.body)["error_code"]) == (409, "NO_STABLE_VERSION")
    assert handle_admin_promote(state, b"", None, BEARER).status == 409
    assert load({"model_uri": "models:/fake/1", "version": "1"}).status == 200
    r = load({"model_uri": "models:/fake/1", "version": "1", "role": "canary"})
    assert (r.status, json.loads(r.body)["error_code"]) == (409, "CONFLICT")

    r = load({"model_uri": "models:/fake/2", "version": "2", "role": "canary", "canary_share": 0.3})
    payload = json.loads(r.body)
    assert r.status == 200 and payload["swapped"] is True
    assert (payload["version"], payload["canary_version"], payload["canary_share"]) == (
        "1",
        "2",
        0.3,
    )

    customers = [f"C{i:04d}" for i in range(600)]
    first = {c: serve(c) for c in customers}
    assert {first[c] for c in customers} == {("1", "stable"), ("2", "canary")}
    share = sum(role == "canary" for _, role in first.values()) / len(customers)
    assert 0.24 < share < 0.36
    assert all(serve(c) == first[c] for c in customers[:200])  # sticky
    no_customer = Counter(serve(None)[1] for _ in range(400))
    assert 0.2 < no_customer["canary"] / 400 < 0.4
    assert serve(None, "fixed-id") == serve(None, "fixed-id")

    # the same canary again: the share changes, the model is not reloaded
    loaded_at = state.canary.loaded_at
    r = load({"model_uri": "models:/fake/2", "version": "2", "role": "canary", "canary_share": 1.0})
    assert r.status == 200 and json.loads(r.body)["swapped"] is False
    assert state.canary.loaded_at == loaded_at
    assert {serve(c) for c in customers[:50]} == {("2", "canary")}
    stats = json.loads(handle_admin_stats(state, "window=60", BEARER).body)
    assert stats["stable"]["version"] == "1" and stats["canary"]["version"] == "2"
    assert stats["canary"]["requests"] > 0 and stats["canary_share"] == 1.0
    assert handle_admin_stats(state, "window=0", BEARER).status == 400
    assert handle_admin_stats(state, "window=abc", BEARER).status == 400

    r = handle_admin_promote(state, b"", None, BEARER)
    assert r.status == 200
    payload = json.loads(r.body)
    assert (payload["version"], payload["canary_version"], payload["previous_version"]) == (
        "2",
        None,
        "1",
    )
    assert {serve(c) for c in customers[:50]} == {("2", "stable")}

    assert (
        load(
            {"model_uri": "models:/fake/3", "version": "3", "role": "canary", "canary_share": 1}
        ).status
        == 200
    )
    r = handle_admin_abort(state, b"", None, BEARER)
    assert r.status == 200 and json.loads(r.body)["aborted_version"] == "3"
    assert {serve(c) for c in customers[:50]} == {("2", "stable")}
    assert json.loads(handle_admin_abort(state, b"", None, BEARER).body)["aborted_version"] is None  # idempotent

    # a new stable version drops the canary, unless asked to keep it
    load({"model_uri": "models:/fake/3", "version": "3", "role": "canary", "canary_share": 0.5})
    load({"model_uri": "models:/fake/1", "version": "1", "keep_canary": True})
    assert (state.current.version, state.canary.version) == ("1", "3")
    r = load({"model_uri": "models:/fake/1", "version": "1"})
    assert json.loads(r.body)["swapped"] is False and state.canary is None


def test_a_canary_pod_reports_its_model_as_the_canary(tmp_path):
    """On Kubernetes the canary is a Deployment of its own (AGENTOPS_SERVING_ROLE=canary): the
    pod's one model is loaded as stable but reported as the canary everywhere it is counted."""
    writer = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600).start()
    state = ServingState("prod", inference_log=writer, pod_role="canary")
    state.swap(fake("5", agent="support_agent"))
    r = handle_invocations(state, records({"text": "order?"}), JSON, "c-1")
    assert r.status == 200 and header_of(r, "X-Model-Role") is None
    assert metric_value(metric_samples(state), "agentops_model_info", role="canary", version="5") == 1
    stats = stats_payload(state, 60)
    assert stats["stable"] is None and stats["canary"]["requests"] == 1
    assert stats["canary"]["version"] == "5"
    assert json.loads(handle_health(state).body)["pod_role"] == "canary"
    writer.close()
    today = pd.Timestamp.now(tz="UTC").date()
    assert read_inference_log(tmp_path, today, today)["role"].tolist() == ["canary"]
    with pytest.raises(ValueError, match="pod_role"):
        ServingState("prod", pod_role="blue")
    assert parse_args(["--model-uri", "m", "--version", "1", "--environment", "e"]).pod_role == "stable"


@pytest.mark.slow
def test_canary_through_the_deployer(deployer, registry):
    stable = deployer.deploy("canary", registry["1"], "1")
    canary = deployer.deploy_canary("canary", registry["2"], "2", 0.5)
    assert (canary.pid, canary.version, canary.canary_version, canary.canary_share) == (
        stable.pid, "1", "2", 0.5,
    )  # fmt: skip
    assert canary.canary_model_uri == registry["2"]
    assert deployer.status("canary") == canary
    state = json.loads((Path(deployer.state_dir) / MODEL_NAME / "canary" / "state.json").read_text())
    assert (state["canary_version"], state["canary_share"]) == ("2", 0.5)

    def serve(customer: str) -> tuple[str, str, str]:
        body = json.dumps({"inputs": [{"text": "my password", "customer_id": customer}]}).encode()
        status, headers, answer = request(stable.url, "POST", "/invocations", body, JSON)
        assert status == 200
        assert "X-Model-Role" not in headers
        version = headers["X-Model-Version"]
        return version, "canary" if version == "2" and not promoted else "stable", answer["predictions"][0]["answer"]

    promoted = False
    seen = {c: serve(c) for c in (f"C{i:03d}" for i in range(40))}
    assert set(seen.values()) == {("1", "stable", "v1"), ("2", "canary", "v2")}
    assert all(serve(c) == seen[c] for c in list(seen)[:10])  # sticky per customer

    stats = deployer.stats("canary", window_s=60)
    assert stats["environment"] == "canary" and stats["canary_share"] == 0.5
    served = Counter(role for _, role, _ in seen.values())
    assert stats["stable"]["requests"] >= served["stable"] and stats["stable"]["version"] == "1"
    assert stats["canary"]["requests"] >= served["canary"] and stats["canary"]["errors"] == 0
    assert stats["canary"]["p99_ms"] > 0

    promotion = deployer.promote_canary("canary")
    promoted = True
    assert (promotion.version, promotion.canary_version, promotion.canary_share) == ("2", None, 0.0)
    assert {serve(c)[:2] for c in list(seen)[:10]} == {("2", "stable")}
    with pytest.raises(DeploymentError, match="HTTP 409"):
        deployer.promote_canary("canary")

    deployer.deploy_canary("canary", registry["1"], "1", 1.0)
    aborted = deployer.abort_canary("canary")
    assert (aborted.version, aborted.canary_version) == ("2", None)
    assert deployer.abort_canary("canary") == aborted  # nothing to abort: a no-op

    deployer.deploy_canary("canary", registry["1"], "1", 0.2)
    rolled_out = deployer.deploy("canary", registry["1"], "1")  # a full rollout drops the canary
    assert (rolled_out.pid, rolled_out.version, rolled_out.canary_version) == (
        stable.pid,
        "1",
        None,
    )

def _stats(served: int, errors: int = 0, client_errors: int = 0, p99: float = 5.0) -> dict:
    return {"version": "2", "requests": served + client_errors, "served": served, "errors": errors,
            "client_errors": client_errors, "p99_ms": p99}  # fmt: skip


def test_health_is_decided_on_server_errors_and_latency_after_enough_requests():
    policy = RolloutPolicy(min_requests=20, max_error_rate=0.05, max_p99_ms=100)
    assert policy.min_requests == RolloutPolicy().min_requests == 20  # the default is not 0
    with pytest.raises(ValueError, match="min_requests"):
        RolloutPolicy(min_requests=0)
    # any number of client errors: not a problem, and not traffic either
    assert health_problem(_stats(25, client_errors=10_000), policy) is None
    assert not enough_traffic(_stats(0, client_errors=10_000), policy)
    assert health_problem(_stats(25, errors=5), policy).startswith("canary error rate 20.0%")
    assert "p99 latency" in health_problem(_stats(25, p99=900), policy)
    assert health_problem(_stats(19, errors=19), policy) is None  # too few to judge yet
    assert not enough_traffic(_stats(19), policy) and enough_traffic(_stats(20), policy)
    # stats from Prometheus have no "served": requests minus client errors
    assert served_requests({"requests": 30, "client_errors": 12}) == 18


def test_an_llm_agents_failed_calls_fail_its_canary_though_its_requests_succeed():
    policy = RolloutPolicy(min_requests=20, max_llm_failure_rate=0.1)
    llm = {"llm_calls": 40, "llm_failures": 6, "llm_failure_reasons": {"timeout": 5, "auth": 1}}
    problem = health_problem(_stats(40) | llm, policy)
    assert problem.startswith("canary LLM calls failing: 6 of 40 (15.0%)") and "timeout 5, auth 1" in problem
    assert health_problem(_stats(40) | llm | {"llm_failures": 4}, policy) is None  # 10%: at the bar
    assert health_problem(_stats(40) | llm | {"llm_calls": 19, "llm_failures": 19}, policy) is None  # too few
    assert health_problem(_stats(40), policy) is None  # a trained router makes no LLM calls


class _Recorded:
    """A deployer whose canary sees the given stats, recording what the rollout does."""

    def __init__(self, canary_stats: dict):
        self.canary_stats = canary_stats
        self.calls: list[str] = []
        self.now = Deployment("prod", "http://x", "models:/a/1", "1", 1, "t")

    def status(self, environment, agent=None):
        return self.now

    def deploy_canary(self, *args):
        self.calls.append("canary")
        return self.now

    def stats(self, environment, window_s, agent=None):
        return {"canary": self.canary_stats}

    def abort_canary(self, environment, agent=None):
        self.calls.append("abort")
        return self.now

    def promote_canary(self, environment, agent=None):
        self.calls.append("promote")
        return self.now


def test_a_canary_without_traffic_bakes_to_its_deadline_and_is_not_promoted():
    deployer, slept = _Recorded(_stats(0)), []
    policy = RolloutPolicy(bake_seconds=10, check_interval_seconds=5, min_requests=20,
                           max_bake_seconds=30)  # fmt: skip
    result = rollout(deployer, "prod", "models:/a/2", "2", policy, log=lambda m: None,
                     sleep=slept.append)  # fmt: skip
    assert not result.succeeded and deployer.calls == ["canary", "abort"]
    assert "served 0 requests in 30 s, fewer than the 20 needed" in result.reason
    assert sum(slept) == 30  # baked on past bake_seconds, up to the deadline
    late = _Recorded(_stats(0))
    late.stats = lambda e, w, agent=None: {"canary": _stats(25 if w > 12 else 3)}  # traffic comes late
    assert rollout(late, "prod", "models:/a/2", "2", policy, log=lambda m: None,
                   sleep=lambda s: None).succeeded  # fmt: skip
    assert late.calls == ["canary", "promote"]


def test_client_errors_cannot_fail_a_canary():
    deployer = _Recorded(_stats(40, client_errors=5_000))
    policy = RolloutPolicy(bake_seconds=10, check_interval_seconds=5)
    result = rollout(deployer, "prod", "models:/a/2", "2", policy, log=lambda m: None,
                     sleep=lambda s: None)  # fmt: skip
    assert result.succeeded and deployer.calls == ["canary", "promote"]


@pytest.mark.slow
def test_on_a_real_server_garbage_does_not_fail_the_canary_and_silence_does_not_pass_it(
    deployer, registry
):
    deployer.deploy("bake", registry["1"], "1")
    url = deployer.status("bake").url
    stop = threading.Event()
    garbage = [b'{"inputs": [{"text": NaN}]}', b"{", b'{"inputs": [{"text": 1}]}',
               b'{"inputs": [{"text": "' + b"x" * 200_000 + b'"}]}']  # fmt: skip

    def attacker() -> None:  # bad requests and huge texts aimed at every customer, so the canary
        i = 0
        while not stop.is_set():
            request(url, "POST", "/invocations", garbage[i % len(garbage)], JSON)
            i += 1

    def client() -> None:
        i = 0
        while not stop.is_set():
            body = json.dumps({"inputs": [{"text": "my order", "customer_id": f"C{i}"}]}).encode()
            assert request(url, "POST", "/invocations", body, JSON)[0] == 200
            i += 1
            time.sleep(0.02)

    policy = RolloutPolicy(canary_share=0.5, bake_seconds=2, check_interval_seconds=0.5,
                           min_requests=10, max_bake_seconds=6)  # fmt: skip
    threads = [threading.Thread(target=attacker) for _ in range(2)]
    threads.append(threading.Thread(target=client))
    for t in threads:
        t.start()
    try:
        result = rollout(deployer, "bake", registry["2"], "2", policy, log=lambda m: None)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert result.succeeded, result.reason
    assert result.checks[-1]["canary"]["client_errors"] > 0  # it was attacked, and it held
    assert deployer.status("bake").version == "2"

    # no traffic at all: never promoted, aborted at the deadline with the reason
    result = rollout(deployer, "bake", registry["1"], "1", policy, log=lambda m: None)
    assert not result.succeeded and "fewer than the 10 needed to judge it" in result.reason
    after = deployer.status("bake")
    assert after.version == "2" and after.canary_version is None
