"""Abstention: a calibrated confidence, a threshold chosen on validation data for a target
precision, and out-of-scope metrics. Real data: BANKING77 with some intents held out as
out-of-scope (issue 11: top-class confidence was ~1/N and out-of-scope recall 0.15)."""

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines.agent.recipes import (
    abstention_threshold,
    accuracy_budget_threshold,
    fit_temperature,
    softmax,
    train_text_router,
)
from agentops_pipelines.evaluation import classification_metrics

OOS, FALLBACK = "oos", "hand_over"


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(scores, 0.5)])
    assert fit_temperature(scores, labels) == pytest.approx(0.5, rel=0.1)


def test_the_threshold_is_the_lowest_confidence_that_reaches_the_target_precision():
    confidence = np.array([0.99, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, False, True, False])
    assert abstention_threshold(confidence, correct, 0.75) == 0.6  # 4 of the 5 answered are right
    assert abstention_threshold(confidence, correct, 0.9) == 0.8
    assert abstention_threshold(confidence, correct, 1.0) == 0.8
    # never reached: the most precise threshold
    assert abstention_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.99) == 0.8


def test_the_budget_threshold_gives_up_at_most_that_share_of_right_answers():
    confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    correct = np.array([True, True, True, False, True, True, False, True, False, False])
    # 10 in-scope requests: a budget of 0.2 allows 2 right answers to go (0.3 and 0.5), not 0.6.
    assert accuracy_budget_threshold(confidence, correct, 0.2) == 0.6
    assert accuracy_budget_threshold(confidence, correct, 0.1) == 0.5
    assert accuracy_budget_threshold(confidence, correct, 0.0) == 0.3  # wrong ones below it go
    for budget in np.linspace(0, 0.99, 34):
        t = accuracy_budget_threshold(confidence, correct, budget)
        lost = (correct & (confidence < t)).mean()
        assert lost <= budget + 1e-12
        # the highest such threshold: one step further would lose one more right answer
        above = confidence[correct & (confidence >= t)]
        if len(above):
            assert (correct & (confidence <= above.min())).mean() > budget
    # ties: abstaining at a tied confidence would give up all of them, so the threshold stays below
    assert accuracy_budget_threshold(np.array([0.5, 0.5, 0.9]), np.array([True, True, True]), 0.34) == 0.5
    # a budget as large as every right answer: abstain on all of them
    assert accuracy_budget_threshold(np.array([0.4, 0.9]), np.array([True, False]), 0.5) > 0.4


def test_out_of_scope_metrics_count_abstentions_as_out_of_scope_predictions():
    truth = ["a", "a", "b", OOS, OOS, OOS]
    predicted = ["a", FALLBACK, "b", FALLBACK, "a", FALLBACK]
    confidence = [0.9, 0.2, 0.8, 0.1, 0.7, 0.3]
    m = classification_metrics(truth, predicted, None, out_of_scope_label=OOS, fallback_tool=FALLBACK,
                               confidence=confidence)
    assert m["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert m["oos_recall"] == pytest.approx(2 / 3)
    assert m["oos_precision"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)  # an out-of-scope request is right when handed over
    assert m["oos_auroc"] == pytest.approx(7 / 9)  # 1 - confidence ranks 7 of 9 pairs right
    assert "escalation_recall" not in m and "escalation_precision" not in m


@pytest.fixture(scope="module")
def split(banking77):
    """30 intents; 5 more are out-of-scope: 3 seen in training as `oos`, 2 never seen (``kind``)."""
    from sklearn.model_selection import train_test_split

    intents = sorted(banking77["tool"].unique())
    in_scope, seen_oos, unseen_oos = intents[:60:2], intents[1:6:2], intents[61:63]
    df = banking77[banking77["tool"].isin(in_scope + seen_oos + unseen_oos)]
    train, test = train_test_split(df, test_size=0.25, stratify=df["tool"], random_state=0)
    train = train[~train["tool"].isin(unseen_oos)].copy()
    train.loc[train["tool"].isin(seen_oos), "tool"] = OOS
    test = test.copy()
    test["kind"] = np.where(test["tool"].isin(seen_oos), "seen_oos",
                            np.where(test["tool"].isin(unseen_oos), "unseen_oos", "in_scope"))
    test.loc[test["kind"] != "in_scope", "tool"] = OOS
    return train.reset_index(drop=True), test.reset_index(drop=True)


def route(router, test):
    tools, confidence = router.predict_columns({"text": test["text"].tolist()}, len(test))
    return np.asarray(tools), np.asarray(confidence)


#: TF-IDF alone for the thresholds' tests (3x quicker); the calibration test below runs the default
#: recipe, embeddings included.
TFIDF = {"C": 0.5, "embeddings": 0}


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.95, 0.99])
def test_abstaining_reaches_the_target_precision_on_held_out_requests(split, target):
    train, test = split
    router = train_text_router(train, TFIDF, fallback_tool=FALLBACK, target_precision=target,
                               out_of_scope_label=OOS)
    tools, confidence = route(router, test)
    truth = test["tool"].to_numpy()
    # Held-out requests of the kinds the validation split had (in scope, out of scope as in
    # training): the answered ones are right at the target precision.
    like_validation = test["kind"].isin(["in_scope", "seen_oos"]).to_numpy()
    answered = like_validation & (tools != FALLBACK)
    precision = (tools[answered] == truth[answered]).mean()
    assert precision >= target - 0.015, f"answered {answered.mean():.2%} at precision {precision:.4f}"
    assert router.validation["answered_precision"] >= target
    assert 0.5 < answered.sum() / like_validation.sum() < 1.0

    m = classification_metrics(truth, tools, None, out_of_scope_label=OOS, fallback_tool=FALLBACK,
                               confidence=confidence)
    assert {"in_scope_accuracy", "oos_recall", "oos_precision", "oos_auroc"} <= set(m)
    seen = test["kind"].to_numpy() == "seen_oos"
    assert (tools[seen] == FALLBACK).mean() >= 0.85
    assert m["oos_auroc"] >= 0.75, m

    # Without a target precision the same recipe hands over only what it classifies as `oos`.
    plain = train_text_router(train, TFIDF, fallback_tool=FALLBACK,
                              out_of_scope_label=OOS)
    plain_m = classification_metrics(truth, route(plain, test)[0], None, out_of_scope_label=OOS,
                                     fallback_tool=FALLBACK)
    assert m["oos_recall"] >= plain_m["oos_recall"]
    assert m["in_scope_accuracy"] <= plain_m["in_scope_accuracy"]


@pytest.mark.slow
def test_an_accuracy_budget_holds_on_held_out_requests_and_hands_over_more(split):
    """The threshold that gives up at most 2% of in-scope validation accuracy gives up about that
    on held-out requests, and hands over more out-of-scope requests than the plain model."""
    train, test = split
    truth = test["tool"].to_numpy()
    plain = train_text_router(train, TFIDF, fallback_tool=FALLBACK, out_of_scope_label=OOS)
    budget = train_text_router(train, TFIDF, fallback_tool=FALLBACK, max_accuracy_loss=0.02,
                               out_of_scope_label=OOS)
    assert budget.validation["abstain_max_accuracy_loss"] == 0.02
    assert 0 < budget.validation["in_scope_accuracy_loss"] <= 0.02
    assert budget.threshold > 0
    m = {name: classification_metrics(truth, route(router, test)[0], None, out_of_scope_label=OOS,
                                       fallback_tool=FALLBACK)
         for name, router in (("plain", plain), ("budget", budget))}
    lost = m["plain"]["in_scope_accuracy"] - m["budget"]["in_scope_accuracy"]
    assert 0 < lost <= 0.02 + 0.015, m  # the budget, plus the held-out sample's noise
    assert m["budget"]["oos_recall"] > m["plain"]["oos_recall"], m
    with pytest.raises(ValueError, match="not both"):
        train_text_router(train, TFIDF, fallback_tool=FALLBACK, max_accuracy_loss=0.02,
                          target_precision=0.9)


@pytest.mark.slow
def test_a_declared_validation_set_places_the_threshold_and_is_learned_at_refit(split, banking77):
    """Half of the held-out requests as the agent's validation file: selection, calibration and
    the budget's threshold come from it, the budget holds on the other half, and the refit learns
    from it too (a label only the validation file has is a class of the served router)."""
    train, test = split
    new_intent = sorted(banking77["tool"].unique())[70]
    newcomers = banking77[banking77["tool"] == new_intent].head(20)[["text", "tool"]]
    validation = pd.concat([test.iloc[::2][["text", "tool"]], newcomers], ignore_index=True)
    rest = test.iloc[1::2].reset_index(drop=True)
    router = train_text_router(train, TFIDF, fallback_tool=FALLBACK, max_accuracy_loss=0.03,
                               out_of_scope_label=OOS, validation_set=validation)
    assert router.validation["declared_set"] == 1 and router.validation["rows"] == len(validation)
    assert 0 < router.validation["in_scope_accuracy_loss"] <= 0.03
    assert new_intent in router.classes
    plain = train_text_router(train, TFIDF, fallback_tool=FALLBACK, out_of_scope_label=OOS,
                              validation_set=validation)
    truth = rest["tool"].to_numpy()
    m = {name: classification_metrics(truth, route(r, rest)[0], None, out_of_scope_label=OOS,
                                      fallback_tool=FALLBACK)
         for name, r in (("plain", plain), ("budget", router))}
    assert 0 < m["plain"]["in_scope_accuracy"] - m["budget"]["in_scope_accuracy"] <= 0.03 + 0.02, m
    assert m["budget"]["oos_recall"] > m["plain"]["oos_recall"], m
    with pytest.raises(ValueError, match=r"validation set lacks column\(s\) \['tool'\]"):
        train_text_router(train, TFIDF, validation_set=validation[["text"]])


def test_a_configured_agent_reads_its_validation_file_in_its_own_column_names(split, tmp_path):
    from agentops_pipelines.agent.config import ConfiguredAgent, parse
    from agentops_pipelines.agent.interface import GoldenTestSet
    from agentops_pipelines.data.sources import DataSourceError

    train, test = split
    file = tmp_path / "val.csv"
    test.iloc[::2][["text", "tool"]].rename(columns={"text": "utterance", "tool": "intent"}).to_csv(file, index=False)
    labels = sorted(set(train["tool"]) | set(test["tool"]))
    config = parse({"name": "bank", "labels": labels, "fallback_tool": OOS, "out_of_scope_label": OOS,
                    "abstention": {"max_accuracy_loss": 0.02},
                    "validation_set": {"path": str(file), "text_column": "utterance", "label_column": "intent"}},
                   "bank.yaml")
    agent = ConfiguredAgent(config)
    router = agent.train(train, TFIDF)
    assert router.validation["declared_set"] == 1 and router.validation["rows"] == len(test.iloc[::2])
    assert router.validation["abstain_max_accuracy_loss"] == 0.02
    file.write_text(f"utterance,intent\nhi,{train['tool'].iloc[0]}\nhello,lost_card_typo\n")
    with pytest.raises(DataSourceError, match=r"column 'intent' has label\(s\) \['lost_card_typo'\] "
                                              r"not in the training data's label set, first at line\(s\) \[3\]"):
        agent.train(train, TFIDF)
    # JSON lines have no header, and a quoted line break spreads a CSV record over two lines:
    # either way the message points at the file's own line
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text(f'{{"utterance": "hi", "intent": "{train["tool"].iloc[0]}"}}\n'
                     '{"utterance": "hello", "intent": "lost_card_typo"}\n')
    quoted = tmp_path / "val_quoted.csv"
    quoted.write_text(f'utterance,intent\n"hi\nthere",{train["tool"].iloc[0]}\nhello,lost_card_typo\n')
    for other, line in ((jsonl, 2), (quoted, 4)):
        agent.validation_set = GoldenTestSet(str(other), "utterance", "intent")
        with pytest.raises(DataSourceError, match=rf"{other.name}: .* first at line\(s\) \[{line}\]"):
            agent.train(train, TFIDF)
    agent.validation_set = GoldenTestSet(str(file), "utterance", "intent")
    file.write_text("utterance,label\nhello,x\n")
    with pytest.raises(DataSourceError, match=rf"validation set {file}: no column\(s\) \['intent'\]"):
        agent.train(train, TFIDF)


@pytest.mark.slow
def test_confidence_is_calibrated_not_one_over_n(split):
    """The old confidence was a softmax over raw margins: ~1/N for every request. Calibrated, the
    mean confidence of the answered requests tracks their accuracy."""
    train, test = split
    router = train_text_router(train, {"C": 0.5}, out_of_scope_label=OOS)
    tools, confidence = route(router, test)
    in_scope = test["tool"].to_numpy() != OOS
    right = (np.asarray(tools) == test["tool"].to_numpy())[in_scope]
    confidence = np.asarray(confidence)[in_scope]
    assert confidence.mean() > 0.5
    assert abs(confidence.mean() - right.mean()) < 0.08
    frame = router.predict(pd.DataFrame({"text": test["text"].head(3)}))
    assert list(frame.columns) == ["tool", "confidence"] and frame["confidence"].between(0, 1).all()
