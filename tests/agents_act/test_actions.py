"""Tools that really run: reads from rows, idempotent writes, the policy, invalid arguments."""

import multiprocessing as mp
import threading

import pytest
import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import SPECS, Actions, Policy
from agentops_pipelines.agent.system_of_record import SystemOfRecord
from agentops_pipelines.agent.tools import TOOL_NAMES


def order_where(sor, *conds):
    o = db.orders
    with sor.read() as conn:
        return conn.execute(sa.select(o).where(*conds).order_by(o.c.order_id).limit(1)).first()


def refunds_of(sor, order_id):
    with sor.read() as conn:
        return conn.execute(sa.select(db.refunds).where(db.refunds.c.order_id == order_id)).all()


def test_every_support_desk_tool_runs():
    assert set(SPECS) == set(TOOL_NAMES)


def test_reads_answer_from_rows(actions, sor):
    row = order_where(sor, db.orders.c.status == "in_transit")
    r = actions.call("track_order", {"customer_id": row.customer_id, "order_id": row.order_id}, request_id="r")
    assert r.outcome == "ok"
    assert (r.data["status"], r.data["product"], r.data["amount"]) == ("in_transit", row.product, row.amount_cents / 100)
    with sor.write() as conn:
        conn.execute(db.orders.update().where(db.orders.c.order_id == row.order_id).values(status="delivered"))
    again = actions.call("track_order", {"customer_id": row.customer_id, "order_id": row.order_id}, request_id="r")
    assert again.data["status"] == "delivered"
    info = actions.call("product_information", {"product": "yoga mat"}, request_id="r")
    assert info.data["in_stock"] is False and info.data["sizes"] == "183 cm"


def test_writes_change_rows_and_business_rules_reject(actions, sor):
    placed = order_where(sor, db.orders.c.status == "placed")
    r = actions.call("cancel_order", {"customer_id": placed.customer_id, "order_id": placed.order_id}, request_id="c1")
    assert r.outcome == "executed" and not r.replayed
    assert order_where(sor, db.orders.c.order_id == placed.order_id).status == "cancelled"
    shipped = order_where(sor, db.orders.c.status == "shipped")
    r = actions.call("cancel_order", {"customer_id": shipped.customer_id, "order_id": shipped.order_id}, request_id="c2")
    assert r.outcome == "rejected" and "shipped" in r.error
    assert order_where(sor, db.orders.c.order_id == shipped.order_id).status == "shipped"
    other = order_where(sor, db.orders.c.customer_id != shipped.customer_id)
    r = actions.call("track_order", {"customer_id": shipped.customer_id, "order_id": other.order_id}, request_id="c3")
    assert r.outcome == "not_found" and r.error.startswith("order_id:")


def _strings(value) -> list[str]:
    """Every string in a nested dict/list: keys and text values."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _refund_in_process(url, args, request_id, barrier):
    barrier.wait()
    sor = SystemOfRecord(url)
    return Actions(sor).call("request_refund", args, request_id=request_id).to_dict()


def test_a_retried_refund_never_refunds_twice_threads_and_processes(actions, sor):
    row = order_where(sor, db.orders.c.status == "delivered", db.orders.c.amount_cents <= 9000)
    args = {"customer_id": row.customer_id, "order_id": row.order_id}
    results, barrier = [], threading.Barrier(8)

    def retry():
        barrier.wait()
        results.append(actions.call("request_refund", args, request_id="retry-1").to_dict())

    threads = [threading.Thread(target=retry) for _ in range(8)]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        pbarrier = manager.Barrier(3)
        with ctx.Pool(3) as pool:
            pending = pool.starmap_async(_refund_in_process, [(sor.url, args, "retry-1", pbarrier)] * 3)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results += pending.get(timeout=120)
    assert len(results) == 11
    assert all(r["outcome"] == "executed" for r in results)
    assert len({r["data"]["refund_id"] for r in results}) == 1
    assert sum(not r["replayed"] for r in results) == 1
    refunds = refunds_of(sor, row.order_id)
    assert len(refunds) == 1 and refunds[0].amount_cents == row.amount_cents
    # A new request id is a new refund request: nothing is left to refund.
    r = actions.call("request_refund", args, request_id="retry-2")
    assert r.outcome == "rejected" and "already fully refunded" in r.error
    # The same request id with other arguments is refused, not replayed.
    r = actions.call("request_refund", {**args, "amount": 1.0}, request_id="retry-1")
    assert r.outcome == "rejected" and r.error.startswith("request_id:")


def test_refund_above_the_limit_is_handed_over_never_executed(sor):
    row = order_where(sor, db.orders.c.status == "delivered", db.orders.c.amount_cents > 15000)
    args = {"customer_id": row.customer_id, "order_id": row.order_id}
    r = Actions(sor, Policy(refund_limit=100)).call("request_refund", args, request_id="big")
    assert r.outcome == "needs_handover" and "above the limit of 100.00" in r.error
    assert r.data["refund_cents"] == row.amount_cents
    assert refunds_of(sor, row.order_id) == []
    assert sor.count("tool_calls", request_id="big") == 0  # nothing recorded: a retry is judged again
    # A partial refund under the limit runs; the limit is configurable.
    assert Actions(sor, Policy(refund_limit=100)).call(
        "request_refund", {**args, "amount": 50}, request_id="small").outcome == "executed"
    r = Actions(sor, Policy(refund_limit=10_000)).call("request_refund", args, request_id="big2")
    assert r.outcome == "executed" and r.data["refund_cents"] == row.amount_cents - 5000


def test_cancelling_a_subscription_needs_confirmation(actions, sor):
    args = {"customer_id": "C00010", "action": "cancel"}
    r = actions.call("manage_subscription", args, request_id="s1")
    assert r.outcome == "needs_confirmation"
    with sor.read() as conn:
        assert conn.execute(sa.select(db.subscriptions.c.status).where(
            db.subscriptions.c.customer_id == "C00010")).scalar() != "cancelled"
    r = actions.call("manage_subscription", args, request_id="s1", confirmed=True)
    assert r.outcome == "executed" and r.data["status"] == "cancelled" and r.data["confirmed"] is True
    assert Policy().violations([r.to_dict()]) == []
    unconfirmed = {**r.to_dict(), "data": {**r.data, "confirmed": False}}
    assert Policy().violations([unconfirmed])


@pytest.mark.parametrize("tool,args,names", [
    ("track_order", {"customer_id": "C00001", "order_id": "12ab"}, "order_id"),
    ("track_order", {"customer_id": "X1"}, "customer_id"),
    ("track_order", {}, "customer_id"),
    ("request_refund", {"customer_id": "C00001", "amount": -5}, "amount"),
    ("request_refund", {"customer_id": "C00001", "amount": "lots"}, "amount"),
    ("update_shipping_address", {"customer_id": "C00001"}, "address"),
    ("update_payment_method", {"customer_id": "C00001", "payment_method": "bitcoin"}, "payment_method"),
    ("manage_subscription", {"customer_id": "C00001", "action": "explode"}, "action"),
    ("manage_subscription", {"customer_id": "C00001", "action": "upgrade"}, "plan_tier"),
    ("apply_promo_code", {"customer_id": "C00001", "code": "!!"}, "code"),
    ("cancel_order", {"customer_id": "C00001", "order_ids": ["100000"]}, "order_ids"),
    ("escalate_to_human", {"customer_id": "C00001", "reason": ""}, "reason"),
])
def test_invalid_arguments_name_the_argument_and_write_nothing(actions, sor, tool, args, names):
    before = sor.count("tool_calls")
    r = actions.call(tool, args, request_id="bad")
    assert r.outcome == "invalid_arguments"
    assert names in r.error
    assert sor.count("tool_calls") == before


def test_unknown_tool_is_an_outcome_not_a_crash(actions):
    r = actions.call("launch_rocket", {"customer_id": "C00001"}, request_id="x")
    assert r.outcome == "unknown_tool" and "launch_rocket" in r.error


def test_a_reused_request_id_never_shows_another_customers_call(actions, sor):
    """Request ids are the client's: a customer who sends another customer's id (guessed, or a
    front end's predictable ids) is refused, and the refusal it reads never holds the first
    call's arguments (their customer id, their message, their address or card)."""
    from agentops_pipelines.agent.trajectory import Executor

    private = "my card visa ending 4242 was stolen, call me on 07700 900123"
    executor = Executor(actions, lambda text, features: ("escalate_to_human", 1.0))
    first = executor.run("shared-1", private, "C00001")
    assert first.outcome == "handed_over"
    other = executor.run("shared-1", "I would like to talk to a person", "C00002")
    assert other.outcome == "rejected" and "request_id" in other.answer
    seen = " ".join(_strings(other.to_dict()))  # the text it reads, not timings (digits by chance)
    assert "C00001" not in seen and "4242" not in seen and "07700" not in seen, other.answer
    # A write tool names its customer: the same leak through update_payment_method is closed too.
    actions.call("update_payment_method", {"customer_id": "C00003", "payment_method": "amex ending 9876"},
                 request_id="shared-2")
    r = actions.call("update_payment_method", {"customer_id": "C00004", "payment_method": "paypal"},
                     request_id="shared-2")
    assert r.outcome == "rejected" and r.error.startswith("request_id:")
    assert "9876" not in repr(r.to_dict()) and "C00003" not in repr(r.to_dict())
    assert sor.count("tickets", customer_id="C00002") == 0  # refused: nothing written for them


def test_a_refund_split_into_pieces_under_the_limit_is_still_handed_over(sor):
    """The limit holds per order: a customer (or a router) asking for the refund of an order
    above the limit in pieces just under it gets the first piece and a person for the rest,
    never the whole order refunded with nobody looking."""
    from agentops_pipelines.agent.scorers import policy_compliance

    row = order_where(sor, db.orders.c.status == "delivered", db.orders.c.amount_cents > 30000)
    actions = Actions(sor, Policy(refund_limit=100))
    args = {"customer_id": row.customer_id, "order_id": row.order_id, "amount": 60.0}
    assert actions.call("request_refund", args, request_id="piece-0").outcome == "executed"
    pieces = [actions.call("request_refund", args, request_id=f"piece-{i}") for i in range(1, 6)]
    assert [p.outcome for p in pieces] == ["needs_handover"] * 5
    assert "120.00" in pieces[0].error and "above the limit" in pieces[0].error
    assert sum(r.amount_cents for r in refunds_of(sor, row.order_id)) == 6000
    # the policy scorer judges an executed piece the same way, whoever made the trajectory
    executed = {"tool": "request_refund", "outcome": "executed", "arguments": args,
                "data": {"refund_cents": 6000, "refunded_cents": 6000}}
    assert not policy_compliance({"tool_calls": [executed]}, {"refund_limit": 100}).value


def test_served_requests_build_no_statement_once_warm(sor, monkeypatch):
    """Every statement the executor and the tools run is built once with bound parameters
    (actions.py): after a first pass over the golden scenarios, serving more of them generates no
    SQLAlchemy cache key. A statement built per call generates its key on every call; the writes
    built that way cost a saturated acting server ~9% of its CPU (BENCHMARKS.md)."""
    from sqlalchemy.sql import cache_key

    from agentops_pipelines.agent.scorers import golden_cases
    from agentops_pipelines.agent.trajectory import Executor

    cases = golden_cases(sor, 240)
    expected = {c.text: c.expected["tool"] for c in cases}
    executor = Executor(Actions(sor), lambda text, features: (expected[text], 0.99))
    generated: list[str] = []
    original = cache_key.HasCacheKey._generate_cache_key

    def counting(self):
        generated.append(type(self).__name__)
        return original(self)

    def serve(batch, prefix):
        return [executor.run(f"{prefix}-{i}", c.text, c.customer_id, confirmed=True) for i, c in enumerate(batch)]

    warm = serve(cases[:120], "warm")
    monkeypatch.setattr(cache_key.HasCacheKey, "_generate_cache_key", counting)
    served = serve(cases[120:], "served")
    monkeypatch.undo()
    tools = {t.tool for t in served if t.outcome in ("resolved", "handed_over")}
    writes = {"cancel_order", "request_refund", "update_shipping_address", "manage_subscription", "escalate_to_human"}
    assert writes <= {t.tool for t in warm} and writes & tools, (sorted(tools), [t.outcome for t in served][:20])
    assert generated == [], f"statements built per call: {sorted(set(generated))}"
