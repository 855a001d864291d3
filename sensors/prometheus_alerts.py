"""``prometheus_alert_sensor``: a firing alert of the agent → rollback to the last stable version.

Only alerts labelled with this agent, an environment, and the version serving there now are acted
on (an alert about a version already replaced is stale). The run key names the environment, the
version and when its serving process started: one rollback per serving episode of a bad version,
however many of its alerts fire (error rate, latency, online scorer failures), across daemon
restarts; the cursor remembers each alert (its labels' hash and start time) it has handled.

An alert labelled ``rollback: "false"`` is for a person, not for this sensor: its cause is outside
the version (``AgentLLMCallFailures``: the LLM endpoint is down, and an older version calls the
same endpoint). While one fires for a version, the version's other alerts are taken as its
symptoms and not acted on either (every request handed over to a person also fires
``AgentEscalationSpike``): rolling back would only walk back through good versions.
"""

import hashlib
import json

import dagster as dg

from agentops_pipelines.operations import RollbackConfig
from agentops_pipelines.resources.deployers import Deployer
from agentops_pipelines.resources.prometheus import PrometheusResource, PrometheusUnreachable
from agentops_pipelines.vocabulary import RunTag, rollout_tags

MAX_REMEMBERED = 500


def fingerprint(labels: dict) -> str:
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]


def build_prometheus_alert_sensor(agent, rollback_job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(name=f"{agent.name}_prometheus_alert_sensor", job=rollback_job, minimum_interval_seconds=5,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Firing Prometheus alerts of the agent → rollback to the last stable version.")
    def prometheus_alert_sensor(context: dg.SensorEvaluationContext, prometheus: PrometheusResource, deployer: Deployer):
        if not prometheus.url:
            return dg.SkipReason("no Prometheus configured (set AGENTOPS_PROMETHEUS_URL)")
        seen = json.loads(context.cursor) if context.cursor else []
        try:
            alerts = prometheus.firing_alerts()
        except PrometheusUnreachable as exc:
            return dg.SkipReason(f"{exc}; cursor kept")
        requests, notes = [], []
        held = {(a["labels"].get("environment"), a["labels"].get("version", "")): a["labels"].get("alertname")
                for a in alerts if a.get("labels", {}).get("agent") == agent.name
                and a["labels"].get("rollback") == "false"}
        for alert in alerts:
            labels = alert.get("labels", {})
            if labels.get("agent") != agent.name or not labels.get("environment"):
                continue
            env, version = labels["environment"], labels.get("version", "")
            key = f"rollback-{fingerprint(labels)}-{alert.get('activeAt', '')}"
            if key in seen:
                continue
            if (env, version) in held:  # remembered: a symptom now does not roll back later either
                why = ("is for a person (rollback: false)" if labels.get("rollback") == "false" else
                       f"no rollback while {held[(env, version)]} fires (its cause is outside the version)")
                notes.append(f"{labels.get('alertname')} for version {version} in {env}: {why}")
                seen.append(key)
                continue
            current = deployer.status(env, agent=agent.name)  # this agent's process, never another's
            if current is None or (version and current.version != version):
                notes.append(f"{labels.get('alertname')} for version {version} in {env} is stale "
                             f"(serving: {current.version if current else 'nothing'})")
                seen.append(key)
                continue
            # Several alerts can fire for one bad version (error rate, latency, scorer failures):
            # one rollback per serving episode of that version, whichever alert came first.
            episode = f"rollback-{env}-{current.version}-{current.started_at}"
            if episode in seen:
                notes.append(f"{labels.get('alertname')} for version {version} in {env}: its rollback "
                             "was already requested")
                seen.append(key)
                continue
            summary = alert.get("annotations", {}).get("summary", "")
            reason = f"{labels.get('alertname')} firing since {alert.get('activeAt')}" + (f": {summary}" if summary else "")
            requests.append(dg.RunRequest(
                run_key=episode,
                run_config=dg.RunConfig(ops={f"{agent.name}_rollback": RollbackConfig(
                    environment=env, reason=reason, bad_version=current.version, actor="prometheus_alert_sensor")}),
                tags={**rollout_tags(agent.name, env), "agentops/alert": labels.get("alertname", ""),
                      RunTag.VERSION: current.version}))
            seen += [key, episode]
        cursor = json.dumps(seen[-MAX_REMEMBERED:])
        if not requests:
            context.update_cursor(cursor)
            return dg.SkipReason("; ".join(notes) or f"no firing alert for {agent.name}")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return prometheus_alert_sensor


def build_promotion_failure_sensor(agent, promotion_job: dg.JobDefinition, rollback_job: dg.JobDefinition):
    @dg.run_failure_sensor(name=f"{agent.name}_promotion_failure_sensor", monitored_jobs=[promotion_job],
                           request_job=rollback_job, default_status=dg.DefaultSensorStatus.RUNNING,
                           description="A failed promotion → rollback of prod to the last stable version.")
    def promotion_failure_sensor(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        message = (context.failure_event.message or "")[:300]
        return dg.RunRequest(
            run_key=f"rollback-after-{run.run_id}",
            run_config=dg.RunConfig(ops={f"{agent.name}_rollback": RollbackConfig(
                environment="prod", reason=f"promotion run {run.run_id[:8]} failed: {message}",
                bad_version=run.tags.get(RunTag.VERSION, ""), actor="promotion_failure_sensor")}),
            tags=rollout_tags(agent.name, "prod"))

    return promotion_failure_sensor
