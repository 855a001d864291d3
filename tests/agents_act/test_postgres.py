"""The system of record on a real PostgreSQL (skipped when none is reachable): concurrent first use
and concurrent retries of one refund from several processes."""

import multiprocessing as mp
import uuid

import pytest
import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import Actions
from agentops_pipelines.agent.system_of_record import SystemOfRecord

pytestmark = pytest.mark.e2e
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_url():
    try:
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc.__class__.__name__}")
    name = f"agentops_sor_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


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
