"""Approval policies as a Dagster resource: the approvers file every deciding process reads."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from agentops_pipelines.governance.policy import ApprovalPolicy, load_policy


class GovernanceResource(dg.ConfigurableResource):
    """``approvers_file``: who may approve each agent and how many approvals each environment
    needs (governance/policy.py). Read at each decision, so an edit applies at the next one."""

    approvers_file: str

    def policy(self, agent: str) -> ApprovalPolicy:
        return load_policy(Path(self.approvers_file), agent)
