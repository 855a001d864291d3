"""Parsing and HTTP framing: what a body may hold, and what the HTTP layer lets through.

Unit tests of ``protocol.py`` (no socket), then a real server process: MLflow's formats, clear 4xx
errors, keep-alive, and the framing attacks the old ``http.server`` let through (duplicate or
malformed ``Content-Length``) plus bad input that used to be a 500 or silently coerced.
"""

from __future__ import annotations

import http.client
import json
from types import SimpleNamespace
from urllib.parse import urlsplit

import pandas as pd
import pytest

from agentops_pipelines.serving.models import _signature_columns
from agentops_pipelines.serving.protocol import (
    Limits,
    RequestError,
    parse_request,
    predictions_json,
    prepare_frame,
    validate_frame,
)
from tests.serving.support import (
    BODIES,
    JSON,
    ROWS,
    fake,
    raw,
    request,
    scrape,
    status_of,
)


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
        (b'{"inputs": [{"text": NaN}]}', JSON, 400, "NaN is not valid JSON"),
        (b'{"inputs": [{"text": Infinity}]}', JSON, 400, "Infinity is not valid JSON"),
        (b'{"inputs": [{"text": "a", "text": "b"}]}', JSON, 400, "duplicate key 'text'"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nested too deeply"),
        (
            b'{"dataframe_split": {"columns": ["text", "text"], "data": [["a", "b"]]}}',
            JSON,
            400,
            "duplicate column names ['text']",
        ),
        (b"text,text\na,b\n", "text/csv", 400, "duplicate column names ['text']"),
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

def test_prepare_frame():
    model = fake(
        "1",
        input_columns=("text", "customer_id", "orders_30d"),
        numeric_columns=("orders_30d",),
    )
    df = pd.DataFrame({"text": ["a"], "customer_id": ["123"], "orders_30d": [4], "extra": [1]})
    out = prepare_frame(df, model)
    assert list(out.columns) == ["text", "customer_id", "orders_30d"]  # unknown column dropped
    assert out["customer_id"].tolist() == ["123"] and out["orders_30d"].tolist() == [4]
    # without a signature, columns pass through
    assert "extra" in prepare_frame(df, fake("1")).columns
    for bad, needle in [
        (pd.DataFrame({"text": [{"nested": 1}]}), "must hold strings"),
        (pd.DataFrame({"text": ["a"], "customer_id": [123]}), "must hold strings; got int 123"),
        (pd.DataFrame({"text": [1.5]}), "must hold strings; got float 1.5"),
        (pd.DataFrame({"text": [True]}), "must hold strings; got bool True"),
        (pd.DataFrame({"text": ["a"], "orders_30d": ["4"]}), "must be numeric"),
        (pd.DataFrame({"text": ["a"], "orders_30d": [True]}), "must be numeric"),
        (pd.DataFrame({"customer_id": ["C1"]}), "missing required column"),
        (pd.DataFrame([["a", "b"]], columns=["text", "text"]), "duplicate column names"),
    ]:
        with pytest.raises(RequestError, match=needle) as info:
            prepare_frame(bad, model)
        assert info.value.status == 400
    with pytest.raises(RequestError, match="1001 rows exceed the limit of 1000") as info:
        prepare_frame(pd.DataFrame({"text": ["a"] * 1001}), model)
    assert (info.value.status, info.value.error_code) == (413, "TOO_MANY_ROWS")
    limits = Limits(max_rows=10, max_text_chars=5, max_request_chars=12)
    with pytest.raises(RequestError, match="6 characters; the limit is 5") as info:
        prepare_frame(pd.DataFrame({"text": ["abcdef"]}), model, limits)
    assert (info.value.status, info.value.error_code) == (413, "TEXT_TOO_LONG")
    with pytest.raises(RequestError, match="15 characters of text") as info:
        prepare_frame(pd.DataFrame({"text": ["abcde"] * 3}), model, limits)
    assert (info.value.status, info.value.error_code) == (413, "REQUEST_TOO_EXPENSIVE")

@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(BODIES))
def test_invocations_formats(deployment, fmt):
    content_type, body = BODIES[fmt]
    status, headers, answer = request(
        deployment.url, "POST", "/invocations", body.encode(), content_type
    )
    assert status == 200, answer
    assert headers["X-Model-Version"] == "1" and "X-Model-Role" not in headers
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
        (
            "POST",
            "/invocations",
            json.dumps({"inputs": {"text": ["hi"] * 1001}}).encode(),
            JSON,
            413,
            "TOO_MANY_ROWS",
        ),
        (
            "POST",
            "/invocations",
            b'{"inputs": [{"text": {"nested": "object"}}]}',
            JSON,
            400,
            "BAD_REQUEST",
        ),
        ("POST", "/invocations", b'{"inputs": [{"text": "boom"}]}', JSON, 500, "INTERNAL_ERROR"),
        ("GET", "/invocations", None, None, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/nope", None, None, 404, "ENDPOINT_NOT_FOUND"),
        ("POST", "/admin/load", b'{"model_uri": 1}', JSON, 401, "UNAUTHENTICATED"),
        ("POST", "/admin/promote", b"", None, 401, "UNAUTHENTICATED"),
        ("GET", "/admin/stats?window=-1", None, None, 401, "UNAUTHENTICATED"),
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
def test_extra_columns_are_accepted_and_ignored(deployment):
    body = json.dumps({"dataframe_records": [{"text": "order?", "channel": "email", "n": 3}]})
    status, _, answer = request(deployment.url, "POST", "/invocations", body.encode(), JSON)
    assert status == 200 and answer["predictions"][0]["tool"] == "track_order"


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


def _post(length_headers: bytes, payload: bytes) -> bytes:
    return (b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + length_headers + b"\r\n" + payload)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "length_headers",
    [
        b"Content-Length: 5\r\nContent-Length: 41\r\n",  # two lengths: the old server took the first
        b"Content-Length: +41\r\n",
        b"Content-Length: 4_1\r\n",
        b"Content-Length: 41\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["duplicate", "plus-sign", "underscore", "length-and-chunked"],
)
def test_ambiguous_lengths_are_refused_before_the_app(deployment, length_headers):
    payload = b'{"inputs": [{"text": "where is my order"}]}'
    smuggled = b"GET /nope HTTP/1.1\r\nHost: test\r\n\r\n"
    before = scrape(deployment.url)
    answer = raw(urlsplit(deployment.url).port, _post(length_headers, payload + smuggled))
    assert status_of(answer) == 400, answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # the connection is closed: nothing smuggled through
    assert b"predictions" not in answer
    after = scrape(deployment.url)
    key = ("agentops_requests_total", (("agent", "test_agent"), ("environment", "test"),
                                       ("outcome", "ok"), ("version", "1")))  # fmt: skip
    assert after.get(key, 0) == before.get(key, 0)  # the model never saw it


@pytest.mark.slow
def test_a_valid_length_and_chunked_bodies_are_served(deployment):
    payload = b'{"inputs": [{"text": "where is my order"}]}'
    answer = raw(urlsplit(deployment.url).port,
                 _post(b"Content-Length: %d\r\nConnection: close\r\n" % len(payload), payload))  # fmt: skip
    assert status_of(answer) == 200 and b"track_order" in answer
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    answer = raw(urlsplit(deployment.url).port,
                 _post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", chunked))  # fmt: skip
    assert status_of(answer) == 200 and b"track_order" in answer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"dataframe_split": {"columns": ["text", "text"], "data": [["a", "b"]]}}', "duplicate column"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"inputs": [{"text": NaN}]}', "NaN is not valid JSON"),
        (b'{"inputs": [{"text": Infinity}]}', "Infinity is not valid JSON"),
        (b'{"inputs": [{"text": 12345}]}', "must hold strings"),
        (b'{"inputs": [{"text": "hi", "customer_id": 7}]}', "must hold strings"),
        # a NUL cannot be stored in Postgres text: the escalation's ticket write failed, a 500 any
        # client could send to fail a canary or trip the error-rate alert and its rollback
        (b'{"inputs": [{"text": "I want a person\\u0000 now"}]}', "NUL"),
        (b'{"inputs": [{"text": "hi", "customer_id": "C00001\\u0000"}]}', "NUL"),
    ],
    ids=["duplicate-columns", "deep-nesting", "nan", "infinity", "number-as-text", "number-as-id",
         "nul-in-text", "nul-in-id"],
)
def test_bad_input_is_a_counted_client_error(deployment, payload, needle):
    labels = (("agent", "test_agent"), ("environment", "test"), ("version", "1"))
    before = scrape(deployment.url)
    status, _, answer = request(deployment.url, "POST", "/invocations", payload, JSON)
    assert status == 400 and needle in answer["message"], answer
    assert "Traceback" not in answer["message"]
    after = scrape(deployment.url)
    for outcome, delta in (("client_error", 1), ("server_error", 0), ("ok", 0)):
        key = ("agentops_requests_total", tuple(sorted((*labels, ("outcome", outcome)))))
        assert after.get(key, 0) - before.get(key, 0) == delta, outcome


def test_with_column_is_assign_whatever_the_frame_holds():
    """``with_column`` (the request-id column of an acting request) builds one object block for a
    frame of strings, and is ``assign`` exactly for any frame: the same values, dtypes, labels and
    index, an existing column replaced (a client's own ``request_id`` never survives)."""
    from agentops_pipelines.serving.protocol import _string_frame, with_column

    frames = [
        _string_frame(("text", "customer_id"), [["where is my order", "c1"], ["refund", None]]),
        pd.DataFrame({"text": ["a", "b"], "orders_30d": [1, 2]}),
        pd.DataFrame({"text": pd.array(["a", "b"], dtype="string")}, index=[5, 7]),
        _string_frame(("text", "request_id"), [["a", "client-chosen"], ["b", "client-chosen"]]),
    ]
    for frame in frames:
        got, want = with_column(frame, "request_id", ["r1", "r1.1"]), frame.assign(request_id=["r1", "r1.1"])
        pd.testing.assert_frame_equal(got, want)
    assert with_column(frames[0], "request_id", "one").shape == (2, 3)
    assert frames[0].shape == (2, 2)  # the request's frame itself is left as it was
