"""The support desk's tools, run for real against the system of record.

Each tool takes validated arguments (a pydantic model per tool: an invalid call comes back as an
``invalid_arguments`` result naming the argument, never as an exception). Reads answer from rows;
writes run once per request id (a retry gets the recorded result and writes nothing). Before a
write runs, a :class:`Policy` decides whether it may: a refund above the limit needs a person
(``needs_handover``: nothing is written, the caller hands over to ``escalate_to_human``), some
actions need the customer's confirmation first (``needs_confirmation``).

Outcomes: ``ok`` (a read answered), ``executed`` (a write ran, or ran before: ``replayed``),
``rejected`` (a business rule said no: the order has shipped ...), ``not_found``,
``invalid_arguments``, ``needs_confirmation``, ``needs_handover``, ``unknown_tool``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.system_of_record import IdempotencyConflict, SystemOfRecord
from agentops_pipelines.agent.tools import ESCALATE

CustomerId = Annotated[str, StringConstraints(pattern=r"^C\d{5}$")]
OrderId = Annotated[str, StringConstraints(pattern=r"^\d{6}$")]
PlanTier = Literal["free", "plus", "pro"]
TIER_RANK = {"free": 0, "plus": 1, "pro": 2}
PROMO = re.compile(r"^SAVE(\d{1,2})$")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    customer_id: CustomerId


class OrderArgs(_Args):
    order_id: OrderId | None = None


class RefundArgs(OrderArgs):
    amount: float | None = Field(default=None, gt=0, le=100_000)
    reason: Annotated[str, StringConstraints(max_length=200)] = "customer request"


class AddressArgs(OrderArgs):
    address: Annotated[str, StringConstraints(min_length=8, max_length=200, strip_whitespace=True)]


class PaymentArgs(_Args):
    payment_method: Annotated[str, StringConstraints(
        pattern=r"^(paypal|apple pay|google pay|(visa|mastercard|amex) ending \d{4})$")]


class SubscriptionArgs(_Args):
    action: Literal["upgrade", "downgrade", "pause", "resume", "cancel", "info"]
    plan_tier: PlanTier | None = None

    @model_validator(mode="after")
    def _target(self):
        if self.action in ("upgrade", "downgrade") and self.plan_tier is None:
            raise ValueError(f"plan_tier is required to {self.action}")
        return self


class PromoArgs(OrderArgs):
    code: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3,10}\d{1,3}$")]


class ProductArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    product: Annotated[str, StringConstraints(min_length=2, max_length=64)]
    customer_id: CustomerId | None = None


class SupportArgs(_Args):
    issue: Annotated[str, StringConstraints(max_length=500)] = ""


class EscalateArgs(_Args):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    proposed_call: dict | None = None


@dataclass
class ToolResult:
    tool: str
    outcome: str
    data: dict = field(default_factory=dict)
    error: str | None = None
    replayed: bool = False
    arguments: dict = field(default_factory=dict)  # as validated (or as sent, when invalid)

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "executed")

    def to_dict(self) -> dict:
        return {"tool": self.tool, "outcome": self.outcome, "data": self.data, "error": self.error,
                "replayed": self.replayed, "arguments": self.arguments}


class _Outcome(Exception):  # noqa: N818 - control flow inside a transaction, not an error
    """Ends a tool early with a result: ``rejected`` and ``not_found`` are recorded like any
    result; a policy outcome rolls back (nothing was written, nothing is recorded)."""

    def __init__(self, outcome: str, error: str | None = None, **data):
        super().__init__(error or outcome)
        self.outcome, self.error, self.data = outcome, error, data


@dataclass(frozen=True)
class Decision:
    action: Literal["execute", "confirm", "handover"]
    reason: str = ""


@dataclass(frozen=True)
class Policy:
    """When a write may run by itself. Amounts in the currency's units (not cents)."""

    refund_limit: float = 100.0
    #: (tool, action or None for any): writes that need the customer to confirm first.
    confirm: frozenset[tuple[str, str | None]] = frozenset({("manage_subscription", "cancel")})

    def decide(self, tool: str, plan: dict, *, confirmed: bool = False) -> Decision:
        """``plan``: the write's resolved values (e.g. ``refund_cents`` from the order's row, and
        ``refunded_cents``, what the order had been refunded before)."""
        cents = plan.get("refund_cents")
        if cents is not None and self._above_limit(plan):
            before = plan.get("refunded_cents") or 0
            total = f" (with {before / 100:.2f} refunded before: {(before + cents) / 100:.2f})" if before else ""
            return Decision("handover", f"refund of {cents / 100:.2f}{total} is above the limit of "
                                        f"{self.refund_limit:.2f}")
        if not confirmed and ((tool, None) in self.confirm or (tool, plan.get("action")) in self.confirm):
            return Decision("confirm", f"{tool} {plan.get('action') or ''}".strip() + " needs the customer's confirmation")
        return Decision("execute")

    def _above_limit(self, plan: dict) -> bool:
        """The limit holds per order, not per call: refunds asked for in pieces that together
        exceed it need a person as much as one refund of the whole."""
        total = (plan.get("refund_cents") or 0) + (plan.get("refunded_cents") or 0)
        return total > round(self.refund_limit * 100)

    def violations(self, calls: list[dict]) -> list[str]:
        """Executed writes this policy forbids, from tool results as :meth:`ToolResult.to_dict`
        (what a trajectory scorer checks, whoever made the trajectory)."""
        found = []
        for call in calls:
            if call.get("outcome") != "executed":
                continue
            cents = (call.get("data") or {}).get("refund_cents")
            if cents is not None and self._above_limit(call.get("data") or {}):
                found.append(f"{call['tool']} refunded {cents / 100:.2f} above the limit {self.refund_limit:.2f}")
            action = (call.get("arguments") or {}).get("action")
            needs = (call["tool"], None) in self.confirm or (call["tool"], action) in self.confirm
            if needs and not (call.get("data") or {}).get("confirmed"):
                found.append(f"{call['tool']} {action or ''} ran without the customer's confirmation")
        return found


def explain(error: ValidationError) -> str:
    """``order_id: String should match pattern '^\\d{6}$' (got 'abc')``, one per problem."""
    parts = []
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "arguments"
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if e["type"] != "missing" and "input" in e and loc != "arguments" else ""
        parts.append(f"{loc}: {msg}{got}")
    return "; ".join(parts)


# -- the tools: (conn, args, confirmed) -> data; raise _Outcome to end otherwise ------------------

# Every statement a tool runs, built once: SQLAlchemy memoises a statement's cache key, so a
# prebuilt statement with bound parameters skips the construction and key generation a fresh
# select()/update()/insert() costs each call: a saturated acting server spent ~9% less CPU per
# request once the writes were built once too (BENCHMARKS.md, "Serving latency").
# Parameter names differ from column names: SQLAlchemy reserves those for SET and VALUES.
_CUSTOMER = sa.select(db.customers).where(db.customers.c.customer_id == sa.bindparam("cid"))
_ORDER = sa.select(db.orders).where(db.orders.c.order_id == sa.bindparam("oid"),
                                    db.orders.c.customer_id == sa.bindparam("cid"))
_LATEST = (sa.select(db.orders).where(db.orders.c.customer_id == sa.bindparam("cid"),
                                      db.orders.c.status.in_(sa.bindparam("statuses", expanding=True)))
           .order_by(db.orders.c.ordered_on.desc(), db.orders.c.order_id.desc()).limit(1))
_ORDER_BY_ID = sa.select(db.orders).where(db.orders.c.order_id == sa.bindparam("oid"))
_RECENT_ORDERS = (sa.select(db.orders).where(db.orders.c.customer_id == sa.bindparam("cid"))
                  .order_by(db.orders.c.ordered_on.desc()).limit(3))
_SUBSCRIPTION = sa.select(db.subscriptions).where(db.subscriptions.c.customer_id == sa.bindparam("cid"))
_PRODUCT = sa.select(db.products).where(db.products.c.name == sa.bindparam("name"))
_REFUNDED = (sa.select(sa.func.coalesce(sa.func.sum(db.refunds.c.amount_cents), 0))
             .where(db.refunds.c.order_id == sa.bindparam("oid")))
_ORDER_SET = db.orders.update().where(db.orders.c.order_id == sa.bindparam("oid"))  # SET: the parameters
_CUSTOMER_SET = db.customers.update().where(db.customers.c.customer_id == sa.bindparam("cid"))
_SUBSCRIPTION_SET = db.subscriptions.update().where(db.subscriptions.c.customer_id == sa.bindparam("cid"))
_PASSWORD_RESET = _CUSTOMER_SET.values(password_resets=db.customers.c.password_resets + 1)
_INSERT_ORDER, _INSERT_REFUND, _INSERT_TICKET = db.orders.insert(), db.refunds.insert(), db.tickets.insert()


def _customer(conn, customer_id: str):
    row = conn.execute(_CUSTOMER, {"cid": customer_id}).first()
    if row is None:
        raise _Outcome("not_found", f"customer_id: no customer {customer_id}")
    return row


def _order(conn, args: OrderArgs, statuses: tuple[str, ...] | None = None):
    """The order named, or the customer's latest one in ``statuses``."""
    if args.order_id is not None:
        row = conn.execute(_ORDER, {"oid": args.order_id, "cid": args.customer_id}).first()
        if row is None:
            raise _Outcome("not_found", f"order_id: no order {args.order_id} for customer {args.customer_id}")
        return row
    _customer(conn, args.customer_id)
    row = conn.execute(_LATEST, {"cid": args.customer_id, "statuses": list(statuses or db.ORDER_STATUSES)}).first()
    if row is None:
        wanted = "/".join(statuses) if statuses else "any"
        raise _Outcome("not_found", f"order_id: customer {args.customer_id} has no order ({wanted}); name one")
    return row


def _order_view(row) -> dict:
    return {"order_id": row.order_id, "product": row.product, "status": row.status,
            "amount": row.amount_cents / 100, "eta": row.eta.isoformat() if row.eta else None,
            "shipping_address": row.shipping_address}


def track_order(conn, args: OrderArgs, confirmed: bool) -> dict:
    return _order_view(_order(conn, args, ("placed", "shipped", "in_transit", "delivered")))


def cancel_order(conn, args: OrderArgs, confirmed: bool, plan_only: bool = False) -> dict:
    row = _order(conn, args, ("placed",))
    if row.status != "placed":
        raise _Outcome("rejected", f"order {row.order_id} is {row.status} and can no longer be cancelled",
                       order_id=row.order_id, status=row.status)
    if plan_only:
        return {"order_id": row.order_id}
    conn.execute(_ORDER_SET, {"oid": row.order_id, "status": "cancelled"})
    return {"order_id": row.order_id, "status": "cancelled", "amount": row.amount_cents / 100}


# Refunds of one order queue on its row (Postgres; SQLite's writers are serialised already and
# SQLAlchemy renders no FOR UPDATE there): under READ COMMITTED two refunds that both read the
# order as unrefunded would both run.
_LOCK_ORDER = sa.select(db.orders.c.order_id).where(db.orders.c.order_id == sa.bindparam("oid")).with_for_update()


def _refunded(conn, order_id: str) -> int:
    return int(conn.execute(_REFUNDED, {"oid": order_id}).scalar())


def request_refund(conn, args: RefundArgs, confirmed: bool, plan_only: bool = False,
                   request_id: str = "") -> dict:
    row = _order(conn, args, ("delivered", "cancelled"))
    if row.status not in ("delivered", "cancelled"):
        raise _Outcome("rejected", f"order {row.order_id} is {row.status}: only delivered or cancelled "
                                   "orders are refunded", order_id=row.order_id, status=row.status)
    conn.execute(_LOCK_ORDER, {"oid": row.order_id})  # what is left is read after any refund running now
    refunded = _refunded(conn, row.order_id)
    left = row.amount_cents - refunded
    cents = left if args.amount is None else round(args.amount * 100)
    if left <= 0:
        raise _Outcome("rejected", f"order {row.order_id} is already fully refunded", order_id=row.order_id)
    if cents > left:
        raise _Outcome("rejected", f"amount: {cents / 100:.2f} is more than the {left / 100:.2f} left to "
                                   f"refund on order {row.order_id}", order_id=row.order_id)
    plan = {"order_id": row.order_id, "refund_cents": cents, "amount": cents / 100, "refunded_cents": refunded}
    if plan_only:
        return plan
    refund_id = f"RF-{request_id}"
    conn.execute(_INSERT_REFUND, {"refund_id": refund_id, "order_id": row.order_id, "customer_id": args.customer_id,
                                  "amount_cents": cents, "reason": args.reason, "request_id": request_id})
    return {**plan, "refund_id": refund_id}


def report_damaged_item(conn, args: OrderArgs, confirmed: bool, plan_only: bool = False) -> dict:
    row = _order(conn, args, ("delivered",))
    if row.status != "delivered":
        raise _Outcome("rejected", f"order {row.order_id} is {row.status}, not delivered yet",
                       order_id=row.order_id, status=row.status)
    replacement = f"R{row.order_id}"
    if conn.execute(_ORDER_BY_ID, {"oid": replacement}).first():
        raise _Outcome("rejected", f"a replacement for order {row.order_id} was already sent",
                       order_id=row.order_id, replacement_id=replacement)
    if plan_only:
        return {"order_id": row.order_id}
    conn.execute(_INSERT_ORDER, {
        "order_id": replacement, "customer_id": row.customer_id, "product": row.product, "amount_cents": 0,
        "status": "placed", "ordered_on": date.today(), "eta": None, "shipping_address": row.shipping_address,
        "discount_pct": 0})
    return {"order_id": row.order_id, "replacement_id": replacement, "product": row.product}


def update_shipping_address(conn, args: AddressArgs, confirmed: bool, plan_only: bool = False) -> dict:
    if args.order_id is None:
        _customer(conn, args.customer_id)
        if not plan_only:
            conn.execute(_CUSTOMER_SET, {"cid": args.customer_id, "shipping_address": args.address})
        return {"scope": "account", "address": args.address}
    row = _order(conn, args)
    if row.status != "placed":
        raise _Outcome("rejected", f"order {row.order_id} is {row.status}: its address can no longer change",
                       order_id=row.order_id, status=row.status)
    if not plan_only:
        conn.execute(_ORDER_SET, {"oid": row.order_id, "shipping_address": args.address})
    return {"scope": "order", "order_id": row.order_id, "address": args.address}


def reset_password(conn, args: _Args, confirmed: bool, plan_only: bool = False) -> dict:
    row = _customer(conn, args.customer_id)
    if not plan_only:
        conn.execute(_PASSWORD_RESET, {"cid": args.customer_id})
    return {"email": row.email}


def update_payment_method(conn, args: PaymentArgs, confirmed: bool, plan_only: bool = False) -> dict:
    row = _customer(conn, args.customer_id)
    if not plan_only:
        conn.execute(_CUSTOMER_SET, {"cid": args.customer_id, "payment_method": args.payment_method})
    return {"previous": row.payment_method, "payment_method": args.payment_method}


def billing_inquiry(conn, args: OrderArgs, confirmed: bool) -> dict:
    if args.order_id is not None:
        rows = [_order(conn, args)]
    else:
        _customer(conn, args.customer_id)
        rows = conn.execute(_RECENT_ORDERS, {"cid": args.customer_id}).all()
    sub = conn.execute(_SUBSCRIPTION, {"cid": args.customer_id}).first()
    return {"charges": [{"order_id": r.order_id, "amount": r.amount_cents / 100, "status": r.status}
                        for r in rows],
            "plan_tier": sub.plan_tier if sub else None}


def _subscription(conn, customer_id: str):
    row = conn.execute(_SUBSCRIPTION, {"cid": customer_id}).first()
    if row is None:
        raise _Outcome("not_found", f"customer_id: no subscription for {customer_id}")
    return row


def manage_subscription(conn, args: SubscriptionArgs, confirmed: bool, plan_only: bool = False) -> dict:
    sub = _subscription(conn, args.customer_id)
    view = {"action": args.action, "plan_tier": sub.plan_tier, "status": sub.status,
            "renews_on": sub.renews_on.isoformat() if sub.renews_on else None}
    if args.action == "info":
        return view
    values: dict = {}
    if args.action in ("upgrade", "downgrade"):
        up = TIER_RANK[args.plan_tier] > TIER_RANK[sub.plan_tier]
        if args.plan_tier == sub.plan_tier or up != (args.action == "upgrade"):
            raise _Outcome("rejected", f"plan_tier: cannot {args.action} from {sub.plan_tier} to {args.plan_tier}",
                           **view)
        values = {"plan_tier": args.plan_tier}
    elif args.action == "pause":
        values = {"status": "paused"}
    elif args.action == "resume":
        values = {"status": "active"}
    elif args.action == "cancel":
        if sub.status == "cancelled":
            raise _Outcome("rejected", "the subscription is already cancelled", **view)
        values = {"status": "cancelled", "renews_on": None}
    if plan_only:
        return {**view, "confirmed": confirmed}
    conn.execute(_SUBSCRIPTION_SET, {"cid": args.customer_id, **values})
    return {**view, **{k: (v.isoformat() if isinstance(v, date) else v) for k, v in values.items()},
            "confirmed": confirmed}


def apply_promo_code(conn, args: PromoArgs, confirmed: bool, plan_only: bool = False) -> dict:
    m = PROMO.match(args.code)
    if not m or not 5 <= int(m.group(1)) <= 50:
        raise _Outcome("rejected", f"code: {args.code} is not a valid promo code", code=args.code)
    row = _order(conn, args, ("placed",))
    if row.status != "placed":
        raise _Outcome("rejected", f"order {row.order_id} is {row.status}: codes apply before shipping",
                       order_id=row.order_id)
    pct = int(m.group(1))
    if not plan_only:
        conn.execute(_ORDER_SET, {"oid": row.order_id, "discount_pct": pct})
    return {"order_id": row.order_id, "code": args.code, "discount_pct": pct,
            "saving": round(row.amount_cents * pct / 10000, 2)}


def product_information(conn, args: ProductArgs, confirmed: bool) -> dict:
    name = args.product.lower().strip()
    row = conn.execute(_PRODUCT, {"name": name}).first()
    if row is None:
        raise _Outcome("not_found", f"product: we do not sell {args.product!r}")
    return {"product": row.name, "price": row.price_cents / 100, "in_stock": row.in_stock > 0,
            "waterproof": bool(row.waterproof), "sizes": row.sizes, "warranty_months": row.warranty_months}


ARTICLES = (
    (("crash", "stuck", "loading"), "Update the app to the latest version, then clear its cache."),
    (("checkout", "error", "500", "pay"), "Retry checkout in a private window; payment errors clear within minutes."),
    (("pair", "bluetooth"), "Turn Bluetooth off and on, then hold the device's button for 5 seconds to pair."),
    (("notification",), "Allow notifications for the app in your phone's settings."),
    (("load", "cart", "website"), "Clear your browser's cookies for our site and reload."),
)


def technical_support(conn, args: SupportArgs, confirmed: bool) -> dict:
    _customer(conn, args.customer_id)
    issue = args.issue.lower()
    for words, article in ARTICLES:
        if any(w in issue for w in words):
            return {"article": article}
    return {"article": "Restart the app or device; if it persists we will look at your account's logs."}


def escalate_to_human(conn, args: EscalateArgs, confirmed: bool, plan_only: bool = False,
                      request_id: str = "") -> dict:
    _customer(conn, args.customer_id)
    ticket_id = f"TK-{request_id}"
    if not plan_only:
        conn.execute(_INSERT_TICKET, {
            "ticket_id": ticket_id, "customer_id": args.customer_id, "request_id": request_id, "reason": args.reason,
            "proposed_call": json.dumps(args.proposed_call or {}, default=str), "status": "open"})
    return {"ticket_id": ticket_id, "reason": args.reason}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    args: type[BaseModel]
    fn: Callable
    writes: bool
    needs_request_id: bool = False

    def is_write(self, args: BaseModel) -> bool:
        return self.writes and getattr(args, "action", None) != "info"


SPECS: dict[str, ToolSpec] = {s.name: s for s in (
    ToolSpec("track_order", OrderArgs, track_order, False),
    ToolSpec("cancel_order", OrderArgs, cancel_order, True),
    ToolSpec("request_refund", RefundArgs, request_refund, True, needs_request_id=True),
    ToolSpec("report_damaged_item", OrderArgs, report_damaged_item, True),
    ToolSpec("update_shipping_address", AddressArgs, update_shipping_address, True),
    ToolSpec("reset_password", _Args, reset_password, True),
    ToolSpec("update_payment_method", PaymentArgs, update_payment_method, True),
    ToolSpec("billing_inquiry", OrderArgs, billing_inquiry, False),
    ToolSpec("manage_subscription", SubscriptionArgs, manage_subscription, True),
    ToolSpec("apply_promo_code", PromoArgs, apply_promo_code, True),
    ToolSpec("product_information", ProductArgs, product_information, False),
    ToolSpec("technical_support", SupportArgs, technical_support, False),
    ToolSpec(ESCALATE, EscalateArgs, escalate_to_human, True, needs_request_id=True),
)}
WRITE_TOOLS = frozenset(n for n, s in SPECS.items() if s.writes)


class Actions:
    """Runs the tools over one system of record under one policy. Thread-safe.

    ``dry_run=True`` (a shadow challenger) never writes: a write tool is planned in a read
    transaction (the same checks, the same policy decision), and an allowed write answers
    ``executed`` with ``dry_run: true`` and what it would have written; nothing is recorded, so
    no request id is used up. Reads run as usual.
    """

    def __init__(self, sor: SystemOfRecord, policy: Policy | None = None, *, dry_run: bool = False):
        self.sor = sor
        self.policy = policy or Policy()
        self.dry_run = dry_run

    def validate(self, tool: str, arguments: dict) -> BaseModel:
        """The validated arguments; raises ``KeyError`` (unknown tool) or ``ValidationError``."""
        return SPECS[tool].args.model_validate(arguments)

    def call(self, tool: str, arguments: dict, *, request_id: str, confirmed: bool = False) -> ToolResult:
        spec = SPECS.get(tool)
        if spec is None:
            return ToolResult(tool, "unknown_tool", error=f"tool: no tool named {tool!r}", arguments=arguments)
        try:
            args = spec.args.model_validate(arguments)
        except ValidationError as exc:
            return ToolResult(tool, "invalid_arguments", error=explain(exc), arguments=dict(arguments))
        shown = args.model_dump(exclude_none=True)
        extra = {"request_id": request_id} if spec.needs_request_id else {}
        if not spec.is_write(args):
            try:
                with self.sor.read() as conn:
                    return ToolResult(tool, "ok", spec.fn(conn, args, confirmed), arguments=shown)
            except _Outcome as o:
                return ToolResult(tool, o.outcome, o.data, o.error, arguments=shown)

        if self.dry_run:
            return self._dry_run(spec, args, shown, confirmed, extra)
        deferred: list[ToolResult] = []

        def write(conn) -> dict:
            try:
                plan = spec.fn(conn, args, confirmed, plan_only=True, **extra)
                decision = self.policy.decide(tool, {**shown, **plan}, confirmed=confirmed)
                if decision.action != "execute":
                    outcome = "needs_handover" if decision.action == "handover" else "needs_confirmation"
                    deferred.append(ToolResult(tool, outcome, plan, decision.reason, arguments=shown))
                    raise _Outcome(outcome)  # roll back: nothing written, nothing recorded
                data = spec.fn(conn, args, confirmed, **extra)
                return {"outcome": "executed", "data": {**data, "confirmed": confirmed}}
            except _Outcome as o:
                if deferred:
                    raise
                return {"outcome": o.outcome, "data": o.data, "error": o.error}

        try:
            done = self.sor.execute_once(request_id, tool, shown, write)
        except _Outcome:
            return deferred[0]
        except IdempotencyConflict as exc:
            return ToolResult(tool, "rejected", error=f"request_id: {exc}", arguments=shown)
        r = done.result
        return ToolResult(tool, r["outcome"], r.get("data") or {}, r.get("error"), done.replayed, shown)

    def _dry_run(self, spec: ToolSpec, args: BaseModel, shown: dict, confirmed: bool, extra: dict) -> ToolResult:
        """A write planned, never executed (see the class docstring)."""
        tool = spec.name
        try:
            with self.sor.read() as conn:
                plan = spec.fn(conn, args, confirmed, plan_only=True, **extra)
                decision = self.policy.decide(tool, {**shown, **plan}, confirmed=confirmed)
                if decision.action != "execute":
                    outcome = "needs_handover" if decision.action == "handover" else "needs_confirmation"
                    return ToolResult(tool, outcome, plan, decision.reason, arguments=shown)
                data = {**_would_write(tool, conn, shown, plan, extra.get("request_id", "")),
                        "confirmed": confirmed, "dry_run": True}
        except _Outcome as o:
            return ToolResult(tool, o.outcome, o.data, o.error, arguments=shown)
        return ToolResult(tool, "executed", data, arguments=shown)


def _would_write(tool: str, conn, shown: dict, plan: dict, request_id: str) -> dict:
    """What a write's result would say (the fields its answer states), from its plan."""
    data = {**shown, **plan}
    order_id = plan.get("order_id")
    if order_id and tool in ("cancel_order", "report_damaged_item"):
        row = conn.execute(_ORDER_BY_ID, {"oid": order_id}).first()
        data.update(amount=row.amount_cents / 100, product=row.product, status="cancelled")
        if tool == "report_damaged_item":
            data["replacement_id"] = f"R{order_id}"
    elif tool == "request_refund":
        data["refund_id"] = f"RF-{request_id}"
    elif tool == ESCALATE:
        data["ticket_id"] = f"TK-{request_id}"
    elif tool == "manage_subscription" and shown.get("plan_tier"):
        data["plan_tier"] = shown["plan_tier"]
    return data
