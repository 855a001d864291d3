"""The system of record: deterministic seed, the generator's customers, safe concurrent first use."""

import multiprocessing as mp

import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.system_of_record import SystemOfRecord, seed_rows
from agentops_pipelines.data.generator import N_CUSTOMERS, customer_ids, customer_snapshot


def test_seed_is_deterministic_and_uses_the_generators_customers():
    a, b = seed_rows(7), seed_rows(7)
    assert a == b
    assert [c["customer_id"] for c in a["customers"]] == customer_ids(N_CUSTOMERS)
    tiers = customer_snapshot(db.SEED_DAY, seed=7)["plan_tier"].tolist()
    assert [c["plan_tier"] for c in a["customers"]] == tiers
    assert seed_rows(8)["orders"] != a["orders"]
    statuses = {o["status"] for o in a["orders"]}
    assert statuses == set(db.ORDER_STATUSES)
    assert len({o["order_id"] for o in a["orders"]}) == len(a["orders"])


def _first_use(url, barrier):
    barrier.wait()
    s = SystemOfRecord(url)
    s.ensure()
    return s.count("customers"), s.count("orders"), s.count("sor_meta")


def test_concurrent_first_use_from_several_processes_creates_and_seeds_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'sor.db'}"
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            counts = pool.starmap(_first_use, [(url, barrier)] * 4)
    expected_orders = len(seed_rows(7)["orders"])
    assert counts == [(N_CUSTOMERS, expected_orders, 2)] * 4


def test_reopening_does_not_seed_again(sor):
    before = sor.count("orders")
    again = SystemOfRecord(sor.url).ensure()
    assert again.count("orders") == before
    with sor.read() as conn:
        assert conn.execute(sa.select(db.meta.c.value).where(db.meta.c.key == "seeded")).scalar() == "7"
    again.dispose()
