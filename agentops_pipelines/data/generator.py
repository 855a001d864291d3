"""A deterministic simulator of a support desk: customers, their state, and their requests.

Each day's requests are a pure function of (date, seed, drift). A request's tool depends on its
text *and* on the customer's state that day (an open order, failed payments, open tickets), so the
customer features carry signal the text alone lacks: "there's a problem with my order" means
tracking when an order is open and a damaged item when one just arrived.

``drift`` (0 to 1) moves the simulation away from its usual day: more damaged items and refunds,
longer and angrier messages, a new product line and more brand-new customers.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from agentops_pipelines.agent.tools import ESCALATE

N_CUSTOMERS = 2000
PLAN_TIERS = ("free", "plus", "pro")
CHANNELS = ("chat", "email", "app")

PRODUCTS = ["headphones", "blender", "running shoes", "backpack", "phone case", "coffee maker",
            "desk lamp", "yoga mat", "smart watch", "rain jacket", "air fryer", "keyboard"]
NEW_PRODUCTS = ["e-bike", "solar charger", "drone", "robot vacuum"]

TEMPLATES: dict[str, list[str]] = {
    "track_order": [
        "where is my order {order}", "my {product} hasn't arrived yet", "when will my package arrive?",
        "can you tell me the delivery status of order {order}", "tracking says in transit for {n} days, where is it",
        "has my {product} shipped", "I ordered a {product} last week and still nothing",
        "what's the ETA on my delivery", "is order {order} on its way?", "the courier never showed up with my parcel",
    ],
    "cancel_order": [
        "please cancel my order {order}", "I want to cancel the {product} I just bought",
        "cancel order {order} before it ships", "I ordered by mistake, can I cancel",
        "stop my order, I don't need the {product} anymore", "how do I cancel a purchase I made today",
        "I changed my mind about the {product}, cancel it please",
    ],
    "request_refund": [
        "I want my money back for the {product}", "refund order {order} please",
        "I returned the {product} {n} days ago and have no refund", "how long does a refund take",
        "I was charged for an item I sent back", "can I get a refund, the {product} is not what I expected",
        "where is my refund for order {order}",
    ],
    "report_damaged_item": [
        "my {product} arrived broken", "the box was crushed and the {product} is damaged",
        "item arrived with a crack in it", "the {product} I received doesn't turn on, it looks damaged",
        "parts are missing from my {product}", "received the wrong item, this is not the {product} I ordered",
        "the {product} is scratched out of the box",
    ],
    "update_shipping_address": [
        "I need to change my delivery address", "can you ship order {order} to my office instead",
        "I moved, please update my address", "wrong address on my order {order}",
        "change the shipping address for my {product}", "update the postcode on my account",
    ],
    "reset_password": [
        "I forgot my password", "can't log in to my account", "reset my password please",
        "my account is locked after too many attempts", "the password reset email never arrives",
        "I can't sign in, it says invalid credentials", "how do I change my password",
    ],
    "update_payment_method": [
        "my card was declined", "I need to update my credit card", "payment failed, how do I fix it",
        "my card expired, where do I add a new one", "change my payment method to paypal",
        "the payment for order {order} didn't go through", "remove my old card from the account",
    ],
    "billing_inquiry": [
        "why was I charged twice", "what is this {amount} charge on my statement",
        "I don't recognise a payment of {amount}", "can I get an invoice for order {order}",
        "why is my bill higher this month", "explain the fee on my last invoice",
        "I was billed {amount} but expected less",
    ],
    "manage_subscription": [
        "I want to cancel my subscription", "upgrade me to the pro plan", "how do I pause my membership",
        "downgrade my plan to free", "stop the automatic renewal", "what's included in the plus plan",
        "switch my subscription to yearly billing",
    ],
    "apply_promo_code": [
        "my promo code {code} doesn't work", "can I use a discount code on order {order}",
        "I forgot to apply my coupon", "the voucher {code} says expired", "do you have any discounts right now",
        "where do I enter a promo code", "apply code {code} to my last order",
    ],
    "product_information": [
        "is the {product} waterproof", "what sizes does the {product} come in", "is the {product} in stock",
        "does the {product} work with iphone", "what's the warranty on the {product}",
        "how heavy is the {product}", "what colours is the {product} available in",
    ],
    "technical_support": [
        "the app keeps crashing", "the website won't load my cart", "I get an error at checkout",
        "my {product} won't pair with the app", "the app is stuck on the loading screen",
        "notifications are not working", "the page shows error 500 when I pay",
    ],
    ESCALATE: [
        "I want to speak to a manager", "this is the third time I'm contacting you, get me a human",
        "I am extremely unhappy and want a real person", "your bot is useless, let me talk to someone",
        "I will file a complaint if this isn't fixed today", "nobody has answered my emails for a week, escalate this",
        "I'm going to dispute this with my bank unless someone calls me",
    ],
}

# Short, vague messages: the tool is decided by the customer's state, not the words.
AMBIGUOUS = {
    "order": (["I have a problem with my order", "something is wrong with order {order}", "help with my {product}",
               "question about my recent purchase"],
              ("track_order", "report_damaged_item", "cancel_order")),
    "payment": (["issue with a payment", "something is off with my account charges", "help with my card",
                 "question about money on my account"],
                ("update_payment_method", "billing_inquiry", "request_refund")),
}

OPENERS = ["", "", "", "hi, ", "hello, ", "hey ", "good morning, ", "excuse me, "]
CLOSERS = ["", "", "", " thanks", " thank you", " asap", " please help", "!!", "?"]
ANGRY = [" this is unacceptable", " I'm really frustrated", " this is ridiculous", " third time asking"]


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def customer_ids(n: int = N_CUSTOMERS) -> list[str]:
    return [f"C{i:05d}" for i in range(1, n + 1)]


def customer_snapshot(day: date, seed: int = 7, drift: float = 0.0, n: int = N_CUSTOMERS) -> pd.DataFrame:
    """Every customer's profile and recent activity at the start of ``day`` (the CRM's view)."""
    rng = np.random.default_rng(_seed("customers", seed))
    signup_offset = rng.integers(30, 1500, size=n)
    tier = rng.choice(len(PLAN_TIERS), size=n, p=[0.6, 0.3, 0.1])
    day_rng = np.random.default_rng(_seed("state", seed, day.isoformat(), round(drift, 3)))
    # With drift, a share of customers look brand new.
    new = day_rng.random(n) < 0.5 * drift
    age = np.where(new, day_rng.integers(0, 14, size=n), signup_offset + (day - date(2024, 1, 1)).days % 365)
    orders_30d = day_rng.poisson(1.2 + 0.8 * tier)
    has_open_order = (day_rng.random(n) < 0.25 + 0.1 * np.minimum(orders_30d, 3)).astype("int64")
    return pd.DataFrame({
        "customer_id": customer_ids(n),
        "plan_tier": np.array(PLAN_TIERS)[tier],
        "account_age_days": age.astype("int64"),
        "orders_30d": orders_30d.astype("int64"),
        "has_open_order": has_open_order,
        "days_since_last_order": np.where(orders_30d > 0, day_rng.integers(0, 30, size=n), 30 + day_rng.integers(0, 300, size=n)).astype("int64"),
        "failed_payments_30d": (day_rng.random(n) < 0.08 + 0.1 * drift).astype("int64") * day_rng.integers(1, 4, size=n),
        "open_tickets": day_rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 4], size=n).astype("int64"),
        "refunds_90d": day_rng.poisson(0.3 + drift, size=n).astype("int64"),
    })


def _tool_weights(row: pd.Series, drift: float) -> dict[str, float]:
    w = {tool: 1.0 for tool in TEMPLATES}
    w[ESCALATE] = 0.3
    if row.has_open_order:
        w["track_order"] += 3.0
        w["cancel_order"] += 1.0
        w["update_shipping_address"] += 0.8
    if row.days_since_last_order < 10:
        w["report_damaged_item"] += 1.0 + 4 * drift
        w["request_refund"] += 1.0 + 3 * drift
    if row.failed_payments_30d:
        w["update_payment_method"] += 3.0
        w["billing_inquiry"] += 1.0
    if row.plan_tier != "free":
        w["manage_subscription"] += 0.8
    if row.open_tickets >= 3:
        w[ESCALATE] += 4.0
    return w


def _state_pick(kind: str, row: pd.Series) -> str:
    """The tool a vague message means, given the customer's state."""
    if kind == "order":
        if row.has_open_order:
            return "track_order" if row.days_since_last_order > 2 else "cancel_order"
        return "report_damaged_item"
    if row.failed_payments_30d:
        return "update_payment_method"
    return "request_refund" if row.refunds_90d else "billing_inquiry"


def generate_requests(day: date, n: int = 800, seed: int = 7, drift: float = 0.0) -> pd.DataFrame:
    """The support requests of one day, labelled with the tool that resolved them."""
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be between 0 and 1, got {drift}")
    rng = np.random.default_rng(_seed("requests", seed, day.isoformat(), round(drift, 3)))
    customers = customer_snapshot(day, seed=seed, drift=drift)
    products = PRODUCTS + (NEW_PRODUCTS if drift > 0 else [])
    start = datetime(day.year, day.month, day.day)
    seconds = np.sort(rng.integers(0, 86400, size=n))
    rows = []
    for i in range(n):
        cust = customers.iloc[int(rng.integers(len(customers)))]
        slots = {
            "order": f"#{rng.integers(100000, 999999)}",
            "product": products[int(rng.integers(len(products)))] if rng.random() > drift * 0.5 else NEW_PRODUCTS[int(rng.integers(len(NEW_PRODUCTS)))],
            "n": int(rng.integers(2, 15)),
            "amount": f"${rng.integers(5, 400)}.{rng.integers(0, 99):02d}",
            "code": f"SAVE{rng.integers(5, 50)}",
        }
        kind = None
        if rng.random() < 0.12:
            kind = "order" if rng.random() < 0.5 else "payment"
        if kind:
            tool = _state_pick(kind, cust)
            text = AMBIGUOUS[kind][0][int(rng.integers(len(AMBIGUOUS[kind][0])))]
        else:
            weights = _tool_weights(cust, drift)
            names = list(weights)
            p = np.array([weights[k] for k in names])
            tool = names[int(rng.choice(len(names), p=p / p.sum()))]
            options = TEMPLATES[tool]
            text = options[int(rng.integers(len(options)))]
        angry = rng.random() < 0.05 + 0.3 * drift
        if cust.open_tickets >= 3 and angry and tool != ESCALATE:
            tool = ESCALATE  # a customer already chasing three tickets gets a person
        text = OPENERS[int(rng.integers(len(OPENERS)))] + text.format(**slots)
        if angry:
            text += ANGRY[int(rng.integers(len(ANGRY)))]
        text += CLOSERS[int(rng.integers(len(CLOSERS)))]
        if drift > 0 and rng.random() < drift:
            text += " I bought it for my family and it was supposed to be a present for the holidays"
        rows.append((f"{day:%Y%m%d}-{i:05d}", cust.customer_id, text, tool, CHANNELS[int(rng.integers(3))]))
    df = pd.DataFrame(rows, columns=["request_id", "customer_id", "text", "tool", "channel"])
    df.insert(2, "timestamp", pd.to_datetime(start) + pd.to_timedelta(seconds, unit="s"))
    df["timestamp"] = df["timestamp"].dt.tz_localize("UTC")
    return df


def partition_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day)
    return start, start + timedelta(days=1)
