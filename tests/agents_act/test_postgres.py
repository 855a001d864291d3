"""The system of record on a real PostgreSQL (skipped when none is reachable): concurrent first use
and concurrent retries of one refund from several processes."""

import multiprocessing as mp

import pytest
import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import Actions
from agentops_pipelines.agent.system_of_record import SystemOfRecord
from tests.helpers import fresh_postgres_database

pytestmark = pytest.mark.e2e


@pytest.fixture
def pg_url():
    yield from fresh_postgres_database("agentops_sor")


def _first_use(url, barrier):
    barrier.wait()
    s = SystemOfRecord(url).ensure()
    try:
        return s.count("customers"), s.count("sor_meta")
    finally:
        s.dispose()


def _refund(url, args, barrier):
    barrier.wait()
    s = SystemOfRecord(url)
    try:
        return Actions(s).call("request_refund", args, request_id="pg-retry").to_dict()
    finally:
        s.dispose()


def test_first_use_and_retried_refunds_on_postgres(pg_url):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        barrier = manager.Barrier(4)
        assert pool.starmap(_first_use, [(pg_url, barrier)] * 4) == [(2000, 2)] * 4
        sor = SystemOfRecord(pg_url)
        with sor.read() as conn:
            row = conn.execute(sa.select(db.orders).where(db.orders.c.status == "delivered",
                                                          db.orders.c.amount_cents <= 9000).limit(1)).first()
        args = {"customer_id": row.customer_id, "order_id": row.order_id}
        barrier = manager.Barrier(4)
        results = pool.starmap(_refund, [(pg_url, args, barrier)] * 4)
    assert [r["outcome"] for r in results] == ["executed"] * 4
    assert sum(not r["replayed"] for r in results) == 1
    assert sor.count("refunds", order_id=row.order_id) == 1
    sor.dispose()


def _refund_as(url, args, request_id, barrier):
    barrier.wait()
    s = SystemOfRecord(url)
    try:
        return Actions(s).call("request_refund", args, request_id=request_id).to_dict()
    finally:
        s.dispose()


def test_concurrent_refunds_of_one_order_never_refund_more_than_it_cost(pg_url):
    """Different requests (ids) refunding the same order at once, on Postgres's READ COMMITTED:
    each reads what is left, so without a lock on the order they all saw it unrefunded and all
    refunded it. One runs; the others find it refunded."""
    sor = SystemOfRecord(pg_url).ensure()
    with sor.read() as conn:
        rows = conn.execute(sa.select(db.orders).where(db.orders.c.status == "delivered",
                                                       db.orders.c.amount_cents <= 9000).limit(3)).all()
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        for row in rows:
            args = {"customer_id": row.customer_id, "order_id": row.order_id}
            barrier = manager.Barrier(6)
            results = pool.starmap(_refund_as, [(pg_url, args, f"pg-{row.order_id}-{i}", barrier) for i in range(6)])
            assert sorted(r["outcome"] for r in results) == ["executed"] + ["rejected"] * 5, results
            with sor.read() as conn:
                refunded = conn.execute(sa.select(sa.func.sum(db.refunds.c.amount_cents))
                                        .where(db.refunds.c.order_id == row.order_id)).scalar()
            assert refunded == row.amount_cents
    sor.dispose()
