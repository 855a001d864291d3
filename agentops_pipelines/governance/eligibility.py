"""What a registered version may do, decided from records the pipeline controls.

Every answer here is computed from a *verified* audit log (see audit_log.py) and the approvers
file, never from MLflow tags:

- the registration the registry asset recorded: the evaluation gate's result and the digests of
  the model's artifacts and of its evaluation report;
- reviewers' signed decisions, re-verified against the approvers' public keys as configured now
  (a removed approver's approvals stop counting) and bound to that registration's digests (a
  re-evaluated or re-registered version needs new approvals);
- freezes (drift), rollbacks and failed canaries.

A refusal names what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agentops_pipelines.governance.audit_log import AuditEntry, Verification
from agentops_pipelines.governance.policy import ApprovalPolicy
from agentops_pipelines.governance.signing import Decision, SignatureError, verify
from agentops_pipelines.vocabulary import Environment


@dataclass(frozen=True)
class Registration:
    version: str
    run_id: str
    gate: str
    artifacts_sha256: str
    report_sha256: str
    seq: int


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    approvers: tuple[str, ...] = ()  # whose valid approvals count
    notes: tuple[str, ...] = field(default=())  # decisions that did not count, and why
    missing_approvals: int = 0  # > 0: refused only for want of this many more approvals
    rejected_by: tuple[str, ...] = ()  # approvers whose valid signed rejection stands


def _for(entries: Iterable[AuditEntry], agent: str, version: str) -> list[AuditEntry]:
    return [e for e in entries if e.agent == agent and e.version == str(version)]


def _latest_registration(entries: Iterable[AuditEntry], agent: str, version: str) -> AuditEntry | None:
    """The audit entry of the latest registration of ``version`` (re-registering replaces it)."""
    latest = None
    for e in _for(entries, agent, version):
        if e.action == "register":
            latest = e
    return latest


def registration(entries: Iterable[AuditEntry], agent: str, version: str) -> Registration | None:
    """The latest registration of ``version`` by the pipeline (re-registering replaces it)."""
    latest = _latest_registration(entries, agent, version)
    if latest is None:
        return None
    d = latest.details
    return Registration(str(version), str(d.get("run_id", "")), str(d.get("gate", "")),
                        str(d.get("artifacts_sha256", "")), str(d.get("report_sha256", "")), latest.seq)


def recorded_metrics(entries: Iterable[AuditEntry], agent: str, version: str) -> dict[str, str] | None:
    """The evaluation figures (``eval_<metric>``) the pipeline recorded with the latest
    registration of ``version``, None if the pipeline never registered it. The tags of the same
    name are a view anyone with MLflow write access can set; these are the evidence."""
    latest = _latest_registration(entries, agent, version)
    if latest is None:
        return None
    metrics = latest.details.get("metrics")
    return {str(k): str(v) for k, v in metrics.items()} if isinstance(metrics, dict) else {}


def decisions(entries: Iterable[AuditEntry], policy: ApprovalPolicy, agent: str, version: str,
              reg: Registration) -> tuple[dict[str, Decision], list[str]]:
    """Each approver's latest valid signed decision on ``reg`` (reviewer -> decision), and why
    the other recorded decisions do not count."""
    latest: dict[str, Decision] = {}
    notes: list[str] = []
    for e in _for(entries, agent, version):
        if e.action not in ("approve", "reject") or e.seq < reg.seq:
            if e.action in ("approve", "reject"):
                notes.append(f"{e.actor}'s decision predates the current registration (entry {reg.seq}): sign again")
            continue
        try:
            decision = verify(str(e.details.get("envelope", "")), policy.approvers)
        except SignatureError as exc:
            notes.append(f"{e.actor}'s decision at entry {e.seq} no longer verifies: {exc}")
            continue
        if (decision.agent, decision.version) != (agent, str(version)):
            notes.append(f"{decision.reviewer}'s decision names {decision.subject}")
            continue
        if (decision.artifacts_sha256, decision.report_sha256) != (reg.artifacts_sha256, reg.report_sha256):
            notes.append(f"{decision.reviewer}'s decision was signed for other artifacts or another "
                         "evaluation report than the version's registration: sign again")
            continue
        # A reviewer's latest decision is the latest they *signed* (decided_at is inside the
        # signature), not the latest recorded: an older envelope replayed later changes nothing.
        # At the same second a rejection wins.
        current = latest.get(decision.reviewer)
        if current is None or (decision.decided_at, decision.decision == "rejected") > (
                current.decided_at, current.decision == "rejected"):
            latest[decision.reviewer] = decision
    return latest, notes


def history(entries: Iterable[AuditEntry], agent: str, version: str) -> dict[str, AuditEntry]:
    """The latest freeze/unfreeze, rollback and promotion_failed entries of ``version``."""
    found: dict[str, AuditEntry] = {}
    for e in _for(entries, agent, version):
        if e.action in ("freeze", "unfreeze"):
            found["freeze"] = e
        elif e.action in ("rollback", "promotion_failed"):
            found["rollback"] = e
    return found


def blocked(entries: Iterable[AuditEntry], agent: str, version: str) -> str | None:
    """Why ``version`` may serve nowhere guarded any more (frozen, rolled back), or None."""
    h = history(entries, agent, version)
    if "freeze" in h and h["freeze"].action == "freeze":
        return f"version {version} was frozen at {h['freeze'].at[:19]} ({h['freeze'].reason})"
    if "rollback" in h:
        what = "rolled back" if h["rollback"].action == "rollback" else "failed its canary"
        return f"version {version} {what} at {h['rollback'].at[:19]} ({h['rollback'].reason})"
    return None


def eligibility(log: Verification, policy: ApprovalPolicy, agent: str, version: str, environment: str,
                artifacts_sha256: str | None = None) -> Verdict:
    """May ``version`` of ``agent`` serve in ``environment`` (staging or prod)? ``artifacts_sha256``:
    the digest of the artifacts about to be deployed, computed just now (None: not checked)."""
    version = str(version)
    if not log.ok:
        return Verdict(False, "the audit log does not verify, so no approval can be trusted: "
                       + "; ".join(log.problems))
    entries = log.entries
    reg = registration(entries, agent, version)
    if reg is None:
        return Verdict(False, f"version {version} of {agent} has no registration recorded by the pipeline "
                              "(registered_version writes it after the evaluation gate)")
    if reg.gate != "passed":
        return Verdict(False, f"version {version} did not pass its evaluation gate ({reg.gate or 'no result'})")
    if artifacts_sha256 is not None and artifacts_sha256 != reg.artifacts_sha256:
        return Verdict(False, f"the artifacts of version {version} changed since registration "
                              f"(sha256 {artifacts_sha256[:12]}… now, {reg.artifacts_sha256[:12]}… registered)")
    if reason := blocked(entries, agent, version):
        return Verdict(False, reason)
    valid, notes = decisions(entries, policy, agent, version, reg)
    rejections = sorted(r for r, d in valid.items() if d.decision == "rejected")
    if rejections:
        return Verdict(False, f"version {version} was rejected by {', '.join(rejections)}", (), tuple(notes),
                       rejected_by=tuple(rejections))
    approvers = tuple(sorted(r for r, d in valid.items() if d.decision == "approved"))
    needed = policy.required(environment)
    if not policy.approvers:
        return Verdict(False, f"no approvers are configured for {agent} in {policy.source}", approvers,
                       tuple(notes))
    if len(approvers) < needed:
        have = f"{len(approvers)} ({', '.join(approvers)})" if approvers else "none"
        return Verdict(False, f"{environment} needs {needed} signed approval(s) from "
                              f"{', '.join(sorted(policy.approvers))}; valid approvals: {have}",
                       approvers, tuple(notes), missing_approvals=needed - len(approvers))
    return Verdict(True, f"approved for {environment} by {', '.join(approvers)}", approvers, tuple(notes))


def highest_allowed(log: Verification, policy: ApprovalPolicy, agent: str, version: str) -> tuple[str | None, Verdict]:
    """The furthest environment ``version`` may go now (prod, else staging, else None) and the
    verdict that says so (or, for None, why staging is refused)."""
    staging = eligibility(log, policy, agent, version, Environment.STAGING)
    if not staging.allowed:
        return None, staging
    prod = eligibility(log, policy, agent, version, Environment.PROD)
    return (Environment.PROD.value, prod) if prod.allowed else (Environment.STAGING.value, prod)


def last_stable_version(entries: Iterable[AuditEntry], agent: str, exclude: set[str]) -> str | None:
    """The most recently promoted version that was never rolled back, failed or frozen since."""
    entries = list(entries)
    promoted: dict[str, int] = {}
    for e in entries:
        if e.agent == agent and e.action == "promote" and e.environment == Environment.PROD:
            promoted[str(e.version)] = e.seq
    candidates = [(seq, v) for v, seq in promoted.items()
                  if v not in exclude and blocked(entries, agent, v) is None]
    return max(candidates)[1] if candidates else None


def served(entries: Iterable[AuditEntry], agent: str) -> list[dict]:
    """Every version that served in each environment, when, and who approved it: one row per
    deploy/promote/rollback that changed what serves, oldest first."""
    rows: list[dict] = []
    entries = list(entries)
    approvals: dict[str, list[str]] = {}
    for e in entries:
        if e.agent != agent:
            continue
        if e.action == "approve":
            approvals.setdefault(str(e.version), []).append(e.actor)
        if e.action in ("deploy", "promote") and e.environment:
            rows.append({"environment": e.environment, "version": e.version, "since": e.at,
                         "how": e.action, "by": e.actor,
                         "approved_by": ", ".join(e.details.get("approvers") or sorted(set(approvals.get(str(e.version), []))))})
        elif e.action == "rollback" and e.environment and e.details.get("to_version"):
            rows.append({"environment": e.environment, "version": str(e.details["to_version"]), "since": e.at,
                         "how": "rollback", "by": e.actor, "approved_by": "(approved before)"})
    for i, row in enumerate(rows):
        nxt = next((r for r in rows[i + 1:] if r["environment"] == row["environment"]), None)
        row["until"] = nxt["since"] if nxt else "now"
    return rows


def serving_now(entries: Iterable[AuditEntry], agent: str) -> dict[str, dict]:
    """Per environment, the :func:`served` row of what serves there now."""
    return {row["environment"]: row for row in served(entries, agent) if row["until"] == "now"}


def guarded_environment_serving(entries: Iterable[AuditEntry], agent: str, version: str) -> str | None:
    """The guarded environment (prod first) where ``version`` serves now, or None."""
    now = serving_now(entries, agent)
    return next((env for env in ("prod", "staging") if now.get(env, {}).get("version") == str(version)), None)
