"""``agentops``: the lifecycle from a terminal.

    agentops demo      run the whole lifecycle on the embedded defaults and say where to look
    agentops dev       open the Dagster UI with the daemon (and the MLflow UI)
    agentops status    what is registered and what serves where
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta

from agentops_pipelines.resources.settings import PROJECT_ROOT, load_settings


def prepare_home() -> None:
    """Create the state folder and the Dagster instance config inside it."""
    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    dagster_home = settings.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("FEAST_USAGE", "False")
    target = dagster_home / "dagster.yaml"
    source = os.environ.get("AGENTOPS_DAGSTER_YAML") or str(PROJECT_ROOT / "dagster.yaml")
    if not target.exists() or open(source).read() != target.read_text():
        shutil.copyfile(source, target)


def _invoke(url: str, text: str, customer_id: str) -> dict:
    body = json.dumps({"dataframe_records": [{"text": text, "customer_id": customer_id}]}).encode()
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def demo(days: int) -> int:
    prepare_home()
    import dagster as dg

    from agentops_pipelines.agents import AGENTS
    from agentops_pipelines.definitions import defs

    agent = AGENTS[0]
    instance = dg.DagsterInstance.get()
    settings = load_settings()
    started = time.perf_counter()
    today = datetime.now(UTC).date()
    partitions = [(today - timedelta(days=d)).isoformat() for d in range(days, 0, -1)]

    def run(job_name: str, **kwargs) -> dg.ExecuteInProcessResult:
        t0 = time.perf_counter()
        result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, raise_on_error=False, **kwargs)
        label = kwargs.get("partition_key", "")
        print(f"  {job_name} {label}: {'ok' if result.success else 'FAILED'} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if not result.success:
            raise SystemExit(f"{job_name} failed: open the run {result.run_id} in `make dev` for details")
        return result

    print(f"agentops demo: state folder {settings.home}")
    print(f"1. dataset and features for {partitions[0]} .. {partitions[-1]}")
    for day in partitions:
        run(f"{agent.name}_ingest_job", partition_key=day)
    print("2. training set → trained agent → evaluation report → registered version")
    run(f"{agent.name}_training_job")
    registered = instance.get_latest_materialization_event(dg.AssetKey([agent.name, "registered_version"]))
    version = str(registered.asset_materialization.metadata["version"].value)
    print(f"3. deployment of version {version} to dev")
    run(f"{agent.name}_deploy_job", partition_key="dev",
        run_config={"ops": {f"{agent.name}__deployment": {"config": {"version": version}}}})
    deployed = instance.get_latest_materialization_event(dg.AssetKey([agent.name, "deployment"]))
    url = deployed.asset_materialization.metadata["url"].value
    answer = _invoke(url, "where is my order #123456, it has not arrived", "C00042")
    report = instance.get_latest_materialization_event(dg.AssetKey([agent.name, "evaluation_report"]))
    accuracy = report.asset_materialization.metadata["accuracy"].value
    print(f"""
Done in {time.perf_counter() - started:.0f} s.
  registered version : {agent.name} version {version} (alias challenger, approval_status=pending)
  held-out accuracy  : {accuracy:.3f}
  dev URL            : {url}  (POST /invocations, GET /health)
  sample answer      : {answer['predictions'][0]['tool']} -> {answer['predictions'][0]['answer'][:90]}...
Where to look:
  make dev           Dagster UI http://127.0.0.1:3000 (asset graph, runs, checks) and MLflow UI {settings.mlflow_ui_url}
  curl -s {url}/invocations -H 'Content-Type: application/json' \\
       -d '{{"dataframe_records": [{{"text": "I forgot my password", "customer_id": "C00001"}}]}}'
""")
    return 0


def dev(port: int, mlflow_port: int) -> int:
    prepare_home()
    settings = load_settings()
    mlflow_cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", settings.mlflow_tracking_uri,
                  "--host", "127.0.0.1", "--port", str(mlflow_port)]
    if "://" not in settings.mlflow_artifact_root:
        mlflow_cmd += ["--default-artifact-root", settings.mlflow_artifact_root]
    mlflow_ui = subprocess.Popen(mlflow_cmd, start_new_session=True)
    print(f"MLflow UI: http://127.0.0.1:{mlflow_port}   Dagster UI: http://127.0.0.1:{port}")
    try:
        return subprocess.call([sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                                "-p", str(port)], cwd=PROJECT_ROOT)
    finally:
        mlflow_ui.terminate()


def status() -> int:
    from agentops_pipelines.agents import AGENTS
    from agentops_pipelines.definitions import defs

    client = defs.resources["mlflow_store"].configure()
    deployer = defs.resources["deployer"]
    for agent in AGENTS:
        print(f"{agent.name}")
        try:
            model = client.get_registered_model(agent.name)
        except Exception:  # noqa: BLE001 - nothing registered yet
            print("  no registered versions")
            continue
        print(f"  aliases: {dict(model.aliases)}")
        for mv in client.search_model_versions(f"name='{agent.name}'", order_by=["version_number DESC"], max_results=10):
            print(f"  v{mv.version}: approval_status={mv.tags.get('approval_status', '-')} "
                  f"accuracy={mv.tags.get('eval_accuracy', '-')} run={mv.run_id}")
        for env in ("dev", "staging", "prod"):
            d = deployer.status(env)
            print(f"  {env}: " + (f"version {d.version} at {d.url}" if d else "not deployed"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the whole lifecycle on the embedded defaults")
    p.add_argument("--days", type=int, default=3, help="days of requests to ingest (default 3)")
    p = sub.add_parser("dev", help="Dagster UI with the daemon, and the MLflow UI")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=5000)
    sub.add_parser("status", help="registered versions and deployments")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.days)
    if args.command == "dev":
        return dev(args.port, args.mlflow_port)
    return status()


if __name__ == "__main__":
    sys.exit(main())
