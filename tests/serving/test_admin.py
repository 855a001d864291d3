"""The admin API: always authenticated, loads only the served agent's registered versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentops_pipelines.serving.admin import (
    handle_admin_abort,
    handle_admin_load,
    handle_admin_promote,
    handle_admin_stats,
)
from agentops_pipelines.serving.state import ServingState, allowed_model_uri, registered_name
from tests.serving.support import JSON, MODEL_NAME, TOKEN, Server, fake, loader, request


def test_every_admin_route_needs_the_token():
    state = ServingState(
        "dev",
        loader=loader({"models:/fake/1": fake("1"), "models:/fake/2": fake("2")}),
        admin_token="s3cret",
        agent="fake",
    )
    body = b'{"model_uri": "models:/fake/1", "version": "1"}'
    assert handle_admin_load(state, body, JSON).status == 401
    assert handle_admin_load(state, body, JSON, "Bearer wrong").status == 401
    assert handle_admin_load(state, body, JSON, "Bearer s3cret").status == 200
    canary = b'{"model_uri": "models:/fake/2", "version": "2", "role": "canary"}'
    assert handle_admin_load(state, canary, JSON, "Bearer s3cret").status == 200
    for call in (
        lambda auth: handle_admin_promote(state, b"", None, auth),
        lambda auth: handle_admin_abort(state, b"", None, auth),
        lambda auth: handle_admin_stats(state, "window=5", auth),
    ):
        assert call(None).status == 401 and call("Bearer nope").status == 401
    assert handle_admin_stats(state, "window=5", "Bearer s3cret").status == 200
    assert state.canary.version == "2"  # nothing was changed by the refused calls


def test_without_a_token_every_admin_call_is_refused():
    state = ServingState("dev", loader=loader({"models:/fake/1": fake("1")}), agent="fake")
    body = b'{"model_uri": "models:/fake/1", "version": "1"}'
    for auth in (None, "Bearer ", "Bearer None", "Basic x"):
        assert handle_admin_load(state, body, JSON, auth).status == 401
    assert state.current is None


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("models:/fake/3", True),
        ("models:/fake@champion", True),
        ("models:/fake/latest", False),
        ("models:/fake/3/../../x", False),
        ("models:/other/3", False),
        ("models:/fake", False),
        ("runs:/0123abcd/model", False),
        ("file:///tmp/evil", False),
        ("/tmp/evil", False),
        ("s3://bucket/model", False),
        ("mlflow-artifacts:/1/model", False),
    ],
)
def test_only_versions_and_aliases_of_the_served_agent(uri, allowed):
    if allowed:
        assert allowed_model_uri(uri, "fake") == uri
    else:
        with pytest.raises(Exception) as info:
            allowed_model_uri(uri, "fake")
        assert info.value.status in (400, 403)
    assert registered_name("models:/support_agent@champion") == "support_agent"
    assert registered_name("runs:/abc/model") is None


def test_a_refused_uri_is_never_loaded():
    loaded: list[str] = []

    def load(uri, version):
        loaded.append(uri)
        return fake(version)

    state = ServingState("dev", loader=load, admin_token=TOKEN, agent="fake")
    for uri in ("/tmp/x", "file:///tmp/x", "runs:/abc/model", "models:/other/1"):
        body = json.dumps({"model_uri": uri, "version": "1"}).encode()
        r = handle_admin_load(state, body, JSON, f"Bearer {TOKEN}")
        assert r.status in (400, 403), uri
    assert loaded == []


def _auth(deployer, environment: str) -> dict[str, str]:
    token = (Path(deployer.state_dir) / MODEL_NAME / environment / "admin-token").read_text()
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_admin_over_http_needs_the_deployers_token(deployer, deployment):
    token_file = Path(deployer.state_dir) / MODEL_NAME / "test" / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and len(token_file.read_text()) >= 32
    for method, path, payload in [
        ("POST", "/admin/load", b'{"model_uri": "models:/x/1", "version": "1"}'),
        ("POST", "/admin/promote", b""),
        ("POST", "/admin/abort", b""),
        ("GET", "/admin/stats?window=5", None),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic xyz"}):
            status, _, answer = request(deployment.url, method, path, payload,
                                        JSON if payload else None, headers)  # fmt: skip
            assert (status, answer["error_code"]) == (401, "UNAUTHENTICATED"), (path, headers)
    status, _, stats = request(deployment.url, "GET", "/admin/stats?window=5", None, None,
                               _auth(deployer, "test"))  # fmt: skip
    assert status == 200 and stats["stable"]["version"] == "1"


@pytest.mark.slow
@pytest.mark.parametrize(
    "uri",
    ["{tmp}/model", "file://{tmp}/model", "runs:/{run}/model", "other"],
    ids=["path", "file-uri", "runs-uri", "another-agent"],
)
def test_admin_load_refuses_paths_schemes_and_other_agents(deployer, deployment, registry, uri):
    import mlflow

    run = mlflow.search_runs(experiment_names=["serving-test"], output_format="list")[0].info.run_id
    uri = registry["other"] if uri == "other" else uri.format(tmp=deployer.state_dir, run=run)
    payload = json.dumps({"model_uri": uri, "version": "1"}).encode()
    status, _, answer = request(deployment.url, "POST", "/admin/load", payload, JSON,
                                _auth(deployer, "test"))  # fmt: skip
    assert status in (400, 403) and answer["error_code"] in ("BAD_REQUEST", "FORBIDDEN"), answer
    assert request(deployment.url, "GET", "/health")[2]["model_uri"] == deployment.model_uri


@pytest.mark.slow
def test_the_server_refuses_to_start_without_a_token(registry, tmp_path):
    for name, token in (("none", None), ("empty", "")):
        server = Server(tmp_path / name, registry["1"], "1", token=token, wait=False)
        assert server.process.wait(60) == 2
        assert "refusing to start without an admin token" in server.log()
        assert not server.state_file.exists()
    assert MODEL_NAME in registry["1"]


@pytest.mark.slow
def test_the_version_reported_is_the_one_the_model_uri_names(deployer, deployment, registry):
    """A load that labels version 2 as "1" would count 2's errors against 1 (a canary that
    cannot fail, a rollback that blames the wrong version): refused, naming both; without a
    label, the version comes from the URI."""
    auth = _auth(deployer, "test")

    def admin(path: str, payload: dict) -> tuple[int, dict]:
        status, _, answer = request(deployment.url, "POST", path, json.dumps(payload).encode(), JSON, auth)
        return status, answer

    mislabelled = [
        ("/admin/load", {"model_uri": registry["2"], "version": "1", "role": "canary", "canary_share": 0.5}),
        ("/admin/load", {"model_uri": registry["2"], "version": 1, "role": "stable"}),
        ("/admin/shadow", {"action": "load", "model_uri": registry["2"], "version": "1"}),
    ]
    for path, payload in mislabelled:
        status, answer = admin(path, payload)
        assert (status, answer["error_code"]) == (400, "BAD_REQUEST"), (path, answer)
        message = answer["message"]  # names both: the label sent and the version the URI loads
        assert "'version' " in message and "does not match" in message, answer
        assert registry["2"] in message and "version 2" in message, answer
    for path, payload in [("/admin/load", {"model_uri": f"models:/{MODEL_NAME}@champion", "version": "1"}),
                          ("/admin/shadow", {"action": "load", "model_uri": f"models:/{MODEL_NAME}@champion"})]:
        status, answer = admin(path, payload)
        assert status == 400 and "does not pin a version" in answer["message"], answer
    health = request(deployment.url, "GET", "/health")[2]
    assert (health["version"], health.get("canary_version")) == ("1", None)  # nothing was loaded

    status, answer = admin("/admin/load", {"model_uri": registry["2"], "role": "canary", "canary_share": 0.5})
    try:
        assert status == 200, answer
        assert request(deployment.url, "GET", "/health")[2]["canary_version"] == "2"
        stats = request(deployment.url, "GET", "/admin/stats?window=5", None, None, auth)[2]
        assert (stats["stable"]["version"], stats["canary"]["version"]) == ("1", "2")
    finally:
        request(deployment.url, "POST", "/admin/abort", b"", None, auth)


@pytest.mark.slow
def test_a_server_refuses_to_start_with_a_version_its_uri_does_not_name(registry, tmp_path):
    server = Server(tmp_path / "mislabelled", registry["2"], "1", wait=False)
    assert server.exit_code() == 2
    assert "does not match model_uri" in server.log() and "version 2" in server.log()
    assert not server.state_file.exists()
