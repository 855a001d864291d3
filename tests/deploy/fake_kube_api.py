"""A small in-process Kubernetes API server for the KubernetesDeployer tests.

Kubernetes cannot run here, and the official ``kubernetes`` client ships no fake. So the deployer
talks to this server over HTTP through the real client (kubeconfig, ``DynamicClient``, discovery,
``server_side_apply``, ``NotFoundError``), and only the server side is stood in for. It speaks
the REST paths and bodies of the API server for the kinds the deployer manages plus Secrets and
Pods: discovery (``/version``, ``/api``, ``/apis``, resource lists), GET and LIST with equality
label selectors, server-side apply (``PATCH`` as ``application/apply-patch+yaml``, ``fieldManager``
required, a conflict without ``force`` when another manager applied the object), DELETE, and
``Status`` errors (400, 404, 409, 415).

Server-side apply is kept to what one field manager sees: the applied configuration replaces the
manager's previous one, so a field it drops is removed; ``spec.replicas`` of a Deployment that no
applied configuration sets is left to the HPA (or defaults to 1), as on a real cluster. Field
ownership is per object, not per field: a forced apply makes its manager the only one (a real
server moves only the conflicting fields), which is the same whenever the managers apply the same
fields, as the deployer does.

Two controllers, simplified: an HPA keeps its Deployment's replicas within min and max; a
Deployment's rollout is observed one read after it is applied (the deployer polls), and ends at
once, unless its ``agentops/version`` label is in ``failing``: then it exceeds its progress
deadline and one of its pods is in CrashLoopBackOff.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import urllib.parse
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

# (group, version, plural, kind): every kind here is namespaced
RESOURCES = (
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("", "v1", "services", "Service"),
    ("", "v1", "secrets", "Secret"),
    ("", "v1", "pods", "Pod"),
    ("apps", "v1", "deployments", "Deployment"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
)
VERBS = ["create", "delete", "get", "list", "patch", "update"]
VERSION_LABEL = "agentops/version"
TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # a boolean query parameter, as Go's ParseBool reads it

Key = tuple[str, str, str]  # (kind, namespace, name)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
    return True


class FakeKubeAPI:
    """The cluster's objects, by (kind, namespace, name), behind an HTTP server on loopback."""

    def __init__(self, failing: Iterable[str] = ()):
        self.objects: dict[Key, dict[str, Any]] = {}
        self.applied: dict[Key, dict[str, Any]] = {}  # the last applied configuration, by object
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []  # (method, path, query)
        self.failing = set(failing)
        self._pending: set[Key] = set()  # Deployments whose rollout the controller has not seen yet
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    # -- what a test reads or sets up

    def put(self, obj: dict[str, Any]) -> None:
        """Create ``obj`` as an administrator would (kubectl create), outside the deployer."""
        with self._lock:
            obj = copy.deepcopy(obj)
            self._stamp(obj)
            self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def applies(self) -> list[tuple[str, dict[str, list[str]]]]:
        """(path, query) of every server-side apply received."""
        return [(path, query) for method, path, query in self.requests if method == "PATCH"]

    def version(self, name: str = "support-agent-prod", namespace: str = "agentops-prod") -> str | None:
        obj = self.objects.get(("Deployment", namespace, name))
        return obj and obj["metadata"]["labels"][VERSION_LABEL]

    # -- the API

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers, body: bytes) -> dict:
        self.requests.append((method, path, query))
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}
        if method == "GET" and parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"]}
        if method == "GET" and parts == ["apis"]:
            groups = sorted({(g, v) for g, v, _, _ in RESOURCES if g})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]}
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1] if len(parts) > 1 else "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if not rest and method == "GET":
            listed = [r for r in RESOURCES if r[:2] == (group, version)]
            if not listed:
                raise ApiError(404, "NotFound", f"{group}/{version} is not served")
            return {"kind": "APIResourceList", "groupVersion": "/".join(filter(None, (group, version))),
                    "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True,
                                   "kind": kind, "verbs": VERBS} for _, _, plural, kind in listed]}
        if len(rest) not in (3, 4) or rest[0] != "namespaces":
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace, plural, name = rest[1], rest[2], (rest[3] if len(rest) == 4 else None)
        resource = next((r for r in RESOURCES if r[:3] == (group, version, plural)), None)
        if resource is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        api_version, kind = "/".join(filter(None, (group, version))), resource[3]
        with self._lock:
            if method == "GET" and name is None:
                selector = query.get("labelSelector", [""])[0]
                items = [self._read((k, ns, n)) for (k, ns, n), o in sorted(self.objects.items())
                         if k == kind and ns == namespace and _matches(o["metadata"].get("labels") or {}, selector)]
                return {"kind": f"{kind}List", "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(next(self._counter))}, "items": items}
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not served here")
            key = (kind, namespace, name)
            if method == "GET":
                if key not in self.objects:
                    raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
                return self._read(key)
            if method == "PATCH":
                return self._apply(key, api_version, query, headers, body)
            if method == "DELETE":
                if key not in self.objects:
                    raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
                del self.objects[key]
                self.applied.pop(key, None)
                self._pending.discard(key)
                if kind == "Deployment":
                    self._delete_pods(namespace, name)
                return {"kind": "Status", "apiVersion": "v1", "status": "Success",
                        "details": {"name": name, "kind": plural}}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not served here")

    # -- server-side apply

    def _apply(self, key: Key, api_version: str, query, headers, body: bytes) -> dict:
        kind, namespace, name = key
        if headers.get("Content-Type", "").split(";")[0] != "application/apply-patch+yaml":
            raise ApiError(415, "UnsupportedMediaType", "only server-side apply is served here")
        manager = query.get("fieldManager", [""])[0]
        if not manager:
            raise ApiError(400, "BadRequest", "fieldManager is required for apply requests")
        config = yaml.safe_load(body)
        if (config.get("apiVersion"), config.get("kind")) != (api_version, kind):
            raise ApiError(400, "BadRequest", f"the body is {config.get('apiVersion')}/{config.get('kind')}, "
                                              f"the URL {api_version}/{kind}")
        meta = config.get("metadata") or {}
        if meta.get("name") != name or meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the name or namespace of the body does not match the URL")
        live = self.objects.get(key)
        owners = {f["manager"] for f in (live or {}).get("metadata", {}).get("managedFields", [])}
        if live is not None and owners - {manager} and query.get("force", ["false"])[0] not in TRUE:
            raise ApiError(409, "Conflict", f"Apply failed with conflicts with {sorted(owners - {manager})}")
        previous = self.applied.get(key)
        obj = copy.deepcopy(config)
        obj["metadata"].setdefault("namespace", namespace)
        if live is not None:
            for field in ("uid", "creationTimestamp", "generation"):
                if field in live["metadata"]:
                    obj["metadata"][field] = live["metadata"][field]
        if kind == "Deployment":
            spec = obj["spec"]
            if "replicas" not in spec:  # not this manager's: the HPA's, or the default
                owned_before = previous is not None and "replicas" in previous.get("spec", {})
                kept = live is not None and not owned_before
                spec["replicas"] = live["spec"]["replicas"] if kept else 1
            changed = live is None or live["spec"] != spec
            obj["metadata"]["generation"] = (live or {}).get("metadata", {}).get("generation", 0) + int(changed)
            obj["status"] = copy.deepcopy((live or {}).get("status") or {})
            if changed:
                self._pending.add(key)
                self._delete_pods(namespace, name)
        self._stamp(obj, manager)
        self.objects[key] = obj
        self.applied[key] = copy.deepcopy(config)
        self._autoscale()
        return copy.deepcopy(obj)

    def _stamp(self, obj: dict, manager: str | None = None) -> None:
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{next(self._counter)}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(next(self._counter))
        if manager:
            meta["managedFields"] = [{"manager": manager, "operation": "Apply",
                                      "apiVersion": obj["apiVersion"], "fieldsType": "FieldsV1"}]

    # -- controllers

    def _autoscale(self) -> None:
        for (kind, namespace, _), hpa in self.objects.items():
            if kind != "HorizontalPodAutoscaler":
                continue
            target = self.objects.get(("Deployment", namespace, hpa["spec"]["scaleTargetRef"]["name"]))
            if target is None:
                continue
            low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
            wanted = min(max(target["spec"]["replicas"], low), high)
            if wanted != target["spec"]["replicas"]:
                target["spec"]["replicas"] = wanted
                target["metadata"]["generation"] += 1
                self._pending.add(("Deployment", namespace, target["metadata"]["name"]))

    def _read(self, key: Key) -> dict:
        """The object as a read returns it; a pending rollout is observed one read later."""
        obj = self.objects[key]
        if key in self._pending:
            self._pending.discard(key)
        elif key[0] == "Deployment" and obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"]:
            self._roll_out(key, obj)
        return copy.deepcopy(obj)

    def _roll_out(self, key: Key, obj: dict) -> None:
        replicas = obj["spec"]["replicas"]
        generation = obj["metadata"]["generation"]
        if obj["metadata"]["labels"].get(VERSION_LABEL) not in self.failing:
            obj["status"] = {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                             "readyReplicas": replicas, "availableReplicas": replicas, "conditions": [
                                 {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                 {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
            return
        old = obj.get("status", {}).get("availableReplicas", 0)
        obj["status"] = {"observedGeneration": generation, "replicas": old + 1, "updatedReplicas": 1,
                         "readyReplicas": old, "availableReplicas": old, "conditions": [
                             {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                              "message": f'ReplicaSet "{key[2]}-{generation}" has timed out progressing.'}]}
        template = obj["spec"]["template"]["metadata"]["labels"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{key[2]}-{generation}-x1", "namespace": key[1], "labels": dict(template),
            "ownerReferences": [{"kind": "Deployment", "name": key[2]}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "serving", "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]}}
        self._stamp(pod)
        self.objects[("Pod", key[1], pod["metadata"]["name"])] = pod

    def _delete_pods(self, namespace: str, deployment: str) -> None:
        for key, obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if key[0] == "Pod" and key[1] == namespace and any(o["name"] == deployment for o in owners):
                del self.objects[key]


def _handler(api: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
        disable_nagle_algorithm = True  # headers and body leave at once, not after a delayed ACK

        def _serve(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, payload = 200, api.handle(method, url.path, urllib.parse.parse_qs(url.query),
                                                  self.headers, body)
            except ApiError as e:
                status, payload = e.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                           "message": e.message, "reason": e.reason, "code": e.code}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - the http.server interface
            self._serve("GET")

        def do_PATCH(self):  # noqa: N802
            self._serve("PATCH")

        def do_DELETE(self):  # noqa: N802
            self._serve("DELETE")

        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

    return Handler
