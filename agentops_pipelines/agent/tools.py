"""The support desk's tools: what the router chooses between, and how a call is filled.

A tool's arguments come from the customer's online features (Feast); ``escalate_to_human`` is a
tool like the others, so escalation is measured as one more routing decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ESCALATE = "escalate_to_human"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: tuple[str, ...] = field(default=())  # feature names passed to the call


TOOLS: tuple[Tool, ...] = (
    Tool("track_order", "Where an order is and when it arrives.", ("has_open_order", "days_since_last_order")),
    Tool("cancel_order", "Cancel an order that has not shipped.", ("has_open_order",)),
    Tool("request_refund", "Refund a delivered order or a charge.", ("refunds_90d", "plan_tier")),
    Tool("report_damaged_item", "Replace or refund an item that arrived damaged.", ("days_since_last_order",)),
    Tool("update_shipping_address", "Change the delivery address of an order or the account.", ("has_open_order",)),
    Tool("reset_password", "Reset a password or unlock an account.", ("account_age_days",)),
    Tool("update_payment_method", "Replace a card or fix a failed payment.", ("failed_payments_30d",)),
    Tool("billing_inquiry", "Explain a charge, an invoice or a fee.", ("plan_tier", "failed_payments_30d")),
    Tool("manage_subscription", "Upgrade, downgrade, pause or cancel a plan.", ("plan_tier",)),
    Tool("apply_promo_code", "Apply a discount or a promo code.", ("plan_tier", "orders_30d")),
    Tool("product_information", "Answer questions about a product: sizes, stock, compatibility.", ()),
    Tool("technical_support", "Troubleshoot the app, the website or a device.", ("account_age_days",)),
    Tool(ESCALATE, "Hand the conversation to a human agent.", ("open_tickets", "plan_tier")),
)

TOOL_NAMES: tuple[str, ...] = tuple(t.name for t in TOOLS)
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def fill_call(tool: str, customer_id: str, features: dict) -> dict:
    """The arguments of a tool call, filled from the customer's features.

    Unknown tools (an agent trained on another label set, e.g. Banking77) get the customer id
    and every feature, so a downstream handler still has the context.
    """
    spec = TOOLS_BY_NAME.get(tool)
    names = spec.arguments if spec else tuple(features)
    args = {"customer_id": customer_id}
    for name in names:
        value = features.get(name)
        args[name] = value.item() if hasattr(value, "item") else value
    return args
