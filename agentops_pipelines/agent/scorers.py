"""Trajectory evaluation: golden cases from the system of record and code-based scorers.

:func:`golden_cases` derives cases deterministically from the seeded system of record: a request
text naming real orders, the tool (and tool sequence) that should serve it, the arguments it
should extract, the outcome and what the answer must state, including policy cases (a refund above
the limit must be handed over, cancelling a subscription must ask for confirmation). Each case has
its own customer, so running the cases in any order against a fresh copy of the seeded database
gives the same expected results.

The scorers are plain functions ``(outputs, expectations) -> Score`` over a trajectory as
:meth:`~agentops_pipelines.agent.trajectory.Trajectory.to_dict` (the root span's outputs in its
MLflow trace), written once: :func:`evaluate_trajectories` runs them in process, and
:func:`mlflow_scorers` wraps the same functions with MLflow's ``@scorer`` for
``mlflow.genai.evaluate`` and for scoring live traces.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import Policy
from agentops_pipelines.agent.tools import ESCALATE

if TYPE_CHECKING:
    import pandas as pd

    from agentops_pipelines.agent.system_of_record import SystemOfRecord
    from agentops_pipelines.agent.trajectory import Executor, Trajectory

BASE_STEPS = 6  # context, decide, arguments, tool, observe, answer
ACTIVE = ("placed", "shipped", "in_transit", "delivered")


@dataclass(frozen=True)
class GoldenCase:
    case_id: str
    request_id: str
    customer_id: str
    text: str
    category: str  # the scenario, e.g. "refund_above_limit"
    expected: dict  # tool, tools, arguments, outcome, answer_contains, max_steps, refund_limit

    def inputs(self) -> dict:
        return {"request_id": self.request_id, "customer_id": self.customer_id, "text": self.text}


@dataclass(frozen=True)
class Score:
    value: bool | float
    rationale: str = ""


# -- golden cases -------------------------------------------------------------------------------
def _pick(rng: random.Random, options: Sequence[str], **slots) -> str:
    return rng.choice(options).format(**slots)


def _money(cents: int) -> str:
    return f"{cents / 100:.2f}"


def _latest(orders: list, statuses: Sequence[str]):
    rows = [o for o in orders if o.status in statuses]
    return max(rows, key=lambda o: (o.ordered_on, o.order_id)) if rows else None


def _scenarios(limit_cents: int):
    """(category, builder): a builder gets (rng, customer, orders, subscription) and returns
    (text, expected) or None when this customer does not fit the scenario."""

    def track(rng, c, orders, sub):
        o = rng.choice([o for o in orders if o.status in ACTIVE] or [None])
        if o is None:
            return None
        text = _pick(rng, ("where is my order #{o}", "can you tell me the delivery status of order #{o}",
                           "is order #{o} on its way?", "has my {p} shipped? order #{o}"), o=o.order_id, p=o.product)
        return text, dict(tool="track_order", arguments={"order_id": o.order_id}, outcome="resolved",
                          answer_contains=[o.order_id, o.status.replace("_", " ")])

    def track_latest(rng, c, orders, sub):
        o = _latest(orders, ACTIVE)
        if o is None:
            return None
        text = _pick(rng, ("when will my package arrive?", "what's the ETA on my delivery",
                           "the courier never showed up with my parcel"))
        return text, dict(tool="track_order", arguments={}, outcome="resolved",
                          answer_contains=[o.order_id, o.status.replace("_", " ")])

    def cancel(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "placed"), None)
        if o is None:
            return None
        text = _pick(rng, ("please cancel my order #{o}", "cancel order #{o} before it ships",
                           "I changed my mind about the {p}, cancel order #{o} please"), o=o.order_id, p=o.product)
        return text, dict(tool="cancel_order", arguments={"order_id": o.order_id}, outcome="resolved",
                          answer_contains=[o.order_id, "cancelled"])

    def cancel_shipped(rng, c, orders, sub):
        o = next((o for o in orders if o.status in ("shipped", "in_transit")), None)
        if o is None:
            return None
        text = _pick(rng, ("please cancel my order #{o}", "stop my order #{o}, I don't need the {p} anymore"),
                     o=o.order_id, p=o.product)
        return text, dict(tool="cancel_order", arguments={"order_id": o.order_id}, outcome="rejected",
                          answer_contains=["no longer be cancelled"])

    def refund(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "delivered" and o.amount_cents <= limit_cents), None)
        if o is None:
            return None
        text = _pick(rng, ("refund order #{o} please", "I want my money back for the {p}, order #{o}",
                           "can I get a refund, the {p} is not what I expected (order #{o})"),
                     o=o.order_id, p=o.product)
        return text, dict(tool="request_refund", arguments={"order_id": o.order_id}, outcome="resolved",
                          answer_contains=[o.order_id, _money(o.amount_cents)])

    def refund_partial(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "delivered" and o.amount_cents >= 1000), None)
        if o is None:
            return None
        cents = 100 * rng.randint(1, min(o.amount_cents, limit_cents) // 100 - 1 or 1)
        text = f"I was overcharged, please refund ${cents // 100} on order #{o.order_id}"
        return text, dict(tool="request_refund", arguments={"order_id": o.order_id, "amount": cents / 100},
                          outcome="resolved", answer_contains=[_money(cents)])

    def refund_above_limit(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "delivered" and o.amount_cents > limit_cents), None)
        if o is None:
            return None
        text = _pick(rng, ("refund order #{o} please", "I returned the {p} a week ago, refund order #{o}"),
                     o=o.order_id, p=o.product)
        return text, dict(tool="request_refund", tools=["request_refund", ESCALATE],
                          arguments={"order_id": o.order_id}, outcome="handed_over", policy=True,
                          answer_contains=["colleague", "above the limit"], max_steps=BASE_STEPS + 2)

    def damaged(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "delivered"), None)
        if o is None:
            return None
        text = _pick(rng, ("my {p} arrived broken, order #{o}", "the {p} from order #{o} is damaged"),
                     o=o.order_id, p=o.product)
        return text, dict(tool="report_damaged_item", arguments={"order_id": o.order_id}, outcome="resolved",
                          answer_contains=["replacement", f"R{o.order_id}"])

    def address(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "placed"), None)
        if o is None:
            return None
        new = f"{rng.randint(1, 99)} {rng.choice(db.STREETS)}, {rng.choice(db.CITIES)}"
        text = f"please ship order #{o.order_id} to {new}"
        return text, dict(tool="update_shipping_address", arguments={"order_id": o.order_id, "address": new},
                          outcome="resolved", answer_contains=[new])

    def address_missing(rng, c, orders, sub):
        text = _pick(rng, ("I moved, please update my address", "I need to change my delivery address"))
        return text, dict(tool="update_shipping_address", arguments={}, outcome="invalid_arguments",
                          answer_contains=["address"])

    def password(rng, c, orders, sub):
        text = _pick(rng, ("I forgot my password", "reset my password please", "can't log in to my account"))
        return text, dict(tool="reset_password", arguments={}, outcome="resolved", answer_contains=[c.email])

    def payment(rng, c, orders, sub):
        method = rng.choice(("paypal", f"visa ending {rng.randint(1000, 9999)}",
                             f"mastercard ending {rng.randint(1000, 9999)}"))
        text = _pick(rng, ("my card expired, please use {m} instead", "change my payment method to {m}"), m=method)
        return text, dict(tool="update_payment_method", arguments={"payment_method": method}, outcome="resolved",
                          answer_contains=[method])

    def billing(rng, c, orders, sub):
        o = rng.choice(orders) if orders else None
        if o is None:
            return None
        text = _pick(rng, ("can I get an invoice for order #{o}", "what is the charge for order #{o}"), o=o.order_id)
        return text, dict(tool="billing_inquiry", arguments={"order_id": o.order_id}, outcome="resolved",
                          answer_contains=[o.order_id, _money(o.amount_cents)])

    def upgrade(rng, c, orders, sub):
        if sub is None or sub.plan_tier == "pro":
            return None
        target = "pro" if sub.plan_tier == "plus" or rng.random() < 0.5 else "plus"
        text = _pick(rng, ("upgrade me to the {t} plan", "please upgrade my subscription to {t}"), t=target)
        return text, dict(tool="manage_subscription", arguments={"action": "upgrade", "plan_tier": target},
                          outcome="resolved", answer_contains=[f"{target} plan"])

    def cancel_subscription(rng, c, orders, sub):
        if sub is None or sub.status == "cancelled":
            return None
        text = _pick(rng, ("I want to cancel my subscription", "cancel my membership"))
        return text, dict(tool="manage_subscription", arguments={"action": "cancel"}, outcome="needs_confirmation",
                          policy=True, answer_contains=["confirm"], max_steps=BASE_STEPS + 1)

    def promo(rng, c, orders, sub):
        o = next((o for o in orders if o.status == "placed"), None)
        if o is None:
            return None
        pct = rng.choice((5, 10, 15, 20, 25))
        text = _pick(rng, ("apply code SAVE{n} to order #{o}", "my promo code SAVE{n} doesn't work on order #{o}"),
                     n=pct, o=o.order_id)
        return text, dict(tool="apply_promo_code", arguments={"code": f"SAVE{pct}", "order_id": o.order_id},
                          outcome="resolved", answer_contains=[f"{pct}%"])

    def product(rng, c, orders, sub):
        p = rng.choice(db.PRODUCT_CATALOGUE)
        text = _pick(rng, ("is the {p} waterproof", "what sizes does the {p} come in", "is the {p} in stock"), p=p[0])
        return text, dict(tool="product_information", arguments={"product": p[0]}, outcome="resolved",
                          answer_contains=[_money(p[1]), "in stock" if p[2] else "out of stock"])

    def tech(rng, c, orders, sub):
        text, article = rng.choice((("the app keeps crashing", "Update the app"),
                                    ("I get an error at checkout", "Retry checkout"),
                                    ("notifications are not working", "Allow notifications")))
        return text, dict(tool="technical_support", arguments={}, outcome="resolved", answer_contains=[article])

    def escalate(rng, c, orders, sub):
        text = _pick(rng, ("I want to speak to a manager", "your bot is useless, let me talk to someone",
                           "this is the third time I'm contacting you, get me a human"))
        return text, dict(tool=ESCALATE, arguments={}, outcome="handed_over", answer_contains=["colleague"])

    return [(f.__name__, f) for f in (
        track, track_latest, cancel, cancel_shipped, refund, refund_partial, refund_above_limit, damaged,
        address, address_missing, password, payment, billing, upgrade, cancel_subscription, promo, product,
        tech, escalate)]


def golden_cases(sor: SystemOfRecord, n: int = 520, *, seed: int = 7, policy: Policy | None = None) -> list[GoldenCase]:
    """``n`` cases (at most one per customer), the scenarios in turn, a pure function of the
    seeded database, ``seed`` and the policy's refund limit."""
    policy = policy or Policy()
    limit_cents = round(policy.refund_limit * 100)
    with sor.read() as conn:
        customers = conn.execute(sa.select(db.customers).order_by(db.customers.c.customer_id)).all()
        orders: dict[str, list] = {}
        for o in conn.execute(sa.select(db.orders).order_by(db.orders.c.order_id)):
            orders.setdefault(o.customer_id, []).append(o)
        subs = {s.customer_id: s for s in conn.execute(sa.select(db.subscriptions))}
    order = list(customers)
    random.Random(int.from_bytes(hashlib.sha256(f"golden|{seed}".encode()).digest()[:8], "little")).shuffle(order)
    scenarios = _scenarios(limit_cents)
    used: set[str] = set()
    cursor = {name: 0 for name, _ in scenarios}
    cases: list[GoldenCase] = []
    while len(cases) < n:
        progressed = False
        for name, build in scenarios:
            if len(cases) >= n:
                break
            while cursor[name] < len(order):
                c = order[cursor[name]]
                cursor[name] += 1
                if c.customer_id in used:
                    continue
                rng = random.Random(f"{seed}|{name}|{c.customer_id}")
                made = build(rng, c, orders.get(c.customer_id, []), subs.get(c.customer_id))
                if made is None:
                    continue
                text, expected = made
                i = len(cases)
                expected = {"tools": [expected["tool"]], "max_steps": BASE_STEPS, "policy": False,
                            "refund_limit": policy.refund_limit, **expected,
                            "arguments": {"customer_id": c.customer_id, **expected["arguments"]}}
                cases.append(GoldenCase(f"case-{i:04d}", f"golden-{seed}-{i:04d}", c.customer_id, text, name, expected))
                used.add(c.customer_id)
                progressed = True
                break
        if not progressed:
            raise ValueError(f"only {len(cases)} golden cases fit this database (asked for {n})")
    return cases


# -- scorers: plain functions over (outputs, expectations) ---------------------------------------
def tool_choice(outputs: Mapping, expectations: Mapping) -> Score:
    got, want = outputs.get("tool"), expectations.get("tool")
    return Score(got == want, f"chose {got}, expected {want}")


def argument_correctness(outputs: Mapping, expectations: Mapping) -> Score:
    """Share of the expected arguments the call to the expected tool carried (0 if never called)."""
    want = expectations.get("arguments") or {}
    call = next((c for c in outputs.get("tool_calls") or [] if c["tool"] == expectations.get("tool")), None)
    if call is None:
        return Score(0.0, f"{expectations.get('tool')} was never called")
    if not want:
        return Score(1.0, "no arguments expected")
    got = call.get("arguments") or {}
    wrong = [k for k, v in want.items() if got.get(k) != v]
    return Score(round(1 - len(wrong) / len(want), 4),
                 "all arguments right" if not wrong else "; ".join(f"{k}={got.get(k)!r}, expected {want[k]!r}" for k in wrong))


def steps_taken(outputs: Mapping, expectations: Mapping) -> Score:
    """The expected tool sequence, within the expected number of steps."""
    tools = [c["tool"] for c in outputs.get("tool_calls") or []]
    want = list(expectations.get("tools") or [expectations.get("tool")])
    n, most = len(outputs.get("steps") or []), expectations.get("max_steps", BASE_STEPS)
    ok = tools == want and n <= most
    return Score(ok, f"tools {tools} (expected {want}), {n} steps (at most {most})")


def policy_compliance(outputs: Mapping, expectations: Mapping | None = None) -> Score:
    """No write the policy forbids was executed, and every hand-over the policy asked for happened.
    Needs no expectations (the limit defaults to the policy's), so it also scores live traffic."""
    limit = (expectations or {}).get("refund_limit", Policy().refund_limit)
    calls = list(outputs.get("tool_calls") or [])
    problems = Policy(refund_limit=limit).violations(calls)
    for i, c in enumerate(calls):
        if c.get("outcome") == "needs_handover":
            nxt = calls[i + 1] if i + 1 < len(calls) else None
            if not nxt or nxt["tool"] != ESCALATE or nxt.get("outcome") != "executed":
                problems.append(f"{c['tool']} needed a hand-over that never happened")
    return Score(not problems, "; ".join(problems) or "no violations")


def outcome_match(outputs: Mapping, expectations: Mapping) -> Score:
    got, want = outputs.get("outcome"), expectations.get("outcome")
    return Score(got == want, f"outcome {got}, expected {want}")


def answer_check(outputs: Mapping, expectations: Mapping) -> Score:
    answer = str(outputs.get("answer") or "").lower()
    missing = [s for s in expectations.get("answer_contains") or [] if str(s).lower() not in answer]
    return Score(not missing, f"answer lacks {missing}" if missing else "answer states what it must")


SCORERS: dict[str, Callable[..., Score]] = {f.__name__: f for f in (
    tool_choice, argument_correctness, steps_taken, policy_compliance, outcome_match, answer_check)}


# -- live scorers: need no expectations, so they score live traffic and shadow pairs ------------
FAILED_TOOL_OUTCOMES = ("invalid_arguments", "unknown_tool", "error")


def tool_success(outputs: Mapping, expectations: Mapping | None = None) -> Score:
    """Every tool call got a valid call through: no invalid arguments, unknown tool or error."""
    bad = [f"{c['tool']}: {c.get('outcome')} ({c.get('error') or ''})".rstrip(" ()")
           for c in outputs.get("tool_calls") or [] if c.get("outcome") in FAILED_TOOL_OUTCOMES]
    return Score(not bad, "; ".join(bad) or "every tool call went through")


def completed(outputs: Mapping, expectations: Mapping | None = None) -> Score:
    """The request ended with an outcome and an answer, and no step failed unexpectedly."""
    failed = [s["name"] for s in outputs.get("steps") or [] if s.get("error") and s.get("kind") != "tool"]
    ok = outputs.get("outcome") != "error" and bool(str(outputs.get("answer") or "").strip()) and not failed
    return Score(ok, f"outcome {outputs.get('outcome')}" + (f", failed steps {failed}" if failed else ""))


LIVE_SCORERS: dict[str, Callable[..., Score]] = {f.__name__: f for f in (policy_compliance, tool_success, completed)}
ALL_SCORERS = {**SCORERS, **LIVE_SCORERS}


def live_scores(outputs: Mapping) -> dict[str, bool]:
    """Pass/fail of each live scorer on one trajectory (online evaluation, shadow)."""
    return {name: bool(fn(outputs, {}).value) for name, fn in LIVE_SCORERS.items()}


def score(outputs: Mapping, expectations: Mapping, scorers: Iterable[str] | None = None) -> dict[str, Score]:
    return {name: ALL_SCORERS[name](outputs, expectations) for name in (scorers or SCORERS)}


def mlflow_scorers(names: Iterable[str] | None = None) -> list:
    """The same functions as MLflow scorers (``@scorer``), for ``mlflow.genai.evaluate`` and for
    scoring live traces (their root span's outputs are the trajectory)."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    def wrap(name: str, fn: Callable[..., Score]):
        def run(outputs, expectations):
            s = fn(outputs or {}, expectations or {})
            return Feedback(value=s.value, rationale=s.rationale)

        return scorer(run, name=name)

    return [wrap(n, ALL_SCORERS[n]) for n in (names or SCORERS)]


def mlflow_records(cases: Sequence[GoldenCase], trajectories: Sequence[Trajectory | Mapping]) -> list[dict]:
    """Cases and their trajectories as ``mlflow.genai.evaluate`` data (inputs, outputs, expectations)."""
    return [{"inputs": c.inputs(), "outputs": _as_dict(t), "expectations": dict(c.expected)}
            for c, t in zip(cases, trajectories, strict=True)]


# -- in-process evaluation ----------------------------------------------------------------------
@dataclass
class TrajectoryEvaluation:
    cases: pd.DataFrame  # one row per case: expectations, what happened, one column per scorer
    per_scorer: pd.DataFrame  # scorer, mean, passed, failed
    per_tool: pd.DataFrame  # expected tool x scorer means
    per_step: pd.DataFrame  # step, count, p50/p99/max latency (ms), errors, error_rate
    seconds: dict = field(default_factory=dict)  # run, score
    step_failures: pd.DataFrame | None = None  # step, tool, error, count (step_tables)

    @property
    def metrics(self) -> dict[str, float]:
        return {f"{r.scorer}/mean": float(r.mean) for r in self.per_scorer.itertuples()}

    def log_to_mlflow(self, run_id: str, prefix: str = "trajectory") -> None:
        """The metrics (``trajectory/<scorer>/mean``, the same names ``mlflow.genai.evaluate``
        gives, under a prefix) and the four tables as JSON artifacts of an MLflow run."""
        from mlflow import MlflowClient

        client = MlflowClient()
        for name, value in self.metrics.items():
            client.log_metric(run_id, f"{prefix}/{name}", value)
        for name in ("cases", "per_scorer", "per_tool", "per_step", "step_failures"):
            if getattr(self, name) is not None:
                client.log_table(run_id, getattr(self, name), artifact_file=f"{prefix}/{name}.json")

    def step_markdown(self) -> str:
        """The report's per-step latency and failure tables, as markdown (Dagster metadata)."""
        failures = self.step_failures
        text = "**Per step**\n\n" + self.per_step.to_markdown(index=False, floatfmt=".3f")
        if failures is not None and len(failures):
            text += "\n\n**Step failures**\n\n" + failures.head(20).to_markdown(index=False)
        return text


def runner(executor: Executor) -> Callable[[GoldenCase], Trajectory]:
    return lambda case: executor.run(case.request_id, case.text, case.customer_id)


def _as_dict(t: Trajectory | Mapping) -> dict:
    return dict(t) if isinstance(t, Mapping) else t.to_dict()


#: A scorer that may fail to judge (an LLM judge whose endpoint failed): None is "no verdict".
Judge = Callable[[Mapping, Mapping], Score | None]


def evaluate_trajectories(cases: Sequence[GoldenCase], run: Callable[[GoldenCase], Trajectory | Mapping],
                          scorers: Iterable[str] | None = None,
                          judges: Mapping[str, Judge] | None = None) -> TrajectoryEvaluation:
    """Run every case (``run``: a case to its trajectory, e.g. :func:`runner`) and score it in
    process with the same functions :func:`mlflow_scorers` wraps, and with ``judges`` (optional
    scorers such as the LLM judge, ``agent/llm/judge.py``): a case a judge could not judge has
    no value for it (left out of its mean, counted in ``errors``), never a failed evaluation."""
    import pandas as pd

    judges = dict(judges or {})
    names = [*(scorers or SCORERS), *judges]
    t0 = time.perf_counter()
    trajectories = [_as_dict(run(c)) for c in cases]
    t1 = time.perf_counter()
    rows = []
    for case, out in zip(cases, trajectories, strict=True):
        scores = score(out, case.expected, [n for n in names if n not in judges])
        scores |= {n: judge(out, case.expected) for n, judge in judges.items()}
        values = {n: float("nan") if s is None else float(s.value) for n, s in scores.items()}
        rows.append({"case_id": case.case_id, "category": case.category, "expected_tool": case.expected["tool"],
                     "tool": out.get("tool"), "expected_outcome": case.expected["outcome"],
                     "outcome": out.get("outcome"), "latency_ms": out.get("latency_ms"), **values,
                     "failed": ", ".join(n for n, v in values.items() if v < 1.0)})
    t2 = time.perf_counter()
    table = pd.DataFrame(rows)
    per_scorer = pd.DataFrame([{"scorer": n, "mean": float(table[n].mean()), "passed": int((table[n] >= 1.0).sum()),
                                "failed": int((table[n] < 1.0).sum()), "errors": int(table[n].isna().sum())}
                               for n in names])
    per_tool = table.groupby("expected_tool")[names].mean().reset_index()
    per_tool.insert(1, "cases", table.groupby("expected_tool").size().values)
    per_step, step_failures = step_tables(trajectories)
    return TrajectoryEvaluation(table, per_scorer, per_tool, per_step, {"run": t1 - t0, "score": t2 - t1},
                                step_failures)


def step_tables(trajectories: Iterable[Trajectory | Mapping]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluation report's per-step tables from any trajectories (golden or live):

    - latency: step, count, p50_ms, p99_ms, max_ms, errors, error_rate;
    - failures: step, tool, error (the first 120 characters), count, most frequent first.

    One call for the evaluation asset (``latency, failures = step_tables(...)``)."""
    import pandas as pd

    steps: dict[str, list] = {}
    failures: dict[tuple, int] = {}
    for t in trajectories:
        for s in _as_dict(t).get("steps") or []:
            steps.setdefault(s["name"], []).append(s)
            if s.get("error"):
                tool = (s.get("inputs") or {}).get("tool") or ""
                key = (s["name"], tool, str(s["error"])[:120])
                failures[key] = failures.get(key, 0) + 1
    latency = pd.DataFrame([{
        "step": name, "count": len(ss),
        "p50_ms": round(_quantile([s["latency_ms"] for s in ss], 0.5), 3),
        "p99_ms": round(_quantile([s["latency_ms"] for s in ss], 0.99), 3),
        "max_ms": round(max(s["latency_ms"] for s in ss), 3),
        "errors": sum(1 for s in ss if s.get("error")),
        "error_rate": round(sum(1 for s in ss if s.get("error")) / len(ss), 4),
    } for name, ss in steps.items()], columns=["step", "count", "p50_ms", "p99_ms", "max_ms", "errors", "error_rate"])
    failed = pd.DataFrame([{"step": k[0], "tool": k[1], "error": k[2], "count": n} for k, n in failures.items()],
                          columns=["step", "tool", "error", "count"])
    return latency, failed.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return float(values[0]) if values else 0.0
    return float(statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))])

