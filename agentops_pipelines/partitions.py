"""Partitions: one per day of requests, one per deployment environment."""

import dagster as dg

DAILY_START = "2026-01-01"
daily = dg.DailyPartitionsDefinition(start_date=DAILY_START, timezone="UTC")
ENVIRONMENTS = ("dev", "staging", "prod")
environments = dg.StaticPartitionsDefinition(list(ENVIRONMENTS))
