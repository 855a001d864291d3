"""Agents with no code through the lifecycle: dataset → training → evaluation → registration on
real MLflow (SQLite), answers from their own templates, and no escalation metrics without an
escalation tool."""

import json
import shutil

import dagster as dg
import pandas as pd
import pytest

from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES
from tests.agents_config.conftest import configured
from tests.conftest import BANKING77
from tests.helpers import embeds
from tests.serving.support import JSON, request

DAY = "2026-11-01"
# The default recipe (TF-IDF and MiniLM embeddings) on BANKING77: 0.9308 on the pipeline's stable
# 20% held out (BENCHMARKS.md, "The default recipe embeds"); 0.9275 on the bench's split 0.
DEFAULT_FLOOR = 0.925


def meta(instance, agent: str, name: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey([agent, name]))
    assert event is not None, f"{agent}/{name} was never materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def run(defs, instance, job: str, **kwargs) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def test_answers_come_from_the_tools_template_without_customer_arguments():
    from agentops_pipelines.agent.model import AgentModel
    from agentops_pipelines.agent.recipes import train_text_router

    bank = configured("bank", labels=["card_arrival", "lost_or_stolen_card"],
                      answers={"tools": {"lost_or_stolen_card": "Freeze your card in the app ({{tool}})."},
                               "descriptions": {"card_arrival": "Cards arrive within 5 working days."}})
    train = pd.DataFrame({"text": ["my card has not arrived", "where is my new card", "card still not here",
                                   "I lost my card", "my card was stolen", "someone took my card"],
                          "tool": ["card_arrival"] * 3 + ["lost_or_stolen_card"] * 3})
    router = train_text_router(train, {}, feature_columns=bank.feature_columns)
    model = AgentModel(bank.name, router, bank.feature_columns, dict(bank.tool_descriptions), bank.escalation_tool,
                       bank.prompt_template, "prompts:/bank_answer/1")
    model.answer_templates = dict(bank.answer_templates)
    out = model.predict(None, pd.DataFrame({"text": ["my card was stolen", "my card has not arrived"]}))
    assert out["tool"].tolist() == ["lost_or_stolen_card", "card_arrival"]
    assert out["answer"].tolist() == ["Freeze your card in the app (lost_or_stolen_card).",
                                      "Cards arrive within 5 working days."]
    assert not out["escalated"].any()


@pytest.fixture
def small_file(tmp_path):
    """Generated support requests as a plain file: text and label, no customers, no times."""
    from datetime import date

    from agentops_pipelines.data.generator import generate_requests

    path = tmp_path / "requests.csv"
    df = generate_requests(date(2026, 11, 1), n=700)
    df = df.drop_duplicates("text")  # a plain file: the duplicates gate judges the text alone
    df[["text", "tool"]].rename(columns={"tool": "intent"}).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_an_escalation_free_agent_goes_to_registration_without_escalation_metrics(
        lifecycle_defs, instance, small_file):
    import mlflow

    labels = [t for t in TOOL_NAMES]  # the generator's label set, escalate_to_human included as a plain label
    plain = configured("plain", data={"source": "file", "path": str(small_file), "label_column": "intent"},
                       labels=labels, answers={"default": "{{tool_description}}"})
    assert plain.escalation_tool is None and plain.feature_columns == ()
    defs = lifecycle_defs(plain)
    run(defs, instance, "plain_ingest_job", partition_key=DAY)
    assert "declares no customer features" in meta(instance, "plain", "customer_features")["skipped"]
    run(defs, instance, "plain_training_job", run_config={"ops": {
        "plain__training_set": {"config": {"days": 1, "end_date": DAY}},
        "plain__trained_agent": {"config": {"trace_samples": 0}},
        "plain__evaluation_report": {"config": {"latency_samples": 20, "evidently_report": False}},
    }})
    lake = defs.resources["lake"]
    training = lake.read("plain/training_set")
    assert not set(training.columns) & {"plan_tier", "orders_30d", "requests_7d"}  # nothing simulated
    report = meta(instance, "plain", "evaluation_report")
    assert report["accuracy"] > 0.8 and report["gate_passed"] is True
    assert not [k for k in report if "escalation" in k]
    version = meta(instance, "plain", "registered_version")["version"]
    store = defs.resources["mlflow_store"]
    client = mlflow.MlflowClient(store.tracking_uri, store.tracking_uri)
    tags = client.get_model_version("plain", version).tags
    assert "eval_accuracy" in tags and "eval_escalation_recall" not in tags
    model = mlflow.pyfunc.load_model(f"models:/plain/{version}").unwrap_python_model()
    out = model.predict(None, pd.DataFrame({"text": ["I want to talk to a real person right now"]}))
    assert out["tool"].iloc[0] == ESCALATE and not out["escalated"].iloc[0]  # a label, not an escalation tool
    call = json.loads(out["tool_call"].iloc[0])
    assert "orders_30d" not in out["answer"].iloc[0] and "customer_id=" not in out["answer"].iloc[0]
    assert call["tool"] == ESCALATE


@pytest.mark.slow
@pytest.mark.skipif(not (BANKING77 / "train.csv").exists(),
                    reason=f"BANKING77 is not at {BANKING77} (it lives in ../shared, beside the project)")
def test_banking77_by_configuration_alone(lifecycle_defs, instance, tmp_path):
    import mlflow

    from agentops_pipelines.agent import embeddings
    from agentops_pipelines.agents import load_agents
    from agentops_pipelines.resources.settings import PROJECT_ROOT

    folder = tmp_path / "agents"
    folder.mkdir()
    shipped = (PROJECT_ROOT / "agents" / "banking77.yaml").read_text()
    (folder / "banking77.yaml").write_text(shipped.replace("enabled: false", "enabled: true"))
    shutil.copy(PROJECT_ROOT / "agents" / "support_agent.yaml", folder)
    agents = {a.name: a for a in load_agents(folder)}
    bank = agents["banking77"]
    assert type(bank).__name__ == "ConfiguredAgent" and len(bank.tools) == 0  # labels from its labels file
    defs = lifecycle_defs(bank)
    run(defs, instance, "banking77_ingest_job", partition_key=DAY)  # no run config: the file says it all
    assert meta(instance, "banking77", "dataset")["rows"] == 10003
    run(defs, instance, "banking77_training_job", run_config={"ops": {
        "banking77__training_set": {"config": {"days": 1, "end_date": DAY}},
        "banking77__trained_agent": {"config": {"trace_samples": 3}},
        "banking77__evaluation_report": {"config": {"latency_samples": 50, "evidently_report": False}},
    }})
    report = meta(instance, "banking77", "evaluation_report")
    assert report["accuracy"] >= DEFAULT_FLOOR, report["accuracy"]  # 0.9308 measured: the default recipe embeds
    assert report["holdout_rows"] == pytest.approx(2000, rel=0.08)  # a stable 20% by request id
    assert report["gate_passed"] is True
    assert not [k for k in report if "escalation" in k]
    assert meta(instance, "banking77", "registered_version")["version"] == "1"
    store = defs.resources["mlflow_store"]
    client = mlflow.MlflowClient(store.tracking_uri, store.tracking_uri)
    assert "eval_escalation_recall" not in client.get_model_version("banking77", "1").tags
    texts = pd.read_csv(BANKING77 / "train.csv")["text"].head(50).tolist()
    warm = mlflow.pyfunc.load_model("models:/banking77/1").unwrap_python_model().router
    expected = warm.predict_columns({"text": texts}, len(texts))
    embeddings._ENCODERS.clear()  # as in a fresh process: the registered router loads its weights lazily
    model = mlflow.pyfunc.load_model("models:/banking77/1").unwrap_python_model()
    assert embeds(model.router) and model.router.scorer() is not None  # TF-IDF compiled, MiniLM int8 beside it
    assert model.router.predict_columns({"text": texts}, len(texts)) == expected
    out = model.predict(None, pd.DataFrame({"text": ["someone stole my card yesterday"]}))
    assert out["tool"].iloc[0] == "lost_or_stolen_card"
    assert out["answer"].iloc[0].startswith("We are sorry to hear that. Your card can be frozen at once")

    # Served by a real (confined) serving process: the embeddings' int8 graph is built there, in
    # its own temporary folder, before it reports healthy.
    deployer = defs.resources["deployer"]
    try:
        served = deployer.deploy("dev", "models:/banking77/1", "1")
        body = json.dumps({"dataframe_records": [{"text": "someone stole my card yesterday"}]}).encode()
        status, _, answer = request(served.url, "POST", "/invocations", body, JSON)
        assert status == 200 and answer["predictions"][0]["tool"] == "lost_or_stolen_card", answer
        assert "Traceback" not in deployer.files("dev", "banking77").log.read_text()
    finally:
        deployer.stop("dev", agent="banking77")
