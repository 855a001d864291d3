"""``mlflow_run_sensor``: finished MLflow runs of the agent → a re-evaluation per run.

Runs come from the agent's experiment, or any experiment when tagged ``agentops.agent=<name>``.
The pipeline's own training runs are skipped (the training job already evaluates them), and so
are runs that logged no model. The cursor is the newest end time handled plus the ids of the runs
handled within a look-back window before it: runs that finish in the same millisecond, or whose
client clock lags, are neither lost nor repeated. The run key is the MLflow run id, so even a lost
cursor repeats nothing.
"""

import json

import dagster as dg

from agentops_pipelines.assets.evaluation import EvaluationConfig
from agentops_pipelines.assets.trajectory import TrajectoryConfig
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.vocabulary import RunTag

PAGE_SIZE = 500
LOOKBACK_MS = 10 * 60 * 1000  # end times written by clients whose clocks lag by up to 10 minutes


def _finished_runs(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=PAGE_SIZE,
                                  order_by=["attributes.end_time ASC", "attributes.run_id ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def new_runs(client, agent_name: str, end_time: int, seen: set[str]) -> list:
    """Finished runs of the agent at or after ``end_time`` not in ``seen``, oldest first."""
    base = f"attributes.status = 'FINISHED' AND attributes.end_time >= {int(end_time)}"
    found = {}
    experiment = client.get_experiment_by_name(agent_name)
    if experiment is not None:
        for run in _finished_runs(client, [experiment.experiment_id], base):
            found[run.info.run_id] = run
    others = [e.experiment_id for e in client.search_experiments() if experiment is None or e.experiment_id != experiment.experiment_id]
    if others:
        for run in _finished_runs(client, others, base + f" AND tags.`agentops.agent` = '{agent_name}'"):
            found[run.info.run_id] = run
    runs = [r for r in found.values() if r.info.run_id not in seen]
    return sorted(runs, key=lambda r: (r.info.end_time, r.info.run_id))


def build_mlflow_run_sensor(agent, job) -> dg.SensorDefinition:
    @dg.sensor(name=f"{agent.name}_mlflow_run_sensor", job=job, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Finished MLflow runs of the agent → re-evaluation against the champion and registration.")
    def mlflow_run_sensor(context: dg.SensorEvaluationContext, mlflow_store: MlflowResource):
        cursor = json.loads(context.cursor) if context.cursor else {"end_time": 0, "seen": {}}
        try:
            client = mlflow_store.configure()
            runs = new_runs(client, agent.name, cursor["end_time"] - LOOKBACK_MS, set(cursor["seen"]))
        except Exception as exc:  # noqa: BLE001 - any failure to reach MLflow is a skip, cursor kept
            return dg.SkipReason(f"MLflow at {mlflow_store.tracking_uri} is unreachable ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}); cursor kept at end_time={cursor['end_time']}")
        if not runs:
            return dg.SkipReason(f"no finished run of {agent.name} since end_time={cursor['end_time']}")
        requests, skipped = [], 0
        for run in runs:
            own = "agentops.dagster_run_id" in run.data.tags
            has_model = bool(run.outputs and run.outputs.model_outputs)
            if own or not has_model:
                skipped += 1
                continue
            requests.append(dg.RunRequest(
                run_key=run.info.run_id,
                run_config=dg.RunConfig(ops={
                    f"{agent.name}__evaluation_report": EvaluationConfig(candidate_run_id=run.info.run_id),
                    f"{agent.name}__trajectory_evaluation": TrajectoryConfig(candidate_run_id=run.info.run_id)}),
                tags={RunTag.AGENT: agent.name, "agentops/mlflow_run_id": run.info.run_id},
            ))
        newest = max(cursor["end_time"], runs[-1].info.end_time)
        seen = {**cursor["seen"], **{r.info.run_id: r.info.end_time for r in runs}}
        seen = {run_id: t for run_id, t in seen.items() if t >= newest - LOOKBACK_MS}  # older ones can't come back
        new_cursor = json.dumps({"end_time": newest, "seen": seen})
        if not requests:
            context.update_cursor(new_cursor)
            return dg.SkipReason(f"{skipped} finished run(s), none to re-evaluate (pipeline runs or no model)")
        context.log.info("%d run(s) to re-evaluate, %d skipped", len(requests), skipped)
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return mlflow_run_sensor
