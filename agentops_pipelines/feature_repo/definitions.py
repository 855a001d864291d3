"""Feast definitions for the support-desk agent's customer features.

Built by a function because the offline (Parquet) sources live under a runtime folder that the
resource decides. Importing this module has no side effects and does not even import ``feast``
(that happens inside :func:`feature_objects`): no store, no files, no registry. The constants are
plain lists so callers that only need feature names stay fast.

Two views, both keyed by the ``customer`` entity (join key ``customer_id``):

- ``customer_profile``: the CRM's view of each customer at the START of a day
  (``event_timestamp`` = day 00:00 UTC), valid for 2 days.
- ``customer_activity``: counts computed from a day's requests, valid from the END of that day
  (``event_timestamp`` just before day+1 00:00 UTC), valid for 30 days.

Each view's source is a folder of daily Parquet files (``<offline_dir>/<view>/date=YYYY-MM-DD.parquet``)
read as one dataset by Feast's file (dask) offline store.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

PROFILE_VIEW = "customer_profile"
ACTIVITY_VIEW = "customer_activity"
ENTITY_NAME = "customer"
JOIN_KEY = "customer_id"
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created"

PROFILE_TTL = timedelta(days=2)
ACTIVITY_TTL = timedelta(days=30)

# name -> Feast type name ("String" or "Int64"); the order is the order features come back in.
PROFILE_SCHEMA: dict[str, str] = {
    "plan_tier": "String",
    "account_age_days": "Int64",
    "orders_30d": "Int64",
    "has_open_order": "Int64",
    "days_since_last_order": "Int64",
    "failed_payments_30d": "Int64",
    "open_tickets": "Int64",
    "refunds_90d": "Int64",
}
ACTIVITY_SCHEMA: dict[str, str] = {
    "requests_7d": "Int64",
    "escalations_30d": "Int64",
}

PROFILE_FEATURES: list[str] = list(PROFILE_SCHEMA)
ACTIVITY_FEATURES: list[str] = list(ACTIVITY_SCHEMA)
FEATURE_REFS: list[str] = [f"{PROFILE_VIEW}:{f}" for f in PROFILE_FEATURES] + [
    f"{ACTIVITY_VIEW}:{f}" for f in ACTIVITY_FEATURES
]
VIEW_FEATURES: dict[str, list[str]] = {
    PROFILE_VIEW: PROFILE_FEATURES,
    ACTIVITY_VIEW: ACTIVITY_FEATURES,
}
# Feature -> value used when a customer has no row inside the view's TTL.
FEATURE_DEFAULTS: dict[str, str | int] = {
    name: ("unknown" if kind == "String" else 0)
    for name, kind in {**PROFILE_SCHEMA, **ACTIVITY_SCHEMA}.items()
}


def feature_objects(offline_dir: Path) -> list:
    """``[customer, customer_profile, customer_activity]`` with sources under ``offline_dir``.

    Source paths are absolute, so the objects do not depend on Feast's ``repo_path``.
    """
    from agentops_pipelines.features.feast_import import load_feast

    load_feast()
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast import types as ft

    offline_dir = Path(offline_dir).resolve()
    customer = Entity(
        name=ENTITY_NAME,
        join_keys=[JOIN_KEY],
        value_type=ValueType.STRING,
        description="A support-desk customer.",
    )

    def view(name: str, schema: dict[str, str], ttl: timedelta, description: str):
        source = FileSource(
            name=f"{name}_source",
            path=str(offline_dir / name),
            timestamp_field=TIMESTAMP_FIELD,
            created_timestamp_column=CREATED_FIELD,
        )
        fields = [Field(name=JOIN_KEY, dtype=ft.String)] + [
            Field(name=feature, dtype=getattr(ft, kind)) for feature, kind in schema.items()
        ]
        return FeatureView(
            name=name,
            entities=[customer],
            schema=fields,
            source=source,
            ttl=ttl,
            online=True,
            description=description,
        )

    profile = view(
        PROFILE_VIEW, PROFILE_SCHEMA, PROFILE_TTL,
        "The CRM's view of each customer at the start of a day.",
    )
    activity = view(
        ACTIVITY_VIEW, ACTIVITY_SCHEMA, ACTIVITY_TTL,
        "Request counts computed from a day's requests, valid from the end of that day.",
    )
    return [customer, profile, activity]
