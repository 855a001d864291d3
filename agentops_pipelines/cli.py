"""agentops: the lifecycle of a production AI agent from a terminal.

    agentops demo      run the whole lifecycle on the embedded defaults and say where to look
    agentops dev       open the Dagster UI with the daemon (and the MLflow UI)
    agentops backfill  ingest a range of days (one run per day), checked against the valid range
    agentops status    what is registered and what serves where
    agentops check     connect to every configured service; one line per problem, exit 1 on any
    agentops keygen    make a reviewer's signing key
    agentops approve   sign and submit an approval (reject: a rejection); --wait follows it
    agentops audit     the audit log, verified; --served: who approved what served where and when

Commands that act on one agent take ``--agent``; it may be left out only when the code location
has exactly one agent (``agent_names``), so a command never picks an agent for you among several.
``status`` and ``audit`` without ``--agent`` show every agent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agentops_pipelines.resources.settings import PROJECT_ROOT, load_settings
from agentops_pipelines.vocabulary import GUARDED_ENVIRONMENTS, EnvVar, VersionTag


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


class AgentChoiceError(ValueError):
    """The command line names no agent (or an unknown one) where one must be chosen."""


def agent_names() -> list[str]:
    from agentops_pipelines import agents

    return [a.name for a in agents.AGENTS]


def choose_agent(given: str | None, *, default: str | None = None) -> str:
    """``given`` if it is an agent of the code location; without it, the only agent (or
    ``default`` when the command has a documented one and it exists); else AgentChoiceError."""
    names = agent_names()
    if given:
        if given not in names:
            raise AgentChoiceError(f"unknown agent {given!r}; agents: {', '.join(names)}")
        return given
    if len(names) == 1:
        return names[0]
    if default in names:
        return default
    raise AgentChoiceError(f"this code location has {len(names)} agents ({', '.join(names)}): name one with --agent")


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


def _invoke(url: str, text: str, customer_id: str, request_id: str | None = None) -> dict:
    body = json.dumps({"dataframe_records": [{"text": text, "customer_id": customer_id}]}).encode()
    headers = {"Content-Type": "application/json", **({"X-Request-Id": request_id} if request_id else {})}
    req = urllib.request.Request(f"{url}/invocations", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _seed_system_of_record(settings) -> str:
    """Create and seed each environment's system of record (the tools' databases, one per
    environment so dev never acts on prod's; once each) and return a demo request about a real
    order of customer C00042 in prod's."""
    import sqlalchemy as sa

    from agentops_pipelines.agent import system_of_record as db

    for environment, url in settings.sor_urls.items():
        if environment != "prod" and url.lower() != "off":
            db.SystemOfRecord(url).ensure().dispose()
    sor = db.SystemOfRecord(settings.sor_url).ensure()
    try:
        with sor.read() as conn:
            order = conn.execute(sa.select(db.orders.c.order_id).where(db.orders.c.customer_id == "C00042")
                                 .order_by(db.orders.c.order_id).limit(1)).scalar()
        where = "SQLite under the state folder" if sor.is_sqlite else "AGENTOPS_SOR_URL"
        print(f"   system of record ({where}): {sor.count('customers')} customers, {sor.count('orders')} orders")
    finally:
        sor.dispose()
    return f"where is my order #{order}, it has not arrived" if order else "where is my order?"


def demo(days: int, agent_name: str | None = None) -> int:
    try:  # the built-in support desk generates its own data: the demo's agent among several
        agent_name = choose_agent(agent_name, default="support_agent")
    except AgentChoiceError as exc:
        print(f"agentops demo: {exc}", file=sys.stderr)
        return 2
    if check_services(only_in_production=True):
        return 1
    prepare_home()
    import dagster as dg

    from agentops_pipelines.agents import AGENTS
    from agentops_pipelines.assets.deployment import DeploymentConfig
    from agentops_pipelines.definitions import defs

    agent = next(a for a in AGENTS if a.name == agent_name)
    instance = dg.DagsterInstance.get()
    settings = load_settings()
    started = time.perf_counter()
    today = datetime.now(UTC).date()
    partitions = [(today - timedelta(days=d)).isoformat() for d in range(days, 0, -1)]

    def run(job_name: str, ops: dict | None = None, **kwargs) -> dg.ExecuteInProcessResult:
        t0 = time.perf_counter()
        kwargs["run_config"] = dg.RunConfig(ops=ops, loggers={"console": {"config": {"log_level": "WARNING"}}})
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
    training = run(f"{agent.name}_training_job")
    version = defs.resources["lake"].read_record(f"{agent.name}/registered_version", run_id=training.run_id)["version"]
    sample_text = _seed_system_of_record(settings)
    print(f"3. deployment of version {version} to dev")
    run(f"{agent.name}_deploy_job", partition_key="dev",
        ops={f"{agent.name}__deployment": DeploymentConfig(version=version)})
    url = defs.resources["deployer"].status("dev", agent=agent.name).url
    answer = _invoke(url, sample_text, "C00042", "demo-request-1")
    evaluation = defs.resources["lake"].read_record(f"{agent.name}/evaluation_report", run_id=training.run_id)
    accuracy = evaluation["numbers"]["accuracy"]
    print(f"""
Done in {time.perf_counter() - started:.0f} s.
  registered version : {agent.name} version {version} (alias challenger, approval_status=pending)
  held-out accuracy  : {accuracy:.3f}
  dev URL            : {url}  (POST /invocations, GET /health)
  sample answer      : {answer['predictions'][0]['tool']} -> {answer['predictions'][0]['answer'][:90]}...
  its steps          : agentops trace demo-request-1   (traced requests: failed, flagged, 1% sampled)
Where to look:
  make dev           Dagster UI http://127.0.0.1:3000 (asset graph, runs, checks) and MLflow UI {settings.mlflow_ui_url}
  curl -s {url}/invocations -H 'Content-Type: application/json' \\
       -d '{{"dataframe_records": [{{"text": "I forgot my password", "customer_id": "C00001"}}]}}'
""")
    return 0


def dev(port: int, mlflow_port: int) -> int:
    """``agentops dev``: ``dg dev`` (webserver and daemon) and the MLflow UI, until Ctrl-C.

    ``dg dev -w workspace.yaml`` is how Dagster 1.13 starts a local stack (``dagster dev`` is
    superseded). It runs from the instance folder (DAGSTER_HOME), so the repository's own
    dagster.yaml (copied there) is not mistaken for the instance's; relative paths in run config
    resolve against the project root whatever the working directory.
    """
    prepare_home()
    settings = load_settings()
    dg = Path(sys.executable).with_name("dg")
    if not dg.exists():
        print("agentops dev: the `dg` command (dagster-dg-cli) is not installed in this environment; "
              "run `make install`", file=sys.stderr)
        return 2
    mlflow_ui = None
    env = dict(os.environ)
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):  # a server is its own UI
        ui_url = env.setdefault(EnvVar.MLFLOW_UI_URL.value, settings.mlflow_tracking_uri.rstrip("/"))
    else:
        ui_url = f"http://127.0.0.1:{mlflow_port}"
        env[EnvVar.MLFLOW_UI_URL.value] = ui_url  # every metadata link points at the UI started here
        mlflow_cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        if "://" not in settings.mlflow_artifact_root:
            mlflow_cmd += ["--default-artifact-root", settings.mlflow_artifact_root]
        # The store URI (which may hold a password) goes by environment, not on the command line.
        mlflow_ui = subprocess.Popen(mlflow_cmd, start_new_session=True,
                                     env=dict(env, MLFLOW_BACKEND_STORE_URI=settings.mlflow_tracking_uri))
    print(f"Dagster UI: http://127.0.0.1:{port}   MLflow UI: {ui_url}   (Ctrl-C stops both)", flush=True)
    # dg dev and its webserver, daemon and code servers in a session of their own: Ctrl-C is
    # forwarded to all of them, and a child that does not stop in time is killed with the rest
    # (terminating dg alone left its children running and our wait unbounded).
    dagster = subprocess.Popen([str(dg), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-p", str(port)],
                               cwd=settings.dagster_home, env=env, start_new_session=True)
    try:
        return dagster.wait()
    except KeyboardInterrupt:
        import signal

        # Both stop at once, each within a bound (the two waits used to add up past a minute):
        # the MLflow UI is told now and waited for below; dg dev gets its own clean shutdown.
        if mlflow_ui is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mlflow_ui.pid, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dagster.pid, signal.SIGINT)  # dg dev's own clean shutdown
        try:
            dagster.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _stop_group(dagster)
        print("agentops dev: stopped", file=sys.stderr)
        return 130
    finally:
        if mlflow_ui is not None:
            _stop_group(mlflow_ui)


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its workers (SIGTERM, then SIGKILL)."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def valid_days() -> tuple[str, str]:
    """The first and last day the dataset can be materialized for (daily partitions, UTC)."""
    from agentops_pipelines.partitions import daily

    keys = daily.get_partition_keys()
    return keys[0], keys[-1]


def _day(value: str) -> str:
    """argparse type: an ISO day inside the dataset's partition range; the error names the range."""
    first, last = valid_days()
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD); valid days are "
                                         f"{first} .. {last}") from None
    if not first <= day <= last:
        raise argparse.ArgumentTypeError(f"{day} is not a partition of the dataset: valid days are {first} .. "
                                         f"{last} (daily, UTC; a day becomes a partition once it is over)")
    return day


def _days_back(value: str) -> int:
    """argparse type for ``demo --days``: 1 .. the number of days in the partition range."""
    first, last = valid_days()
    most = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).days + 1
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of days (1 .. {most})") from None
    if not 1 <= days <= most:
        raise argparse.ArgumentTypeError(f"{days} is out of range: 1 .. {most} (the dataset's days are "
                                         f"{first} .. {last})")
    return days


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1 .. 65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range: 1 .. 65535")
    return port


def backfill(agent_name: str | None, first: str, last: str) -> int:
    """``agentops backfill``: the agent's ingest job for each day of a range, one run per day."""
    try:
        agent_name = choose_agent(agent_name)
    except AgentChoiceError as exc:
        print(f"agentops backfill: {exc}", file=sys.stderr)
        return 2
    if first > last:
        print(f"agentops backfill: --from {first} is after --to {last}", file=sys.stderr)
        return 2
    prepare_home()
    job = f"{agent_name}_ingest_job"
    out = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "backfill", "-w",
                          str(PROJECT_ROOT / "workspace.yaml"), "-j", job, "--from", first, "--to", last,
                          "--noprompt"], cwd=load_settings().dagster_home, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"agentops backfill: Dagster refused the backfill of {job}:\n{out.stderr.strip()[-2000:]}",
              file=sys.stderr)
        return 1
    days = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).days + 1
    print(f"Submitted: {job} for {days} day(s), {first} .. {last}, one run per day (dataset, its gates, "
          f"features). Runs start when the daemon picks them up (`agentops dev`); follow them in the "
          f"Dagster UI under Runs, tag dagster/backfill. A day that fails its gates shows as a failed "
          f"partition of {agent_name}/dataset.")
    return 0


def status(agent_name: str | None = None) -> int:
    """``agentops status``: per agent (``--agent``: that one) and environment, what serves
    (version, canary share, restarts), when it was deployed and who approved it (from the
    verified audit log), then the newest registered versions with their approval state.

    Evaluation figures come from the pipeline's registration record in the verified audit log;
    a model-version tag that says otherwise, or a figure with no such record, an approval state
    the log does not back, and the shadow comparison (written by a serving process, which holds
    no audit key) are shown marked ``unverified: set outside the pipeline``: anyone with MLflow
    write access can set tags."""
    from agentops_pipelines.governance.eligibility import recorded_metrics, serving_now
    from agentops_pipelines.vocabulary import ENVIRONMENTS

    try:
        names = [choose_agent(agent_name)] if agent_name else agent_names()
    except AgentChoiceError as exc:
        print(f"agentops status: {exc}", file=sys.stderr)
        return 2

    resources = _resources()
    client = resources["mlflow_store"].configure()
    deployer = resources["deployer"]
    log = resources["audit"].store.verify()
    if not log.ok:
        print(f"WARNING: {log.summary()}", file=sys.stderr)
    evidence = log.entries if log.ok else []  # a log that does not verify backs no figure
    for name in names:
        print(f"{name}")
        now = serving_now(log.entries, name)
        for env in ENVIRONMENTS:
            line = _serving_line(deployer, env, name)
            row = now.get(env)
            if row and line != "not deployed":
                line += f"; {row['how']} {row['since'][:19]} by {row['by']}, approved by {row['approved_by'] or '-'}"
            print(f"  {env:<8} {line}")
        try:
            model = client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - nothing registered yet
            print("  no registered versions")
            continue
        print(f"  aliases: {dict(model.aliases)}")
        for mv in client.search_model_versions(f"name='{name}'", order_by=["version_number DESC"], max_results=10):
            refusal = mv.tags.get(VersionTag.REFUSAL)
            actions = {e.action for e in evidence if e.agent == name and e.version == str(mv.version)}
            print(f"  v{mv.version}: {_status_note(mv.tags, actions)}" + (f" ({refusal})" if refusal else "")
                  + f"; {_figure_note('accuracy', mv.tags, recorded_metrics(evidence, name, mv.version))}"
                  + f"; run {mv.run_id}" + _shadow_note(mv.tags))
    return 0


UNVERIFIED = "unverified: set outside the pipeline"
# What an approval_status tag claims (its first word) and the audit action that backs the claim.
_STATUS_BACKED_BY = {"approved": "approve", "promoted": "promote", "rejected": "reject", "refused": "approval_refused"}


def _status_note(tags: dict, actions: set[str]) -> str:
    """The ``approval_status`` tag (the view the pipeline keeps), marked unverified when it claims
    a decision no entry of the verified audit log (``actions``: the version's) records: a tag
    set by hand approves nothing. ``pending`` claims nothing."""
    status = tags.get(VersionTag.STATUS, "-")
    claim = status.split(" ", 1)[0]
    if status == "-" or claim == "pending" or _STATUS_BACKED_BY.get(claim) in actions:
        return status
    return f"{status} ({UNVERIFIED})"


def _figure_note(metric: str, tags: dict, recorded: dict[str, str] | None) -> str:
    """``<metric> <value>`` as the pipeline recorded it at registration (``recorded``: the audit
    log's figures); the ``eval_<metric>`` tag only when no record backs it, marked unverified, and
    named as such when it disagrees with the record."""
    key = f"eval_{metric}"
    tagged, backed = tags.get(key), (recorded or {}).get(key)
    if backed is None:
        return f"{metric} {tagged} ({UNVERIFIED})" if tagged is not None else f"{metric} -"
    if tagged is not None and tagged != backed:
        return f"{metric} {backed} (tag {key}={tagged}: {UNVERIFIED})"
    return f"{metric} {backed}"


def _shadow_note(tags: dict) -> str:
    """The shadow comparison a version's reviewers should see (serving/shadow.py), if any. A
    serving process writes it as tags and holds no audit key, so nothing backs it: it is context
    for a reviewer, marked unverified, never evidence."""
    from agentops_pipelines.vocabulary import ShadowTag

    if ShadowTag.VERDICT not in tags:
        return ""
    return (f"; shadow ({UNVERIFIED}) vs v{tags.get(ShadowTag.PRIMARY, '?')}: {tags[ShadowTag.VERDICT]} over "
            f"{tags.get(ShadowTag.REQUESTS, '?')} requests (pass {tags.get(ShadowTag.CHALLENGER_PASS)} vs "
            f"{tags.get(ShadowTag.PRIMARY_PASS)}, McNemar p={tags.get(ShadowTag.MCNEMAR_P)})")


def trace(request_id: str, full: bool = False) -> int:
    """Find the traces tagged ``agentops.request_id = <request_id>`` in every experiment and print
    their spans as a tree: type, latency, status, and each step's inputs and outputs."""
    import json
    import re

    import mlflow

    from agentops_pipelines.resources.settings import load_settings

    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", request_id):
        print(f"agentops trace: {request_id!r} is not a request id (letters, digits, . _ : -; at most 100)",
              file=sys.stderr)
        return 2
    mlflow.set_tracking_uri(load_settings().mlflow_tracking_uri)
    experiments = [e.experiment_id for e in mlflow.MlflowClient().search_experiments(max_results=1000)]
    traces = []
    for i in range(0, len(experiments), 100):
        traces += mlflow.search_traces(locations=experiments[i:i + 100], return_type="list",
                                       filter_string=f"tags.`agentops.request_id` = '{request_id}'")
    if not traces:
        print(f"no trace of request {request_id} (only failed, flagged and sampled requests are traced; "
              "traces export within seconds)", file=sys.stderr)
        return 1
    width = None if full else 110
    for t in traces:
        info = t.info
        tags = info.tags
        print(f"trace {info.trace_id}  experiment {info.experiment_id}  {tags.get('agentops.environment', '')} "
              f"v{tags.get('agentops.model_version', '?')} {tags.get('agentops.role', '')} "
              f"status {tags.get('agentops.status', '?')} ({tags.get('agentops.trace_reason', '')})")
        spans = t.data.spans
        children: dict = {}
        for span in spans:
            children.setdefault(span.parent_id, []).append(span)

        def show(span, depth: int, children=children) -> None:
            ms = (span.end_time_ns - span.start_time_ns) / 1e6 if span.end_time_ns else 0.0
            status = str(span.status.status_code).split(".")[-1]
            error = f"  ERROR: {span.status.description}" if status == "ERROR" and span.status.description else ""
            print(f"{'  ' * depth}- {span.name} [{span.span_type}] {ms:.2f} ms{error}")
            if depth >= 2 or span.span_type in ("TOOL", "GUARDRAIL"):
                for label, value in (("in", span.inputs), ("out", span.outputs)):
                    if value:
                        text = json.dumps(value, default=str)
                        print(f"{'  ' * depth}    {label}: {text if width is None else text[:width]}")
            for c in sorted(children.get(span.span_id, []), key=lambda s: s.start_time_ns):
                show(c, depth + 1, children)

        for root in children.get(None, []):
            show(root, 0)
    return 0


def _serving_line(deployer, environment: str, agent: str | None = None) -> str:
    """What ``agent`` serves in ``environment`` (None: the one agent serving there), with the
    local supervisor's restarts or why it gave up. ``status`` always names the agent."""
    supervision = getattr(deployer, "supervision", None)  # local processes only
    if supervision is None:
        d, record = deployer.status(environment, agent=agent), None
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


def _resources(settings=None) -> dict:
    """The code location's resources for the settings read now (this process's environment)."""
    from agentops_pipelines.definitions import build_resources, code_location_agents

    settings = settings or load_settings()
    return build_resources(settings, code_location_agents(settings))


def _key_path(reviewer: str, given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    folder = os.environ.get(EnvVar.SIGNING_KEY_DIR) or Path.home() / ".config" / "agentops" / "keys"
    return Path(folder) / f"{reviewer}.pem"


def keygen(reviewer: str, out: str | None) -> int:
    """``agentops keygen``: a reviewer's signing key; prints the line for approvers.yaml."""
    from agentops_pipelines.governance.signing import generate_key, valid_reviewer

    try:
        valid_reviewer(reviewer)
        path = _key_path(reviewer, out)
        public = generate_key(path)
    except FileExistsError:
        print(f"agentops keygen: {path} exists; it is never overwritten (move it away first)", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"agentops keygen: {exc}", file=sys.stderr)
        return 2
    print(f"""Private key: {path} (mode 600; it never leaves this machine: keep it safe).
Public key for approvers.yaml, under agents.<agent>.approvers (added by a reviewed change):

      {reviewer}: "{public}"
""")
    return 0


def review(agent: str, version: str, decision: str, reviewer: str, comment: str, key: str | None,
           wait: bool, timeout: float, print_only: bool) -> int:
    """``agentops approve|reject``: sign the decision and hand it to the approval sensor."""
    from agentops_pipelines.governance import approvals, signing
    from agentops_pipelines.governance.policy import PolicyError, load_policy

    def fail(message: str, code: int = 2) -> int:
        print(f"agentops {'approve' if decision == 'approved' else 'reject'}: {message}", file=sys.stderr)
        return code

    settings = load_settings()
    try:
        policy = load_policy(settings.approvers_file, agent)
    except PolicyError as exc:
        return fail(str(exc))
    if reviewer not in policy.approvers:
        return fail(f"{reviewer!r} is not an approver of {agent}; {policy.describe()}. Nothing was recorded.")
    if len(comment) > 500:
        return fail("--comment is limited to 500 characters")
    try:
        private_key = signing.load_private_key(_key_path(reviewer, key))
    except (signing.SignatureError, ValueError) as exc:
        return fail(str(exc))
    if signing.public_key_text(private_key.public_key()) != signing.public_key_text(policy.approvers[reviewer]):
        return fail(f"the key {_key_path(reviewer, key)} is not the one registered for {reviewer!r} in {policy.source}")
    resources = _resources(settings)
    client = resources["mlflow_store"].configure()
    audit = resources["audit"].store
    if decision == "rejected" and not print_only:
        serving = _serving_in_guarded(audit, agent, version)
        if serving:
            return fail(f"version {version} serves in {serving}: a rejection cannot take it out of service. "
                        f"Roll it back instead (launch {agent}_rollback_job in the Dagster UI); nothing was recorded.")
    try:
        made, envelope = approvals.make_decision(client, agent, version, decision, reviewer, private_key, comment)
    except Exception as exc:  # noqa: BLE001 - one clear line for a person at a terminal
        return fail(f"could not read {agent} version {version} from MLflow: {exc}")
    if print_only:
        print(f"Tag key:   {signing_tag(reviewer)}\nTag value: {envelope}")
        print("Set it on the model version in the MLflow UI; the approval sensor verifies it.", file=sys.stderr)
        return 0
    tag = approvals.submit(client, made, envelope)
    needs = "; ".join(f"{env} needs {policy.required(env)}" for env in GUARDED_ENVIRONMENTS)
    print(f"Signed: {reviewer} {decision} {agent} version {made.version} (artifacts sha256 "
          f"{made.artifacts_sha256[:12]}…, evaluation report sha256 {made.report_sha256[:12]}…), "
          f"submitted as the model-version tag {tag}.")
    if decision == "approved":
        print(f"Next: the approval sensor (running under `make dev`) verifies the signature, records it in the "
              f"audit log and promotes to the furthest environment the policy allows ({needs} distinct "
              f"approvals). Follow it with `agentops audit {agent}`" + (" or wait here." if wait else " or --wait."))
    else:
        print(f"Next: the approval sensor verifies and records it; a valid rejection keeps version {made.version} "
              "out of staging and prod until that reviewer approves it.")
    if not wait:
        return 0
    return _wait_for_outcome(audit, policy, agent, made.version, signing.envelope_digest(envelope), timeout)


def signing_tag(reviewer: str) -> str:
    from agentops_pipelines.vocabulary import DECISION_TAG_PREFIX

    return DECISION_TAG_PREFIX + reviewer


def _serving_in_guarded(audit, agent: str, version: str) -> str | None:
    """The guarded environment ``version`` serves in per the audit log (best effort), or None."""
    try:
        entries = audit.entries(agent)
    except Exception:  # noqa: BLE001 - no access to the log from here: the sensor decides
        return None
    from agentops_pipelines.governance.eligibility import guarded_environment_serving

    return guarded_environment_serving(entries, agent, version)


def _wait_for_outcome(audit, policy, agent: str, version: str, digest: str, timeout: float) -> int:
    """Follow the decision through the audit log: recorded or refused, then promoted or not."""
    from agentops_pipelines.governance.eligibility import highest_allowed

    deadline = time.monotonic() + timeout
    recorded = None
    print(f"Waiting up to {timeout:.0f} s for the approval sensor...", flush=True)
    while time.monotonic() < deadline:
        log = audit.verify()
        if not log.ok:
            print(f"REFUSED: {log.summary()}", file=sys.stderr)
            return 1
        mine = [e for e in log.entries if e.agent == agent and e.version == str(version)]
        if recorded is None:
            recorded = next((e for e in mine if e.details.get("envelope_sha256") == digest), None)
            if recorded is not None and recorded.action == "approval_refused":
                print(f"REFUSED: {recorded.reason}", file=sys.stderr)
                return 1
            if recorded is not None:
                print(f"Recorded in the audit log as entry {recorded.seq} ({recorded.action}).", flush=True)
                if recorded.action == "reject":
                    return 0
        if recorded is not None:
            after = [e for e in mine if e.seq > recorded.seq]
            failed = next((e for e in after if e.action in ("promotion_failed", "deployment_refused")), None)
            if failed:
                print(f"NOT PROMOTED: {failed.action} in {failed.environment}: {failed.reason}", file=sys.stderr)
                return 1
            target, verdict = highest_allowed(log, policy, agent, str(version))
            if target is None:
                if verdict.missing_approvals:
                    print(f"Waiting for more approvals: {verdict.reason}")
                    return 0
                print(f"REFUSED: {verdict.reason}", file=sys.stderr)
                return 1
            done = next((e for e in after if e.environment == target and e.action in ("deploy", "promote")), None)
            if done:
                print(f"Done: version {version} serves in {target} ({done.reason}).")
                if target == "staging" and verdict.missing_approvals:
                    print(f"Prod waits: {verdict.reason}")
                return 0
        time.sleep(1.0)
    print(f"TIMED OUT after {timeout:.0f} s: is the daemon running (`make dev`)? Follow with "
          f"`agentops audit {agent}`.", file=sys.stderr)
    return 3


def create_audit_key() -> int:
    """``agentops audit --create-key``: the audit log's MAC key (AGENTOPS_AUDIT_KEY_FILE) and the
    anchor of the empty log, if missing."""
    store = _resources()["audit"].store
    made = store.initialize()
    print(f"{'created' if made else 'kept the existing'} audit key {store.key_file} (mode 600; back it up: "
          f"without it the log can be neither written nor verified) and anchor {store.anchor_path}")
    return 0


def audit_log(agent: str | None, limit: int, as_json: bool, served_only: bool) -> int:
    """``agentops audit``: the audit log (``agent``: its entries only), oldest first, and
    whether it verifies (always the whole chain)."""
    if agent:
        try:
            agent = choose_agent(agent)
        except AgentChoiceError as exc:
            print(f"agentops audit: {exc}", file=sys.stderr)
            return 2
    store = _resources()["audit"].store
    result = store.verify()
    entries = [e for e in result.entries if agent is None or e.agent == agent] if result.entries else \
        store.entries(agent, limit=limit)
    entries = entries[-limit:]
    if served_only:
        from agentops_pipelines.governance.eligibility import served

        for name in [agent] if agent else agent_names():
            print(f"{name}:")
            for row in served(result.entries, name):
                print(f"  {row['environment']:<8} v{row['version']:<4} {row['since'][:19]} .. "
                      f"{row['until'][:19]:<19}  {row['how']:<8} approved by {row['approved_by'] or '-'}")
    elif as_json:
        print(json.dumps([e.as_dict() for e in entries], indent=2, default=str))
    else:
        for e in entries:
            where = f" [{e.environment}]" if e.environment else ""
            version = f" v{e.version}" if e.version else ""
            print(f"{e.seq:>6} {e.at[:19]}  {e.action:<19} {e.agent}{version}{where}  by {e.actor}"
                  + (f"  — {e.reason}" if e.reason else ""))
    print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    help_ = "run the whole lifecycle on the embedded defaults and say where to look"
    p = sub.add_parser("demo", help=help_, description=help_)
    p.add_argument("--days", type=_days_back, default=3, metavar="N",
                   help="days of requests to ingest, ending yesterday (default 3)")
    p.add_argument("--agent", help="whose lifecycle (default: support_agent, or the only agent)")
    help_ = "Dagster UI with the daemon (sensors, schedules) and the MLflow UI, until Ctrl-C"
    p = sub.add_parser("dev", help=help_, description=help_)
    p.add_argument("--port", type=_port, default=3000, help="the Dagster UI's port (default 3000)")
    p.add_argument("--mlflow-port", type=_port, default=5000,
                   help="the MLflow UI's port (default 5000); every MLflow link in the Dagster UI points there")
    first, last = valid_days()
    help_ = "ingest a range of days: one run per day of the ingest job (dataset, gates, features)"
    p = sub.add_parser("backfill", help=help_, description=f"{help_}. Valid days: {first} .. {last} (UTC).")
    p.add_argument("--from", dest="first", type=_day, required=True, metavar="DAY",
                   help=f"first day, YYYY-MM-DD ({first} .. {last})")
    p.add_argument("--to", dest="last", type=_day, required=True, metavar="DAY",
                   help="last day, YYYY-MM-DD, included")
    p.add_argument("--agent", help="whose dataset (required when there are several agents)")
    p = sub.add_parser("status", help="registered versions and deployments")
    p.add_argument("--agent", help="only this agent (default: every agent)")
    p = sub.add_parser("trace", help="print the steps of a served request's trace (by its X-Request-Id)")
    p.add_argument("request_id", help="the request's X-Request-Id (response header)")
    p.add_argument("--full", action="store_true", help="print each step's inputs and outputs in full")
    sub.add_parser("check", help="connect to every configured service (Postgres, Redis, MLflow, Feast)")
    p = sub.add_parser("keygen", help="make a reviewer's signing key (Ed25519); prints the public key")
    p.add_argument("--reviewer", required=True, help="your name as approvers.yaml will list it")
    p.add_argument("--out", help="where to write the private key (default ~/.config/agentops/keys/<reviewer>.pem)")
    for name, decision in (("approve", "approved"), ("reject", "rejected")):
        p = sub.add_parser(name, help=f"sign and submit your decision to {name} a registered version")
        p.add_argument("agent", nargs="?", metavar="AGENT",
                       help="the agent (its registered model name), e.g. support_agent; or --agent")
        p.add_argument("version", help="the registered version number")
        p.add_argument("--agent", dest="agent_option", metavar="AGENT",
                       help="the agent (required when there are several and AGENT is not given)")
        p.add_argument("--reviewer", required=True, help="you, as approvers.yaml lists you")
        p.add_argument("--key", help="your private key (default ~/.config/agentops/keys/<reviewer>.pem)")
        p.add_argument("--comment", default="", help="why (kept in the signed statement and the audit log)")
        p.add_argument("--wait", action="store_true", help="follow the decision to its outcome; exit 1 if refused")
        p.add_argument("--timeout", type=float, default=900.0, help="how long --wait waits, in seconds")
        p.add_argument("--print", dest="print_only", action="store_true",
                       help="print the signed tag to paste in the MLflow UI instead of submitting it")
        p.set_defaults(decision=decision)
    p = sub.add_parser("audit", help="print the audit log and verify it (exit 1 if it does not verify)")
    p.add_argument("agent", nargs="?", metavar="AGENT", help="only this agent's entries (or --agent)")
    p.add_argument("--agent", dest="agent_option", metavar="AGENT", help="only this agent's entries")
    p.add_argument("--limit", type=int, default=200, help="the newest N entries")
    p.add_argument("--json", action="store_true", help="entries as JSON")
    p.add_argument("--served", action="store_true",
                   help="which version served in each environment, when, and who approved it")
    p.add_argument("--create-key", action="store_true",
                   help="create the MAC key at AGENTOPS_AUDIT_KEY_FILE if it is missing (production set-up)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"agentops {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "backfill":
        return backfill(args.agent, args.first, args.last)
    if args.command == "demo":
        return demo(args.days, args.agent)
    if args.command == "keygen":
        return keygen(args.reviewer, args.out)
    if args.command in ("approve", "reject", "audit"):
        if args.agent and args.agent_option and args.agent != args.agent_option:
            print(f"agentops {args.command}: AGENT {args.agent!r} and --agent {args.agent_option!r} differ",
                  file=sys.stderr)
            return 2
        args.agent = args.agent or args.agent_option
    if args.command in ("approve", "reject"):
        try:
            args.agent = choose_agent(args.agent)
        except AgentChoiceError as exc:
            print(f"agentops {args.command}: {exc}; nothing was recorded", file=sys.stderr)
            return 2
        return review(args.agent, args.version, args.decision, args.reviewer, args.comment, args.key,
                      args.wait, args.timeout, args.print_only)
    if args.command == "audit" and args.create_key:
        return create_audit_key()
    if args.command == "audit":
        return audit_log(args.agent, args.limit, args.json, args.served)
    if args.command == "dev":
        return dev(args.port, args.mlflow_port)
    if args.command == "check":
        return check_services()
    if args.command == "trace":
        return trace(args.request_id, args.full)
    return status(args.agent)


if __name__ == "__main__":
    sys.exit(main())
