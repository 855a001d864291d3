"""The support desk's system of record: customers, orders, refunds, subscriptions, products,
hand-over tickets, and the log of executed write calls that makes writes idempotent.

A SQLite file by default, any SQLAlchemy URL in production (``postgresql+psycopg://...``). The
schema is created and the demo data seeded on first use, idempotently and safely when several
threads or processes start at once: on SQLite everything that writes runs in ``BEGIN IMMEDIATE``
transactions (one writer at a time, readers never blocked thanks to WAL); elsewhere a concurrent
creator's error is retried once the other's schema is visible.

The seed is a pure function of ``seed``: the customers are the generator's (``C00001`` ...
``C02000``, with the generator's plan tiers), each with one to four orders in every status.

Plain module: SQLAlchemy Core only, nothing from the code location.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from agentops_pipelines.vocabulary import sor_file

SCHEMA_VERSION = "1"
SCHEMA_LOCK_KEY = 0x5EED_0012  # Postgres advisory lock held while the schema is created and seeded
ORDER_STATUSES = ("placed", "shipped", "in_transit", "delivered", "cancelled")
SEED_DAY = date(2026, 11, 1)  # "today" in the seeded world: order dates and ETAs count from it

metadata = sa.MetaData()

meta = sa.Table(
    "sor_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
customers = sa.Table(
    "customers", metadata,
    sa.Column("customer_id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("email", sa.String(256), nullable=False),
    sa.Column("plan_tier", sa.String(16), nullable=False),
    sa.Column("shipping_address", sa.String(256), nullable=False),
    sa.Column("payment_method", sa.String(64), nullable=False),
    sa.Column("password_resets", sa.Integer, nullable=False, default=0),
)
products = sa.Table(
    "products", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("price_cents", sa.Integer, nullable=False),
    sa.Column("in_stock", sa.Integer, nullable=False),
    sa.Column("waterproof", sa.Boolean, nullable=False),
    sa.Column("sizes", sa.String(64), nullable=False),
    sa.Column("warranty_months", sa.Integer, nullable=False),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("order_id", sa.String(16), primary_key=True),
    sa.Column("customer_id", sa.String(16), sa.ForeignKey("customers.customer_id"), nullable=False,
              index=True),
    sa.Column("product", sa.String(64), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("ordered_on", sa.Date, nullable=False),
    sa.Column("eta", sa.Date, nullable=True),
    sa.Column("shipping_address", sa.String(256), nullable=False),
    sa.Column("discount_pct", sa.Integer, nullable=False, default=0),
)
refunds = sa.Table(
    "refunds", metadata,
    sa.Column("refund_id", sa.String(160), primary_key=True),
    sa.Column("order_id", sa.String(16), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("customer_id", sa.String(16), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
)
subscriptions = sa.Table(
    "subscriptions", metadata,
    sa.Column("customer_id", sa.String(16), sa.ForeignKey("customers.customer_id"), primary_key=True),
    sa.Column("plan_tier", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active, paused, cancelled
    sa.Column("renews_on", sa.Date, nullable=True),
)
tickets = sa.Table(
    "tickets", metadata,
    sa.Column("ticket_id", sa.String(160), primary_key=True),
    sa.Column("customer_id", sa.String(16), nullable=False, index=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("reason", sa.String(512), nullable=False),
    sa.Column("proposed_call", sa.Text, nullable=False),  # JSON: the call a person should review
    sa.Column("status", sa.String(16), nullable=False),
)
# One row per executed write: (request id, tool) is the idempotency key. A retried request finds
# its row and gets the recorded result back instead of writing again.
tool_calls = sa.Table(
    "tool_calls", metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("tool", sa.String(64), primary_key=True),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("executed_at", sa.Float, nullable=False),
)

_RECORDED = sa.select(tool_calls.c.result, tool_calls.c.arguments).where(
    tool_calls.c.request_id == sa.bindparam("rid"), tool_calls.c.tool == sa.bindparam("tool"))
_RECORD = tool_calls.insert()  # built once, like _RECORDED (agent/actions.py says why)

PRODUCT_CATALOGUE = (
    # name, price, in stock, waterproof, sizes, warranty (months)
    ("headphones", 7999, 120, False, "one size", 24), ("blender", 5999, 40, False, "1.5 l", 24),
    ("running shoes", 8999, 300, True, "36-47", 6), ("backpack", 4999, 80, True, "20 l, 30 l", 12),
    ("phone case", 1999, 500, True, "all models", 6), ("coffee maker", 12999, 15, False, "one size", 24),
    ("desk lamp", 3499, 60, False, "one size", 12), ("yoga mat", 2999, 0, True, "183 cm", 6),
    ("smart watch", 24999, 25, True, "S, M, L", 24), ("rain jacket", 9999, 70, True, "XS-XXL", 12),
    ("air fryer", 8999, 0, False, "4 l", 24), ("keyboard", 6999, 90, False, "one size", 24),
)
STREETS = ("High Street", "Station Road", "Church Lane", "Park Avenue", "Mill Road", "King Street")
CITIES = ("London", "Leeds", "Bristol", "York", "Bath", "Oxford")
FIRST = ("Alex", "Sam", "Jo", "Chris", "Robin", "Kim", "Lee", "Pat", "Max", "Ali")
LAST = ("Smith", "Jones", "Patel", "Brown", "Wilson", "Taylor", "Khan", "Evans", "Green", "Hall")


class IdempotencyConflict(ValueError):
    """The same request id was used for the same tool with different arguments."""


@dataclass(frozen=True)
class RecordedCall:
    result: dict
    replayed: bool  # True when this request id had already executed the tool


def default_url(home: str | Path, environment: str = "prod") -> str:
    """``environment``'s own SQLite file under the state folder (:func:`vocabulary.sor_file`)."""
    return f"sqlite:///{sor_file(Path(home), environment)}"


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def order_id_for(customer_index: int, k: int) -> str:
    """Six digits like the generator's ``#123456``; unique per (customer, k) by construction."""
    return f"{100000 + customer_index * 4 + k:06d}"


def seed_rows(seed: int = 7, n_customers: int | None = None) -> dict[str, list[dict]]:
    """The demo data, a pure function of ``seed``: the generator's customers and plan tiers."""
    from agentops_pipelines.data.generator import N_CUSTOMERS, customer_snapshot

    n = n_customers or N_CUSTOMERS
    tiers = customer_snapshot(SEED_DAY, seed=seed, n=n)[["customer_id", "plan_tier"]]
    rows: dict[str, list[dict]] = {"customers": [], "orders": [], "subscriptions": [], "products": []}
    for name, price, stock, waterproof, sizes, warranty in PRODUCT_CATALOGUE:
        rows["products"].append({"name": name, "price_cents": price, "in_stock": stock,
                                 "waterproof": waterproof, "sizes": sizes, "warranty_months": warranty})
    for i, (cid, tier) in enumerate(zip(tiers["customer_id"], tiers["plan_tier"], strict=True)):
        r = _rng("sor", seed, cid)
        address = f"{r.randint(1, 200)} {r.choice(STREETS)}, {r.choice(CITIES)}"
        rows["customers"].append({
            "customer_id": cid, "name": f"{r.choice(FIRST)} {r.choice(LAST)}",
            "email": f"{cid.lower()}@example.com", "plan_tier": str(tier),
            "shipping_address": address, "payment_method": f"visa ending {r.randint(1000, 9999)}",
            "password_resets": 0,
        })
        rows["subscriptions"].append({
            "customer_id": cid, "plan_tier": str(tier),
            "status": "active" if tier != "free" or r.random() < 0.9 else "paused",
            "renews_on": SEED_DAY + timedelta(days=r.randint(1, 30)),
        })
        for k in range(r.randint(1, 4)):
            product = PRODUCT_CATALOGUE[r.randrange(len(PRODUCT_CATALOGUE))]
            status = ORDER_STATUSES[k] if k < 2 and r.random() < 0.5 else r.choice(ORDER_STATUSES)
            ordered = SEED_DAY - timedelta(days=r.randint(0, 60))
            qty = r.choice((1, 1, 1, 2, 3))
            rows["orders"].append({
                "order_id": order_id_for(i, k), "customer_id": cid, "product": product[0],
                "amount_cents": product[1] * qty, "status": status, "ordered_on": ordered,
                "eta": ordered + timedelta(days=r.randint(2, 9)) if status != "cancelled" else None,
                "shipping_address": address, "discount_pct": 0,
            })
    return rows


class SystemOfRecord:
    """The database behind the tools. Thread-safe; share one per process."""

    def __init__(self, url: str, *, seed: int = 7, n_customers: int | None = None):
        self.url = url
        self.seed = seed
        self.n_customers = n_customers
        self.is_sqlite = url.startswith("sqlite")
        self.engine = self._engine(url)
        self._ready = False
        self._lock = threading.Lock()
        self._snapshot = threading.local()  # conn: the read transaction of snapshot(), per thread
        # SQLite has one writer at a time. Threads of this process queue here (woken at once)
        # instead of in SQLite's busy handler, which sleeps in steps of up to 100 ms: under 8
        # writing threads that handler alone made the p99 ~160 ms. Other processes still wait in
        # the busy handler.
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @classmethod
    def at(cls, home: str | Path, **kwargs) -> SystemOfRecord:
        Path(home).mkdir(parents=True, exist_ok=True)
        return cls(default_url(home), **kwargs)

    def _engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            return sa.create_engine(url, pool_pre_ping=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  pool_size=16, max_overflow=16)

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            # pysqlite's own transaction handling is off; BEGIN is emitted below. WAL: readers and
            # one writer at once; NORMAL sync is durable across crashes of the process in WAL mode.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql(conn.info.pop("sqlite_begin", "BEGIN"))

        return engine

    # -- transactions ----------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Connection]:
        pinned = getattr(self._snapshot, "conn", None)
        if pinned is not None:  # inside this thread's snapshot(): its transaction
            try:
                yield pinned
            except sa.exc.DBAPIError:
                self._snapshot.conn = None  # a failed statement may abort it (Postgres): no more sharing
                raise
            return
        self.ensure()
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every :meth:`read` of this thread inside shares one read transaction: one connection
        checked out and one ``BEGIN`` for a batch of reads instead of one each (a dry-run
        challenger's batch: about a fifth of its CPU). Reads only: writes keep their own
        transactions. After a database error the remaining reads get their own again."""
        if getattr(self._snapshot, "conn", None) is not None:  # nested: the outer one holds
            yield
            return
        with self.read() as conn:
            self._snapshot.conn = conn
            try:
                yield
            finally:
                self._snapshot.conn = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: on SQLite it takes the write lock at BEGIN (``IMMEDIATE``), so a
        read-then-write inside it cannot interleave with another writer's."""
        self.ensure()
        with self._write() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
            with conn.begin():
                yield conn

    # -- schema and seed -------------------------------------------------------------------------
    def ensure(self) -> SystemOfRecord:
        """Create the schema and seed the demo data unless done already (once per process)."""
        if self._ready:
            return self
        with self._lock:
            if not self._ready:
                database = self.engine.url.database if self.is_sqlite else None
                if database and database != ":memory:":  # a serving process may come first on a fresh state folder
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                self._create_and_seed()
                self._ready = True
        return self

    def _create_and_seed(self, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                with self._write() as conn:
                    if conn.dialect.name == "postgresql":  # creators queue here, then see the schema
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    metadata.create_all(conn, checkfirst=True)
                    done = conn.execute(sa.select(meta.c.value).where(meta.c.key == "seeded")).scalar()
                    if done is None:
                        for table, rows in seed_rows(self.seed, self.n_customers).items():
                            conn.execute(metadata.tables[table].insert(), rows)
                        conn.execute(meta.insert(), [{"key": "schema_version", "value": SCHEMA_VERSION},
                                                     {"key": "seeded", "value": str(self.seed)}])
                return
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                # Another process created or seeded at the same moment (not possible on SQLite,
                # where BEGIN IMMEDIATE serialises us): its work is visible on the next attempt.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    # -- idempotent writes -----------------------------------------------------------------------
    def recorded(self, conn: Connection, request_id: str, tool: str) -> dict | None:
        row = conn.execute(_RECORDED, {"rid": request_id, "tool": tool}).first()
        return None if row is None else {"result": json.loads(row.result), "arguments": json.loads(row.arguments)}

    def execute_once(self, request_id: str, tool: str, arguments: dict, write) -> RecordedCall:
        """Run ``write(conn) -> result`` once per (request id, tool), in one transaction with the
        record of it. A retry (same id, same arguments) gets the recorded result and writes
        nothing; the same id with other arguments raises :class:`IdempotencyConflict`."""
        args_json = json.dumps(arguments, sort_keys=True, default=str)
        for attempt in range(3):
            try:
                with self.write() as conn:
                    found = self.recorded(conn, request_id, tool)
                    if found is None:
                        result = write(conn)
                        conn.execute(_RECORD, {
                            "request_id": request_id, "tool": tool, "arguments": args_json,
                            "result": json.dumps(result, default=str), "executed_at": time.time()})
                        return RecordedCall(result, replayed=False)
                break
            except sa.exc.IntegrityError:
                # Another server (not SQLite: its writers are serialised) recorded this request id
                # between our read and our insert; our transaction rolled back, read theirs.
                if attempt == 2:
                    raise
        if json.loads(args_json) != found["arguments"]:
            # Request ids are the client's: the first call may be another customer's, so its
            # arguments (their id, message, address, card) never go into this message, which
            # becomes the refused request's answer, trace and log row.
            raise IdempotencyConflict(
                f"request {request_id!r} already ran {tool} with other arguments; a new request "
                "needs a new X-Request-Id")
        return RecordedCall(found["result"], replayed=True)

    def count(self, table: str, **where: object) -> int:
        t = metadata.tables[table]
        with self.read() as conn:
            q = sa.select(sa.func.count()).select_from(t)
            for k, v in where.items():
                q = q.where(t.c[k] == v)
            return int(conn.execute(q).scalar())

    def dispose(self) -> None:
        self.engine.dispose()
