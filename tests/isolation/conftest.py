"""Two agents in one code location, at once: the support desk and a second Python agent.

``BillingAgent`` is a plain Python agent (a support-desk subclass with its own name, tools and
drift threshold) until configured agents land. Both share the code location's resources (one
deployer, one MLflow on SQLite, one audit log, one approvers file): the tests prove that what one
agent's lifecycle does never touches the other's.
"""

from __future__ import annotations

import pytest
import yaml

from agentops_pipelines.agent.support_desk import SupportDeskAgent
from agentops_pipelines.vocabulary import ENVIRONMENTS

A = "support_agent"
B = "billing_agent"


class BillingAgent(SupportDeskAgent):
    name = B
    tools = ("request_refund", "update_payment_method", "escalate_to_human")
    drift_threshold = 0.8


def agents():
    return [SupportDeskAgent(), BillingAgent()]


@pytest.fixture
def two_agents(monkeypatch):
    """The code location's agent list (what the CLI reads) is the two agents."""
    from agentops_pipelines import agents as module

    monkeypatch.setattr(module, "AGENTS", agents())
    return module.AGENTS


@pytest.fixture
def defs(home, two_agents):
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    d = build_definitions(load_settings(), agents=two_agents)
    yield d
    deployer = d.resources["deployer"]
    for agent in (A, B):
        for env in ENVIRONMENTS:
            try:
                deployer.stop(env, agent=agent)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass


@pytest.fixture
def approvers(reviewers):
    """alice approves the support desk, bob the billing agent; neither approves the other."""
    reviewers.file.write_text(yaml.safe_dump({"agents": {
        A: {"approvers": {"alice": reviewers.public["alice"]}},
        B: {"approvers": {"bob": reviewers.public["bob"]}},
    }}))
    return reviewers
