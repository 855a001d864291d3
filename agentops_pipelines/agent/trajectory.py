"""Execution paths: one request served as steps, each recorded, and exported as MLflow spans.

:class:`Executor` serves a request as

1. ``fetch_context`` (the customer's row and subscription; online features when a lookup is given)
2. ``decide`` (the router: a callable ``(text, features) -> (tool, confidence)``)
3. ``extract_arguments`` (order ids, amounts, addresses, codes ... parsed from the text)
4. ``call_tool`` (the tool runs against the system of record; see :mod:`.actions`)
5. ``policy`` + ``call_tool`` again when the policy hands a write over to ``escalate_to_human``
6. ``observe`` (the outcome and the facts the answer may state)
7. ``answer``

and returns a :class:`Trajectory`. Nothing here imports mlflow except :func:`export_trace`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import Actions, ToolResult
from agentops_pipelines.agent.system_of_record import PRODUCT_CATALOGUE
from agentops_pipelines.agent.tools import ESCALATE

RouterFn = Callable[[str, Mapping[str, Any]], tuple[str, float]]
FeatureLookupFn = Callable[[list[str]], Any]  # customer ids -> {feature: [values]} or a DataFrame

#: Step kinds, and the MLflow span type each becomes.
SPAN_TYPES = {"context": "RETRIEVER", "decision": "LLM", "parser": "PARSER", "tool": "TOOL",
              "guardrail": "GUARDRAIL", "observe": "CHAIN", "answer": "CHAIN"}
#: The final outcome of a request, from its last tool result.
FINAL = {"ok": "resolved", "executed": "resolved", "needs_handover": "handed_over"}


@dataclass
class Step:
    name: str
    kind: str
    inputs: dict
    outputs: dict = field(default_factory=dict)
    latency_ms: float = 0.0
    error: str | None = None
    started_ns: int = 0  # wall clock, for spans


@dataclass
class Trajectory:
    request_id: str
    customer_id: str
    text: str
    steps: list[Step] = field(default_factory=list)
    tool: str | None = None  # what the router decided
    confidence: float | None = None
    outcome: str = "error"  # resolved, handed_over, needs_confirmation, rejected, not_found, invalid_arguments, error
    answer: str = ""
    latency_ms: float = 0.0

    @property
    def tool_calls(self) -> list[dict]:
        """Every tool the request called, in order, with its validated arguments and result."""
        return [s.outputs for s in self.steps if s.kind == "tool"]

    @property
    def tools_called(self) -> list[str]:
        return [c["tool"] for c in self.tool_calls]

    def to_dict(self) -> dict:
        """As plain dicts (what scorers read and a trace's root span holds). Shallow on purpose:
        ``dataclasses.asdict`` deep-copies every step's inputs and outputs (~1 ms a request,
        measured; a fifth of a served request's CPU)."""
        steps = [{"name": s.name, "kind": s.kind, "inputs": s.inputs, "outputs": s.outputs,
                  "latency_ms": s.latency_ms, "error": s.error, "started_ns": s.started_ns} for s in self.steps]
        return {"request_id": self.request_id, "customer_id": self.customer_id, "text": self.text,
                "steps": steps, "tool": self.tool, "confidence": self.confidence, "outcome": self.outcome,
                "answer": self.answer, "latency_ms": self.latency_ms,
                "tool_calls": [s["outputs"] for s in steps if s["kind"] == "tool"]}


# -- argument extraction: small deterministic parsing -------------------------------------------
ORDER_RE = re.compile(r"(?:#|\border\s+(?:no\.?\s*|number\s*)?)(\d{6})\b", re.I)
AMOUNT_RE = re.compile(r"[$£€]\s?(\d{1,6}(?:\.\d{1,2})?)")
ADDRESS_RE = re.compile(r"\b(?:to|is now|moved to|new address(?: is)?:?)\s+(\d{1,4}\s+[A-Za-z][A-Za-z .'-]*?"
                        r"(?:,\s*[A-Za-z][A-Za-z .'-]*?)?)\s*(?:[.!?]|$|\s+(?:please|thanks|thank))", re.I)
CODE_RE = re.compile(r"\b([A-Za-z]{3,10}\d{1,3})\b")
PLAN_RE = re.compile(r"\b(free|plus|pro)\b", re.I)
PAYMENT_RE = re.compile(r"\b(paypal|apple pay|google pay)\b|\b(visa|mastercard|amex)\b\D{0,20}?(\d{4})\b", re.I)
PRODUCTS = sorted((p[0] for p in PRODUCT_CATALOGUE), key=len, reverse=True)
ACTIONS = (("upgrade", ("upgrade",)), ("downgrade", ("downgrade",)), ("pause", ("pause", "hold")),
           ("resume", ("resume", "restart", "reactivate")), ("cancel", ("cancel", "stop", "end my")),
           ("info", ("included", "what's in", "what is in", "how much", "which plan")))
#: The arguments each tool takes from the text (customer_id always comes from the request).
FIELDS: dict[str, tuple[str, ...]] = {
    "track_order": ("order_id",), "cancel_order": ("order_id",), "request_refund": ("order_id", "amount"),
    "report_damaged_item": ("order_id",), "update_shipping_address": ("order_id", "address"),
    "reset_password": (), "update_payment_method": ("payment_method",), "billing_inquiry": ("order_id",),
    "manage_subscription": ("action", "plan_tier"), "apply_promo_code": ("code", "order_id"),
    "product_information": ("product",), "technical_support": ("issue",), ESCALATE: ("reason",),
}


def parse_text(text: str, current_plan: str | None = None) -> dict[str, Any]:
    """Every argument the text states (tools pick the ones they take)."""
    found: dict[str, Any] = {}
    lower = text.lower()
    if m := ORDER_RE.search(text):
        found["order_id"] = m.group(1)
    if m := AMOUNT_RE.search(text):
        found["amount"] = float(m.group(1))
    if m := ADDRESS_RE.search(text):
        found["address"] = m.group(1).strip()
    for m in CODE_RE.finditer(text):
        if not m.group(1).lower().startswith(("order", "c0")):
            found["code"] = m.group(1).upper()
            break
    if m := PAYMENT_RE.search(text):
        found["payment_method"] = m.group(1).lower() if m.group(1) else f"{m.group(2).lower()} ending {m.group(3)}"
    if m := PLAN_RE.search(text):
        found["plan_tier"] = m.group(1).lower()
    for action, words in ACTIONS:
        if any(w in lower for w in words):
            found["action"] = action
            break
    if "action" not in found and "plan_tier" in found and current_plan:
        rank = {"free": 0, "plus": 1, "pro": 2}
        if found["plan_tier"] != current_plan:
            found["action"] = "upgrade" if rank[found["plan_tier"]] > rank.get(current_plan, 0) else "downgrade"
    for product in PRODUCTS:
        if product in lower:
            found["product"] = product
            break
    found["issue"] = text[:500]
    found["reason"] = text[:500] or "customer asked for a person"
    return found


def arguments_for(tool: str, customer_id: str, parsed: Mapping[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"customer_id": customer_id}
    for name in FIELDS.get(tool, ()):
        if name in parsed:
            args[name] = parsed[name]
    return args


# -- answers ------------------------------------------------------------------------------------
def _money(x: Any) -> str:
    return f"{float(x):.2f}"


def answer_for(tool: str, result: ToolResult, handover: ToolResult | None = None) -> str:
    d = result.data
    if handover is not None and handover.outcome == "executed":
        return (f"I have passed this to a colleague (ticket {handover.data['ticket_id']}): "
                f"{result.error}. They will get back to you shortly.")
    if result.outcome == "needs_confirmation":
        return f"Before I go ahead: {result.error}. Reply 'yes' to confirm."
    if result.outcome == "invalid_arguments":
        return f"I need a little more to do that: {result.error}."
    if result.outcome in ("rejected", "not_found", "unknown_tool"):
        return f"I could not do that: {result.error}."
    if result.outcome == "needs_handover":
        return f"This needs a colleague ({result.error}), but the hand-over failed: please try again."
    match tool:
        case "track_order":
            return f"Your order {d['order_id']} ({d['product']}) is {d['status'].replace('_', ' ')}; expected {d['eta']}."
        case "cancel_order":
            return f"Order {d['order_id']} is cancelled; you will not be charged {_money(d['amount'])}."
        case "request_refund":
            return f"Refund {d['refund_id']} of {_money(d['amount'])} for order {d['order_id']} is on its way."
        case "report_damaged_item":
            return f"A replacement {d['product']} ({d['replacement_id']}) is on its way for order {d['order_id']}."
        case "update_shipping_address":
            where = f"order {d['order_id']}" if d.get("order_id") else "your account"
            return f"The delivery address of {where} is now {d['address']}."
        case "reset_password":
            return f"A password reset link is on its way to {d['email']}."
        case "update_payment_method":
            return f"Your payment method is now {d['payment_method']}."
        case "billing_inquiry":
            charges = "; ".join(f"order {c['order_id']}: {_money(c['amount'])} ({c['status']})" for c in d["charges"])
            return f"Your recent charges: {charges or 'none'}. Plan: {d['plan_tier']}."
        case "manage_subscription":
            return f"Your subscription: {d['plan_tier']} plan, {d['status']}."
        case "apply_promo_code":
            return f"Code {d['code']} takes {d['discount_pct']}% off order {d['order_id']} (you save {_money(d['saving'])})."
        case "product_information":
            stock = "in stock" if d["in_stock"] else "out of stock"
            return (f"The {d['product']} costs {_money(d['price'])}, is {stock}, comes in {d['sizes']} "
                    f"and has a {d['warranty_months']}-month warranty.")
        case "technical_support":
            return d["article"]
        case _ if tool == ESCALATE:
            return f"I have passed this to a colleague (ticket {d['ticket_id']}); they will get back to you shortly."
    return f"Done: {tool.replace('_', ' ')}."


_OPEN = (sa.select(sa.func.count()).select_from(db.orders)
         .where(db.orders.c.customer_id == db.customers.c.customer_id,
                db.orders.c.status.in_(("placed", "shipped", "in_transit"))).scalar_subquery())
_CUSTOMER = (sa.select(db.customers.c.customer_id, db.customers.c.name, db.subscriptions.c.plan_tier,
                       db.subscriptions.c.status, _OPEN.label("open_orders"))
             .join(db.subscriptions, db.subscriptions.c.customer_id == db.customers.c.customer_id, isouter=True))
_CONTEXT = _CUSTOMER.where(db.customers.c.customer_id == sa.bindparam("cid"))
_CONTEXTS = _CUSTOMER.where(db.customers.c.customer_id.in_(sa.bindparam("cids", expanding=True)))


class Executor:
    """Serves requests as trajectories over one set of actions. Thread-safe."""

    def __init__(self, actions: Actions, router: RouterFn, feature_lookup: FeatureLookupFn | None = None):
        self.actions = actions
        self.router = router
        self.feature_lookup = feature_lookup

    def run(self, request_id: str, text: str, customer_id: str, *, confirmed: bool = False,
            features: Mapping[str, Any] | None = None,
            decision: tuple[str, float, float] | None = None,
            customer: tuple[dict | None, float] | None = None) -> Trajectory:
        """Serve one request. ``decision``: (tool, confidence, milliseconds) when the router was
        already asked for a whole micro-batch at once (``AgentModel.predict_acting``); the decide
        step then records it, with the row's share of the batch's routing time as its latency.
        ``customer``: (the customer as ``fetch_context`` shows it, or None for no such customer;
        milliseconds) when it was read already: by :meth:`customers` for a micro-batch, or by the
        primary whose request a shadow challenger replays."""
        t0 = time.perf_counter()
        traj = Trajectory(request_id, customer_id, text)

        def step(name: str, kind: str, inputs: dict, fn: Callable[[], dict]) -> Step:
            s = Step(name, kind, inputs, started_ns=time.time_ns())
            start = time.perf_counter()
            try:
                s.outputs = fn()
            except Exception as exc:  # noqa: BLE001 - a failing step is recorded, not raised
                s.error = f"{type(exc).__name__}: {exc}"
            s.latency_ms = (time.perf_counter() - start) * 1000
            traj.steps.append(s)
            return s

        def call(tool: str, args: dict) -> ToolResult:
            holder: list[ToolResult] = []

            def run_tool() -> dict:
                holder.append(self.actions.call(tool, args, request_id=request_id, confirmed=confirmed))
                return holder[0].to_dict()

            s = step("call_tool", "tool", {"tool": tool, "arguments": args}, run_tool)
            if not holder:  # the tool raised (the database is down ...): the step holds the error
                holder.append(ToolResult(tool, "error", error=s.error, arguments=args))
                s.outputs = holder[0].to_dict()
            elif not holder[0].ok:
                s.error = holder[0].error or holder[0].outcome
            return holder[0]

        context = step("fetch_context", "context", {"customer_id": customer_id},
                       lambda: self._context(customer_id, features, customer))
        if customer is not None:
            context.latency_ms = customer[1]
        ctx = context.outputs
        decided = decision
        decision = step("decide", "decision", {"text": text, "features": ctx.get("features", {})},
                        lambda: self._decide(text, ctx.get("features", {})) if decided is None
                        else {"tool": str(decided[0]), "confidence": float(decided[1])})
        if decided is not None:
            decision.latency_ms = decided[2]
        if decision.error:
            return self._finish(traj, t0, "error", "Sorry, something went wrong on our side; a colleague will follow up.")
        traj.tool, traj.confidence = decision.outputs["tool"], decision.outputs["confidence"]
        parsed = step("extract_arguments", "parser", {"text": text, "tool": traj.tool},
                      lambda: arguments_for(traj.tool, customer_id,
                                            parse_text(text, (ctx.get("customer") or {}).get("plan"))))
        result = call(traj.tool, parsed.outputs)
        handover = None
        if result.outcome == "needs_handover":
            step("policy", "guardrail", {"tool": traj.tool, "plan": result.data},
                 lambda: {"decision": "handover", "reason": result.error})
            handover = call(ESCALATE, {"customer_id": customer_id, "reason": result.error or "policy",
                                       "proposed_call": {"tool": traj.tool, "arguments": result.arguments}})
        elif result.outcome == "needs_confirmation":
            step("policy", "guardrail", {"tool": traj.tool, "plan": result.data},
                 lambda: {"decision": "confirm", "reason": result.error})
        last = handover or result
        if last.outcome == "error":
            outcome = "error"
        elif handover is not None or traj.tool == ESCALATE and last.ok:
            outcome = "handed_over" if last.ok else "error"
        else:
            outcome = FINAL.get(last.outcome, last.outcome)
        step("observe", "observe", {"outcome": last.outcome},
             lambda: {"outcome": outcome, "facts": last.data, "replayed": last.replayed})
        answer = step("answer", "answer", {"tool": traj.tool, "outcome": outcome},
                      lambda: {"answer": answer_for(traj.tool, result, handover)})
        text_out = answer.outputs.get("answer") or f"Done: {traj.tool.replace('_', ' ')}."
        return self._finish(traj, t0, outcome, text_out)

    @staticmethod
    def _finish(traj: Trajectory, t0: float, outcome: str, answer: str) -> Trajectory:
        traj.outcome, traj.answer = outcome, answer
        traj.latency_ms = (time.perf_counter() - t0) * 1000
        return traj

    def customers(self, customer_ids: Sequence[str]) -> list[tuple[dict | None, float]] | None:
        """The customers of a micro-batch in one query: (customer or None, this row's share of
        the milliseconds) per id, for :meth:`run`'s ``customer``. None when the read fails: each
        request then reads (and records its failure) on its own."""
        start = time.perf_counter()
        try:
            with self.actions.sor.read() as conn:
                found: dict = {}
                for r in conn.execute(_CONTEXTS, {"cids": sorted(set(customer_ids))}):
                    found.setdefault(r.customer_id, r)  # the first row, as ``.first()`` takes one
        except Exception:  # noqa: BLE001 - the rows' own fetch_context steps record the error
            return None
        share = (time.perf_counter() - start) * 1000 / max(1, len(customer_ids))
        return [(_customer_view(found[c]) if c in found else None, share) for c in customer_ids]

    def _context(self, customer_id: str, features: Mapping[str, Any] | None,
                 customer: tuple[dict | None, float] | None = None) -> dict:
        if customer is not None:
            view = customer[0]
        else:
            with self.actions.sor.read() as conn:
                row = conn.execute(_CONTEXT, {"cid": customer_id}).first()
            view = _customer_view(row) if row is not None else None
        if view is None:
            raise LookupError(f"customer_id: no customer {customer_id}")
        feats = dict(features) if features is not None else self._features(customer_id)
        return {"customer": dict(view), "features": feats}

    def _features(self, customer_id: str) -> dict:
        return features_of(self.feature_lookup, customer_id)

    def _decide(self, text: str, features: Mapping[str, Any]) -> dict:
        tool, confidence, *usage = self.router(text, features)  # an LLM router adds tokens, latency
        return {"tool": str(tool), "confidence": float(confidence), **({"llm": usage[0]} if usage else {})}


def features_of(feature_lookup: FeatureLookupFn | None, customer_id: str) -> dict:
    """A customer's features as ``fetch_context`` shows them (and the router reads them): plain
    values, {} without a lookup or without the customer."""
    if feature_lookup is None:
        return {}
    found = feature_lookup([customer_id])
    if hasattr(found, "iloc"):  # a DataFrame
        return {k: _plain(v) for k, v in found.iloc[0].to_dict().items()} if len(found) else {}
    return {k: _plain(v[0]) for k, v in dict(found).items() if len(v)}


def _customer_view(row: Any) -> dict:
    """A customer row of ``_CUSTOMER`` as the ``fetch_context`` step shows it."""
    return {"customer_id": row.customer_id, "name": row.name, "plan": row.plan_tier,
            "subscription": row.status, "open_orders": int(row.open_orders or 0)}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def router_from_model(model: Any, feature_columns: tuple[str, ...] = ()) -> RouterFn:
    """A trained router (``predict_columns`` or ``predict``, see agent.interface) as a RouterFn."""
    if callable(getattr(model, "decide", None)):  # (tool, confidence, usage): agent/llm/router.py
        return model.decide
    fast = getattr(model, "predict_columns", None)

    def route(text: str, features: Mapping[str, Any]) -> tuple[str, float]:
        columns = {"text": [text], **{c: [features[c]] for c in feature_columns if c in features}}
        if fast is not None:
            tools, conf = fast(columns, 1)
        else:
            import pandas as pd

            out = model.predict(pd.DataFrame(columns))
            tools, conf = out["tool"].tolist(), out["confidence"].tolist()
        return str(tools[0]), float(conf[0])

    return route


# -- MLflow Tracing -----------------------------------------------------------------------------
def export_trace(trajectory: Trajectory, *, experiment_id: str | None = None,
                 tags: Mapping[str, str] | None = None, agent: str = "support_agent") -> str:
    """Record ``trajectory`` as one MLflow trace: a root AGENT span with a child span per step
    (their real start times and latencies; a failed step's span has status ERROR). The request id
    is the trace's ``agentops.request_id`` tag and its ``client_request_id``. Returns the trace id."""
    import mlflow
    from mlflow.entities import SpanStatusCode, SpanType

    t = trajectory
    start = t.steps[0].started_ns if t.steps else time.time_ns()
    all_tags = {"agentops.request_id": t.request_id, "agentops.agent": agent,
                "agentops.outcome": t.outcome, **(tags or {})}
    root = mlflow.start_span_no_context(
        name=agent, span_type=SpanType.AGENT, inputs={"request_id": t.request_id, "customer_id": t.customer_id,
                                                      "text": t.text},
        tags=all_tags, experiment_id=experiment_id, start_time_ns=start)
    _set_client_request_id(root, t.request_id)
    end = start
    for s in t.steps:
        span = mlflow.start_span_no_context(
            name=s.name, span_type=getattr(SpanType, SPAN_TYPES.get(s.kind, "UNKNOWN")), parent_span=root,
            inputs=s.inputs, attributes={"kind": s.kind, "latency_ms": round(s.latency_ms, 3)},
            start_time_ns=s.started_ns)
        span.set_outputs(s.outputs)
        if s.error:
            span.set_attribute("error", s.error)
        step_end = s.started_ns + int(s.latency_ms * 1e6)
        end = max(end, step_end)
        span.end(status=SpanStatusCode.ERROR if s.error else SpanStatusCode.OK, end_time_ns=step_end)
    root.set_attributes({"tool": t.tool or "", "confidence": t.confidence or 0.0, "outcome": t.outcome,
                         "latency_ms": round(t.latency_ms, 3)})
    failed = t.outcome == "error"
    root.end(outputs=t.to_dict(), status=SpanStatusCode.ERROR if failed else SpanStatusCode.OK,
             end_time_ns=max(end, start + int(t.latency_ms * 1e6)))
    return root.trace_id


def _set_client_request_id(root: Any, request_id: str) -> None:
    """So ``search_traces(filter_string="trace.client_request_id = '...'")`` finds it too, as the
    serving process's traces. MLflow only updates the *current* trace: make the root current for
    the call (an internal helper; the tag above is the public fallback)."""
    try:
        import mlflow
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context

        token = set_span_in_context(root)
        try:
            mlflow.update_current_trace(client_request_id=request_id)
        finally:
            detach_span_from_context(token)
    except Exception:  # noqa: BLE001 - the tag still finds the trace
        pass
