"""``agentops``: the lifecycle from a terminal.

    agentops demo      run the whole lifecycle on the embedded defaults and say where to look
    agentops dev       open the Dagster UI with the daemon (and the MLflow UI)
    agentops status    what is registered and what serves where
    agentops check     connect to every configured service; one line per problem, exit 1 on any
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
    """Create the state folder and the Dagster instance config inside it: ``settings.dagster_yaml``,
    i.e. deploy/dagster-production.yaml (Postgres) when DAGSTER_PG_HOST is set, the root
    dagster.yaml (SQLite) otherwise, or AGENTOPS_DAGSTER_YAML when given."""
    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    dagster_home = settings.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("FEAST_USAGE", "False")
    target = dagster_home / "dagster.yaml"
    source = settings.dagster_yaml
    if not target.exists() or source.read_text() != target.read_text():
        shutil.copyfile(source, target)


def check_services(only_in_production: bool = False) -> int:
    """``agentops check``: one line per configured service; 1 if any has a problem."""
    from agentops_pipelines.resources.settings import SettingsError, check

    try:
        settings = load_settings(strict=False)
    except SettingsError as exc:
        print(f"FAIL  configuration: {exc}", file=sys.stderr)
        return 1
    if only_in_production and not settings.production:
        return 0
    results = check(settings)
    for result in results:
        print(result, file=sys.stdout if result.ok else sys.stderr, flush=True)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"agentops check: {len(failed)} problem(s)", file=sys.stderr)
    return 1 if failed else 0


def _invoke(url: str, text: str, customer_id: str) -> dict:
    body = json.dumps({"dataframe_records": [{"text": text, "customer_id": customer_id}]}).encode()
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def demo(days: int) -> int:
    if check_services(only_in_production=True):
        return 1
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
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        kwargs["run_config"] = {**quiet, **kwargs.get("run_config", {})}
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
    mlflow_ui = None
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://")):  # a server is its own UI
        mlflow_cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        if "://" not in settings.mlflow_artifact_root:
            mlflow_cmd += ["--default-artifact-root", settings.mlflow_artifact_root]
        # The store URI (which may hold a password) goes by environment, not on the command line.
        env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=settings.mlflow_tracking_uri)
        mlflow_ui = subprocess.Popen(mlflow_cmd, start_new_session=True, env=env)
    print(f"MLflow UI: http://127.0.0.1:{mlflow_port}   Dagster UI: http://127.0.0.1:{port}")
    try:
        return subprocess.call([sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                                "-p", str(port)], cwd=PROJECT_ROOT)
    finally:
        if mlflow_ui is not None:
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
            print(f"  {env}: {_serving_line(deployer, env, agent.name)}")
    return 0


def _serving_line(deployer, environment: str, agent: str | None = None) -> str:
    """What serves ``environment``, with the local supervisor's restarts or why it gave up."""
    supervision = getattr(deployer, "supervision", None)  # local processes only
    if supervision is None:
        d, record = deployer.status(environment), None
    else:
        d, record = deployer.status(environment, agent=agent), supervision(environment, agent=agent)
    restarts = f", restarts {record['restarts']}" if record and record.get("alive") else ""
    if d:
        canary = f", canary version {d.canary_version} ({d.canary_share:.0%})" if d.canary_version else ""
        return f"version {d.version} at {d.url}{canary}{restarts}"
    if record and record.get("status") == "crash_loop":
        return (f"DOWN: crash loop, stopped after {record.get('restarts')} restarts "
                f"(last: {record.get('last_exit')} at {record.get('last_exit_at')}); log {record['log']}")
    if record and record.get("alive"):
        return f"{record.get('status')} (restarts {record.get('restarts')}; last: {record.get('last_exit')})"
    return "not deployed"


def review(agent: str, version: str, decision: str, reviewer: str, comment: str) -> int:
    """``agentops approve|reject``: tag the version and write the audit entry; the sensor acts."""
    from agentops_pipelines import governance
    from agentops_pipelines.definitions import defs

    client = defs.resources["mlflow_store"].configure()
    try:
        governance.decide(client, defs.resources["audit"], agent, version, decision, reviewer, comment)
    except Exception as exc:  # noqa: BLE001 - one clear line for a person at a terminal
        print(f"agentops: could not record the decision on {agent} version {version}: {exc}", file=sys.stderr)
        return 2
    print(f"{agent} version {version}: {decision} by {reviewer}. The approval sensor checks the reviewer "
          "and the version, then promotes (staging, then the production canary) or refuses.")
    return 0


def audit_log(agent: str | None, limit: int, as_json: bool) -> int:
    """``agentops audit``: the append-only log of decisions, oldest first."""
    from agentops_pipelines.definitions import defs

    log = defs.resources["audit"]
    entries = log.entries(agent, limit=limit)
    if as_json:
        print(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
        return 0
    for e in entries:
        where = f" [{e.environment}]" if e.environment else ""
        version = f" v{e.version}" if e.version else ""
        print(f"{e.at}  {e.action:<19} {e.agent}{version}{where}  by {e.actor}" + (f"  — {e.reason}" if e.reason else ""))
    broken = log.verify()
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}; hash chain "
          + ("intact" if not broken else f"BROKEN at entries {broken}"))
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the whole lifecycle on the embedded defaults")
    p.add_argument("--days", type=int, default=3, help="days of requests to ingest (default 3)")
    p = sub.add_parser("dev", help="Dagster UI with the daemon, and the MLflow UI")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=5000)
    sub.add_parser("status", help="registered versions and deployments")
    sub.add_parser("check", help="connect to every configured service (Postgres, Redis, MLflow, Feast)")
    for name, decision in (("approve", "approved"), ("reject", "rejected")):
        p = sub.add_parser(name, help=f"{name} a registered version (recorded in MLflow tags and the audit log)")
        p.add_argument("agent")
        p.add_argument("version")
        p.add_argument("--reviewer", required=True)
        p.add_argument("--comment", default="")
        p.set_defaults(decision=decision)
    p = sub.add_parser("audit", help="print the audit log")
    p.add_argument("agent", nargs="?")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.days)
    if args.command in ("approve", "reject"):
        return review(args.agent, args.version, args.decision, args.reviewer, args.comment)
    if args.command == "audit":
        return audit_log(args.agent, args.limit, args.json)
    if args.command == "dev":
        return dev(args.port, args.mlflow_port)
    if args.command == "check":
        return check_services()
    return status()


if __name__ == "__main__":
    sys.exit(main())
