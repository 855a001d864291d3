"""Execution paths: a request as steps over the real system of record, exported as MLflow spans."""

import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import Actions, Policy
from agentops_pipelines.agent.trajectory import Executor, export_trace, parse_text


def fixed(tool, confidence=0.9):
    return lambda text, features: (tool, confidence)


def an_order(sor, *conds):
    with sor.read() as conn:
        return conn.execute(sa.select(db.orders).where(*conds).order_by(db.orders.c.order_id).limit(1)).first()


def test_a_read_request_is_a_path_of_steps_answered_from_rows(actions, sor):
    row = an_order(sor, db.orders.c.status == "in_transit")
    seen = []

    def lookup(ids):
        seen.append(ids)
        return {"orders_30d": [3], "plan_tier": ["plus"]}

    def router(text, features):
        assert features == {"orders_30d": 3, "plan_tier": "plus"}
        return "track_order", 0.8

    t = Executor(actions, router, lookup).run("req-1", f"where is my order #{row.order_id}?", row.customer_id)
    assert seen == [[row.customer_id]]
    assert [s.name for s in t.steps] == ["fetch_context", "decide", "extract_arguments", "call_tool", "observe", "answer"]
    assert [s.kind for s in t.steps] == ["context", "decision", "parser", "tool", "observe", "answer"]
    assert all(s.error is None and s.latency_ms > 0 for s in t.steps)
    assert (t.tool, t.confidence, t.outcome) == ("track_order", 0.8, "resolved")
    call = t.tool_calls[0]
    assert call["arguments"] == {"customer_id": row.customer_id, "order_id": row.order_id}
    assert call["data"]["status"] == "in_transit"
    assert "in transit" in t.answer and row.order_id in t.answer
    assert t.steps[0].outputs["customer"]["customer_id"] == row.customer_id
    assert t.latency_ms >= sum(s.latency_ms for s in t.steps) * 0.99


def test_a_refund_above_the_limit_is_handed_over(sor):
    row = an_order(sor, db.orders.c.status == "delivered", db.orders.c.amount_cents > 20000)
    ex = Executor(Actions(sor, Policy(refund_limit=100)), fixed("request_refund"))
    t = ex.run("req-big", f"refund order #{row.order_id} please", row.customer_id)
    assert t.tools_called == ["request_refund", "escalate_to_human"]
    assert [c["outcome"] for c in t.tool_calls] == ["needs_handover", "executed"]
    assert [s.name for s in t.steps if s.kind == "guardrail"] == ["policy"]
    assert t.outcome == "handed_over" and "TK-req-big" in t.answer
    with sor.read() as conn:
        assert conn.execute(sa.select(db.refunds).where(db.refunds.c.order_id == row.order_id)).all() == []
        ticket = conn.execute(sa.select(db.tickets).where(db.tickets.c.request_id == "req-big")).one()
    assert row.order_id in ticket.proposed_call
    # The same request retried: still one ticket, still no refund.
    again = ex.run("req-big", f"refund order #{row.order_id} please", row.customer_id)
    assert again.outcome == "handed_over" and again.tool_calls[1]["replayed"] is True
    assert sor.count("tickets", request_id="req-big") == 1


def test_invalid_arguments_fail_the_tool_step_with_the_argument_named(actions):
    t = Executor(actions, fixed("update_shipping_address")).run("req-2", "I moved, update my address", "C00001")
    tool_step = next(s for s in t.steps if s.kind == "tool")
    assert tool_step.error == "address: Field required"
    assert t.outcome == "invalid_arguments" and "address" in t.answer


def test_an_unknown_customer_and_a_failing_router_are_recorded_not_raised(actions):
    t = Executor(actions, fixed("track_order")).run("req-3", "where is my order", "C99999")
    assert t.steps[0].error == "LookupError: customer_id: no customer C99999"
    assert t.outcome == "not_found"

    def broken(text, features):
        raise RuntimeError("router down")

    t = Executor(actions, broken).run("req-4", "hello", "C00001")
    assert [s.name for s in t.steps] == ["fetch_context", "decide"]
    assert t.steps[1].error == "RuntimeError: router down" and t.outcome == "error"


def test_parsing_is_small_and_deterministic():
    p = parse_text("Please ship order #123456 to 12 Mill Road, York thanks")
    assert p["order_id"] == "123456" and p["address"] == "12 Mill Road, York"
    p = parse_text("refund $45.50 on order 654321")
    assert (p["order_id"], p["amount"]) == ("654321", 45.5)
    assert parse_text("switch me to pro", current_plan="plus")["action"] == "upgrade"
    assert parse_text("change my payment method to PayPal")["payment_method"] == "paypal"
    assert parse_text("new card: Mastercard ending in 5454")["payment_method"] == "mastercard ending 5454"
    assert parse_text("apply code save15 please")["code"] == "SAVE15"
    assert parse_text("is the rain jacket waterproof")["product"] == "rain jacket"


def test_export_as_mlflow_spans_found_by_request_id(actions, sor, tmp_path, mlflow_db):
    import mlflow
    from mlflow.entities import SpanType

    mlflow.set_tracking_uri(mlflow_db)
    try:
        exp = mlflow.create_experiment("trajectories", artifact_location=str(tmp_path / "artifacts"))
        row = an_order(sor, db.orders.c.status == "delivered", db.orders.c.amount_cents > 20000)
        ex = Executor(Actions(sor, Policy(refund_limit=100)), fixed("request_refund", 0.7))
        t = ex.run("req-span", f"refund order #{row.order_id}", row.customer_id)
        bad = Executor(actions, fixed("update_shipping_address")).run("req-bad", "move my stuff", "C00002")
        trace_id = export_trace(t, experiment_id=exp, tags={"agentops.model_version": "3"})
        export_trace(bad, experiment_id=exp)

        found = mlflow.search_traces(locations=[exp], filter_string="tags.`agentops.request_id` = 'req-span'",
                                     return_type="list", flush=True)
        assert [x.info.trace_id for x in found] == [trace_id]
        trace = found[0]
        assert trace.info.tags["agentops.model_version"] == "3"
        assert trace.info.client_request_id == "req-span"
        spans = trace.data.spans
        root = next(s for s in spans if s.parent_id is None)
        assert root.span_type == SpanType.AGENT and root.outputs["outcome"] == "handed_over"
        children = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
        assert [s.name for s in children] == [st.name for st in t.steps]
        assert [s.span_type for s in children] == [SpanType.RETRIEVER, SpanType.LLM, SpanType.PARSER, SpanType.TOOL,
                                                   SpanType.GUARDRAIL, SpanType.TOOL, SpanType.CHAIN, SpanType.CHAIN]
        tool_spans = [s for s in children if s.span_type == SpanType.TOOL]
        assert [s.inputs["tool"] for s in tool_spans] == ["request_refund", "escalate_to_human"]
        assert tool_spans[0].outputs["outcome"] == "needs_handover"
        for span, step in zip(children, t.steps, strict=True):
            assert abs((span.end_time_ns - span.start_time_ns) / 1e6 - step.latency_ms) < 0.01

        bad_trace = mlflow.search_traces(locations=[exp], filter_string="trace.client_request_id = 'req-bad'",
                                         return_type="list")[0]
        failed = [s for s in bad_trace.data.spans if s.status.status_code == "ERROR"]
        assert [s.name for s in failed] == ["call_tool"]
        assert failed[0].attributes["error"] == "address: Field required"
    finally:
        mlflow.set_tracking_uri(None)


def test_the_trained_support_desk_router_drives_the_executor(actions, sor):
    from datetime import date

    from agentops_pipelines.agent.scorers import evaluate_trajectories, golden_cases, runner
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.agent.trajectory import router_from_model
    from agentops_pipelines.data.generator import customer_snapshot, generate_requests

    day = date(2026, 11, 1)
    training = generate_requests(day).merge(customer_snapshot(day), on="customer_id")
    model = SupportDeskAgent().train(training, {})
    columns = tuple(c for c in SupportDeskAgent.feature_columns if c in training)
    snap = customer_snapshot(day).set_index("customer_id")
    lookup = lambda ids: {c: snap.loc[ids, c].tolist() for c in columns}  # noqa: E731
    cases = golden_cases(sor, 60)
    ev = evaluate_trajectories(cases, runner(Executor(actions, router_from_model(model, columns), lookup)))
    assert ev.metrics["tool_choice/mean"] > 0.8
    assert ev.metrics["policy_compliance/mean"] == 1.0
    decided = [s for s in ev.per_step.itertuples() if s.step == "decide"]
    assert decided[0].count == 60 and decided[0].errors == 0


class _KeywordRouter:
    """A vectorised router (``predict_columns``) that counts how often it is asked."""

    classes = ["track_order", "request_refund", "escalate_to_human"]

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def predict_columns(self, columns, n):
        self.calls.append(n)
        if self.fail and n > 1:
            raise RuntimeError("batch path down")
        tools = ["request_refund" if "refund" in t else "track_order" for t in columns["text"]]
        return tools, [0.9 if t == "request_refund" else 0.7 for t in tools]


def _acting_model(router):
    from agentops_pipelines.agent.model import AgentModel

    return AgentModel("support_agent", router, [], {t: t for t in router.classes}, "escalate_to_human",
                      "{text}", "prompts:/support/1")


def test_a_micro_batch_asks_the_router_once_and_each_row_keeps_its_own_path(actions, sor):
    """Serving routes a micro-batch of rows in one router call (it was one call per row: ~15% of
    a saturated server); every row's trajectory still has its own decide step and outcome, the
    same as when the rows are served one at a time."""
    import pandas as pd

    row = an_order(sor, db.orders.c.status == "in_transit")
    texts = [f"where is my order #{row.order_id}?", "refund order #O99999 please", "where is my parcel"]
    batch = pd.DataFrame({"text": texts, "customer_id": [row.customer_id, "C00002", "C99999"],
                          "request_id": ["b1", "b2", "b3"]})
    router = _KeywordRouter()
    model = _acting_model(router)
    together, _, _ = model.predict_acting(model.executor(actions), batch)
    assert router.calls == [3]  # one call for the three rows, none per row
    alone = [model.predict_acting(model.executor(actions), batch.iloc[[i]].reset_index(drop=True))[0]
             for i in range(3)]
    assert router.calls[1:] == [1, 1, 1]
    for i in range(3):
        assert together["tool"][i] == alone[i]["tool"][0] and together["outcome"][i] == alone[i]["outcome"][0]
        steps = {s["name"]: s for s in together["_trajectory"][i]["steps"]}
        alone_steps = {s["name"]: s for s in alone[i]["_trajectory"][0]["steps"]}
        assert steps["decide"]["error"] is None and steps["decide"]["latency_ms"] >= 0
        # the customer read once for the batch: the same context, or the same error, per row
        assert steps["fetch_context"]["outputs"] == alone_steps["fetch_context"]["outputs"]
        assert steps["fetch_context"]["error"] == alone_steps["fetch_context"]["error"]
    assert together["_trajectory"][2]["steps"][0]["error"] == "LookupError: customer_id: no customer C99999"
    assert list(together["tool"]) == ["track_order", "request_refund", "track_order"]


def test_a_failing_batch_call_falls_back_to_each_rows_own_decision(actions, sor):
    router = _KeywordRouter(fail=True)
    model = _acting_model(router)
    import pandas as pd

    batch = pd.DataFrame({"text": ["refund please", "where is it"], "customer_id": ["C00001", "C00002"],
                          "request_id": ["f1", "f2"]})
    out, _, _ = model.predict_acting(model.executor(actions), batch)
    assert router.calls == [2, 1, 1]  # the batch call failed, each row then asked on its own
    assert list(out["tool"]) == ["request_refund", "track_order"]


def test_the_served_one_step_answers_what_predict_answers():
    """The serving path's one-step prediction (object-block frames, no per-column pandas
    conversion) answers the same rows, with the same values and features, as the pyfunc's
    typed ``predict``."""
    import pandas as pd

    model = _acting_model(_KeywordRouter())
    batch = pd.DataFrame({"text": ["refund my order", "where is my parcel"], "customer_id": ["C00001", "C00002"]})
    typed = model.predict(None, batch)
    served, features, steps = model.predict_with_steps(batch)
    assert list(served.columns) == list(typed.columns)
    assert served.to_dict("records") == typed.to_dict("records")
    assert [type(v) for v in served.iloc[0]] == [str, float, bool, str, str, str]
    assert list(features.columns) == list(model.feature_columns) and len(features) == 2
    assert [s[0] for s in steps] == ["feature_lookup", "route", "tool"]
