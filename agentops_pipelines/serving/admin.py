"""The admin API: always authenticated, and it loads only the agent being served.

``Authorization: Bearer <token>`` on every route, compared in constant time; a state without a
token refuses every admin call (the server refuses to start without one).

- ``POST /admin/load`` ``{"model_uri", "version", "role": "stable"|"canary", "canary_share",
  "keep_canary", "force"}``: ``model_uri`` must be ``models:/<agent>/<version digits>`` for the
  registered model the process started with; anything else (an alias, a path, ``runs:/``,
  ``file:``, another agent) is refused before anything is loaded. The version every metric,
  trace and health answer reports is the one the URI names: ``version`` is optional, and one
  that names another is refused (400), so version 3's errors never count against version 2.
- ``POST /admin/promote``, ``POST /admin/abort``, ``GET /admin/stats?window=60``.
- ``POST /admin/shadow`` ``{"action": "load", "model_uri", "version", "share": 1.0}`` runs a
  pinned version of the same agent (``version`` as for a load) in shadow (``shadow.py``) on ``share`` of the stable version's requests; ``{"action": "status"}``, ``{"action": "record"}`` (the
  comparison as tags of the challenger's version) and ``{"action": "unload", "record": true}``.
"""

from __future__ import annotations

import hmac
import logging
import math
from typing import Any
from urllib.parse import parse_qs

from agentops_pipelines.serving.protocol import (
    JSON_CT,
    RequestError,
    Response,
    decode_json,
    error_response,
    json_response,
    split_content_type,
)
from agentops_pipelines.serving.state import (
    ServingState,
    health_payload,
    pinned_model,
    stats_payload,
)
from agentops_pipelines.serving.traffic import CANARY, ROLES, STABLE

logger = logging.getLogger("agentops_pipelines.serving")

UNAUTHENTICATED = "admin endpoints need 'Authorization: Bearer <token>'"


def check_admin(state: ServingState, authorization: str | None) -> None:
    """401 unless ``authorization`` is ``Bearer <the admin token>`` (constant-time compare)."""
    scheme, _, supplied = (authorization or "").partition(" ")
    expected = (state.admin_token or "").encode()
    ok = hmac.compare_digest(supplied.strip().encode(), expected)
    if not expected or scheme.lower() != "bearer" or not ok:
        raise RequestError(
            401, "UNAUTHENTICATED", UNAUTHENTICATED, (("WWW-Authenticate", "Bearer"),)
        )


def _admin_json(body: bytes, content_type: str | None, required: bool = True) -> dict[str, Any]:
    if not body and not required:
        return {}
    if split_content_type(content_type)[0] != JSON_CT:
        raise RequestError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise RequestError(400, "BAD_REQUEST", "expected a JSON object")
    return payload


def _version_field(payload: dict[str, Any]) -> str | int | None:
    """The optional ``version`` a caller sends beside ``model_uri``, checked against it later."""
    version = payload.get("version")
    if version is not None and (not isinstance(version, str | int) or isinstance(version, bool)):
        raise RequestError(400, "BAD_REQUEST", f"'version' must be a string, got {version!r}")
    return version


def _load_request(payload: dict[str, Any], agent: str | None) -> dict[str, Any]:
    usage = ('expected {"model_uri": "models:/<agent>/<version>", "version": str (optional), '
             '"role": "stable"|"canary", "canary_share": 0..1, "keep_canary": bool, "force": bool}')  # fmt: skip
    if not isinstance(payload.get("model_uri"), str) or not payload["model_uri"]:
        raise RequestError(400, "BAD_REQUEST", usage)
    uri, version = pinned_model(payload["model_uri"], agent, _version_field(payload))
    role = payload.get("role", STABLE)
    if role not in ROLES:
        raise RequestError(400, "BAD_REQUEST", f"'role' must be one of {list(ROLES)}, got {role!r}")
    share = payload.get("canary_share")
    if share is not None:
        if (
            isinstance(share, bool)
            or not isinstance(share, int | float)
            or not 0.0 <= share <= 1.0
            or math.isnan(share)
        ):
            raise RequestError(
                400, "BAD_REQUEST", f"'canary_share' must be in [0, 1], got {share!r}"
            )
        if role != CANARY:
            raise RequestError(400, "BAD_REQUEST", "'canary_share' applies to role 'canary' only")
    for flag in ("force", "keep_canary"):
        if not isinstance(payload.get(flag, False), bool):
            raise RequestError(400, "BAD_REQUEST", f"'{flag}' must be true or false")
    return {
        "model_uri": uri,
        "version": version,
        "role": role,
        "canary_share": None if share is None else float(share),
        "force": payload.get("force", False),
        "keep_canary": payload.get("keep_canary", False),
    }


def handle_admin_load(
    state: ServingState, body: bytes, content_type: str | None, authorization: str | None = None
) -> Response:
    try:
        check_admin(state, authorization)
        request = _load_request(_admin_json(body, content_type), state.agent)
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message, e.headers)
    uri, version, role = request["model_uri"], request["version"], request["role"]
    previous = state.routing
    try:
        model, loaded = state.load(
            uri, version, force=request["force"], role=role,
            canary_share=request["canary_share"], keep_canary=request["keep_canary"],
        )  # fmt: skip
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message, e.headers)
    except Exception as e:
        logger.exception("loading %s (version %s) as %s failed", uri, version, role)
        status = 500
        code_of = getattr(e, "get_http_status_code", None)
        if callable(code_of) and 400 <= (code := code_of()) < 600:
            status = code
        serving = ", ".join(
            f"{'canary ' if r == CANARY else ''}{s.model.model_uri} version {s.model.version}"
            for r, s in previous.served()
        )
        return error_response(
            status,
            "MODEL_LOAD_FAILED",
            f"could not load {uri!r} (version {version}): {type(e).__name__}: {e}; "
            f"still serving {serving or 'nothing'}",
        )
    if loaded:
        logger.info("loaded %s version %s as %s in %.2fs", model.model_uri, model.version, role,
                    model.load_seconds)  # fmt: skip
    before = previous.canary if role == CANARY else previous.stable
    return json_response(
        200,
        {
            **health_payload(state),
            "role": role,
            "swapped": loaded,
            "previous_version": before.model.version if before else None,
            "load_seconds": round(model.load_seconds, 3) if loaded else 0.0,
        },
    )


def handle_admin_promote(
    state: ServingState, body: bytes = b"", content_type: str | None = None,
    authorization: str | None = None,
) -> Response:  # fmt: skip
    try:
        check_admin(state, authorization)
        _admin_json(body, content_type, required=False)
        previous = state.current
        promoted = state.promote()
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message, e.headers)
    logger.info("promoted version %s to stable (was %s)", promoted.version,
                previous.version if previous else None)  # fmt: skip
    return json_response(
        200,
        {
            **health_payload(state),
            "promoted_version": promoted.version,
            "previous_version": previous.version if previous else None,
        },
    )


def handle_admin_abort(
    state: ServingState, body: bytes = b"", content_type: str | None = None,
    authorization: str | None = None,
) -> Response:  # fmt: skip
    try:
        check_admin(state, authorization)
        _admin_json(body, content_type, required=False)
        aborted = state.abort()
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message, e.headers)
    if aborted is not None:
        logger.info("aborted canary version %s", aborted.version)
    return json_response(
        200, {**health_payload(state), "aborted_version": aborted.version if aborted else None}
    )


def handle_admin_stats(
    state: ServingState, query: str = "", authorization: str | None = None
) -> Response:
    try:
        check_admin(state, authorization)
        raw = parse_qs(query).get("window", ["60"])[-1]
        try:
            window = float(raw)
        except ValueError:
            window = float("nan")
        if not 0 < window <= 86400:
            raise RequestError(
                400, "BAD_REQUEST", f"'window' must be seconds in (0, 86400], got {raw!r}"
            )
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message, e.headers)
    return json_response(200, stats_payload(state, window))



SHADOW_ACTIONS = ("load", "status", "record", "unload")


def handle_admin_shadow(
    state: ServingState, body: bytes, content_type: str | None, authorization: str | None = None
) -> Response:
    """The shadow challenger (``online_eval.py`` runs it, ``shadow.py`` compares)."""
    try:
        check_admin(state, authorization)
        payload = _admin_json(body, content_type)
        action = payload.get("action")
        if action not in SHADOW_ACTIONS:
            raise RequestError(400, "BAD_REQUEST", f"'action' must be one of {list(SHADOW_ACTIONS)}")
        if action == "load":
            if not isinstance(payload.get("model_uri"), str):
                raise RequestError(400, "BAD_REQUEST", 'expected {"action": "load", "model_uri": '
                                   '"models:/<agent>/<version>", "version": str (optional)}')
            uri, version = pinned_model(payload["model_uri"], state.agent, _version_field(payload))
            share = payload.get("share", 1.0)
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 < share <= 1.0:
                raise RequestError(400, "BAD_REQUEST", f"'share' must be in (0, 1], got {share!r}")
            snap = state.shadow_load(uri, version, float(share))
            logger.info("shadow: %s version %s runs beside the stable version", uri, version)
        elif action == "unload":
            record = payload.get("record", True)
            if not isinstance(record, bool):
                raise RequestError(400, "BAD_REQUEST", "'record' must be true or false")
            snap = state.shadow_unload(record=record)
        elif action == "record":
            if state.shadow_version is None:
                raise RequestError(409, "NO_SHADOW", "no challenger is running in shadow")
            snap = state.evaluator.command({"kind": "shadow_record"})
        else:
            snap = state.evaluator.poll() if state.evaluator is not None else {}
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message, e.headers)
    except (TimeoutError, RuntimeError) as e:
        return error_response(503, "EVAL_WORKER_UNAVAILABLE", str(e))
    failures = {f"{v}/{name}": n for (v, name), n in (snap.get("failures") or {}).items()}
    return json_response(200, {"shadow_version": state.shadow_version, "failures": failures,
                               **{k: snap.get(k) for k in ("shadow", "shadow_error", "evidence", "scored",
                                                          "flagged", "dataset", "dataset_rows", "dataset_errors")}})


ADMIN_POST = {
    "/admin/load": handle_admin_load,
    "/admin/promote": handle_admin_promote,
    "/admin/abort": handle_admin_abort,
    "/admin/shadow": handle_admin_shadow,
}
