"""The whole loop with real parts: a bad version serves in prod, its errors make a real Prometheus
fire AgentHighErrorRate, the real Dagster daemon's sensor starts the rollback, and serving answers
with the previous version. Also the source of the alert → rollback time in BENCHMARKS.md."""

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import cloudpickle
import dagster as dg
import pytest

from agentops_pipelines.vocabulary import VersionTag as gov
from tests import faults
from tests.e2e.test_prometheus_alerts import (
    Traffic,
    free_port,
    get_json,
    running,
    test_rules,
    wait_until,
)
from tests.helpers import AGENT, promoted, register_versions

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed "
                                "(apt-get install -y --no-install-recommends prometheus)")


def _prometheus_config(tmp: Path, target: str) -> Path:
    (tmp / "rules.yml").write_text(test_rules("5s"))
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files: [rules.yml]\n"
        f"scrape_configs:\n  - job_name: agentops-serving\n    static_configs:\n      - targets: ['{target}']\n")
    return config


@pytest.mark.slow
def test_alert_rolls_back_through_the_daemon(defs, home, tmp_path, monkeypatch):
    store = defs.resources["mlflow_store"]
    client = store.configure()
    cloudpickle.register_pickle_by_value(faults)
    try:
        (good,) = register_versions(store.tracking_uri, 1, audit=defs.resources["audit"].store)
        (bad,) = register_versions(store.tracking_uri, 1, wrap=faults.FaultyRouter, audit=defs.resources["audit"].store)
    finally:
        cloudpickle.unregister_pickle_by_value(faults)
    promoted(defs.resources["audit"].store, good)
    promoted(defs.resources["audit"].store, bad)
    client.set_registered_model_alias(AGENT, "champion", bad)
    deployer = defs.resources["deployer"]
    serving = deployer.deploy("prod", f"models:/{AGENT}/{bad}", bad)
    target = serving.url.removeprefix("http://")

    prom_port = free_port()
    prometheus = f"http://127.0.0.1:{prom_port}"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = dict(os.environ, AGENTOPS_HOME=str(home), DAGSTER_HOME=str(dagster_home),
               AGENTOPS_PROMETHEUS_URL=prometheus, MLFLOW_TRACKING_URI=store.tracking_uri)
    daemon_cmd = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(ROOT / "workspace.yaml")]
    prom_cmd = [PROMETHEUS, f"--config.file={_prometheus_config(tmp_path, target)}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"]

    with running(prom_cmd, tmp_path / "prometheus.log"), \
            running_env(daemon_cmd, tmp_path / "daemon.log", env, cwd=ROOT):
        wait_until("Prometheus ready", lambda: get_json(prometheus, "/api/v1/status/buildinfo"), 30)
        traffic = Traffic(serving.url, rate=20.0)
        traffic.failing = 0.3
        try:
            def firing():
                for a in get_json(prometheus, "/api/v1/alerts")["data"]["alerts"]:
                    if a["labels"].get("alertname") == "AgentHighErrorRate" and a["state"] == "firing":
                        return a
            alert = wait_until("AgentHighErrorRate firing", firing, 90)
            fired_seen = time.time()
            assert alert["labels"]["version"] == bad and alert["labels"]["environment"] == "prod"

            def serving_good():
                health = get_json(serving.url, "/health")
                return health if str(health["version"]) == good else None
            wait_until(f"prod serving version {good} again (daemon log: {tmp_path / 'daemon.log'})", serving_good, 150)
            rolled_back = time.time()
            # The op deploys first, then tags and audits: wait for the run to finish.
            instance = dg.DagsterInstance.from_config(str(dagster_home))

            def rollback_finished():
                runs = instance.get_runs(dg.RunsFilter(job_name=f"{AGENT}_rollback_job"))
                return runs if runs and all(r.is_finished for r in runs) else None
            wait_until("the rollback run to finish", rollback_finished, 60)
        finally:
            traffic.stop()

    assert client.get_model_version(AGENT, bad).tags[gov.ROLLED_BACK].startswith("AgentHighErrorRate firing since")
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == good
    (entry,) = [e for e in defs.resources["audit"].entries(AGENT) if e.action == "rollback"]
    assert (entry.actor, entry.version, entry.environment) == ("prometheus_alert_sensor", bad, "prod")
    runs = instance.get_runs(dg.RunsFilter(job_name=f"{AGENT}_rollback_job"))
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS  # once, despite many ticks
    assert runs[0].tags["agentops/alert"] == "AgentHighErrorRate"
    instance.dispose()

    active_at = datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00")).timestamp()
    firing_at = active_at + 5  # for: 5s
    result = {"alert_to_serving_previous_s": round(rolled_back - firing_at, 1),
              "seen_firing_to_serving_previous_s": round(rolled_back - fired_seen, 1),
              "at": datetime.now(UTC).isoformat(timespec="seconds")}
    print(json.dumps(result))
    if out := os.environ.get("AGENTOPS_BENCH_OUT"):
        Path(out).write_text(json.dumps(result))


class running_env:  # noqa: N801 - a context manager like ``running``, with env and cwd
    def __init__(self, command, log: Path, env: dict, cwd: Path):
        self.command, self.log, self.env, self.cwd = command, log, env, cwd

    def __enter__(self):
        self.out = self.log.open("wb")
        self.process = subprocess.Popen(self.command, stdout=self.out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                        start_new_session=True)
        return self.process

    def __exit__(self, *exc):
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(5)
        self.out.close()
