"""A pod serves only a pinned version the pipeline's deployer wrote, never an MLflow alias.

An alias (``models:/<agent>@champion``) is resolved by the server at start: whoever can move it in
MLflow would decide what production serves at bootstrap or after any pod restart, outside the
audit log. The committed bootstrap has no Deployment, rendering refuses anything but
``models:/<agent>/<version>`` (labelled as the URI names it), the deployer refuses it before
touching the cluster, and the server refuses to start from it.
"""

from __future__ import annotations

import pytest
import yaml

from agentops_pipelines.k8s.render import ANNOTATION_MODEL_URI, render_bootstrap, render_manifests
from agentops_pipelines.resources.deployers import DeploymentError
from agentops_pipelines.resources.kubernetes_deployer import committed_manifests

from .common import AGENT, ENVIRONMENTS, V1, V2, validate_k8s
from .test_k8s_deployer import _discovery_cache_in_tmp, connect, kube_api  # noqa: F401 - fixtures, fake cluster

ALIAS = f"models:/{AGENT}@champion"


def _model_uris(manifests: list[dict]) -> list[str]:
    """Every model URI a manifest would serve: annotations and the container's --model-uri."""
    found = []
    for m in manifests:
        for meta in (m.get("metadata") or {}, ((m.get("spec") or {}).get("template") or {}).get("metadata") or {}):
            if ANNOTATION_MODEL_URI in (meta.get("annotations") or {}):
                found.append(meta["annotations"][ANNOTATION_MODEL_URI])
        for c in (((m.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", []):
            args = c.get("args") or []
            if "--model-uri" in args:
                found.append(args[args.index("--model-uri") + 1])
    return found


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_committed_bootstrap_starts_no_pod_and_names_no_alias(environment):
    manifests = list(yaml.safe_load_all(committed_manifests()[f"serving/{environment}.yaml"]))
    kinds = [m["kind"] for m in manifests]
    assert "Deployment" not in kinds and "HorizontalPodAutoscaler" not in kinds, kinds
    assert {"ServiceAccount", "Service", "PodDisruptionBudget"} <= set(kinds)
    assert _model_uris(manifests) == []
    for manifest in manifests:
        validate_k8s(manifest)


@pytest.mark.parametrize(("version", "model_uri", "message"), [
    ("champion", ALIAS, "does not pin a version"),
    ("1", ALIAS, "does not pin a version"),
    ("2", f"models:/{AGENT}/3", "does not match model_uri"),
    ("latest", f"models:/{AGENT}/latest", "does not pin a version"),
])
@pytest.mark.parametrize("role", ["stable", "canary"])
def test_rendering_refuses_an_alias_or_a_mislabelled_version(version, model_uri, message, role):
    with pytest.raises(ValueError, match=message):
        render_manifests(AGENT, "prod", version, model_uri, role=role)


def test_the_deployer_refuses_an_alias_before_touching_the_cluster(connect):  # noqa: F811
    with kube_api() as api:
        deployer = connect(api)
        for call in (lambda: deployer.deploy("prod", ALIAS, "champion"),
                     lambda: deployer.deploy("prod", V2.model_uri, "1"),
                     lambda: deployer.deploy_canary("prod", ALIAS, "champion", 0.25)):
            with pytest.raises(DeploymentError, match="does not pin a version|does not match"):
                call()
        assert api.applies() == []


def test_the_first_deploy_over_the_bootstrap_serves_the_pinned_version(connect):  # noqa: F811
    with kube_api() as api:
        for manifest in render_bootstrap(AGENT, "prod"):
            api.put(manifest)
        deployer = connect(api)
        assert deployer.status("prod") is None  # the bootstrap serves nothing
        deployed = deployer.deploy("prod", V1.model_uri, "1")
        assert (deployed.version, deployed.model_uri) == ("1", V1.model_uri)
        live = [o for o in api.objects.values() if o.get("kind") == "Deployment"]
        assert live and set(_model_uris(live)) == {V1.model_uri}


@pytest.mark.slow
def test_the_server_refuses_to_start_from_an_alias(tmp_path):
    from tests.serving.support import Server

    tracking = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}  # never the cwd's
    server = Server(tmp_path / "alias", ALIAS, "champion", wait=False, env=tracking)
    assert server.exit_code() == 2
    assert "refusing to start" in server.log() and "does not pin a version" in server.log()
    assert not server.state_file.exists()
