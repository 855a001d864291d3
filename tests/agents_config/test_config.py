"""Agents declared by configuration: the shipped files load, and a bad file names itself and the field."""

import warnings
from pathlib import Path

import pydantic
import pytest

from agentops_pipelines.agent.config import AgentConfigError, ConfiguredAgent, load_file
from agentops_pipelines.agents import AgentSkippedWarning, load_agents
from agentops_pipelines.resources.settings import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "agents"

BANKING = """\
name: {name}
data:
  source: file
  path: {path}
  label_column: category
  labels_file: {labels}
labels: []
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def data(tmp_path):
    """A tiny labelled file and its labels file."""
    (tmp_path / "requests.csv").write_text("text,category\ncard has not arrived,card_arrival\n")
    (tmp_path / "labels.txt").write_text("card_arrival\nlost_or_stolen_card\n")
    return tmp_path


def test_every_shipped_file_is_valid_and_names_its_file():
    names = {p.stem: load_file(p) for p in SHIPPED.glob("*.yaml")}
    assert {"support_agent", "banking77", "clinc150_oos"} <= set(names)
    assert names["support_agent"].python == "support_desk"
    clinc = names["clinc150_oos"]
    assert (clinc.out_of_scope_label, clinc.fallback_tool) == ("oos", "oos")
    assert (clinc.abstention.target_precision, clinc.abstention.max_accuracy_loss) == (None, 0.015)
    agent = ConfiguredAgent(clinc)
    assert agent.abstention() == {"fallback_tool": "oos", "target_precision": None,
                                  "max_accuracy_loss": 0.015, "out_of_scope_label": "oos"}
    assert agent.validation_set.path.endswith("clinc150/val.csv")


def test_the_default_code_location_runs_the_support_desk_configured_by_its_file():
    agents = load_agents(SHIPPED)
    assert [a.name for a in agents] == ["support_agent"]  # the examples ship disabled
    desk = agents[0]
    assert desk.escalation_tool == "escalate_to_human"
    assert desk.dataset_defaults["min_text_length"] == 3
    assert desk.config_file.endswith("support_agent.yaml")


@pytest.mark.parametrize("text, field, says", [
    ("name: a\ndata:\n  sorce: file\n", "data.sorce", "Extra inputs are not permitted"),
    ("name: a\nthresholds:\n  drift: 2\n", "thresholds.drift", "less than or equal to 1"),
    ("name: a\nthresholds:\n  gates: {accuracy: 0.9}\n", "thresholds.gates", "not a minimum"),
    ("name: a\ndata: {source: file}\n", "data", "needs a path"),
    ("name: a\ndata: {source: file, path: x.csv}\n", "(top level)", "label set"),
    ("name: a\nlabels: [x, y]\nfallback_tool: z\n", "(top level)", "fallback_tool 'z' is not in labels"),
    ("name: a\nlabels: [x]\nanswers: {tools: {y: hi}}\n", "(top level)", "not in labels: ['y']"),
    ("name: a\nfeatures: [shoe_size]\n", "features", "unknown feature"),
    ("name: a\ndata: {source: file, path: x.csv, labels_file: l.txt}\nfeatures: [plan_tier]\n",
     "(top level)", "features need customers"),
    ("name: a\nrecipe: {name: gpt}\n", "recipe.name", "text_router"),
    ("name: a\nmin_accuracy: 0.9\n", "min_accuracy", "Extra inputs"),
    ("name: a\npython: support_desk\nrecipe: {params: {C: 2}}\n", "(top level)", "recipe is its code"),
    ("name: a\nabstention: {target_precision: 0.9, max_accuracy_loss: 0.01}\n", "abstention",
     "not both"),
    ("name: a\nabstention: {max_accuracy_loss: 1.5}\n", "abstention.max_accuracy_loss", "less than 1"),
    ("name: a\nabstention: {target_precision: 1}\n", "abstention.target_precision", "less than 1"),
    ("name: a\npython: support_desk\nvalidation_set: {path: v.csv}\n", "(top level)",
     "chooses its own validation rows"),
    ("name: a\nvalidation_set: {paht: v.csv}\n", "validation_set.paht", "Extra inputs"),
])
def test_an_invalid_file_names_the_file_and_the_field(tmp_path, text, field, says):
    path = write(tmp_path, "a", text)
    with pytest.raises(AgentConfigError) as err:
        load_agents(tmp_path)
    message = str(err.value)
    assert str(path) in message and f"field {field}" in message and says in message, message


@pytest.mark.parametrize("key", ["approvers", "require", "policies"])
def test_an_agent_file_cannot_add_approvers_or_loosen_require(tmp_path, key):
    path = write(tmp_path, "a", f"name: a\n{key}:\n  prod: 0\n")
    with pytest.raises(AgentConfigError, match="approvers file") as err:
        load_agents(tmp_path)
    assert str(path) in str(err.value) and repr(key) in str(err.value)


@pytest.mark.parametrize("text, says", [
    ("name: b\n", "must match the file name"),
    ("name: Bad-Name\n", "lower-case"),
    ("name: a\npython: crm_bot\n", "unknown Python agent 'crm_bot'"),
    ("name: support_agent\n", "add 'python: support_desk'"),
    ("- a list\n", "a mapping of fields"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_other_mistakes_name_the_file(tmp_path, text, says):
    name = "support_agent" if text.startswith("name: support_agent") else "a"
    path = write(tmp_path, name, text)
    with pytest.raises(AgentConfigError, match=says) as err:
        load_agents(tmp_path)
    assert str(path) in str(err.value)


def test_two_files_cannot_declare_one_agent(tmp_path):
    write(tmp_path, "a", "name: a\n")
    write(tmp_path, "b", "name: a\n").rename(tmp_path / "a.yml")
    with pytest.raises(AgentConfigError, match="already declared"):
        load_agents(tmp_path)


def test_an_agent_whose_data_is_missing_is_skipped_with_a_warning(tmp_path, data):
    write(tmp_path, "here", BANKING.format(name="here", path=data / "requests.csv", labels=data / "labels.txt"))
    write(tmp_path, "gone", BANKING.format(name="gone", path=data / "nope.csv", labels=data / "labels.txt"))
    write(tmp_path, "example", "name: example\nenabled: false\ndata: {source: file, path: /nope.csv, labels_file: /x}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agents = load_agents(tmp_path)
    assert [a.name for a in agents] == ["support_agent", "here"]
    skipped = [str(w.message) for w in caught if issubclass(w.category, AgentSkippedWarning)]
    assert len(skipped) == 1 and "gone" in skipped[0] and str(data / "nope.csv") in skipped[0]


def test_an_agent_file_cannot_read_the_pipelines_own_state(tmp_path, monkeypatch, data):
    """Agent files are team-editable: one must not train on another agent's production traffic
    (its inference log holds customers' ids and messages), nor read serving tokens or the audit
    key, by naming them as data, labels or golden set, however the path is spelled."""
    import pandas as pd

    home = tmp_path / "state"
    monkeypatch.setenv("AGENTOPS_HOME", str(home))
    monkeypatch.setenv("AGENTOPS_INFERENCE_LOG_DIR", str(tmp_path / "logs"))
    traffic = tmp_path / "logs" / "support_agent" / "prod" / "date=2026-12-01" / "day.parquet"
    traffic.parent.mkdir(parents=True)
    pd.DataFrame({"text": ["refund order #100123, card visa ending 4242"], "tool": ["request_refund"],
                  "customer_id": ["C00001"]}).to_parquet(traffic)
    token = home / "serving" / "support_agent" / "prod" / "admin-token"
    token.parent.mkdir(parents=True)
    token.write_text("s3cret-token\n")
    folder = tmp_path / "agents"
    folder.mkdir()
    sneaky = data / "link"
    sneaky.symlink_to(home)
    for field, path, labels in (
            ("data.path", traffic, data / "labels.txt"),
            ("data.path", str(tmp_path / "logs/support_agent/prod/date={date}/day.parquet"), data / "labels.txt"),
            ("data.labels_file", data / "requests.csv", token),
            ("data.labels_file", data / "requests.csv", data / "link" / "serving" / "support_agent" / "prod" / "admin-token"),
            ("data.labels_file", data / "requests.csv", f"{folder}/../state/serving/support_agent/prod/admin-token")):
        write(folder, "reader", BANKING.format(name="reader", path=path, labels=labels))
        with pytest.raises(AgentConfigError, match=f"reader.yaml: field {field}: .*the pipeline's own state"):
            load_agents(folder)
    write(folder, "reader", BANKING.format(name="reader", path=data / "requests.csv", labels=data / "labels.txt")
          + f"validation_set: {{path: '{token}'}}\n")
    with pytest.raises(AgentConfigError, match="reader.yaml: field validation_set.path: .*the pipeline's own state"):
        load_agents(folder)
    # data outside the state folder still loads
    write(folder, "reader", BANKING.format(name="reader", path=data / "requests.csv", labels=data / "labels.txt"))
    assert [a.name for a in load_agents(folder)] == ["support_agent", "reader"]


def test_a_configured_agent_takes_everything_from_its_file(tmp_path, data):
    write(tmp_path, "bank", f"""\
name: bank
data:
  source: file
  path: {data / 'requests.csv'}
  label_column: category
  labels_file: {data / 'labels.txt'}
labels: [card_arrival, lost_or_stolen_card, oos]
recipe: {{params: {{C: 1.0}}}}
answers:
  default: "{{{{tool_description}}}}"
  tools: {{lost_or_stolen_card: "Freeze it in the app."}}
fallback_tool: oos
out_of_scope_label: oos
abstention: {{target_precision: 0.9}}
golden_test_set: {{path: {data / 'requests.csv'}, label_column: category}}
validation_set: {{path: {data / 'requests.csv'}, label_column: category}}
thresholds: {{drift: 0.3, gates: {{min_accuracy: 0.9}}}}
""")
    bank = load_agents(tmp_path)[1]
    assert isinstance(bank, ConfiguredAgent)
    assert bank.tools == ("card_arrival", "lost_or_stolen_card", "oos")
    assert bank.feature_columns == () and bank.escalation_tool is None
    assert bank.answer_templates == {"lost_or_stolen_card": "Freeze it in the app."}
    assert (bank.fallback_tool, bank.out_of_scope_label, bank.abstain_target_precision) == ("oos", "oos", 0.9)
    assert bank.golden_test_set.label_column == "category"
    assert bank.validation_set == bank.golden_test_set  # the same file here; its own field
    assert bank.drift_threshold == 0.3 and bank.gate_minimums == {"min_accuracy": 0.9}
    assert bank.default_params()["C"] == 1.0
    defaults = bank.dataset_defaults
    assert defaults["customer_id_column"] == "" and defaults["min_text_length"] == 1
    assert defaults["max_text_length"] is None and defaults["label_column"] == "category"


def test_the_dataset_step_offers_the_agents_defaults(tmp_path, data):
    from agentops_pipelines.assets.dataset import DatasetConfig, config_class

    write(tmp_path, "bank", BANKING.format(name="bank", path=data / "requests.csv", labels=data / "labels.txt"))
    bank = load_agents(tmp_path)[1]
    cls = config_class(bank)
    assert issubclass(cls, DatasetConfig)
    config = cls()
    assert (config.source, config.label_column, config.min_text_length, config.customer_id_column) == \
        ("file", "category", 1, "")
    assert cls(min_text_length=4).min_text_length == 4  # a run may still override
    with pytest.raises(pydantic.ValidationError, match="min_text_length"):
        cls(min_text_length=-1)  # within the same bounds
    assert DatasetConfig().min_text_length == 3  # the shared class keeps its defaults


def test_settings_name_the_agents_folder(monkeypatch, tmp_path):
    from agentops_pipelines.resources.settings import load_settings
    from agentops_pipelines.vocabulary import EnvVar

    assert load_settings().agents_dir == SHIPPED
    monkeypatch.setenv(EnvVar.AGENTS_DIR, str(tmp_path))
    assert load_settings().agents_dir == tmp_path.resolve()
