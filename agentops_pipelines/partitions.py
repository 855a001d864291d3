"""Partitions: one per day of requests, one per deployment environment."""

import dagster as dg

from agentops_pipelines.vocabulary import ENVIRONMENTS

DAILY_START = "2026-01-01"
daily = dg.DailyPartitionsDefinition(start_date=DAILY_START, timezone="UTC")
# Drift is scored on production traffic as it arrives, so today's (partial) day is a partition too.
daily_to_date = dg.DailyPartitionsDefinition(start_date=DAILY_START, timezone="UTC", end_offset=1)
environments = dg.StaticPartitionsDefinition(list(ENVIRONMENTS))
