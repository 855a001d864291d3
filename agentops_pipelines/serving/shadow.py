"""Shadow traffic: a challenger answers the serving version's live requests where nobody sees it.

The challenger runs in the evaluation worker (``online_eval.py``), a child process, on a copy of
each request (its text, customer and the features the primary used) with a *dry-run* executor
(``Actions(dry_run=True)``): reads answer from the system of record, writes are planned and never
run, so nothing it does reaches a client or the database. Both trajectories are scored by the same
live scorers (``agent/scorers.py``: no expectations needed), and :class:`Comparison` keeps the
paired pass/fail counts.

Significance: McNemar's exact test on the discordant pairs (primary passed and challenger failed,
``b``; the other way round, ``c``): under "no difference" each discordant pair is a fair coin, so
the two-sided p-value is ``min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``. The verdict is
``better``/``worse`` at p < 0.05, ``no_difference`` otherwise, ``too_few`` under
``MIN_REQUESTS`` paired requests.

Evidence: :func:`record_evidence` writes the comparison as ``agentops.shadow.*`` tags on the
challenger's model version (``vocabulary.ShadowTag``), where ``agentops status`` and the approval
flow's reviewers see it before any canary.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from agentops_pipelines.vocabulary import ShadowTag

MIN_REQUESTS = 30
ALPHA = 0.05


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs.

    The binomial tail comes from the regularised incomplete beta function (``scipy.special.bdtr``):
    exact, and the same few microseconds at any count. Summing ``math.comb`` terms over ``2**n``
    overflowed a float past 1,023 discordant pairs, and a long shadow comparison has more.
    """
    from scipy.special import bdtr

    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * bdtr(min(b, c), n, 0.5)))


#: How a paired request ends: both versions passed, only the primary, only the challenger, neither
#: (``Comparison``'s counts of the same names; /metrics labels them ``outcome``).
OUTCOMES = ("both_pass", "primary_only", "challenger_only", "both_fail")


@dataclass
class Comparison:
    """Paired results of the primary and the challenger on the same requests."""

    primary_version: str = ""
    challenger_version: str = ""
    requests: int = 0
    both_pass: int = 0
    primary_only: int = 0  # b: primary passed, challenger failed
    challenger_only: int = 0  # c
    both_fail: int = 0
    same_tool: int = 0
    challenger_errors: int = 0  # the challenger raised (counted as a failure)
    #: Tells one comparison from the next (a challenger loaded again starts from 0): the serving
    #: process's /metrics counters add what each comparison counted since it last looked.
    comparison_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def add(self, primary_pass: bool, challenger_pass: bool, same_tool: bool) -> None:
        self.requests += 1
        self.same_tool += bool(same_tool)
        if primary_pass and challenger_pass:
            self.both_pass += 1
        elif primary_pass:
            self.primary_only += 1
        elif challenger_pass:
            self.challenger_only += 1
        else:
            self.both_fail += 1

    def summary(self) -> dict:
        n = self.requests
        p = mcnemar_p(self.primary_only, self.challenger_only)
        if n < MIN_REQUESTS:
            verdict = "too_few"
        elif p < ALPHA:
            verdict = "better" if self.challenger_only > self.primary_only else "worse"
        else:
            verdict = "no_difference"
        return {**asdict(self),
                "primary_pass_rate": round((self.both_pass + self.primary_only) / n, 4) if n else None,
                "challenger_pass_rate": round((self.both_pass + self.challenger_only) / n, 4) if n else None,
                "tool_agreement": round(self.same_tool / n, 4) if n else None,
                "mcnemar_p": round(p, 6), "verdict": verdict}


def evidence_tags(summary: dict) -> dict[str, str]:
    return {
        ShadowTag.PRIMARY: str(summary["primary_version"]),
        ShadowTag.REQUESTS: str(summary["requests"]),
        ShadowTag.PRIMARY_PASS: str(summary["primary_pass_rate"]),
        ShadowTag.CHALLENGER_PASS: str(summary["challenger_pass_rate"]),
        ShadowTag.AGREEMENT: str(summary["tool_agreement"]),
        ShadowTag.MCNEMAR_P: str(summary["mcnemar_p"]),
        ShadowTag.VERDICT: summary["verdict"],
        ShadowTag.RECORDED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
    }


def record_evidence(agent: str, summary: dict) -> dict[str, str]:
    """The comparison as tags of the challenger's model version (MLflow registry)."""
    import mlflow

    tags = evidence_tags(summary)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(agent, summary["challenger_version"], key, value)
    return tags


class Challenger:
    """The challenger as the worker process runs it: loaded from the registry, acting dry-run."""

    def __init__(self, model_uri: str, version: str, sor_url: str, refund_limit: float):
        from agentops_pipelines.agent.actions import Actions, Policy
        from agentops_pipelines.agent.system_of_record import SystemOfRecord
        from agentops_pipelines.model_loading import load_model

        started = time.perf_counter()
        # a copy (MLflow writes beside a model it loads from the registry; the store is read-only here)
        copy = tempfile.mkdtemp(prefix="challenger-")
        python_model = load_model(model_uri, dst_path=copy).unwrap_python_model()
        if not callable(getattr(python_model, "can_act", None)) or not python_model.can_act():
            raise ValueError(f"{model_uri} is not an agent that acts (its tools are not the support desk's)")
        self.model_uri, self.version = model_uri, str(version)
        self.sor = SystemOfRecord(sor_url)
        self.model = python_model
        self.executor = python_model.executor(Actions(self.sor, Policy(refund_limit), dry_run=True))
        self.load_seconds = time.perf_counter() - started

    def replay(self, primaries: list[dict]) -> list[dict]:
        """The challenger on the requests the primary served (their trajectories), as one batch
        the way the serving path runs a micro-batch (``AgentModel.trajectories``): the same text,
        customer and features, and the customer as the primary's ``fetch_context`` read it (no
        second read; the challenger sees the customer as the primary did, before its writes).
        Each request's trajectory, its id prefixed ``shadow-``."""
        columns = {"text": [p.get("text") or "" for p in primaries],
                   "customer_id": [p.get("customer_id") or "" for p in primaries]}
        features = [primary_features(p) for p in primaries]
        columns.update({c: [f.get(c) for f in features] for c in self.model.feature_columns})
        ids = [f"shadow-{p['request_id']}" for p in primaries]
        contexts = [primary_customer(p) for p in primaries]
        with self.sor.snapshot():  # it only reads: one read transaction for the batch
            done = self.model.trajectories(self.executor, columns, ids, contexts)
        return [t.to_dict() for t in done]

    def close(self) -> None:
        self.sor.dispose()


def _fetched(trajectory: dict) -> dict | None:
    """The outputs of a trajectory's ``fetch_context`` step, when it is first and succeeded."""
    steps = trajectory.get("steps") or []
    if not steps or steps[0].get("name") != "fetch_context" or steps[0].get("error"):
        return None
    return steps[0].get("outputs") or None


def primary_features(trajectory: dict) -> dict:
    """The features the primary decided with (``fetch_context``'s), or none."""
    return dict((_fetched(trajectory) or {}).get("features") or {})


def primary_customer(trajectory: dict) -> dict | None:
    """The customer as the primary's ``fetch_context`` read it; None when it did not (no such
    customer, a failed read): the challenger then reads, and fails, on its own."""
    return (_fetched(trajectory) or {}).get("customer") or None
