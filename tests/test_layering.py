"""Layers point one way: what a serving process loads (its server, its supervisor, the served
model and its online lookup) never imports the code location or Dagster."""

import subprocess
import sys

CHECK = """
import sys
from pathlib import Path
import pandas as pd
from agentops_pipelines.agent.model import AgentModel
from agentops_pipelines.features.online import OnlineLookup, config_from_environ
import agentops_pipelines.serving.server  # the serving process's main
import agentops_pipelines.serving.supervisor

model = AgentModel("a", None, ["orders_30d"], {}, None, "{{tool}}", "prompts:/none/1")
model.load_context(None)  # where a served model looks its online store up
loaded = sorted(m for m in sys.modules if m.startswith(("agentops_pipelines.resources", "agentops_pipelines.assets",
                                                        "agentops_pipelines.sensors", "dagster")))
print(loaded)
"""


def test_a_served_model_imports_nothing_from_the_code_location(home):
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
