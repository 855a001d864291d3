"""The agents this code location runs: the support desk (Python) plus one YAML file per agent.

The folder is ``AGENTOPS_AGENTS_DIR`` (default: the repository's ``agents/``). Each ``*.yaml`` there
is validated at load (:mod:`agentops_pipelines.agent.config`); an invalid file stops the load with
a message naming the file and the field. A file with ``enabled: false`` is an example and is not
loaded; an enabled agent whose data file is missing is skipped with a warning naming the file, so
the code location loads on a machine without that agent's data.

A file may configure a Python agent (``python: support_desk``): the agent keeps its code (its
recipe, its tools) and takes the rest (data, answers, thresholds) from the file. To add a Python
agent with custom logic, subclass ``Agent`` (agent/interface.py) and add it to ``PYTHON_AGENTS``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from agentops_pipelines.agent.config import (
    AgentConfigError,
    ConfiguredAgent,
    apply,
    data_available,
    load_file,
    reads_pipeline_state,
)
from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agent.support_desk import SupportDeskAgent

#: Python agents a file can name with ``python:``; the support desk always runs (first).
PYTHON_AGENTS: Mapping[str, Callable[[], Agent]] = {"support_desk": SupportDeskAgent}


class AgentSkippedWarning(UserWarning):
    """An enabled agent file was not loaded because its data is missing."""


def pipeline_state() -> tuple[Path, ...]:
    """What agent files may not read (``config.reads_pipeline_state``): the state folder, the
    inference logs, the serving tokens, the audit key's folder and anchor, reviewers' keys."""
    from agentops_pipelines.resources.settings import load_settings

    s = load_settings(strict=False)
    return (s.home, s.inference_log_dir, s.serving_dir, s.audit_key_file.parent, s.audit_anchor,
            Path.home() / ".config" / "agentops")


def load_agents(folder: Path, python_agents: Mapping[str, Callable[[], Agent]] = PYTHON_AGENTS,
                protected: Iterable[Path] | None = None) -> list[Agent]:
    """The support desk, then every enabled agent file in ``folder`` (sorted by file name).
    ``protected``: paths no agent file may read (default :func:`pipeline_state`)."""
    protected = pipeline_state() if protected is None else tuple(protected)
    agents: dict[str, Agent] = {SupportDeskAgent.name: SupportDeskAgent()}
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
    seen: dict[str, Path] = {}
    for path in files:
        config = load_file(path)
        if config.name in seen:
            raise AgentConfigError(f"{path}: field name: {config.name!r} is already declared by {seen[config.name]}")
        seen[config.name] = path
        if not config.enabled:
            continue
        if reason := reads_pipeline_state(config, protected):
            raise AgentConfigError(f"{path}: {reason}")
        missing = data_available(config)
        if missing:
            warnings.warn(f"agent {config.name} ({path}) skipped: {missing}", AgentSkippedWarning, stacklevel=2)
            continue
        if config.python is not None:
            factory = python_agents.get(config.python)
            if factory is None:
                raise AgentConfigError(f"{path}: field python: unknown Python agent {config.python!r}; "
                                       f"known: {', '.join(sorted(python_agents))}")
            agent = apply(factory(), config)
        else:
            if config.name == SupportDeskAgent.name:
                raise AgentConfigError(f"{path}: field python: {config.name} is the support desk; "
                                       f"add 'python: support_desk' or choose another name")
            agent = ConfiguredAgent(config)
        agent.config_file = str(path)
        agents[config.name] = agent
    return list(agents.values())


def _folder() -> Path:
    from agentops_pipelines.resources.settings import load_settings

    return load_settings(strict=False).agents_dir


AGENTS: list[Agent] = load_agents(_folder())
