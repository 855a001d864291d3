"""Gates speak the user's language (their file, their columns, their line numbers), judge
duplicates on the text when the file has no customers, and simulate nothing for such a file."""

import re
from datetime import date

import dagster as dg
import pandas as pd
import pytest

from agentops_pipelines.data.sources import read_partition
from agentops_pipelines.gates import GateLimits, run_gates
from tests.agents_config.conftest import configured

DAY = date(2026, 11, 1)
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]


def failing(outcomes):
    return {name for name, o in outcomes.items() if not o.passed}


def banking_file(tmp_path, rows: list[tuple[str, str]], name="requests.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["utterance", "category"]).to_csv(path, index=False)
    return path


def judge(path, limits=GateLimits(min_text_length=1, max_text_length=None), **columns):
    df, source = read_partition("file", DAY, path=str(path), text_column="utterance", label_column="category",
                                **columns)
    return run_gates(df, LABELS, DAY, limits, source=source), df


def test_380_duplicate_rows_of_400_without_customer_ids_fail_the_duplicates_gate(tmp_path):
    texts = [f"my card number {i} has not arrived yet" for i in range(20)]
    path = banking_file(tmp_path, [(texts[i % 20], "card_arrival") for i in range(400)])
    outcomes, df = judge(path)
    assert (df["customer_id"] == "").all()  # nothing synthesized for a file without customers
    assert failing(outcomes) == {"duplicates"}
    problem = outcomes["duplicates"].problems[0]
    assert str(path) in problem and "'utterance'" in problem and "400 row(s)" in problem
    assert "lines 2, 3, 4, 5, 6" in problem  # the header is line 1


def test_a_few_repeated_texts_stay_under_the_share(tmp_path):
    rows = [(f"request number {i} about my card", "card_arrival") for i in range(390)]
    rows += rows[:10]  # 20 of 400 rows involved: 5%
    outcomes, _ = judge(banking_file(tmp_path, rows))
    assert failing(outcomes) == set()


def test_the_same_text_from_different_customers_is_no_duplicate(tmp_path):
    path = tmp_path / "with_customers.csv"
    pd.DataFrame({"utterance": ["where is my card"] * 50, "category": ["card_arrival"] * 50,
                  "customer_id": [f"C{i:05d}" for i in range(50)]}).to_csv(path, index=False)
    outcomes, df = judge(path)
    assert df["customer_id"].iloc[3] == "C00003"
    assert failing(outcomes) == set()


def test_messages_name_the_file_the_users_column_and_line_numbers(tmp_path):
    path = tmp_path / "requests.csv"
    # A quoted text spanning two lines: line numbers are the file's, not the row's position.
    path.write_text('utterance,category\n"my card\nhas not arrived",card_arrival\n'
                    "I lost my card,lost_or_stolen_card\nwhat is the rate,teleportation\n"
                    ",card_arrival\nrate for euros,exchange_rate\n")
    outcomes, _ = judge(path)
    assert failing(outcomes) == {"known_labels", "no_nulls"}
    labels = outcomes["known_labels"]
    assert labels.problems == [f"{path}: column 'category': 1 row(s) (20.00%) fail (not a known label); "
                               f"first: line 5 of {path}"]
    assert labels.failing_rows[0]["line"] == 5 and labels.failing_rows[0]["category"] == "teleportation"
    assert "tool" not in labels.failing_rows[0]
    nulls = outcomes["no_nulls"]
    assert "column 'utterance'" in nulls.problems[0] and "line 6 of" in nulls.problems[0]


def test_parquet_rows_and_filtered_days_keep_their_place(tmp_path):
    path = tmp_path / "requests.parquet"
    pd.DataFrame({"utterance": ["card?", "rate?", "lost card"], "category": ["card_arrival", "bogus", "exchange_rate"],
                  "when": ["2026-10-31T10:00:00Z", "2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z"]}).to_parquet(path)
    outcomes, df = judge(path, timestamp_column="when")
    assert len(df) == 2  # the first row is another day
    assert outcomes["known_labels"].failing_rows[0]["row"] == 2
    assert "first: row 2 of" in outcomes["known_labels"].problems[0]


def test_a_named_column_the_file_lacks_is_an_error_naming_both(tmp_path):
    from agentops_pipelines.data.sources import DataSourceError

    path = banking_file(tmp_path, [("card?", "card_arrival")])
    with pytest.raises(DataSourceError, match=r"has no column 'client' \(customer_id_column\)"):
        judge(path, customer_id_column="client")


@pytest.fixture
def bank(tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    return configured("bank", data={"source": "file", "path": str(tmp_path / "day-{date}.csv"),
                                    "text_column": "utterance", "label_column": "category",
                                    "labels_file": str(tmp_path / "labels.txt")})


def test_the_dataset_step_rejects_a_day_naming_the_file_column_and_line(lifecycle_defs, bank, tmp_path, instance):
    defs = lifecycle_defs(bank)
    rows = [(f"where is card {i}", "card_arrival") for i in range(30)] + [("yo", "teleportation")]
    path = banking_file(tmp_path, rows, name="day-2026-11-01.csv")
    result = defs.resolve_job_def("bank_ingest_job").execute_in_process(
        instance=instance, partition_key="2026-11-01", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert f"{path}: column 'category': 1 row(s)" in failure.error.message
    assert f"line 32 of {path}" in failure.error.message
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["known_labels"].passed
    assert checks["text_length"].passed  # "yo" is a real request: an agent's file sets no 3-char minimum
    assert re.search(r"\|\s+32 \| teleportation", checks["known_labels"].metadata["failing_rows"].value)


def test_text_length_comes_from_the_validated_data_and_no_features_are_simulated(
        lifecycle_defs, bank, tmp_path, instance, home):
    defs = lifecycle_defs(bank)
    run = lambda day: defs.resolve_job_def("bank_ingest_job").execute_in_process(  # noqa: E731
        instance=instance, partition_key=day, raise_on_error=False)
    banking_file(tmp_path, [(f"where is my card {i}?", "card_arrival") for i in range(30)], "day-2026-11-01.csv")
    first = run("2026-11-01")
    assert first.success
    features = {k: v.value for k, v in instance.get_latest_materialization_event(
        dg.AssetKey(["bank", "customer_features"])).asset_materialization.metadata.items()}
    assert features["customers"] == 0 and "declares no customer features" in features["skipped"]

    long = "please " * 10 + "help"  # 74 characters: more than twice the longest text (21) seen
    banking_file(tmp_path, [(f"where is my card {i}?", "card_arrival") for i in range(30)] + [(long, "card_arrival")],
                 "day-2026-11-02.csv")
    second = run("2026-11-02")
    assert not second.success
    checks = {e.check_name: e for e in second.get_asset_check_evaluations()}
    assert not checks["text_length"].passed
    assert "line 32" in checks["text_length"].metadata["problems"].value
