"""The serving process and the local deployer.

Unit tests of the request functions run without a socket. The integration tests log a tiny pyfunc
router (two registered versions that answer differently) to a temporary SQLite MLflow store, start
the real server through ``LocalProcessDeployer`` on an ephemeral port and talk HTTP to it.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pandas as pd
import pytest

from agentops_pipelines.resources.deployers import (
    Deployer,
    Deployment,
    DeploymentError,
    LocalProcessDeployer,
)
from agentops_pipelines.serving.app import (
    LoadedModel,
    RequestError,
    ServingState,
    _signature_columns,
    handle_admin_load,
    handle_health,
    handle_invocations,
    parse_request,
    predictions_json,
    validate_frame,
)

JSON = "application/json"
ROWS = [
    {"text": "Where is my order?", "customer_id": "C1"},
    {"text": "My password does not work", "customer_id": "C2"},
]
BODIES = {
    "dataframe_split": (
        JSON,
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["text", "customer_id"],
                    "data": [list(r.values()) for r in ROWS],
                }
            }
        ),
    ),
    "dataframe_records": (JSON, json.dumps({"dataframe_records": ROWS})),
    "instances": (JSON, json.dumps({"instances": ROWS})),
    "inputs": (JSON, json.dumps({"inputs": {k: [r[k] for r in ROWS] for k in ROWS[0]}})),
    "csv": ("text/csv", pd.DataFrame(ROWS).to_csv(index=False)),
}


# --------------------------------------------------------------------------------------------
# Unit tests: parsing and the endpoint functions, no socket, no mlflow


@pytest.mark.parametrize("fmt", sorted(BODIES))
def test_parse_request_formats(fmt):
    content_type, body = BODIES[fmt]
    df = parse_request(body.encode(), content_type)
    assert list(df["text"]) == [r["text"] for r in ROWS]
    assert list(df["customer_id"]) == ["C1", "C2"]


def test_parse_request_variants():
    one = parse_request(b'{"inputs": {"text": "hi", "customer_id": "C1"}}', JSON)
    assert one.to_dict("records") == [{"text": "hi", "customer_id": "C1"}]
    assert (
        len(
            parse_request(b'{"instances": {"text": ["a", "b"]}}', "application/json; charset=UTF-8")
        )
        == 2
    )
    # CSV keeps ids as strings, as a signature with string columns would
    df = parse_request(b"text,customer_id\nhello,00123\n", "text/csv")
    assert df["customer_id"].iloc[0] == "00123"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"{not json", JSON, 400, "not valid JSON"),
        (b"", JSON, 400, "empty"),
        (b"\xff\xfe\x00", JSON, 400, "not valid JSON"),
        (b"[1, 2]", JSON, 400, "JSON object"),
        (b'{"records": []}', JSON, 400, "exactly one of"),
        (b'{"inputs": [], "instances": []}', JSON, 400, "exactly one of"),
        (b'{"inputs": [{"text": "a"}], "params": {"t": 1}}', JSON, 400, "params are not supported"),
        (b'{"dataframe_records": {"text": "a"}}', JSON, 400, "list of objects"),
        (b'{"dataframe_split": {"columns": ["text"]}}', JSON, 400, "'data'"),
        (
            b'{"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}',
            JSON,
            400,
            "not a valid table",
        ),
        (b'{"instances": [1, 2]}', JSON, 400, "list of objects"),
        (b"text\n\xff\n", "text/csv", 400, "UTF-8"),
        (b"text=hi", "application/x-www-form-urlencoded", 415, "Content-Type"),
        (b'{"inputs": []}', None, 415, "Content-Type"),
        (b'{"inputs": []}', "application/json; charset=latin-1", 415, "UTF-8"),
    ],
)
def test_parse_request_rejects(body, content_type, status, needle):
    with pytest.raises(RequestError) as info:
        parse_request(body, content_type)
    assert info.value.status == status
    assert needle in info.value.message


def test_validate_frame():
    assert validate_frame(pd.DataFrame({"text": ["a"]})).shape == (1, 1)
    with pytest.raises(RequestError, match=r"missing required column\(s\) \['text'\]"):
        validate_frame(pd.DataFrame({"customer_id": ["C1"]}))
    with pytest.raises(RequestError, match="null"):
        validate_frame(pd.DataFrame({"text": ["a", None]}))
    with pytest.raises(RequestError, match="customer_id"):
        validate_frame(pd.DataFrame({"text": ["a"]}), required=("text", "customer_id"))


def test_predictions_json():
    df = pd.DataFrame({"tool": ["a"], "confidence": [0.5], "n": [float("nan")]})
    assert json.loads(predictions_json(df)) == {
        "predictions": [{"tool": "a", "confidence": 0.5, "n": None}]
    }
    assert json.loads(predictions_json([{"x": 1}])) == {"predictions": [{"x": 1}]}
    assert json.loads(predictions_json(pd.Series([1, 2]))) == {"predictions": [1, 2]}


def test_signature_columns():
    from mlflow.types import ColSpec, Schema

    schema = Schema(
        [
            ColSpec("string", "customer_id"),
            ColSpec("string", "channel", required=False),
            ColSpec("long", "n"),
        ]
    )
    pyfunc = SimpleNamespace(metadata=SimpleNamespace(get_input_schema=lambda: schema))
    assert _signature_columns(pyfunc) == (
        ("text", "customer_id", "n"),
        ("text", "customer_id", "channel"),
    )


def _fake(version: str, predict=None) -> LoadedModel:
    def default(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"tool": ["x"] * len(df), "answer": [version] * len(df)})

    return LoadedModel(
        model_uri=f"models:/fake/{version}", version=version, predict=predict or default
    )


def _loader(models: dict[str, LoadedModel]):
    def load(uri: str, version: str) -> LoadedModel:
        if uri not in models:
            raise FileNotFoundError(f"no model at {uri}")
        return models[uri]

    return load


def test_endpoints_without_socket():
    state = ServingState("dev", loader=_loader({"models:/fake/1": _fake("1")}))
    assert handle_health(state).status == 503
    assert handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON).status == 503

    r = handle_admin_load(state, b'{"model_uri": "models:/fake/1", "version": "1"}', JSON)
    assert r.status == 200 and json.loads(r.body)["swapped"] is True
    health = handle_health(state)
    assert health.status == 200
    assert json.loads(health.body) | {"loaded_at": None, "pid": None} == {
        "status": "ok",
        "model_uri": "models:/fake/1",
        "version": "1",
        "environment": "dev",
        "loaded_at": None,
        "pid": None,
    }

    r = handle_invocations(state, b'{"inputs": [{"text": "a"}, {"text": "b"}]}', JSON)
    assert r.status == 200 and ("X-Model-Version", "1") in r.headers
    assert json.loads(r.body) == {"predictions": [{"tool": "x", "answer": "1"}] * 2}
    assert json.loads(handle_invocations(state, b'{"dataframe_records": []}', JSON).body)[
        "error_code"
    ]
    empty = b'{"dataframe_split": {"columns": ["text"], "data": []}}'
    assert json.loads(handle_invocations(state, empty, JSON).body) == {"predictions": []}

    # a failed load answers with the reason and keeps the old model
    r = handle_admin_load(state, b'{"model_uri": "models:/fake/9", "version": "9"}', JSON)
    assert r.status == 500
    assert "no model at models:/fake/9" in json.loads(r.body)["message"]
    assert state.current.version == "1"
    for body, status in [
        (b"nope", 400),
        (b'{"version": "2"}', 400),
        (b'{"model_uri": "models:/fake/1"}', 400),
    ]:
        assert handle_admin_load(state, body, JSON).status == status
    assert handle_admin_load(state, b"{}", "text/plain").status == 415


def test_predict_exception_is_500():
    def boom(df):
        raise ValueError("model exploded")

    state = ServingState("dev")
    state.swap(_fake("1", predict=boom))
    r = handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
    assert r.status == 500
    body = json.loads(r.body)
    assert body == {
        "error_code": "INTERNAL_ERROR",
        "message": "prediction failed: ValueError: model exploded",
    }


def test_admin_token():
    state = ServingState(
        "dev", loader=_loader({"models:/fake/1": _fake("1")}), admin_token="s3cret"
    )
    body = b'{"model_uri": "models:/fake/1", "version": "1"}'
    assert handle_admin_load(state, body, JSON).status == 401
    assert handle_admin_load(state, body, JSON, "Bearer wrong").status == 401
    assert handle_admin_load(state, body, JSON, "Bearer s3cret").status == 200


def test_swap_lets_in_flight_requests_finish_on_the_old_model():
    started, release = threading.Event(), threading.Event()

    def slow(df):
        started.set()
        release.wait(5)
        return pd.DataFrame({"answer": ["old"] * len(df)})

    swaps = []
    state = ServingState("dev", loader=_loader({"models:/fake/2": _fake("2")}))
    state.swap(_fake("1", predict=slow))
    state.on_swap(lambda m: swaps.append(m.version))
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            r=handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
        )
    )
    t.start()
    assert started.wait(5)
    assert state.load("models:/fake/2", "2") == (state.current, True)  # swaps while predict runs
    assert state.load("models:/fake/2", "2")[1] is False  # same version: no reload
    new = handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
    release.set()
    t.join(5)
    assert json.loads(result["r"].body) == {"predictions": [{"answer": "old"}]}
    assert ("X-Model-Version", "1") in result["r"].headers
    assert ("X-Model-Version", "2") in new.headers
    assert swaps == ["2"]


def test_deployer_is_a_resource():
    assert issubclass(LocalProcessDeployer, Deployer)
    with pytest.raises(TypeError):
        Deployer()  # abstract
    d = LocalProcessDeployer(state_dir="/tmp/x", ports={"prod": 8080})
    assert d.ports == {"prod": 8080} and d.host == "127.0.0.1" and d.health_timeout_s == 120
    with pytest.raises(ValueError, match="invalid environment"):
        d.status("../etc")


# --------------------------------------------------------------------------------------------
# Integration: a real MLflow store, a real server process

MODEL_CODE = """
import mlflow
import pandas as pd


class Router(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(t) for t in model_input["text"]]
        if "boom" in texts:
            raise ValueError("the model cannot route 'boom'")
        tool = [{tool_rule} for t in texts]
        return pd.DataFrame({{"tool": tool, "confidence": [0.9] * len(texts), "answer": ["{answer}"] * len(texts)}})


mlflow.models.set_model(Router())
"""
MODEL_NAME = "support-agent-test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        experiment = mlflow.create_experiment(
            "serving-test", artifact_location=str(tmp / "artifacts")
        )
        signature = ModelSignature(
            inputs=Schema(
                [ColSpec("string", "text"), ColSpec("string", "customer_id", required=False)]
            ),
            outputs=Schema(
                [
                    ColSpec("string", "tool"),
                    ColSpec("double", "confidence"),
                    ColSpec("string", "answer"),
                ]
            ),
        )
        rules = {
            "1": "'track_order' if 'order' in t.lower() else 'other'",
            "2": "'track_order' if 'order' in t.lower() else 'reset_password' if 'password' in t.lower() else 'other'",
        }
        for version, rule in rules.items():
            code = tmp / f"router_v{version}.py"
            code.write_text(MODEL_CODE.format(tool_rule=rule, answer=f"v{version}"))
            with mlflow.start_run(experiment_id=experiment):
                mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(code),
                    signature=signature,
                    pip_requirements=["pandas"],
                    registered_model_name=MODEL_NAME,
                )
        yield {v: f"models:/{MODEL_NAME}/{v}" for v in rules}
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def deployer(registry, tmp_path_factory):
    d = LocalProcessDeployer(
        state_dir=str(tmp_path_factory.mktemp("serving")), health_timeout_s=60, stop_timeout_s=10
    )
    yield d
    for environment in ("test", "second", "broken"):
        d.stop(environment)


@pytest.fixture(scope="module")
def deployment(deployer, registry) -> Deployment:
    return deployer.deploy("test", registry["1"], "1")


def request(
    url: str, method: str, path: str, body: bytes | None = None, content_type: str | None = None
) -> tuple[int, dict[str, str], dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Type": content_type} if content_type else {}
        )
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_deploy_writes_state_and_serves_health(deployer, deployment, registry):
    assert deployment.version == "1" and deployment.model_uri == registry["1"]
    state = json.loads((Path(deployer.state_dir) / "test.json").read_text())
    assert state["pid"] == deployment.pid and state["port"] > 0
    assert state["url"] == deployment.url == f"http://127.0.0.1:{state['port']}"
    assert {k: state[k] for k in ("host", "model_uri", "version", "environment", "started_at")} == {
        "host": "127.0.0.1",
        "model_uri": registry["1"],
        "version": "1",
        "environment": "test",
        "started_at": deployment.started_at,
    }
    assert deployer.status("test") == deployment
    for path in ("/health", "/ping"):
        status, _, body = request(deployment.url, "GET", path)
        assert status == 200
        assert {k: body[k] for k in ("status", "model_uri", "version", "environment")} == {
            "status": "ok",
            "model_uri": registry["1"],
            "version": "1",
            "environment": "test",
        }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(BODIES))
def test_invocations_formats(deployment, fmt):
    content_type, body = BODIES[fmt]
    status, headers, answer = request(
        deployment.url, "POST", "/invocations", body.encode(), content_type
    )
    assert status == 200, answer
    assert headers["X-Model-Version"] == "1"
    assert answer == {
        "predictions": [
            {"tool": "track_order", "confidence": 0.9, "answer": "v1"},
            {"tool": "other", "confidence": 0.9, "answer": "v1"},
        ]
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "error_code"),
    [
        (
            "POST",
            "/invocations",
            b'{"dataframe_records": [{"text": "x"',
            JSON,
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "POST",
            "/invocations",
            b'{"dataframe_records": [{"customer_id": "C1"}]}',
            JSON,
            400,
            "BAD_REQUEST",
        ),
        ("POST", "/invocations", b"customer_id\nC1\n", "text/csv", 400, "BAD_REQUEST"),
        ("POST", "/invocations", b"text=hello", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (
            "POST",
            "/invocations",
            b'{"inputs": [{"text": "' + b"x" * (1 << 20) + b'"}]}',
            JSON,
            413,
            "REQUEST_TOO_LARGE",
        ),
        ("POST", "/invocations", b'{"inputs": [{"text": "boom"}]}', JSON, 500, "INTERNAL_ERROR"),
        ("GET", "/invocations", None, None, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/nope", None, None, 404, "ENDPOINT_NOT_FOUND"),
        ("POST", "/admin/load", b'{"model_uri": 1}', JSON, 400, "BAD_REQUEST"),
    ],
)
def test_bad_requests_get_clear_errors(
    deployment, method, path, body, content_type, status, error_code
):
    got, _, answer = request(deployment.url, method, path, body, content_type)
    assert (got, answer["error_code"]) == (status, error_code), answer
    assert answer["message"] and "Traceback" not in answer["message"]
    assert request(deployment.url, "GET", "/health")[0] == 200  # still serving


@pytest.mark.slow
def test_keep_alive_connection(deployment):
    parts = urlsplit(deployment.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    body = json.dumps({"inputs": [{"text": "order?", "customer_id": "C1"}]})
    try:
        for _ in range(20):
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": JSON})
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") != "close"
            assert json.loads(response.read())["predictions"][0]["tool"] == "track_order"
        local_port = conn.sock.getsockname()[1]
        conn.request("GET", "/health")
        conn.getresponse().read()
        assert conn.sock.getsockname()[1] == local_port  # the same connection throughout
    finally:
        conn.close()


@pytest.mark.slow
def test_hot_swap_and_failed_load(deployer, deployment, registry):
    password = json.dumps({"inputs": [{"text": "reset my password", "customer_id": "C2"}]}).encode()
    try:
        swapped = deployer.deploy("test", registry["2"], "2")
        assert (swapped.pid, swapped.url, swapped.version) == (deployment.pid, deployment.url, "2")
        status, headers, answer = request(deployment.url, "POST", "/invocations", password, JSON)
        assert headers["X-Model-Version"] == "2"
        assert answer["predictions"][0] | {"confidence": 0} == {
            "tool": "reset_password",
            "confidence": 0,
            "answer": "v2",
        }
        state = json.loads((Path(deployer.state_dir) / "test.json").read_text())
        assert (state["pid"], state["version"], state["model_uri"]) == (
            deployment.pid,
            "2",
            registry["2"],
        )
        assert deployer.deploy("test", registry["2"], "2") == swapped  # idempotent

        with pytest.raises(DeploymentError, match="HTTP 404") as info:
            deployer.deploy("test", f"models:/{MODEL_NAME}/99", "99")
        assert "version=99) not found" in str(info.value)
        assert f"still serving {registry['2']} version 2" in str(info.value)
        assert deployer.status("test") == swapped
        assert (
            request(deployment.url, "POST", "/invocations", password, JSON)[1]["X-Model-Version"]
            == "2"
        )
    finally:
        assert deployer.deploy("test", registry["1"], "1").version == "1"


@pytest.mark.slow
def test_failed_start_reports_the_log(deployer, registry):
    with pytest.raises(DeploymentError, match="exited with code 1") as info:
        deployer.deploy("broken", f"models:/{MODEL_NAME}/99", "99")
    assert "could not load" in str(info.value)  # the tail of the server's log
    assert deployer.status("broken") is None
    assert not (Path(deployer.state_dir) / "broken.json").exists()


@pytest.mark.slow
def test_second_environment_and_stop(deployer, deployment, registry):
    second = deployer.deploy("second", registry["2"], "2")
    assert second.pid != deployment.pid and second.url != deployment.url
    assert deployer.status("test").version == "1"  # environments are independent
    state_file = Path(deployer.state_dir) / "second.json"
    assert state_file.exists()

    deployer.stop("second")
    assert not state_file.exists()  # removed by the server's clean shutdown
    with pytest.raises(ProcessLookupError):
        os.kill(second.pid, 0)
    assert deployer.status("second") is None
    log = (Path(deployer.state_dir) / "second.log").read_text()
    assert "stopped (exit code 0)" in log
    deployer.stop("second")  # a no-op now
    with pytest.raises(OSError):
        request(second.url, "GET", "/health")
