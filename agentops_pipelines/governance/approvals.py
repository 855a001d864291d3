"""Approvals between MLflow, the audit log and the approvers file: the steps the registry asset,
the CLI, the approval sensor, the promotion job and the deployment asset share.

MLflow is the transport and the view: a reviewer's signed envelope arrives as the model-version
tag ``agentops.decision.<reviewer>``, and the pipeline writes ``approval_status`` and friends for
people to read. What decides is the audit log: :func:`collect_decisions` verifies each envelope
and records the valid ones there (with the envelope, so the proof outlives the tag), and
:func:`check_deployable` decides from the verified log alone.
"""

from __future__ import annotations

from agentops_pipelines.governance import eligibility as elig
from agentops_pipelines.governance.audit_log import AuditStore
from agentops_pipelines.governance.digests import evaluation_report_sha256, model_artifacts_sha256
from agentops_pipelines.governance.policy import ApprovalPolicy
from agentops_pipelines.governance.signing import (
    Decision,
    SignatureError,
    envelope_digest,
    now,
    sign,
    verify,
)
from agentops_pipelines.vocabulary import DECISION_TAG_PREFIX, VersionTag


def record_registration(client, audit: AuditStore, agent: str, version: str, run_id: str, *,
                        gate_passed: bool, actor: str, metrics: dict | None = None) -> elig.Registration:
    """The pipeline's record of a registered version: gate result and the digests an approval
    binds to. Written by the registry asset (and nothing a reviewer runs)."""
    artifacts = model_artifacts_sha256(client, agent, version)
    report = evaluation_report_sha256(client, run_id)
    entry = audit.record("register", agent, actor=actor, version=version,
                         reason="evaluation gate passed" if gate_passed else "evaluation gate failed",
                         details={"run_id": run_id, "gate": "passed" if gate_passed else "failed",
                                  "artifacts_sha256": artifacts, "report_sha256": report,
                                  "metrics": metrics or {}})
    for key, value in {VersionTag.ARTIFACTS_SHA256: artifacts, VersionTag.REPORT_SHA256: report,
                       VersionTag.GATE: "passed" if gate_passed else "failed"}.items():
        client.set_model_version_tag(agent, version, key, value)
    return elig.Registration(str(version), run_id, "passed" if gate_passed else "failed", artifacts, report,
                             entry.seq)


def make_decision(client, agent: str, version: str, decision: str, reviewer: str, private_key,
                  comment: str = "") -> tuple[Decision, str]:
    """Sign ``decision`` on what MLflow holds for the version now (its artifacts and the
    evaluation report of its run). Returns the decision and its envelope."""
    mv = client.get_model_version(agent, str(version))
    made = Decision(agent=agent, version=str(mv.version), decision=decision, reviewer=reviewer,
                    artifacts_sha256=model_artifacts_sha256(client, agent, str(mv.version)),
                    report_sha256=evaluation_report_sha256(client, mv.run_id),
                    decided_at=now(), comment=comment)
    return made, sign(made, private_key)


def submit(client, decision: Decision, envelope: str) -> str:
    """Put the envelope where the approval sensor reads it; returns the tag's key."""
    key = DECISION_TAG_PREFIX + decision.reviewer
    client.set_model_version_tag(decision.agent, decision.version, key, envelope)
    return key


def collect_decisions(client, audit: AuditStore, policy: ApprovalPolicy, agent: str, version: str,
                      tags: dict, actor: str, serving_in: str | None = None) -> tuple[list[str], list[str]]:
    """Record every new signed decision among ``tags`` in the audit log (valid ones as approve or
    reject, with their envelope; invalid ones as approval_refused, with the reason). An
    ``approval_status`` set by hand with no valid envelope is a request, refused as unsigned.
    Returns one note per decision handled and the reasons of those refused; a decision already in
    the log is skipped. ``serving_in``: the guarded environment the version serves in now, where a
    rejection cannot take it out of service (a rollback does) and is refused."""
    seen = {str(e.details.get("envelope_sha256")) for e in audit.entries(agent, version=version)
            if e.action in ("approve", "reject", "approval_refused")}
    notes: list[str] = []
    refused: list[str] = []
    signed_reviewers = set()
    for key, envelope in sorted(tags.items()):
        if not key.startswith(DECISION_TAG_PREFIX):
            continue
        digest = envelope_digest(str(envelope))
        if digest in seen:
            signed_reviewers.add(key.removeprefix(DECISION_TAG_PREFIX))
            continue
        claimed = key.removeprefix(DECISION_TAG_PREFIX)
        try:
            decision = verify(str(envelope), policy.approvers)
            if decision.reviewer != claimed:
                raise SignatureError(f"the tag names {claimed!r} but the statement is {decision.reviewer!r}'s")
            if (decision.agent, decision.version) != (agent, str(version)):
                raise SignatureError(f"the statement is about {decision.subject}, not models:/{agent}/{version}")
            if decision.decision == "rejected" and serving_in:
                raise SignatureError(f"version {version} serves in {serving_in}; a rejection cannot take it "
                                     "out of service: roll it back instead")
        except SignatureError as exc:
            reason = f"decision tag {key} refused: {exc}"
            audit.record("approval_refused", agent, actor=actor, version=version, reason=reason,
                         details={"envelope_sha256": digest, "claimed_reviewer": claimed[:64]})
            notes.append(f"v{version}: {reason}")
            refused.append(reason)
            continue
        signed_reviewers.add(decision.reviewer)
        action = "approve" if decision.decision == "approved" else "reject"
        audit.record(action, agent, actor=decision.reviewer, version=version, reason=decision.comment,
                     details={"envelope": envelope, "envelope_sha256": digest, "decided_at": decision.decided_at,
                              "artifacts_sha256": decision.artifacts_sha256,
                              "report_sha256": decision.report_sha256, "verified_by": actor})
        notes.append(f"v{version}: signed {decision.decision} by {decision.reviewer} recorded")
    status, reviewer = tags.get(VersionTag.STATUS), tags.get(VersionTag.REVIEWER, "")
    request = f"{status}|{reviewer}|{tags.get(VersionTag.DECIDED_AT, '')}"
    request_digest = envelope_digest("unsigned:" + request)
    if (status in ("approved", "rejected") and not signed_reviewers and request_digest not in seen):
        reason = (f"unsigned {status} tag{f' naming {reviewer!r}' if reviewer else ''}: a tag is a "
                  f"request, not a decision; sign it with `agentops {'approve' if status == 'approved' else 'reject'} "
                  f"{agent} {version} --reviewer <you>`")
        audit.record("approval_refused", agent, actor=actor, version=version, reason=reason,
                     details={"envelope_sha256": request_digest, "claimed_reviewer": reviewer[:64]})
        notes.append(f"v{version}: {reason}")
        refused.append(reason)
    return notes, refused


def check_deployable(client, audit: AuditStore, policy: ApprovalPolicy, agent: str, version: str,
                     environments: list[str]) -> dict[str, elig.Verdict]:
    """May ``version`` serve in each of ``environments`` now? Verifies the whole audit log once
    and hashes the model's artifacts once (against their registered digest) for all of them."""
    log = audit.verify()
    digest = model_artifacts_sha256(client, agent, str(version)) if log.ok else None
    return {env: elig.eligibility(log, policy, agent, str(version), env, artifacts_sha256=digest)
            for env in environments}


def show(client, agent: str, version: str, **tags: str) -> None:
    """Write the view tags (what people read in the MLflow UI); '' clears a tag."""
    for key, value in tags.items():
        try:
            if value == "":
                client.delete_model_version_tag(agent, str(version), key)
            else:
                client.set_model_version_tag(agent, str(version), key, value)
        except Exception:  # noqa: BLE001 - deleting a tag that is not there
            pass
