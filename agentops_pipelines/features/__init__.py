"""Features shared by the code location and served models (no Dagster here)."""
