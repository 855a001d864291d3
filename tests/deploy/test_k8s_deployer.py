"""The KubernetesDeployer resource (resources/kubernetes_deployer.py) against a Kubernetes API.

Kubernetes cannot run here and the official client has no fake, so the deployer reaches a small
in-process API server (fake_kube_api.py) through a kubeconfig and the real ``kubernetes`` client:
discovery, server-side apply, label-selected lists, 404s and deletes go over HTTP as they would to
a cluster. Its stats read a stand-in Prometheus over HTTP the same way.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from agentops_pipelines.k8s.stats import stats_queries
from agentops_pipelines.resources.deployers import Deployer, DeploymentError
from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer

from .common import AGENT, ENVIRONMENTS, V1, V2, V3, prometheus_answers
from .fake_kube_api import TRUE, FakeKubeAPI

SECRET = ("Secret", "agentops-prod", "support-agent-serving-admin")
CANARY = "support-agent-prod-canary"


def admin_secret(namespace: str, token: str) -> dict:
    """What `kubectl create secret generic support-agent-serving-admin --from-literal=token=...` makes."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "support-agent-serving-admin", "namespace": namespace},
            "data": {"token": base64.b64encode(token.encode()).decode()}}


@contextlib.contextmanager
def kube_api(admin_token: str | None = "s3cret", failing=("9",)) -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(failing=failing) as api:
        if admin_token is not None:
            for environment in ENVIRONMENTS:
                api.put(admin_secret(f"agentops-{environment}", admin_token))
        yield api


@pytest.fixture(autouse=True)
def _discovery_cache_in_tmp(tmp_path, monkeypatch):
    """The client caches discovery in the temp folder, by server URL: keep it per test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def cluster():
    with kube_api() as api:
        yield api


@pytest.fixture
def connect(tmp_path):
    def connect(api: FakeKubeAPI, **fields) -> KubernetesDeployer:
        kubeconfig = api.kubeconfig(tmp_path / f"kubeconfig-{api.url.rsplit(':', 1)[1]}")
        fields.setdefault("agent", AGENT)  # a deployer of one agent; tests/isolation has several
        return KubernetesDeployer(kubeconfig=str(kubeconfig), in_cluster=False, rollout_timeout_s=5,
                                  poll_interval_s=0.01, **fields)
    return connect


@pytest.fixture
def deployer(cluster, connect):
    return connect(cluster)


def test_the_deployer_is_a_configurable_resource(monkeypatch):
    assert issubclass(KubernetesDeployer, Deployer)
    monkeypatch.setenv("AGENTOPS_SERVING_IMAGE", "registry.example.com/agentops:1.2.3")
    resource = KubernetesDeployer(image=dg.EnvVar("AGENTOPS_SERVING_IMAGE"), namespace="agents")
    resource = resource.process_config_and_initialize()
    assert resource.spec_for("prod").image == "registry.example.com/agentops:1.2.3"
    assert resource.namespace_of("dev") == resource.namespace_of("prod") == "agents"
    assert KubernetesDeployer().url("prod", AGENT) == "http://support-agent-prod.agentops-prod.svc.cluster.local"
    assert KubernetesDeployer(service_port=8080).url("dev", AGENT).endswith(".agentops-dev.svc.cluster.local:8080")


def test_deploy_update_and_status(deployer, cluster):
    assert deployer.status("prod") is None
    first = deployer.deploy("prod", V1.model_uri, "1")
    assert (first.version, first.model_uri, first.environment) == ("1", V1.model_uri, "prod")
    assert first.url == deployer.url("prod")
    applies = cluster.applies()
    assert {q["fieldManager"][0] for _, q in applies} == {"agentops"}
    assert all(q["force"][0] in TRUE for _, q in applies)
    assert len(applies) == 5
    assert deployer.deploy("prod", V2.model_uri, "2").version == "2"
    assert len(cluster.applies()) == 6  # only the Deployment changed
    assert cluster.applies()[-1][0].endswith("/deployments/support-agent-prod")
    assert deployer.deploy("prod", V2.model_uri, "2") == deployer.status("prod")  # idempotent
    assert len(cluster.applies()) == 6


@pytest.mark.parametrize(("token", "message"), [
    (None, "Secret agentops-prod/support-agent-serving-admin does not exist"),
    ("", "has no non-empty key 'token'"),
    (" \n", "has no non-empty key 'token'"),
])
def test_deploy_refuses_a_missing_or_empty_admin_token(token, message, connect):
    with kube_api(admin_token=token) as api:
        with pytest.raises(DeploymentError, match=message):
            connect(api).deploy("prod", V1.model_uri, "1")
        assert api.applies() == []  # nothing was applied
    # a canary is a rollout too: a token removed since the stable deploy stops it
    with kube_api() as good:
        d = connect(good)
        d.deploy("prod", V1.model_uri, "1")
        applied = len(good.applies())
        if token is None:
            del good.objects[SECRET]
        else:
            good.put(admin_secret("agentops-prod", token))
        with pytest.raises(DeploymentError, match=message):
            d.deploy_canary("prod", V2.model_uri, "2", 0.25)
        assert len(good.applies()) == applied


def test_a_failed_rollout_is_rolled_back(deployer, cluster):
    deployer.deploy("prod", V2.model_uri, "2")
    with pytest.raises(DeploymentError, match="(?s)timed out progressing.*rolled back: version 2 serves") as e:
        deployer.deploy("prod", f"models:/{AGENT}/9", "9")
    assert "CrashLoopBackOff: back-off restarting" in str(e.value)  # the pods' problem, named
    assert cluster.version() == "2"
    assert deployer.status("prod").version == "2"


def test_canary_promote_and_abort(deployer, cluster):
    with pytest.raises(DeploymentError, match="no stable version"):
        deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    deployer.deploy("prod", V1.model_uri, "1")
    stable = deployer.spec_for("prod").replicas  # the HPA's minimum
    assert cluster.objects[("Deployment", "agentops-prod", "support-agent-prod")]["spec"]["replicas"] == stable
    with pytest.raises(ValueError, match="canary share"):
        deployer.deploy_canary("prod", V2.model_uri, "2", 1.0)
    serving = deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    assert (serving.version, serving.canary_version, serving.canary_model_uri) == ("1", "2", V2.model_uri)
    assert serving.canary_share == pytest.approx(1 / (stable + 1))  # one canary pod next to the stable ones
    assert deployer.status("prod") == serving
    applied = len(cluster.applies())
    again = deployer.deploy_canary("prod", V2.model_uri, "2", 0.5)  # only the canary's size changes
    assert again.canary_share == pytest.approx(0.5)
    assert [path for path, _ in cluster.applies()[applied:]] == [
        f"/apis/apps/v1/namespaces/agentops-prod/deployments/{CANARY}"]
    stats = deployer.stats("prod", 60)
    assert stats["stable"]["version"] == "1" and stats["canary"]["version"] == "2"
    assert stats["canary"]["ready_replicas"] == stable and stats["canary_share_requested"] == 0.5
    assert stats["canary"]["requests"] is None and "prometheus_url" in stats["note"]
    promoted = deployer.promote_canary("prod")
    assert (promoted.version, promoted.canary_version, promoted.canary_share) == ("2", None, 0.0)
    assert cluster.version(CANARY) is None
    with pytest.raises(DeploymentError, match="no canary"):
        deployer.promote_canary("prod")
    deployer.deploy_canary("prod", V3.model_uri, "3", 0.1)
    aborted = deployer.abort_canary("prod")
    assert (aborted.version, aborted.canary_version) == ("2", None)
    assert cluster.version(CANARY) is None
    assert deployer.abort_canary("prod") == aborted  # nothing to abort: a no-op
    assert deployer.stats("prod")["canary"] is None
    deployer.stop("prod")
    with pytest.raises(DeploymentError, match="nothing is serving"):
        deployer.abort_canary("prod")


@contextlib.contextmanager
def prometheus(answers_by_query: dict[str, dict]) -> Iterator[str]:
    """A stand-in for Prometheus's instant-query API: the given answer for each known query."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
            known = url.path == "/api/v1/query" and query in answers_by_query
            body = json.dumps(answers_by_query[query] if known else
                              {"status": "error", "errorType": "bad_data", "error": "unknown query"}).encode()
            self.send_response(200 if known else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_stats_from_prometheus(deployer, cluster, connect):
    deployer.deploy("prod", V1.model_uri, "1")
    deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    answers = prometheus_answers(**{"1": (196, 2, 2, 0.005, 0.03, 10), "2": (49, 0, 1, 0.006, 0.05, 3)})
    by_query = {query: answers[name] for name, query in stats_queries(AGENT, "prod", 120).items()}
    with prometheus(by_query) as url:
        result = connect(cluster, prometheus_url=url).stats("prod", 120)
    assert result["source"] == "kubernetes+prometheus" and "note" not in result
    assert result["stable"].items() >= {"version": "1", "requests": 200, "errors": 2, "client_errors": 2,
                                        "error_rate": 0.01, "p50_ms": 5.0, "p99_ms": 30.0}.items()
    assert result["canary"]["requests"] == 50 and result["canary"]["error_rate"] == 0.02

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    degraded = connect(cluster, prometheus_url=closed).stats("prod", 120)
    assert "did not answer" in degraded["note"] and degraded["stable"]["requests"] is None


def test_a_failing_canary_is_removed(deployer, cluster):
    deployer.deploy("prod", V1.model_uri, "1")
    with pytest.raises(DeploymentError, match="(?s)timed out progressing.*rolled back: version 1 serves"):
        deployer.deploy_canary("prod", f"models:/{AGENT}/9", "9", 0.2)
    assert cluster.version(CANARY) is None and cluster.version() == "1"
    assert not [key for key in cluster.objects if key[0] == "Pod"]  # its pods went with it


def test_a_failure_restores_both_the_stable_version_and_the_canary(deployer, cluster):
    deployer.deploy("prod", V1.model_uri, "1")
    deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    canary_before = cluster.objects[("Deployment", "agentops-prod", CANARY)]
    with pytest.raises(DeploymentError, match="rolled back: version 1 serves"):
        deployer.deploy("prod", f"models:/{AGENT}/9", "9")
    with pytest.raises(DeploymentError, match="rolled back: version 1 serves"):
        deployer.deploy_canary("prod", f"models:/{AGENT}/9", "9", 0.5)
    assert cluster.version() == "1" and cluster.version(CANARY) == "2"
    canary_after = cluster.objects[("Deployment", "agentops-prod", CANARY)]
    assert canary_after["spec"] == canary_before["spec"]
    assert canary_after["metadata"]["annotations"] == canary_before["metadata"]["annotations"]


def test_stop_and_a_foreign_model(deployer, cluster):
    deployer.deploy("prod", V1.model_uri, "1")
    deployer.stop("prod")
    assert [key for key in cluster.objects if key[0] != "Secret"] == []  # the Secrets are not ours
    deployer.stop("prod")  # a no-op
    with pytest.raises(DeploymentError, match="other_agent"):
        deployer.deploy("prod", "models:/other_agent/1", "1")


def test_the_stand_in_answers_as_an_api_server_does(cluster, tmp_path):
    """Where the deployer relies on the API server's behaviour, through the official client."""
    from kubernetes import config, dynamic
    from kubernetes.dynamic.exceptions import (
        ApiException,
        BadRequestError,
        ConflictError,
        NotFoundError,
    )

    client = dynamic.DynamicClient(config.new_client_from_config(config_file=str(cluster.kubeconfig(tmp_path / "k"))))
    services = client.resources.get(api_version="v1", kind="Service")
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}},
            "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(NotFoundError):
        client.get(services, name="s", namespace="agentops-dev")
    with pytest.raises(BadRequestError, match="fieldManager is required"):
        client.server_side_apply(services, body=body, namespace="agentops-dev")
    client.server_side_apply(services, body=body, namespace="agentops-dev", field_manager="someone-else")
    with pytest.raises(ConflictError):  # another manager's object: only with force
        client.server_side_apply(services, body=body, namespace="agentops-dev", field_manager="agentops")
    client.server_side_apply(services, body=body, namespace="agentops-dev", field_manager="agentops",
                             force_conflicts=True)  # the same fields: all of them are agentops's now
    live = client.get(services, name="s", namespace="agentops-dev").to_dict()
    assert [f["manager"] for f in live["metadata"]["managedFields"]] == ["agentops"]
    dropped = copy.deepcopy(body)
    del dropped["metadata"]["labels"]["b"]
    client.server_side_apply(services, body=dropped, namespace="agentops-dev", field_manager="agentops",
                             force_conflicts=True)
    live = client.get(services, name="s", namespace="agentops-dev").to_dict()
    assert live["metadata"]["labels"] == {"a": "1"}  # what its only manager no longer applies is gone
    listed = client.get(services, namespace="agentops-dev", label_selector="a=1").to_dict()["items"]
    assert [o["metadata"]["name"] for o in listed] == ["s"]
    assert client.get(services, namespace="agentops-dev", label_selector="a=2").to_dict()["items"] == []
    client.delete(services, name="s", namespace="agentops-dev", body={"propagationPolicy": "Background"})
    with pytest.raises(ApiException) as gone:
        client.delete(services, name="s", namespace="agentops-dev")
    assert gone.value.status == 404
