"""The agents this code location runs. Add yours here (see agent/interface.py)."""

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agent.support_desk import SupportDeskAgent

AGENTS: list[Agent] = [SupportDeskAgent()]
