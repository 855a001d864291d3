import dagster as dg
import pytest

from agentops_pipelines.agent.config import ConfiguredAgent, parse


def configured(name: str, **fields) -> ConfiguredAgent:
    """A ConfiguredAgent from fields as a YAML file would give them."""
    return ConfiguredAgent(parse({"name": name, **fields}, f"<test {name}>"))


@pytest.fixture
def lifecycle_defs(home):
    """Definitions for the agents a test builds (a function: agents -> dg.Definitions), with the
    code location's real resources for this test's state folder."""
    from agentops_pipelines.definitions import build_resources
    from agentops_pipelines.lifecycle import build_lifecycle
    from agentops_pipelines.resources.settings import load_settings

    def build(*agents) -> dg.Definitions:
        settings = load_settings()
        lifecycles = [build_lifecycle(a, inference_log_root=str(settings.inference_log_dir)) for a in agents]
        return dg.Definitions(assets=[a for lc in lifecycles for a in lc.assets],
                              asset_checks=[c for lc in lifecycles for c in lc.checks],
                              jobs=[j for lc in lifecycles for j in lc.jobs.values()],
                              resources=build_resources(settings, list(agents)))

    return build
