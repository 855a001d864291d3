"""The evaluation gate's statistics: McNemar's paired test and the "significantly worse" rule."""

import numpy as np
import pytest
from scipy import stats

from agentops_pipelines.evaluation import gate, mcnemar


def paired(only_candidate: int, only_champion: int, both: int = 100, neither: int = 10):
    cand = [True] * only_candidate + [False] * only_champion + [True] * both + [False] * neither
    champ = [False] * only_candidate + [True] * only_champion + [True] * both + [False] * neither
    return np.array(cand), np.array(champ)


def test_mcnemar_uses_the_continuity_corrected_chi_square_from_25_discordant_pairs():
    result = mcnemar(*paired(10, 30))
    assert (result["only_candidate_correct"], result["only_champion_correct"]) == (10, 30)
    assert result["statistic"] == pytest.approx((abs(10 - 30) - 1) ** 2 / 40)
    assert result["p_value"] == pytest.approx(stats.chi2.sf(361 / 40, df=1))
    assert result["p_value"] == pytest.approx(0.00266, abs=5e-5)


def test_mcnemar_is_exact_below_25_discordant_pairs_and_neutral_without_any():
    result = mcnemar(*paired(2, 10))
    assert result["p_value"] == pytest.approx(stats.binomtest(2, 12, 0.5).pvalue)
    assert result["p_value"] == pytest.approx(0.0386, abs=5e-4)
    assert mcnemar(*paired(0, 0))["p_value"] == 1.0


CANDIDATE = {"accuracy": 0.90, "macro_f1": 0.88}


def test_a_significantly_worse_candidate_is_refused_with_the_numbers():
    verdict = gate(CANDIDATE, {"accuracy": 0.95}, mcnemar(*paired(10, 30)), {"accuracy": 0.8}, alpha=0.05)
    assert not verdict.passed
    (reason,) = verdict.reasons
    assert "significantly worse than the champion" in reason and "p=0.00266" in reason
    assert "champion alone right on 30 cases, candidate alone on 10" in reason


def test_worse_but_not_significant_or_better_passes():
    assert gate(CANDIDATE, {}, mcnemar(*paired(18, 22)), {}, alpha=0.05).passed
    assert gate(CANDIDATE, {}, mcnemar(*paired(30, 10)), {}, alpha=0.05).passed  # significantly better
    assert gate(CANDIDATE, None, None, {}, alpha=0.05).passed  # no champion yet


def test_each_minimum_missed_is_named():
    verdict = gate({"accuracy": 0.7}, None, None, {"accuracy": 0.8, "macro_f1": 0.5}, alpha=0.05)
    assert verdict.reasons == ["accuracy 0.7 is below the minimum 0.8", "macro_f1 None is below the minimum 0.5"]
