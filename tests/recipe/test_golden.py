"""Golden test sets and agent-neutral evaluation, through the real ``evaluation_report`` asset and
its blocking gate (MLflow on SQLite, the lake on disk; BANKING77 intents as the agent's tools)."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest

from agentops_pipelines.agent.interface import Agent, GoldenTestSet
from agentops_pipelines.agent.recipes import train_text_router
from agentops_pipelines.evaluation import mcnemar
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.resources.sandbox import ModelSandbox
from agentops_pipelines.vocabulary import Alias
from tests.helpers import promoted


class IntentAgent(Agent):
    """An agent with no escalation tool and no customer features (a plain intent file)."""

    name = "bank_intents"

    def __init__(self, golden: GoldenTestSet | None = None, gate_minimums: dict | None = None):
        self.golden_test_set = golden
        self.gate_minimums = gate_minimums or {}

    def train(self, training_set, params):
        # TF-IDF alone: these tests are about golden sets and the gate, not the text model
        # (test_recipe.py measures the default recipe's embeddings), and it is 3x quicker.
        return train_text_router(training_set, {"C": 0.5, "embeddings": 0, **params}, (), **self.abstention())


@pytest.fixture(scope="module")
def cases(banking77):
    """20 intents: training rows (split train/holdout) and 300 golden rows none of them saw."""
    intents = sorted(banking77["tool"].unique())[::4][:20]
    df = banking77[banking77["tool"].isin(intents)].sample(frac=1.0, random_state=0).reset_index(drop=True)
    golden, rest = df.iloc[:300], df.iloc[300:].reset_index(drop=True)
    rest = rest.assign(request_id=[f"r{i}" for i in range(len(rest))],
                       split=np.where(np.arange(len(rest)) % 5 == 0, "holdout", "train"))
    return rest, golden.reset_index(drop=True)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    home = tmp_path_factory.mktemp("golden_home")
    lake = LakeResource(root=str(home / "lake"))
    store = MlflowResource(tracking_uri=f"sqlite:///{home}/mlflow/mlflow.db",
                           artifact_root=str(home / "mlflow" / "artifacts"), ui_url="http://mlflow")
    audit = AuditLog(url=f"sqlite:///{home}/audit.db", key_file=str(home / "audit.key"),
                     anchor_path=str(home / "audit.anchor"), create_key=True)
    return lake, store, audit


@pytest.fixture(scope="module")
def golden_path(cases, tmp_path_factory):
    """The team's fixed test file, in its own column names."""
    path = tmp_path_factory.mktemp("golden") / "golden.csv"
    cases[1].rename(columns={"text": "utterance", "tool": "intent"})[["utterance", "intent"]].to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def trained(cases, stores):
    """Champion (trained on a quarter of the rows, registered, promoted to prod as the audit log
    records it) and candidate (all rows): routers and MLflow runs, shared by the tests of this module."""
    rows, _ = cases
    lake, store, audit = stores
    agent = IntentAgent()
    lake.write(f"{agent.name}/training_set", rows, run_id="v1")
    train = rows[rows["split"] == "train"]
    champion = agent.train(train.iloc[: len(train) // 4], {})
    candidate = agent.train(train, {})
    client = store.configure()
    champion_run = log_router(store, agent, champion)
    mv = mlflow.register_model(f"runs:/{champion_run}/agent", agent.name)
    promoted(audit.store, mv.version, agent.name)
    client.set_registered_model_alias(agent.name, Alias.CHAMPION, mv.version)  # as the promotion sets it
    return champion, candidate, log_router(store, agent, candidate)


def log_router(store: MlflowResource, agent: Agent, router) -> str:
    from agentops_pipelines.agent.model import AgentModel, signature

    store.configure()
    model = AgentModel(agent.name, router, (), {}, agent.escalation_tool, "{{tool}}", "prompts:/none/1")
    with mlflow.start_run(experiment_id=store.experiment_id(agent.name)) as run:
        mlflow.pyfunc.log_model(name="agent", python_model=model, signature=signature(()),
                                pip_requirements=["mlflow"])
    return run.info.run_id


def evaluate(agent: Agent, stores, instance, run_id: str, **config) -> tuple[bool, dict, dict]:
    from agentops_pipelines.assets.checks import build_evaluation_gate
    from agentops_pipelines.assets.evaluation import build_evaluation_asset

    trained, training_set = (dg.AssetSpec([agent.name, n]) for n in ("trained_agent", "training_set"))
    report = build_evaluation_asset(agent, trained, training_set)
    lake, store, audit = stores
    result = dg.materialize(
        [trained, report, build_evaluation_gate(report)], instance=instance, raise_on_error=False,
        resources={"lake": lake, LAKE_IO_MANAGER: LakeIOManager(root=lake.root), "mlflow_store": store,
                   "audit": audit, "sandbox": ModelSandbox()},
        run_config={"ops": {f"{agent.name}__evaluation_report": {"config": {
            "candidate_run_id": run_id, "evidently_report": False, "latency_samples": 5, **config}}}})
    (materialization,) = result.asset_materializations_for_node(f"{agent.name}__evaluation_report")
    (check,) = result.get_asset_check_evaluations()
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    return check.passed, metadata, {k: v.value for k, v in check.metadata.items()}


def golden_file(path: str) -> GoldenTestSet:
    return GoldenTestSet(path=path, text_column="utterance", label_column="intent")


@pytest.mark.slow
def test_golden_metrics_beside_held_out_and_the_champion_judged_on_golden(cases, stores, trained, golden_path,
                                                                          instance):
    rows, golden = cases
    champion, candidate, run_id = trained  # trained on different data: golden compares them fairly
    agent = IntentAgent(golden_file(golden_path))

    passed, md, check = evaluate(agent, stores, instance, run_id)

    truth = golden["tool"].to_numpy()
    cand_right = np.asarray(candidate.predict(golden[["text"]])["tool"]) == truth
    champ_right = np.asarray(champion.predict(golden[["text"]])["tool"]) == truth
    assert md["golden_rows"] == 300 and md["compared_on"] == "golden"
    assert md["golden_accuracy"] == round(cand_right.mean(), 4)
    assert md["champion_accuracy"] == round(champ_right.mean(), 4)
    assert md["delta_accuracy"] == round(round(cand_right.mean(), 4) - round(champ_right.mean(), 4), 4)
    assert md["mcnemar_p_value"] == round(mcnemar(cand_right, champ_right)["p_value"], 4)
    holdout = rows[rows["split"] == "holdout"]
    assert md["holdout_rows"] == len(holdout)
    assert md["accuracy"] == round((np.asarray(candidate.predict(holdout)["tool"]) == holdout["tool"]).mean(), 4)
    assert "| accuracy |" in md["heldout_vs_golden"] and "golden" in md["heldout_vs_golden"]
    # Which cases: the file and the digest of the bytes scored, in the summary that the registry's
    # digest of the evaluation (what approvals bind to) covers, and on the run.
    digest = hashlib.sha256(Path(golden_path).read_bytes()).hexdigest()
    assert md["golden_test_set"] == golden_path and md["golden_test_set_sha256"] == digest
    client = stores[1].configure()
    summary = json.loads(Path(client.download_artifacts(run_id, "evaluation/summary.json")).read_text())
    assert (summary["golden_test_set"], summary["golden_test_set_sha256"]) == (golden_path, digest)
    assert client.get_run(run_id).data.tags["agentops.golden_test_set_sha256"] == digest
    assert passed and check["golden_accuracy"] == md["golden_accuracy"]
    # An agent without an escalation tool gets no escalation metrics (issue 11: "recall 1.0").
    assert not any(k.startswith(("escalation", "golden_escalation")) for k in md)
    assert not any("escalation" in k for k in check)


@pytest.mark.slow
def test_the_gate_takes_its_golden_minimum_from_the_agent_unless_the_run_sets_one(stores, trained, golden_path,
                                                                                 instance):
    agent = IntentAgent(golden_file(golden_path), gate_minimums={"min_golden_accuracy": 0.999})
    run_id = trained[2]

    passed, md, check = evaluate(agent, stores, instance, run_id)
    assert not passed and md["gate_passed"] is False
    assert any(r.startswith("golden_accuracy") and "below the minimum 0.999" in r for r in md["gate_reasons"])
    passed, md, _ = evaluate(agent, stores, instance, run_id, min_golden_accuracy=0.5)
    assert passed and md["gate_passed"] is True


@pytest.mark.slow
def test_a_golden_label_the_agent_never_saw_fails_naming_file_column_and_line(stores, trained, golden_path,
                                                                            instance, tmp_path):
    """A typo in a golden file's labels used to be scored as the candidate's error (and the
    champion's): a gate could refuse, or McNemar compare, on cases nobody could get right."""
    import pandas as pd

    from agentops_pipelines.assets.evaluation import build_evaluation_asset

    lake, store, audit = stores
    typo = tmp_path / "golden_typo.csv"
    golden = pd.read_csv(golden_path)
    golden.loc[3, "intent"] = golden.loc[3, "intent"] + "_typo"
    golden.to_csv(typo, index=False)
    agent = IntentAgent(golden_file(str(typo)))
    trained_spec, training_set = (dg.AssetSpec([agent.name, n]) for n in ("trained_agent", "training_set"))
    with pytest.raises(dg.Failure, match=rf"golden_typo\.csv: column 'intent' has label\(s\) "
                                         rf"\['{golden.loc[3, 'intent']}'\] .* first at line\(s\) \[5\]"):
        dg.materialize([trained_spec, build_evaluation_asset(agent, trained_spec, training_set)], instance=instance,
                       resources={"lake": lake, LAKE_IO_MANAGER: LakeIOManager(root=lake.root), "mlflow_store": store,
                                  "audit": audit, "sandbox": ModelSandbox()},
                       run_config={"ops": {f"{agent.name}__evaluation_report": {"config": {
                           "candidate_run_id": trained[2], "evidently_report": False, "latency_samples": 5}}}})


@pytest.mark.slow
def test_a_golden_file_without_the_named_column_fails_naming_file_and_column(stores, trained, golden_path,
                                                                             instance):
    lake, store, audit = stores
    agent = IntentAgent(GoldenTestSet(path=golden_path, text_column="question", label_column="intent"))
    run_id = trained[2]
    with pytest.raises(dg.Failure, match=r"golden\.csv: no column\(s\) \['question'\]"):
        from agentops_pipelines.assets.evaluation import build_evaluation_asset

        trained, training_set = (dg.AssetSpec([agent.name, n]) for n in ("trained_agent", "training_set"))
        dg.materialize([trained, build_evaluation_asset(agent, trained, training_set)], instance=instance,
                       resources={"lake": lake, LAKE_IO_MANAGER: LakeIOManager(root=lake.root), "mlflow_store": store,
                                  "audit": audit, "sandbox": ModelSandbox()},
                       run_config={"ops": {f"{agent.name}__evaluation_report": {"config": {
                           "candidate_run_id": run_id, "evidently_report": False, "latency_samples": 5}}}})


def test_unknown_gate_minimums_are_refused_by_name():
    from agentops_pipelines.evaluation import resolve_minimums

    with pytest.raises(ValueError, match=r"bank_intents: unknown gate_minimums \['min_acuracy'\]"):
        resolve_minimums({}, {"min_acuracy": 0.9}, "bank_intents")
    assert resolve_minimums({"min_accuracy": None}, {"min_accuracy": 0.7}, "a")["min_accuracy"] == 0.7
    assert resolve_minimums({"min_accuracy": 0.6}, {"min_accuracy": 0.7}, "a")["min_accuracy"] == 0.6
    assert resolve_minimums({}, {}, "a")["min_accuracy"] == 0.8


def test_a_golden_file_is_read_in_its_own_column_names_and_bad_rows_are_named_by_line(tmp_path):
    from agentops_pipelines.data.sources import DataSourceError
    from agentops_pipelines.evaluation import load_golden

    path = tmp_path / "golden.csv"
    path.write_text("utterance,intent,customer_id\nwhere is my card,card_arrival,c1\nhi,greeting,c2\n")
    golden, digest = load_golden(str(path), "utterance", "intent")
    assert golden.to_dict("list") == {"text": ["where is my card", "hi"], "tool": ["card_arrival", "greeting"],
                                      "customer_id": ["c1", "c2"]}
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("utterance,intent\nwhere is my card,card_arrival\nhi,\n,greeting\n")
    with pytest.raises(DataSourceError, match=r"golden\.csv: empty 'utterance' or 'intent' on 2 row\(s\), first at line\(s\) \[3, 4\]"):
        load_golden(str(path), "utterance", "intent")


@pytest.mark.slow
def test_a_moved_champion_alias_does_not_choose_what_the_candidate_is_compared_with(cases, stores, trained,
                                                                                    golden_path, instance):
    """Anyone who can write to the registry can move an alias: pointing `champion` at a weak version
    of their choosing must not make a candidate look good, nor skip McNemar's test. The champion
    is what the verified audit log says serves in prod."""
    rows, _ = cases
    lake, store, audit = stores
    agent = IntentAgent(golden_file(golden_path))
    client = store.configure()
    serving = client.get_model_version_by_alias(agent.name, Alias.CHAMPION).version
    weak = agent.train(rows[rows["split"] == "train"].head(40), {})
    planted = mlflow.register_model(f"runs:/{log_router(store, agent, weak)}/agent", agent.name).version
    client.set_registered_model_alias(agent.name, Alias.CHAMPION, planted)
    try:
        _, md, _ = evaluate(agent, stores, instance, trained[2])
    finally:
        client.set_registered_model_alias(agent.name, Alias.CHAMPION, serving)
    assert md["champion_version"] == str(serving) != str(planted)
