"""Paths, releases and checks shared by the tests of what deploy/ ships (plain helpers; the
fixtures are in conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from agentops_pipelines.k8s.render import Release
from agentops_pipelines.serving.metrics import ServingMetrics
from agentops_pipelines.vocabulary import ENVIRONMENTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# the oldest Kubernetes we support, and the newest kubernetes-validate ships (removed APIs)
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
AGENT = "support_agent"
V1 = Release("1", f"models:/{AGENT}/1")
V2 = Release("2", f"models:/{AGENT}/2")
V3 = Release("3", f"models:/{AGENT}/3")


def _serving_metric_names() -> set[str]:
    """Every series name the serving process exports (its own registry, not a copy of it)."""
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count"), "gauge": ("",)}
    from agentops_pipelines.serving.online_eval import EvalWorker

    metrics = ServingMetrics("test", process_metrics=False)
    metrics.watch_exporter("agent", lambda: True)  # when the process traces or evaluates
    registry = metrics.registry
    EvalWorker("agent", "test", "", 100.0).bind_metrics(registry)  # online evaluation, once a model acts
    families = registry.collect()
    return {f.name + suffix for f in families for suffix in suffixes[f.type]}


METRICS = _serving_metric_names()
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Prometheus) is not installed")

__all__ = ["AGENT", "DEPLOY", "ENVIRONMENTS", "METRICS", "ROOT", "V1", "V2", "V3", "code_server_command",
           "dockerfile_stages", "load_all",
           "needs_promtool", "prometheus_answers", "promtool_check_records",
           "validate_k8s"]


def validate_k8s(manifest: dict) -> None:
    """Fail unless ``manifest`` is valid (strict: unknown fields fail) for every K8S_VERSIONS."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata'].get('name')} (Kubernetes {version}): "
                        f"{where}: {e.message}")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def promtool_check_records(records: dict[str, str], folder: Path) -> None:
    """Fail unless promtool parses every PromQL expression (as recording rules named by key)."""
    rules = {"groups": [{"name": "check", "rules": [{"record": name, "expr": expr}
                                                     for name, expr in records.items()]}]}
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def prometheus_answers(**by_version) -> dict[str, dict]:
    """Prometheus API answers to ``stats_queries``, by query name:
    {version: (ok, client_error, server_error, p50_s, p99_s, escalations)}."""
    def vector(samples):
        return {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": metric, "value": [1700000000, str(value)]} for metric, value in samples]}}

    requests, p50, p99, escalations = [], [], [], []
    for version, (ok, client, server, q50, q99, esc) in by_version.items():
        requests += [({"version": version, "outcome": o}, n)
                     for o, n in (("ok", ok), ("client_error", client), ("server_error", server))]
        p50.append(({"version": version}, q50))
        p99.append(({"version": version}, q99))
        escalations.append(({"version": version}, esc))
    return {"requests": vector(requests), "p50": vector(p50), "p99": vector(p99),
            "escalations": vector(escalations),
            # trained routers make no LLM calls: no series
            "llm_calls": vector([]), "llm_failures": vector([])}


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def code_server_command() -> list[str]:
    return json.loads(next(a for i, a in dockerfile_stages()[-1] if i == "CMD"))
