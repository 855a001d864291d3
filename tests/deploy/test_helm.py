"""Helm values for the official Dagster chart (deploy/helm/values.yaml).

The values are checked against the chart's own ``values.schema.json`` (dagster-io/dagster,
``helm/dagster/values.schema.json``, release 1.13.27), the way ``helm install`` checks them, not
against a copy of parts of it. That file is public material that this repository does not
vendor: it is read from ``AGENTOPS_DAGSTER_CHART_SCHEMA`` or from
``shared/dagster-chart/1.13.27/values.schema.json`` beside the repository, and the schema tests
are skipped, saying so, when neither is there.

Helm validates the chart's defaults merged with these values (maps merge, lists are replaced), so
a key the schema requires in a map is the chart defaults' to supply, while every item of a list
given here must be complete. The schema's references to the Kubernetes definitions
(kubernetesjsonschema.dev, v1.18.0) are resolved offline from the definitions kubernetes-validate
ships for the oldest Kubernetes we support.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT7

from agentops_pipelines.vocabulary import RunTag

from .common import DEPLOY, K8S_VERSIONS, ROOT, code_server_command

CHART_VERSION = "1.13.27"
CHART_SCHEMA = Path(os.environ.get("AGENTOPS_DAGSTER_CHART_SCHEMA")
                    or ROOT.parent / "shared" / "dagster-chart" / CHART_VERSION / "values.schema.json")
KUBERNETES_DEFINITIONS = "https://kubernetesjsonschema.dev/"


def _kubernetes_definitions(uri: str) -> referencing.Resource:
    """kubernetesjsonschema.dev/<version>/_definitions.json, offline: kubernetes-validate's
    definitions for the oldest Kubernetes we support, under both names refs use."""
    if not uri.startswith(KUBERNETES_DEFINITIONS) or not uri.endswith("/_definitions.json"):
        raise referencing.exceptions.NoSuchResource(uri)
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSIONS[0]}-local"
    definitions = json.loads((folder / "_definitions.json").read_text())["$defs"]
    return referencing.Resource.from_contents({"definitions": definitions, "$defs": definitions},
                                              default_specification=DRAFT7)


@pytest.fixture(scope="module")
def chart_validator() -> jsonschema.protocols.Validator:
    if not CHART_SCHEMA.is_file():
        pytest.skip(f"the Dagster chart's values.schema.json ({CHART_VERSION}) is not at {CHART_SCHEMA}: "
                    "set AGENTOPS_DAGSTER_CHART_SCHEMA to helm/dagster/values.schema.json of that release")
    schema = json.loads(CHART_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema, registry=referencing.Registry(retrieve=_kubernetes_definitions))


def _counts(error: jsonschema.ValidationError) -> bool:
    """Whether ``error`` stands once the chart's defaults are merged in: a missing required key
    in a map does not (the defaults have it), one inside a list item does."""
    if error.validator == "required":
        return any(isinstance(step, int) for step in error.absolute_path)
    if error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[int, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        passing = [i for i in range(len(error.validator_value)) if not any(map(_counts, branches.get(i, [])))]
        return not passing if error.validator == "anyOf" else len(passing) != 1
    return True


def chart_errors(validator, values: dict) -> list[str]:
    errors = [e for e in validator.iter_errors(values) if _counts(e)]
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}" for e in errors)


def test_helm_values_are_accepted_by_the_chart_schema(chart_validator, helm_values):
    errors = chart_errors(chart_validator, helm_values)
    assert not errors, "\n".join(errors)


def test_the_chart_schema_catches_typos(chart_validator, helm_values):
    broken = copy.deepcopy(helm_values)
    coordinator = broken["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator["tagConcurrencyLimits"][0]["value"] = {"applyLimitPerUniqueValues": True}
    broken["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = []
    (code,) = broken["dagster-user-deployments"]["deployments"]
    code.pop("image")  # an item of a list: the chart's defaults do not fill it in
    code["env"].append({"value": "no name"})  # a Kubernetes EnvVar needs one
    typos = ["dagsterDaemon/runCoordinator/config/queuedRunCoordinator/tagConcurrencyLimits/0/value",
             "runLauncher/config/k8sRunLauncher", "dagster-user-deployments/deployments/0",
             f"dagster-user-deployments/deployments/0/env/{len(code['env']) - 1}"]
    errors = chart_errors(chart_validator, broken)
    paths = [e.split(":")[0] for e in errors]
    assert len(errors) == len(typos), "\n".join(errors)
    for typo in typos:  # each reported where it is, or at the choice (anyOf) that contains it
        assert any(typo == p or typo.startswith(p + "/") for p in paths), (typo, errors)


def test_helm_values_say_what_the_project_needs(helm_values):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # external Postgres, password from the Secret the chart reads
    assert helm_values["postgresql"]["enabled"] is False
    assert helm_values["generatePostgresqlPasswordSecret"] is False
    assert helm_values["global"]["postgresqlSecretName"]
    assert {"postgresqlHost", "postgresqlUsername", "postgresqlDatabase"} <= set(helm_values["postgresql"])
    # the same driver as deploy/dagster-production.yaml (psycopg 3 breaks dagster-postgres)
    production = yaml.safe_load((DEPLOY / "dagster-production.yaml").read_text())
    scheme = production["storage"]["postgres"]["postgres_db"]["scheme"]
    assert helm_values["postgresql"]["postgresqlScheme"] == scheme == "postgresql+psycopg2"
    # the code location: the image's code server, on the port the image serves it
    (code,) = helm_values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["-m", pyproject["tool"]["dagster"]["module_name"]]
    command = code_server_command()
    assert str(code["port"]) == command[command.index("-p") + 1]
    assert str(code["image"]["tag"]) == pyproject["project"]["version"]
    env = {e["name"]: e.get("value") for e in code["env"]}
    assert env["AGENTOPS_MODE"] == "production"
    assert env["AGENTOPS_DEPLOYER"] == "kubernetes" and env["AGENTOPS_SERVING_IMAGE"]
    secrets = {s["name"] for s in code["envSecrets"]}
    assert secrets == {"agentops-mlflow", "agentops-feast", "agentops-redis"}
    assert code["podSecurityContext"]["runAsNonRoot"] is True
    # runs: one pod each, same Secrets
    launcher = helm_values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert {s["name"] for s in launcher["config"]["k8sRunLauncher"]["envSecrets"]} == secrets
    # one run per environment at a time, as in the repository's dagster.yaml
    coordinator = helm_values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())["run_coordinator"]["config"]
    assert limits == local["tag_concurrency_limits"]
    assert limits == [{"key": RunTag.ROLLOUT, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
