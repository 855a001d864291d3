"""Reviewer decisions on registered versions, kept as MLflow model-version tags.

The tags are the interface: ``agentops approve`` sets them, and so can a reviewer in the MLflow
UI. The approval sensor reads them, checks the reviewer is allowed and the version is eligible,
and only then starts a promotion. Every decision lands in the audit log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

# Tag vocabulary on model versions.
STATUS = "approval_status"  # pending | approved | rejected | refused | promoted
REVIEWER = "approval_reviewer"
COMMENT = "approval_comment"
DECIDED_AT = "approval_at"
REFUSAL = "approval_refusal_reason"
GATE = "evaluation_gate"  # passed | failed
FROZEN = "frozen"  # "true" when drift froze the version
ROLLED_BACK = "rolled_back"  # the reason, when an alert rolled it back
PROMOTED_PROD = "promoted_prod_at"


def approvers(agent) -> list[str]:
    """Who may approve ``agent``: the agent's list, or ``AGENTOPS_APPROVERS`` (comma-separated)."""
    names = list(getattr(agent, "approvers", ()) or ())
    env = os.environ.get(f"AGENTOPS_APPROVERS_{agent.name.upper()}") or os.environ.get("AGENTOPS_APPROVERS", "")
    names += [n.strip() for n in env.split(",") if n.strip()]
    return sorted(set(names))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def decide(client, audit, agent_name: str, version: str, decision: str, reviewer: str, comment: str) -> None:
    """Record a reviewer's approve/reject on a version (tags + audit)."""
    if decision not in ("approved", "rejected"):
        raise ValueError(f"decision must be 'approved' or 'rejected', not {decision!r}")
    if not reviewer.strip():
        raise ValueError("a decision needs the reviewer's name (--reviewer)")
    mv = client.get_model_version(agent_name, str(version))  # raises a clear MLflow error if missing
    for key, value in {STATUS: decision, REVIEWER: reviewer, COMMENT: comment, DECIDED_AT: now()}.items():
        client.set_model_version_tag(agent_name, mv.version, key, value)
    audit.record("approve" if decision == "approved" else "reject", agent_name, actor=reviewer,
                 version=mv.version, reason=comment, details={"source": "agentops cli"})


@dataclass(frozen=True)
class Eligibility:
    allowed: bool
    reason: str


def eligibility(tags: dict, allowed_reviewers: list[str]) -> Eligibility:
    """May this approved version be promoted? Reasons name exactly what is missing."""
    reviewer = tags.get(REVIEWER, "")
    if not allowed_reviewers:
        return Eligibility(False, "no approvers are configured for this agent (set AGENTOPS_APPROVERS)")
    if reviewer not in allowed_reviewers:
        return Eligibility(False, f"reviewer {reviewer or '(none)'!r} is not among the approvers {allowed_reviewers}")
    if tags.get(GATE) != "passed":
        return Eligibility(False, f"the version did not pass its evaluation gate ({GATE}={tags.get(GATE, 'missing')})")
    if tags.get(FROZEN) == "true":
        return Eligibility(False, "the version is frozen (drift)")
    if tags.get(ROLLED_BACK):
        return Eligibility(False, f"the version was rolled back: {tags[ROLLED_BACK]}")
    return Eligibility(True, f"approved by {reviewer}")
